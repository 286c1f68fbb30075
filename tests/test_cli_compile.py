"""snc compile / verify / sample --backend lava end to end on the shipped digits U-Net (the session's build)."""

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


def test_compile_on_the_command_line_writes_a_build(tmp):
    out = tmp / "unet"
    res = json.loads(_ok(run_snc("compile", str(shipped_checkpoint("digits-unet")), "--target", "loihi2",
                                 "-o", str(out), "--json")).stdout)
    assert res["calibrated"] and res["call_steps"] == res["depth"] + 4 and res["complete"]
    assert [p["pass"] for p in res["passes"]][-2:] == ["lower", "map_cores"]
    assert all(p["seconds"] >= 0 and p["peak_rss_mb"] > 0 for p in res["passes"])
    files = {p.name for p in out.iterdir()}
    assert {"build.json", "graph.nir", "netlist-fixed.json", "netlist-fixed.npz", "netlist-float.json",
            "netlist-float.npz", "model.pt"} <= files


@pytest.mark.lava
def test_verify_meets_the_float_agreement_bar_and_the_emulator_equals_fixed_pt(unet_build):
    # one verify run serves both bars: Lava's processes are the suite's slowest part
    report = json.loads(_ok(run_snc("verify", str(unet_build.path), "-n", "2", "--backends", "lava,emu",
                                    "--json")).stdout)
    assert report["n"] == 2 and len(report["timesteps"]) == 3 and report["runs"] == ["torch", "lava_float",
                                                                                      "lava_fixed", "emu"]
    assert report["agreement"]["lava_float_vs_torch"] >= 0.999
    assert report["output_rel_error"]["lava_float_vs_torch"] <= 1e-3
    assert all(row["lava_float_vs_torch"] >= 0.99 for row in report["layers"])
    assert report["agreement"]["lava_fixed_vs_lava_float"] > 0.9  # reported, not equal by design
    assert report["agreement"]["emu_vs_lava_fixed"] == 1.0  # the emulator's promise: Lava fixed_pt bit for bit
    assert report["readout_identical"] == {"emu_vs_lava_fixed": True} and report["exact"]
    assert report["output_rel_error"]["emu_vs_lava_fixed"] == 0.0
    assert report["agreement"]["emu_vs_torch"] == report["agreement"]["lava_fixed_vs_torch"]


@pytest.mark.lava
def test_sample_on_lava_fixed_pt(unet_build, tmp):
    res = json.loads(_ok(run_snc("sample", str(unet_build.path), "--backend", "lava", "--steps", "2", "-n", "2",
                                 "-o", str(tmp / "lava.png"), "--json")).stdout)
    assert res["mode"] == "fixed" and (tmp / "lava.npy").is_file()
    assert not multiprocessing.active_children()


@pytest.mark.lava
@pytest.mark.slow
def test_ctrl_c_during_lava_sampling_stops_every_process(unet_build, tmp):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) ends snc and all Lava processes."""
    exe = Path(sys.executable).with_name("snc")
    proc = subprocess.Popen([str(exe), "sample", str(unet_build.path), "--backend", "lava", "--steps", "20", "-n", "2",
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
    _clean_error(run_snc("sample", str(tmp / "b"), "--backend", "emu", "-o", str(tmp / "x.png")),
                 "compiled from a NIR file")


def test_compile_errors_are_one_line(tmp):
    (tmp / "junk").mkdir()
    _clean_error(run_snc("sample", str(tmp / "junk"), "--backend", "emu"), "not an snc build directory")
    _clean_error(run_snc("sample", str(shipped_checkpoint("digits-unet")), "--backend", "emu"), "needs a build")
    _clean_error(run_snc("compile", str(shipped_checkpoint("digits-unet")), "--target", "nope", "-o",
                         str(tmp / "b")), "unknown profile 'nope'")
