"""Issue 15's numbered cases, re-run through the installed `snc` as a user runs it: for each, the exit code,
the error line, whether a traceback was printed, the processes and shared-memory segments of the run left
afterwards, the seconds it took and the least memory available meanwhile. JSON on stdout, a line per case on
stderr as it goes (about 10 minutes: it compiles the digits U-Net and lateral transformer and runs Lava).

    .venv/bin/python tools/reliability_cases.py [--only 1,3] [--skip 7]

Each case says what a correct ending is: ``error`` (exit 1, one ``error:`` line), ``usage`` (exit 2, click's
usage error), ``ok`` (exit 0: a correct result), or a signal's exit code; ``passed`` is whether it ended so,
with no traceback and nothing left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import h5py
import nir
import numpy as np
import torch

from snc.memory import available_mb
from snc.models.checkpoint import save_checkpoint
from snc.models.presets import build_model, preset
from snc.runtime.backends.supervised import group_members

ROOT = Path(__file__).resolve().parents[1]
SNC = str(Path(sys.executable).with_name("snc"))
SHIPPED = ROOT / "models/checkpoints/digits-unet.pt"
LATERAL = ROOT / "models/checkpoints/digits-lateral.pt"
HANG_GUARD = 1800  # seconds: a case that runs this long is reported as hung


@dataclass
class Case:
    number: str
    what: str
    argv: list[str]
    expect: str  # "error", "usage", "ok", or an exit code as text ("130", "143")
    act: Optional[Callable[[subprocess.Popen], None]] = None  # what is done to the running snc (a signal)
    after: Optional[Callable[[], str]] = None  # a further check; returns "" when it holds, else what failed
    text: str = ""  # what the error line must say
    result: dict = field(default_factory=dict)


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (snc runs as its leader; Lava's processes inherit the session)."""
    alive = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


def _snc_shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def run_case(case: Case) -> dict:
    shm_before = _snc_shm()
    least = [available_mb(reserve=0.0) or 0.0]
    done = threading.Event()

    def watch_memory() -> None:
        while not done.wait(0.2):
            least[0] = min(least[0], available_mb(reserve=0.0) or least[0])

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    start = time.perf_counter()
    proc = subprocess.Popen([SNC, *case.argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    if case.act is not None:
        case.act(proc)
    try:
        out, err = proc.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    time.sleep(0.5)  # a process the run left behind has had time to show itself
    left = _session_members(proc.pid)
    for pid in left:  # do not let one case's leftovers spoil the next
        os.kill(pid, signal.SIGKILL)
    shm_left = sorted(_snc_shm() - shm_before)
    errors = [line for line in err.splitlines() if line.lower().startswith("error")]
    code = proc.returncode
    ended = {"error": code == 1 and len(errors) == 1 and case.text in err, "usage": code == 2,
             "ok": code == 0}.get(case.expect, str(code) == case.expect)
    extra = case.after() if case.after is not None else ""
    traceback = "Traceback" in err
    return {"case": case.number, "what": case.what, "command": "snc " + " ".join(case.argv),
            "expected": case.expect, "exit_code": code, "error_line": errors[0] if errors else "",
            "last_line": (err.strip() or out.strip()).splitlines()[-1] if (err.strip() or out.strip()) else "",
            "traceback": traceback, "processes_left": len(left), "shared_memory_left": len(shm_left),
            "seconds": round(seconds, 2), "least_available_mb": round(least[0]),
            "check": extra, "passed": ended and not traceback and not left and not shm_left and not extra}


# --- what the cases do to a running snc --------------------------------------------------------------------

def _lava_started(proc: subprocess.Popen, members: int = 10) -> int:
    """The supervised Lava worker of ``proc`` once it runs at least ``members`` processes."""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in _session_members(proc.pid):
            try:
                leader = os.getpgid(pid) == pid
            except ProcessLookupError:
                continue
            if pid != proc.pid and leader and len(group_members(pid)) >= members:
                return pid
        time.sleep(0.2)
    raise RuntimeError("Lava never started: " + " ".join(proc.args))


def kill_a_lava_process(proc: subprocess.Popen) -> None:
    worker = _lava_started(proc)
    os.kill(max(p for p in group_members(worker) if p != worker), signal.SIGKILL)


def send(sig: int, repeat: bool = False) -> Callable[[subprocess.Popen], None]:
    def act(proc: subprocess.Popen) -> None:
        _lava_started(proc)
        os.kill(proc.pid, sig)
        while repeat and proc.poll() is None:  # Ctrl-C held down through the teardown
            os.kill(proc.pid, sig)
            time.sleep(0.005)
    return act


def kill_when_staging_appears(parent: Path) -> Callable[[subprocess.Popen], None]:
    def act(proc: subprocess.Popen) -> None:
        while proc.poll() is None and not any(p.name.startswith(".") for p in parent.iterdir()):
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)  # the new build is being written
    return act


# --- the inputs ------------------------------------------------------------------------------------------

def _edited(source: Path, target: Path, config: Optional[dict] = None,
            state: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, whole_config=None) -> str:
    raw = torch.load(source, weights_only=True)
    raw["config"] = whole_config if whole_config is not None else {**raw["config"], **(config or {})}
    if state is not None:
        raw["state_dict"] = {k: state(v) for k, v in raw["state_dict"].items()}
    torch.save(raw, target)
    return str(target)


def _nir_graph(metadata: dict) -> nir.NIRGraph:
    n = 3
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "fc": nir.Affine(np.ones((n, 2)), np.zeros(n)),
                               "lif": nir.LIF(tau=np.full(n, 1e-3), r=np.full(n, 10.0), v_leak=np.zeros(n),
                                              v_threshold=np.ones(n), v_reset=np.zeros(n)),
                               "output": nir.Output(np.array([n]))},
                        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], metadata=metadata)


def _nir_file(path: Path, metadata: dict, edit: Optional[Callable[[h5py.File], None]] = None) -> str:
    nir.write(str(path), _nir_graph(metadata))
    if edit is not None:
        with h5py.File(path, "r+") as f:
            edit(f)
    return str(path)


def _three_column_edges(f: h5py.File) -> None:
    del f["node/edges"]
    f["node/edges"] = np.array([["input", "fc", "x"], ["fc", "lif", "y"]], dtype="S")


def _huge_weight(f: h5py.File) -> None:  # a small compressed file declaring a 372 GiB weight
    del f["node/nodes/fc/weight"]
    f.create_dataset("node/nodes/fc/weight", shape=(10**6, 10**5), dtype="f4", chunks=(1000, 1000),
                     compression="gzip")


def _tamper_one_weight(build: Path) -> None:
    with np.load(build / "netlist-fixed.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k, v in arrays.items() if v.dtype.kind == "i" and v.size)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] += 1
    np.savez(build / "netlist-fixed.npz", **arrays)


def _compile(*argv: str) -> None:
    subprocess.run([SNC, "compile", *argv], check=True, capture_output=True, cwd=ROOT)


def cases(work: Path) -> list[Case]:
    mlp_ckpt = work / "mlp.pt"
    arch, config = preset("digits-mlp")
    torch.manual_seed(0)
    save_checkpoint(mlp_ckpt, arch, build_model(arch, config), {})
    unet, mlp, lateral = work / "unet", work / "mlp", work / "lateral"
    _compile(str(SHIPPED), "--target", "loihi2", "-o", str(unet))
    _compile(str(mlp_ckpt), "--target", "loihi2", "-o", str(mlp))
    _compile(str(LATERAL), "--target", "loihi2", "-o", str(lateral))
    for name in ("swapped", "tampered", "listed"):
        shutil.copytree(mlp, work / name)
    shutil.copytree(unet, work / "recompiled")  # the U-Net: its build takes long enough to be caught writing
    _compile("--preset", "digits-mlp", "--seed", "1", "-o", str(work / "other"))
    shutil.copyfile(work / "other" / "model.pt", work / "swapped" / "model.pt")
    _tamper_one_weight(work / "tampered")
    (work / "listed" / "build.json").write_text("[1, 2]")
    recompiled_meta = (work / "recompiled" / "build.json").read_bytes()
    (work / "recompile-parent").mkdir()
    shutil.move(str(work / "recompiled"), str(work / "recompile-parent" / "b"))
    recompiled = work / "recompile-parent" / "b"
    (work / "file").write_text("x")
    (work / "random.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    np.save(work / "big.npy", np.full((4, 1, 8, 8), 7.0, np.float32))
    png = str(work / "s.png")
    bad = {k: _edited(SHIPPED, work / f"{k}.pt", config={"timestep" if k.startswith("t") else k: v})
           for k, v in [("t0", 0), ("t-2", -2), ("t2.5", 2.5), ("t'4'", "4"), ("diffusion_steps", 0), ("ch", 0),
                        ("output_decay", float("nan"))]}

    def old_build_kept() -> str:
        # the killed compile's staging directory stays until the next compile of this build removes it
        return "" if (recompiled / "build.json").read_bytes() == recompiled_meta else "the old build changed"

    def nothing_created(path: Path) -> Callable[[], str]:
        return lambda: f"{path} was created" if path.exists() else ""

    return [
        Case("1", "kill -9 a Lava process: U-Net, DDIM 5 steps", ["sample", str(unet), "--backend", "lava",
             "--steps", "5", "-n", "1", "-o", png], "error", act=kill_a_lava_process,
             text="a Lava process died during the run"),
        Case("1", "kill -9 a Lava process: MLP, DDPM", ["sample", str(mlp), "--backend", "lava", "--sampler", "ddpm",
             "-n", "1", "-o", png], "error", act=kill_a_lava_process, text="a Lava process died during the run"),
        Case("2", "SIGTERM during a Lava run", ["sample", str(mlp), "--backend", "lava", "--sampler", "ddpm", "-n",
             "1", "-o", png], "143", act=send(signal.SIGTERM)),
        Case("2", "SIGHUP during a Lava run", ["sample", str(mlp), "--backend", "lava", "--sampler", "ddpm", "-n",
             "1", "-o", png], "129", act=send(signal.SIGHUP)),
        Case("3", "recompile into an existing build, killed (-9) mid-write; the old build stays whole",
             ["compile", "--preset", "digits-unet", "-o", str(recompiled)], "-9",
             act=kill_when_staging_appears(recompiled.parent), after=old_build_kept),
        Case("3", "... and that build then verifies", ["verify", str(recompiled), "--backends", "emu", "-n", "2"],
             "ok"),
        Case("3", "model.pt swapped for another model's", ["verify", str(work / "swapped"), "--backends", "emu",
             "-n", "2"], "error", text="model.pt is not the file this build was compiled with"),
        Case("3", "one fixed weight in netlist-fixed.npz tampered", ["sample", str(work / "tampered"), "--backend",
             "emu", "-n", "1", "-o", png], "error", text="netlist-fixed.npz is not the file"),
        Case("4", "--eta nan", ["sample", str(SHIPPED), "--eta", "nan", "-o", png], "error", text="--eta must be"),
        Case("4", "config output_decay NaN", ["compile", bad["output_decay"], "-o", str(work / "b")], "error",
             text="output_decay must be a finite number", after=nothing_created(work / "b")),
        Case("4", "--steps 0", ["sample", str(SHIPPED), "--steps", "0", "-o", png], "error",
             text="--steps must be at least 1"),
        Case("4", "--eta -1", ["sample", str(SHIPPED), "--eta", "-1", "-o", png], "error", text="--eta must be"),
        Case("4", "--eta 2", ["sample", str(SHIPPED), "--eta", "2", "-o", png], "error", text="--eta must be"),
        Case("4", "an int64 state dict", ["compile", _edited(mlp_ckpt, work / "int.pt",
             state=lambda v: (v * 100).long()), "-o", str(work / "b")], "error", text="not floating point"),
        Case("4", "NIR snc.timestep 0", ["compile", _nir_file(work / "t0.nir", {"snc.timestep": 0, "snc.dt": 1e-4}),
             "-o", str(work / "b")], "error", text="T must be a whole number of spiking steps"),
        Case("4", "NIR snc.timestep 1e6", ["compile", _nir_file(work / "t6.nir", {"snc.timestep": 10**6,
             "snc.dt": 1e-4}), "-o", str(work / "b")], "error", text="T must be a whole number of spiking steps"),
        Case("4", "train --lr inf", ["train", "--preset", "digits-mlp", "--lr", "inf", "-o", str(work / "m.pt")],
             "error", text="--lr must be a positive finite number", after=nothing_created(work / "m.pt")),
        Case("4", "eval of values far outside [-1, 1]", ["eval", str(work / "big.npy")], "error",
             text="samples must be finite values in [-1, 1]"),
        Case("4", "an MLP with no hidden layer", ["compile", _edited(mlp_ckpt, work / "nohidden.pt",
             config={"hidden": []}), "-o", str(work / "b")], "error", text="hidden must list one or more"),
        *[Case("5", f"config timestep {v}", ["compile", bad[k], "-o", str(work / "b")], "error",
               text="timestep must be an integer in 1..4096")
          for k, v in [("t0", "0"), ("t-2", "-2"), ("t2.5", "2.5"), ("t'4'", "'4'")]],
        Case("5", "config diffusion_steps 0", ["compile", bad["diffusion_steps"], "-o", str(work / "b")], "error",
             text="diffusion_steps must be an integer"),
        Case("5", "config ch 0", ["compile", bad["ch"], "-o", str(work / "b")], "error",
             text="ch must be a positive integer"),
        Case("5", "a NIR edge list with 3 columns", ["compile", _nir_file(work / "edges.nir", {"snc.dt": 1e-4},
             _three_column_edges), "-o", str(work / "b")], "error", text="edges must be pairs"),
        Case("5", "a small NIR file declaring a 372 GiB weight", ["compile", _nir_file(work / "huge.nir",
             {"snc.dt": 1e-4}, _huge_weight), "-o", str(work / "b")], "error", text="its arrays declare 372.5 GiB"),
        Case("5", "a build.json that is a list", ["sample", str(work / "listed"), "--backend", "emu", "-n", "1",
             "-o", png], "error", text="build.json holds a list"),
        Case("5", "-n 100000000", ["sample", str(SHIPPED), "-n", "100000000", "-o", png], "error",
             text="the sampler's images alone need about"),
        Case("5", "--seed 2**70", ["sample", str(SHIPPED), "--seed", str(2**70), "-o", png], "usage"),
        Case("5", "-o a directory", ["sample", str(SHIPPED), "-n", "1", "-o", str(work)], "error",
             text="is a directory"),
        Case("5", "-o an existing file as a build directory", ["compile", "--preset", "digits-mlp", "-o",
             str(work / "file")], "error", text="not a directory"),
        Case("5", "-o under a file", ["sample", str(SHIPPED), "-n", "1", "-o", str(work / "file" / "s.png")],
             "error", text="is not a directory"),
        Case("5", "train -o into a missing directory (refused before training)", ["train", "--preset",
             "digits-mlp", "-o", str(work / "no" / "m.pt")], "error", text="no such directory"),
        Case("6", "a missing parent directory at /", ["sample", str(SHIPPED), "-n", "1", "-o",
             "/snc-no-such-dir/s.png"], "error", text="no such directory",
             after=nothing_created(Path("/snc-no-such-dir"))),
        Case("6", "random bytes as a checkpoint", ["compile", str(work / "random.pt"), "-o", str(work / "b")],
             "error", text="not a torch checkpoint"),
        Case("6", "a config that is a string", ["compile", _edited(mlp_ckpt, work / "string.pt",
             whole_config="config"), "-o", str(work / "b")], "error", text="is a mapping of keys to values"),
        Case("6", "a directory given as a checkpoint", ["compile", str(work), "-o", str(work / "b")], "error",
             text="a directory, not a checkpoint"),
        Case("6", "Ctrl-C held down through the teardown", ["sample", str(mlp), "--backend", "lava", "--sampler",
             "ddpm", "-n", "1", "-o", png], "130", act=send(signal.SIGINT, repeat=True)),
        Case("7", "verify the lateral transformer with default options (-n 8 on Lava)", ["verify", str(lateral)],
             "ok"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated case numbers to run")
    parser.add_argument("--skip", default="", help="comma-separated case numbers to leave out")
    args = parser.parse_args()
    only, skip = set(filter(None, args.only.split(","))), set(filter(None, args.skip.split(",")))
    rows = []
    with tempfile.TemporaryDirectory(prefix="snc-cases-") as tmp:
        for case in cases(Path(tmp)):
            if (only and case.number not in only) or case.number in skip:
                continue
            row = run_case(case)
            rows.append(row)
            print(f"{row['case']:>2} {'PASS' if row['passed'] else 'FAIL'} {row['seconds']:7.2f} s "
                  f"exit {row['exit_code']:>4}  {row['what']}: {row['error_line'] or row['last_line']}",
                  file=sys.stderr, flush=True)
    print(json.dumps({"cases": rows, "passed": sum(r["passed"] for r in rows), "of": len(rows)}, indent=1))


if __name__ == "__main__":
    main()
