"""Issue 16's classifier sanity case: a ReLU CNN digits classifier (``models/relu_cnn.py``) trained here,
exported with torch's own ONNX exporter, converted by snc at b = 1..4 bits (T = 2^b - 1) and compiled for
Loihi 2. Held-out accuracy of the ANN, the quantized ANN (eq. 21, onnx2torch's run of snc's quantized ONNX)
and the SNN: the float NIR reference and the emulator (Lava fixed_pt bit for bit) on all held-out images,
Lava floating_pt and fixed_pt on the first ``--lava`` of them (0: none). JSON on stdout.

    .venv/bin/python tools/ann_classifier.py [--seed 0] [--lava 32] [--onnx out/digits-relu-cnn.onnx]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snc import api
from snc.compiler.frontends import GraphOptions
from snc.compiler.frontends.onnx_ann import torch_module
from snc.models.data import digits
from snc.models.quality import train_classifier
from snc.models.relu_cnn import ReluCnnClassifier


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(scores).argmax(-1) == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lava", type=int, default=32, help="held-out images run on Lava per bit width")
    parser.add_argument("--onnx", default="", help="where to keep the exported ANN (default: a temporary file)")
    args = parser.parse_args()
    start = time.perf_counter()
    model, ann_accuracy = train_classifier(seed=args.seed, epochs=30, make=ReluCnnClassifier)
    train_x, _ = digits("train")
    test_x, test_y = (t.numpy() for t in digits("heldout"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(args.onnx or Path(tmp) / "relu-cnn.onnx")
        torch.onnx.export(model.eval(), torch.zeros(2, 1, 8, 8), str(onnx_path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        for bits in (1, 2, 3, 4):
            converted = api.convert(onnx_path, bits=bits, calibration=train_x[:512].numpy())
            T = converted.steps
            with torch.no_grad():
                quantized = torch_module(converted.quantized, str(onnx_path))(torch.from_numpy(test_x)).numpy()
            inputs = np.repeat(test_x[None], T, axis=0)
            build = api.compile(converted.graph, graph=GraphOptions(calibration=inputs[:, :64])).build
            row = {"bits": bits, "T": T, "ann": ann_accuracy, "quantized_ann": accuracy(quantized, test_y),
                   "snn_reference": accuracy(api.run(build, inputs, backend="reference").output[-1], test_y),
                   "snn_emu": accuracy(api.run(build, inputs, backend="emu").output[-1], test_y),
                   "first_layer_count_agreement": next(iter(converted.count_agreement.values())),
                   "count_agreement": converted.count_agreement}
            if args.lava:
                few = inputs[:, :args.lava]
                runs = {m: api.run(build, few, backend="lava", mode=m) for m in ("float", "fixed")}
                emu_few = api.run(build, few, backend="emu")
                reference_few = api.run(build, few, backend="reference")
                row |= {"lava_images": int(few.shape[1]),
                        "snn_lava_float": accuracy(runs["float"].output[-1], test_y[:args.lava]),
                        "snn_lava_fixed": accuracy(runs["fixed"].output[-1], test_y[:args.lava]),
                        "lava_float_vs_reference_spikes": float(np.mean([
                            (runs["float"].spikes[k] == reference_few.spikes[k]).mean() for k in reference_few.spikes])),
                        "lava_fixed_equals_emu": all(np.array_equal(runs["fixed"].spikes[k], emu_few.spikes[k])
                                                     for k in emu_few.spikes)
                        and bool(np.array_equal(runs["fixed"].output, emu_few.output))}
            rows.append(row)
    print(json.dumps({"heldout_images": len(test_y), "seconds": round(time.perf_counter() - start, 1),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
