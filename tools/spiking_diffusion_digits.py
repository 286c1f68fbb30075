"""Paper 003's model on digits, measured in torch: the VQ-SVAE's reconstructions and the sampled digits.

For an snc ``spiking-diffusion-vq`` checkpoint (default: the shipped ``digits-vq``) it reports, as JSON:
the reconstruction MSE of the held-out digits (in snc's [-1, 1] pixels and in the model's [-0.5, 0.5]), the
codebook rows used, the FDD of those reconstructions (the best the sampler can reach through this codebook),
and the FDD of ``n`` sampled digits (absorbing diffusion, every step, torch) per temperature, beside the FDD
of held-out digits and of noise at the same n.

    .venv/bin/python tools/spiking_diffusion_digits.py [--checkpoint PATH] [-n 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from snc import api
from snc.models import load_checkpoint, shipped_checkpoint
from snc.models.data import digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped digits-vq")
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperatures", default="1.0,0.8,0.65")
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
    for temperature in map(float, args.temperatures.split(",")):
        start = time.perf_counter()
        samples = model.sample(args.n, temperature, generator=torch.Generator().manual_seed(args.seed))
        quality = api.evaluate(samples)
        report["samples"].append({"temperature": temperature, "fdd": round(quality.fdd, 2),
                                  "seconds": round(time.perf_counter() - start, 1)})
        report["fdd_heldout"], report["fdd_noise"] = round(quality.heldout, 2), round(quality.noise, 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
