"""Issue 16's classifier sanity case: a ReLU CNN digits classifier (``models/relu_cnn.py``) trained here,
exported with torch's own ONNX exporter, converted by snc at b = 1..4 bits (T = 2^b - 1) and compiled for
Loihi 2, with its clipping thresholds calibrated (99.9th percentile) or learned (the ANN fine-tuned with
``QuantizedReLU``, QCFS-style, and exported with Clip(0, s)). Held-out accuracy of the ANN, the quantized
ANN (eq. 21, onnx2torch's run of snc's quantized ONNX) and the SNN: the float NIR reference and the emulator
(Lava fixed_pt bit for bit) on all held-out images, Lava floating_pt and fixed_pt on the first ``--lava``
of them (0: none); energy per image of the SNN (exact SOPs on the emulator's spikes, neuron updates, the
input layer's MACs as host work) next to the ANN's MACs, on the papers' 45 nm fp32 model and Loihi 2
(estimates). JSON on stdout.

    .venv/bin/python tools/ann_classifier.py [--seed 0] [--lava 32] [--finetune-epochs 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snc import api
from snc.compiler.frontends import GraphOptions
from snc.compiler.frontends.onnx_ann import torch_module
from snc.hw_profiles import load_profile
from snc.models.data import digits
from snc.models.quality import train_classifier
from snc.models.neurons import QuantizedReLU
from snc.models.relu_cnn import ReluCnnClassifier


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(scores).argmax(-1) == labels).mean())


def export(model: torch.nn.Module, path: Path) -> Path:
    torch.onnx.export(model.eval(), torch.zeros(2, 1, 8, 8), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def learned(ann: ReluCnnClassifier, bits: int, thresholds: list[float], epochs: int, seed: int) -> tuple:
    """The ANN with QuantizedReLU at ``bits`` (thresholds starting from the calibrated ones) fine-tuned."""
    def make() -> ReluCnnClassifier:
        model = ReluCnnClassifier(lambda: QuantizedReLU(bits))
        model.load_state_dict(ann.state_dict(), strict=False)
        model.act1.threshold.data.fill_(thresholds[0])
        model.act2.threshold.data.fill_(thresholds[1])
        return model

    return train_classifier(seed=seed, epochs=epochs, make=make)


def snn_row(onnx_path: Path, bits: int, train_x: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            lava: int) -> dict:
    converted = api.convert(onnx_path, bits=bits, calibration=train_x[:512])
    T = converted.steps
    with torch.no_grad():
        quantized = torch_module(converted.quantized, str(onnx_path))(torch.from_numpy(test_x)).numpy()
    inputs = np.repeat(test_x[None], T, axis=0)
    build = api.compile(converted.graph, graph=GraphOptions(calibration=inputs[:, :64])).build
    row = {"bits": bits, "T": T, "thresholds": list(converted.thresholds.values()),
           "quantized_ann": accuracy(quantized, test_y),
           "snn_reference": accuracy(api.run(build, inputs, backend="reference").output[-1], test_y),
           "snn_emu": accuracy(api.run(build, inputs, backend="emu").output[-1], test_y),
           "count_agreement": list(converted.count_agreement.values())}
    ann_macs = sum(converted.ann_macs.values())
    for profile in ("cmos45nm-fp32", "loihi2"):  # per image; Loihi 2's are estimates
        energy = api.graph_energy_of(build, inputs[:, :64], backend="emu", profile=profile)
        row[f"energy_{profile}"] = {
            "ann_macs": ann_macs, "ann_uj": ann_macs * load_profile(profile)["energy"]["mac_pj"] / 1e6,
            "snn_sops": energy.totals["sops"], "snn_host_macs": energy.totals["host_macs"],
            "snn_uj": energy.totals["energy_pj"] / 1e6, "snn_host_uj": energy.totals["host_energy_pj"] / 1e6,
            "estimate": energy.estimate}
    if lava:
        few = inputs[:, :lava]
        runs = {m: api.run(build, few, backend="lava", mode=m) for m in ("float", "fixed")}
        emu, reference = api.run(build, few, backend="emu"), api.run(build, few, backend="reference")
        row |= {"lava_images": int(few.shape[1]),
                "snn_lava_float": accuracy(runs["float"].output[-1], test_y[:lava]),
                "snn_lava_fixed": accuracy(runs["fixed"].output[-1], test_y[:lava]),
                "lava_float_equals_reference": all(np.array_equal(runs["float"].spikes[k], reference.spikes[k])
                                                   for k in reference.spikes),
                "lava_fixed_equals_emu": all(np.array_equal(runs["fixed"].spikes[k], emu.spikes[k])
                                             for k in emu.spikes) and bool(np.array_equal(runs["fixed"].output,
                                                                                           emu.output))}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lava", type=int, default=32, help="held-out images run on Lava per bit width")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    ann, ann_accuracy = train_classifier(seed=args.seed, epochs=30, make=ReluCnnClassifier)
    train_x = digits("train")[0].numpy()
    test_x, test_y = (t.numpy() for t in digits("heldout"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ann_onnx = export(ann, Path(tmp) / "relu-cnn.onnx")
        for bits in (1, 2, 3, 4):
            calibrated = snn_row(ann_onnx, bits, train_x, test_x, test_y, args.lava)
            rows.append({"thresholds_from": "calibrated (99.9th percentile)", "ann": ann_accuracy} | calibrated)
            tuned, tuned_accuracy = learned(copy.deepcopy(ann), bits, calibrated["thresholds"],
                                            args.finetune_epochs, args.seed)
            tuned_onnx = export(tuned.for_export(), Path(tmp) / f"relu-cnn-qcfs{bits}.onnx")
            rows.append({"thresholds_from": f"learned (QuantizedReLU, {args.finetune_epochs} epochs)",
                         "ann": ann_accuracy, "trained_quantized_ann": tuned_accuracy}
                        | snn_row(tuned_onnx, bits, train_x, test_x, test_y, args.lava))
    print(json.dumps({"heldout_images": len(test_y), "seconds": round(time.perf_counter() - start, 1),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
