"""Issue 16's diffusion case, SDM's Table II measured on digits: the digits U-Net's ANN twin (ReLU, one step)
trained here, as is and as a quantized ANN (``QuantizedReLU`` at b = 2, thresholds learned QCFS-style);
the quantized one exported by torch's exporter (``compiler/frontends/unet.ann_to_onnx``: the time
embedding and tail stay on the host), converted by ``snc convert`` (T = 3) without and with fine-tuning (the
SNN trained ``--finetune`` minibatches on DDPM's loss: noisy training digits in, their noise as the target),
compiled for Loihi 2 and sampled on the emulator; next to them the direct-trained SNN (T = 4, the shipped
checkpoint) on the emulator. FDD of ``-n`` samples with DDIM-20 and DDPM (1000 steps), energy per sample (45 nm fp32
profile: the papers'; Loihi 2: an estimate), and the converted build checked on Lava (floating_pt vs torch,
fixed_pt vs the emulator). JSON on stdout; the models and builds under ``--out``.

    .venv/bin/python tools/ann_unet.py [--out out/ann-unet] [-n 256] [--skip-ddpm] [--ship] [--reuse]
        [--finetune 1000]

``--ship`` copies the quantized ANN's ONNX file to ``models/checkpoints/digits-unet-ann-b2.onnx``;
``--reuse`` takes the ANN checkpoints already in ``--out`` instead of training them again.
About 30 minutes here uncontended, 65 beside a test run (two trainings of 3-5 minutes, 1000 fine-tuning steps
of 0.2-1 s, DDPM sampling of 256 images on the emulator 7-13 minutes per SNN).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from snc import api
from snc.compiler.frontends.unet import ann_to_onnx
from snc.compiler.nir_io import write_graph
from snc.compiler.snn_finetune import finetune
from snc.models.checkpoint import load_checkpoint, save_checkpoint
from snc.models.data import digits
from snc.models.diffusion import Schedule, q_sample
from snc.models.presets import ann_twin, preset
from snc.models.train import PRESET_SETTINGS, train_denoiser
from snc.runtime.samplers import sample

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models/checkpoints/digits-unet.pt"
SHIP_TO = ROOT / "models/checkpoints/digits-unet-ann-b2.onnx"
BITS = 2


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_ann(out: Path, bits: int | None, seed: int, steps: int, reuse: bool) -> Path:
    path = out / (f"ann-b{bits}.pt" if bits else "ann-relu.pt")
    if reuse and path.is_file():
        return path
    arch, config = preset("digits-unet")
    twin = ann_twin(config)
    twin = dataclasses.replace(twin, neuron=dataclasses.replace(twin.neuron, ann_bits=bits))
    start = time.perf_counter()
    settings = dataclasses.replace(PRESET_SETTINGS["digits-unet"], seed=seed, steps=steps)
    model, meta = train_denoiser(arch, twin, settings)
    save_checkpoint(path, arch, model, meta | {"command": "tools/ann_unet.py"})
    log(f"trained {path.name} in {time.perf_counter() - start:.0f} s (loss {meta['final_loss_smoothed']:.4f})")
    return path


def calibration_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Noisy training digits at random diffusion steps (the inputs the denoiser sees) and the noise that made
    them (``target``: DDPM's loss, for fine-tuning); ``n`` may exceed the training set (digits repeat, noise not)."""
    g = torch.Generator().manual_seed(seed)
    images, _ = digits("train")
    x0 = images[torch.randint(0, len(images), (n,), generator=g)]
    t = torch.randint(0, 1000, (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    xt = q_sample(Schedule(steps=1000), x0, t, noise)
    return {"x": xt.numpy().astype(np.float32), "t": t.numpy(), "target": noise.numpy().astype(np.float32)}


def quality(source, backend: str, n: int, seed: int, ddpm: bool) -> dict:
    """FDD with DDIM-20 and DDPM: of a build on ``backend``, or of an ANN checkpoint (the torch model itself:
    an ANN has no spiking graph to build)."""
    row = {}
    for sampler, steps in [("ddim", 20)] + ([("ddpm", None)] if ddpm else []):
        start = time.perf_counter()
        if isinstance(source, Path):
            model = load_checkpoint(source).model.eval()
            with torch.no_grad():
                images = sample(model, (n, 1, 8, 8), Schedule(steps=model.config.diffusion_steps), sampler=sampler,
                                steps=steps, seed=seed)
        else:
            images = api.sample(source, backend=backend, sampler=sampler, steps=steps, n=n, seed=seed).images
        row[f"fdd_{sampler}"] = round(api.evaluate(images).fdd, 2)
        row[f"seconds_{sampler}"] = round(time.perf_counter() - start, 1)
        log(f"  {sampler} on {backend}: FDD {row[f'fdd_{sampler}']} ({row[f'seconds_{sampler}']} s)")
    return row


def energy(build, profile: str) -> dict:
    report = api.energy(build, profile=profile, backends=("emu",), n=8)
    totals = report.totals
    return {"profile": profile, "snn_mj_per_sample": totals["per_sample"]["energy_exact_mj"],
            "snn_papers_mj_per_sample": totals["per_sample"]["energy_papers_mj"],
            "ann_mj_per_sample": totals["per_sample"]["ann_energy_mj"], "estimate": report.estimate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out/ann-unet")
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ddpm", action="store_true")
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--train-steps", type=int, default=PRESET_SETTINGS["digits-unet"].steps,
                        help="per ANN (default: the digits U-Net's)")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--finetune", type=int, default=1000, help="minibatches of SNN fine-tuning")
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ddpm = not args.skip_ddpm

    relu, quantized = (train_ann(out, bits, args.seed, args.train_steps, args.reuse) for bits in (None, BITS))
    onnx_path = ann_to_onnx(load_checkpoint(quantized).model, out / f"ann-b{BITS}.onnx")
    if args.ship:
        shutil.copyfile(onnx_path, SHIP_TO)
    data = calibration_data(4096, args.seed)
    np.savez(out / "calibration.npz", **data)
    converted = api.convert(onnx_path, bits=BITS, calibration=out / "calibration.npz")
    write_graph(out / f"snn-b{BITS}.nir", converted.graph)
    log(f"converted: {converted.neurons} neurons, T = {converted.steps}; first-layer counts = levels: "
        f"{next(iter(converted.count_agreement.values())):.2%}; output rel. error vs the quantized ANN "
        f"{converted.output_rel_error['snn_vs_quantized_ann']:.3e}")
    tuned = finetune(converted.graph, [data["x"], data["t"]], data["target"], steps=args.finetune,
                     lr=args.finetune_lr, seed=args.seed)  # what snc convert --finetune does after converting
    write_graph(out / f"snn-b{BITS}-ft.nir", tuned.graph)
    log(f"fine-tuned: {tuned.as_dict()}")
    snn_build = api.compile(out / f"snn-b{BITS}.nir", target="loihi2", output=out / "build-converted").build
    ft_build = api.compile(out / f"snn-b{BITS}-ft.nir", target="loihi2", output=out / "build-converted-ft").build
    direct_build = api.compile(SHIPPED, target="loihi2", output=out / "build-direct").build

    rows = []
    for name, source, backend, steps in [
            ("ANN (ReLU, float)", relu, "torch", 1),
            (f"quantized ANN (b = {BITS}, QCFS-trained)", quantized, "torch", 1),
            (f"ANN-SNN converted (T = {2 ** BITS - 1}, no fine-tuning)", snn_build, "emu", 2 ** BITS - 1),
            (f"ANN-SNN converted (T = {2 ** BITS - 1}, fine-tuned {args.finetune} steps)", ft_build, "emu",
             2 ** BITS - 1),
            ("direct-trained SNN (T = 4, shipped)", direct_build, "emu", 4)]:
        log(name)
        rows.append({"model": name, "backend": backend, "T": steps} | quality(source, backend, args.n, args.seed, ddpm))
    energies = {"converted": {p: energy(snn_build, p) for p in ("cmos45nm-fp32", "loihi2")},
                "converted_finetuned": {p: energy(ft_build, p) for p in ("cmos45nm-fp32", "loihi2")},
                "direct": {p: energy(direct_build, p) for p in ("cmos45nm-fp32", "loihi2")}}
    lava = api.verify(snn_build, backends=("lava", "emu"), n=2)
    print(json.dumps({"n": args.n, "seed": args.seed, "bits": BITS, "rows": rows, "energy": energies,
                      "conversion": converted.as_dict(), "finetuned": tuned.as_dict(),
                      "lava_verify": lava.as_dict(),
                      "onnx": str(onnx_path)}, indent=1, default=str))


if __name__ == "__main__":
    main()
