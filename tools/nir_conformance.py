"""The interop table (issue 14): norse / snnTorch / SpikingJelly networks through snc, snc's exports in their readers,
netx networks against lava-dl's netx.hdf5.Network. JSON on stdout. Starts Lava (about a minute)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import nir_frameworks as frameworks  # noqa: E402
import test_netx  # noqa: E402
from netx_files import networks, run_netx, write_netx, write_slayer_pool_net  # noqa: E402
from snc import api  # noqa: E402


BACKENDS = (("reference", None), ("lava", "float"), ("lava", "fixed"), ("emu", None))


def _row(r: frameworks.Conformance) -> dict:
    row = r.row()
    row["emu_equals_lava_fixed"] = bool(np.array_equal(r.outputs["emu"], r.outputs["lava:fixed"]) and all(
        np.array_equal(r.spikes["emu"][k], v) for k, v in r.spikes["lava:fixed"].items()))
    return row


def main() -> None:
    rows = [_row(frameworks.conform(case, BACKENDS)) for case in frameworks.CASES]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rows += [_row(frameworks.conform_spikingjelly(case, stem, BACKENDS))
                 for case, stem in frameworks.spikingjelly_exports(d)]
        readers = {reader: {"mlp_max_abs_error": frameworks.mlp_reader_error(reader, d),
                            "conv_spike_agreement": frameworks.conv_reader_agreement(reader, d)}
                   for reader in ("norse", "snntorch")}
        netx = {}
        files = {name: write_netx(d / f"{name}.net", layers) for name, layers in networks().items()}
        files["pool"] = write_slayer_pool_net(d / "pool.net")  # lava-dl's own writer; netx loads it as a conv
        for name, path in files.items():
            build = api.compile(path).build
            shape = tuple(int(v) for v in build.nir_graph.nodes["input"].input_type["input"])
            x = test_netx._input(name, shape)
            net, trace = test_netx._emu_trace(build, x)
            fed = np.concatenate([x, np.repeat(x[-1:], net.call_steps - test_netx.STEPS, 0)])
            layers_ = [g for g in net.groups if g != "input_relay"]
            again = run_netx(api.export_netx(build, d / f"{name}-again.net"), fed)
            # netx 0.6 cannot load a pool layer: the pool network is compared through snc's export of it
            theirs = again if name == "pool" else run_netx(path, fed)
            netx[name] = {"layers": len(layers_), "steps": net.call_steps, "netx_loads_the_file": name != "pool",
                          "mismatches_vs_netx": int(sum((trace.spikes[g][:, 0] != t).sum()
                                                        for g, t in zip(layers_, theirs))),
                          "rates": [round(float(t.mean()), 3) for t in theirs],
                          "export_reload_mismatches": int(sum((a != b).sum() for a, b in zip(again, theirs)))}
    print(json.dumps({"frameworks": rows, "readers": readers, "netx": netx}, indent=1), file=sys.__stdout__)


if __name__ == "__main__":
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # snnTorch's reader and lava-dl print notices on stdout
        main()
