"""Train and save the digits classifier behind ``snc eval`` (the FDD feature network).

    .venv/bin/python tools/train_classifier.py [--seed 0] [-o models/checkpoints/digits-classifier.pt]
"""

from __future__ import annotations

import argparse
import json
import time

from snc.models.quality import save_classifier, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="models/checkpoints/digits-classifier.pt")
    args = parser.parse_args()
    start = time.perf_counter()
    model, accuracy = train_classifier(seed=args.seed)
    meta = {"seed": args.seed, "heldout_accuracy": accuracy, "command": "tools/train_classifier.py"}
    save_classifier(args.output, model, meta)
    print(json.dumps({**meta, "seconds": round(time.perf_counter() - start, 1), "path": args.output}))


if __name__ == "__main__":
    main()
