"""Sample quality of the samplers on a model: FDD (Fréchet Digits Distance, ``snc eval``) of ``-n`` samples per
sampler, order, spacing and number of steps: DDIM (time-uniform, as ``snc sample --sampler ddim``; and on
DPM-Solver's logSNR steps) next to multistep DPM-Solver of orders 1-3. JSON on stdout.

    .venv/bin/python tools/sampler_quality.py [--model models/checkpoints/digits-unet.pt] [--backend torch]
        [-n 256] [--steps 10,20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

from snc import api

RUNS = [("ddim", None, "time"), ("ddim", None, "logsnr"), ("dpm-solver", 1, "logsnr"), ("dpm-solver", 2, "logsnr"),
        ("dpm-solver", 3, "logsnr")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/checkpoints/digits-unet.pt", help="checkpoint or build")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--steps", default="10,20")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = api.open_source(args.model)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        for sampler, order, spacing in RUNS:
            start = time.perf_counter()
            result = api.sample(source, backend=args.backend, sampler=sampler, steps=steps, n=args.n, seed=args.seed,
                                order=order or 3, spacing=spacing)
            quality = api.evaluate(result.images)
            rows.append({"sampler": sampler, "order": order, "spacing": spacing, "steps": steps,
                         "fdd": quality.fdd, "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps({"model": args.model, "backend": args.backend, "n": args.n, "seed": args.seed,
                      "fdd_references": {"heldout": quality.heldout, "noise": quality.noise}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
