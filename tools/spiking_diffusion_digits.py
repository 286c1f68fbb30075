"""Paper 003's model on digits: the VQ-SVAE's reconstructions and the sampled digits, in torch and on chip.

For an snc ``spiking-diffusion-vq`` checkpoint (default: the shipped ``digits-vq``) it reports, as JSON:
the reconstruction MSE of the held-out digits (in snc's [-1, 1] pixels and in the model's [-0.5, 0.5]), the
codebook rows used, the FDD of those reconstructions (the best the sampler can reach through this codebook),
and the FDD of ``n`` sampled digits (absorbing diffusion, every step) per temperature on each of
``--backends`` (torch: the model; emu / lava: the compiled pipeline build, the SDID's calls and the decoder
on the chip), beside the FDD of held-out digits and of noise at the same n. With emu and lava both, whether
their samples are identical; with ``--energy``, the energy of one sample on each profile next to the shipped
digits U-Net's (DDIM-20, the sampler of its FDD), spike counts from the emulator.

    .venv/bin/python tools/spiking_diffusion_digits.py [--checkpoint PATH] [-n 256] [--seed 0]
        [--backends torch,emu,lava] [--lava-n 256] [--energy cmos45nm-fp32,loihi2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from snc import api
from snc.models import load_checkpoint, shipped_checkpoint
from snc.models.data import digits
from snc.runtime.backends import get_backend


def reconstruct(build, backend: str, images: torch.Tensor) -> torch.Tensor:
    """Images (the VQ-SVAE's range) through the encoder core, the host's codebook argmin and the decoder core."""
    chosen = get_backend(backend)
    zeros = torch.zeros(len(images), dtype=torch.long)
    with chosen.open(build.stage("encoder"), auto_batch=True, batch=len(images)) as encoder:
        tokens = encoder(images.double(), zeros)
    with chosen.open(build.stage("decoder"), auto_batch=True, batch=len(images)) as decoder:
        return decoder(tokens, zeros).clamp(-0.5, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped digits-vq")
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperatures", default="1.0,0.8,0.65")
    parser.add_argument("--backends", default="torch", help="comma list of torch, emu, lava")
    parser.add_argument("--lava-n", type=int, default=None, help="images sampled on lava (default: -n)")
    parser.add_argument("--energy", default="", help="comma list of hardware profiles")
    args = parser.parse_args()
    path = args.checkpoint or shipped_checkpoint("digits-vq")
    model = load_checkpoint(path).model
    images = digits("heldout")[0]
    with torch.no_grad():
        tokens = model.tokens(images)
        recon = model.images(tokens)
    mse = float(((recon - images) ** 2).mean())
    report = {"checkpoint": str(path), "n": args.n, "seed": args.seed,
              "heldout_reconstruction_mse": round(mse, 5),
              "heldout_reconstruction_mse_model_range": round(mse * model.config.pixel_scale ** 2, 5),
              "codes_used_heldout": int(tokens.unique().numel()), "codebook": model.config.vqsvae.num_embeddings,
              "fdd_reconstructions": round(api.evaluate(recon[: args.n]).fdd, 2), "samples": []}
    backends = args.backends.split(",")
    build = api.compile(path).build if set(backends) != {"torch"} or args.energy else None
    for temperature in map(float, args.temperatures.split(",")):
        drawn = {}
        for backend in backends:
            n = args.lava_n or args.n if backend == "lava" else args.n
            result = api.sample(build if backend != "torch" else path, backend=backend, n=n, seed=args.seed,
                                temperature=temperature)
            quality = api.evaluate(result.images)
            drawn[backend] = result.images
            report["samples"].append({"backend": backend, "mode": result.mode, "temperature": temperature, "n": n,
                                      "fdd": round(quality.fdd, 2), "seconds": round(result.seconds, 1)})
            report.setdefault("fdd_heldout", {})[n] = round(quality.heldout, 2)
            report.setdefault("fdd_noise", {})[n] = round(quality.noise, 2)
        if "lava" in drawn and "emu" in drawn:
            k = len(drawn["lava"])
            report.setdefault("lava_fixed_equals_emu", []).append(
                {"temperature": temperature, "n": k, "identical": bool(torch.equal(drawn["lava"], drawn["emu"][:k]))})
    for backend in (b for b in backends if b != "torch"):  # tokenize and decode on the chip
        report.setdefault("heldout_reconstruction_mse_on_chip", {})[backend] = round(
            float(((reconstruct(build, backend, images * model.config.pixel_scale) / model.config.pixel_scale
                    - images) ** 2).mean()), 5)
    for profile in filter(None, args.energy.split(",")):
        vq = api.energy(build, backends=("emu",), profile=profile)
        unet = api.energy(shipped_checkpoint("digits-unet"), backends=("emu",), profile=profile, steps=20)
        report.setdefault("energy_per_sample_mj", {})[profile] = {
            "estimate": unet.estimate,
            "spiking_diffusion_vq": {k: round(v, 5) for k, v in vq.per_sample.items()},
            "calls": {name: r.steps_per_sample for name, r in vq.stages.items()},
            "digits_unet_ddim20": {k: round(v, 5) for k, v in unet.totals["per_sample"].items()}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
