"""snc compile / verify / sample --backend lava end to end on the shipped digits U-Net."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snc.models.checkpoint import shipped_checkpoint

from conftest import run_snc
from test_cli import _clean_error, _ok


@pytest.fixture(scope="module")
def unet_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "unet"
    dump = out.parent / "ir"
    res = json.loads(_ok(run_snc("compile", str(shipped_checkpoint("digits-unet")), "--target", "loihi2",
                                 "-o", str(out), "--dump-ir", str(dump), "--json")).stdout)
    assert res["calibrated"] and res["call_steps"] == res["depth"] + 4
    assert len(list(dump.iterdir())) == 10  # one file per pass
    assert {"build.json", "graph.nir", "lowered.json", "lowered.npz", "model.pt"} <= {p.name for p in out.iterdir()}
    return out


def test_verify_meets_the_float_agreement_bar(unet_build):
    report = json.loads(_ok(run_snc("verify", str(unet_build), "--json"), ).stdout)
    assert report["n"] == 8 and len(report["timesteps"]) == 3
    assert report["agreement"]["float_vs_torch"] >= 0.999
    assert report["output_rel_error"]["float_vs_torch"] <= 1e-3
    assert all(row["float_vs_torch"] >= 0.99 for row in report["layers"])
    assert report["agreement"]["fixed_vs_float"] > 0.9  # reported, not equal by design


def test_sample_on_lava_fixed_pt(unet_build, tmp):
    res = json.loads(_ok(run_snc("sample", str(unet_build), "--backend", "lava", "--steps", "2", "-n", "2",
                                 "-o", str(tmp / "lava.png"), "--json")).stdout)
    assert res["mode"] == "fixed" and (tmp / "lava.npy").is_file()
    assert not multiprocessing.active_children()


def test_ctrl_c_during_lava_sampling_stops_every_process(unet_build, tmp):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) ends snc and all Lava processes."""
    exe = Path(sys.executable).with_name("snc")
    proc = subprocess.Popen([str(exe), "sample", str(unet_build), "--backend", "lava", "--steps", "20", "-n", "2",
                             "-o", str(tmp / "x.png")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_group_commands(proc.pid).splitlines()) < 10:
            time.sleep(0.5)  # wait until Lava has forked its processes
        time.sleep(5)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    time.sleep(1)
    assert _group_commands(proc.pid) == ""


def _group_commands(pgid: int) -> str:
    """Command lines of the live processes in a process group."""
    out = subprocess.run(["ps", "-o", "stat=,args=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines() if line and not line.startswith("Z"))


def test_compile_from_a_nir_file_has_no_host_parts(tmp):
    mlp = tmp / "mlp.pt"
    _ok(run_snc("train", "--preset", "digits-mlp", "--steps", "2", "-o", str(mlp)))
    _ok(run_snc("export", str(mlp), "-o", str(tmp / "mlp.nir")))
    res = json.loads(_ok(run_snc("compile", str(tmp / "mlp.nir"), "-o", str(tmp / "b"), "--json")).stdout)
    assert res["calibrated"] is False and res["depth"] == 2 and not (tmp / "b" / "model.pt").exists()
    _clean_error(run_snc("sample", str(tmp / "b"), "--backend", "lava", "-o", str(tmp / "x.png")),
                 "compiled from a NIR file")


def test_compile_errors_are_one_line(tmp):
    (tmp / "junk").mkdir()
    _clean_error(run_snc("sample", str(tmp / "junk"), "--backend", "lava"), "not an snc build directory")
    _clean_error(run_snc("sample", str(shipped_checkpoint("digits-unet")), "--backend", "lava"), "needs a build")
    _clean_error(run_snc("compile", str(shipped_checkpoint("digits-unet")), "--target", "nope", "-o",
                         str(tmp / "b")), "unknown profile 'nope'")
