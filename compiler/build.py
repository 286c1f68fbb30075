"""The build: a compiled program, on disk or in memory, as every runtime command reads it.

    build/
      build.json            format, arch, target, T, depth, source, the compile report (pass times and
                            memory, the per-population table, resources), the pass log
      graph.nir             the exported NIR graph (the host program's input names; the papers' layers
                            for energy reports)
      netlist-fixed.json    the lowered program in each of the target's modes (structure ...
      netlist-fixed.npz     ... and arrays: integer weights, gain and gate tables)
      netlist-float.json / .npz
      moments.json          (written by Analytic-DPM sampling) the model's epsilon moments
      model.pt              host-side parts: the snc checkpoint the build came from (time embedding,
                            stem, tail run on the host); absent when compiled from a .nir file

A model that runs as several cores (``frontends.base.Pipeline``) compiles to
a **pipeline build**: ``pipeline.json`` (format, arch, target, each stage's
core arch and the SHA-256 of its build.json, sealed like build.json) and one
build per stage in a subdirectory of the stage's name, each a build as above
(``snc run`` / ``export`` take one of them).

A build is written whole or not at all: into a staging directory beside the
destination, then swapped into place (an interrupted compile leaves the old
build as it was). ``build.json`` is written last and records the SHA-256 of
every other file (``files``) and of its own content (``digest``); it is
checked on reading, and each file when it is first read, so
a build whose files were changed, swapped for another build's or lost is
refused, naming the file (``moments.json`` is a cache of its own, tied to the
model's digest).

The netlists are the truth: backends, verification, energy and resource
reports read them, never a re-lowering. A ``Build`` read from disk loads
each netlist and the host program when first asked for; one made by
``snc.api.compile`` without an output directory holds them in memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import nir
import torch

from snc.errors import SncError
from snc.models import arch_of
from snc.models.checkpoint import load_checkpoint, save_checkpoint

from .frontends import host_program, onnx_host
from .frontends.base import HostProgram
from .ir_io import json_default
from .netlist import Netlist, load_netlist, save_netlist
from .nir_io import read_graph, write_graph

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "snc-pipeline"
FORMAT = "snc-build"
FORMAT_VERSION = 3  # 3: build.json records the files' digests
MODEL_FILE = "model.pt"
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # linux/fcntl.h, linux/fs.h


class _Described:
    """What a build's ``meta`` says of every kind of build."""

    meta: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def target(self) -> str:
        return self.meta["target"]


@dataclass
class Build(_Described):
    meta: dict[str, Any]
    nir_graph: nir.NIRGraph
    path: Optional[Path] = None  # None: in memory only
    _netlists: dict[str, Netlist] = field(default_factory=dict, repr=False)
    _model: Optional[HostProgram] = field(default=None, repr=False)  # the host program of the model, unguided
    _host: Optional[HostProgram] = field(default=None, repr=False)  # ... with the build's guidance
    _checked: set[str] = field(default_factory=set, repr=False)  # files whose digest matched build.json

    @classmethod
    def in_memory(cls, meta: dict[str, Any], nir_graph: nir.NIRGraph, netlists: dict[str, Netlist],
                  host: Optional[HostProgram]) -> "Build":
        """A build a compile just made: every netlist and the host program (its model unguided) held."""
        return cls(meta, nir_graph, None, dict(netlists), host)

    @property
    def modes(self) -> list[str]:
        return list(self.meta["modes"])

    @property
    def default_mode(self) -> str:
        return self.meta.get("mode", self.modes[0])

    @property
    def threshold_scale(self) -> float:
        return float(self.meta.get("threshold_scale", 1.0))

    def netlist(self, mode: Optional[str] = None) -> Netlist:
        """The netlist of ``mode`` (default: the build's), read from the build directory once."""
        mode = mode or self.default_mode
        if mode not in self.modes:
            raise SncError(f"the build has netlists for {', '.join(self.modes)}, not {mode!r}")
        if mode not in self._netlists:
            for suffix in (".json", ".npz"):
                self.check_file(f"netlist-{mode}{suffix}")
            try:
                self._netlists[mode] = load_netlist(self.path / f"netlist-{mode}")
            except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
                raise SncError(f"{self.path}: {mode} netlist unreadable ({type(exc).__name__}: {exc})") from None
        return self._netlists[mode]

    def check_file(self, name: str) -> Path:
        """The path of the build's file ``name`` once its digest matches the one build.json records."""
        if name not in self._checked:
            checked_file(self.path, self.meta["files"], name)
            self._checked.add(name)
        return self.path / name

    @property
    def has_host(self) -> bool:
        return self._model is not None or onnx_host.has_host(self.nir_graph) or \
            (self.path is not None and MODEL_FILE in self.meta.get("files", {}))

    @property
    def host(self) -> HostProgram:
        """The host program in float64, with the build's threshold guidance (the torch side of a guided
        build is the guided model: the chip's vth were guided at compile time); read once."""
        if self._host is None:
            if not self.has_host:
                where = self.path or "the build"
                raise SncError(f"{where} was compiled from a NIR file: it has no host-side parts "
                               "(time embedding, stem, tail); compile the checkpoint to sample or verify")
            if self._model is None and onnx_host.has_host(self.nir_graph):  # a converted ANN's, in its graph
                self._model = onnx_host.program(self.nir_graph, self.arch)
            elif self._model is None:
                model = load_checkpoint(self.check_file(MODEL_FILE)).model.double().eval()
                self._model = host_program(self.arch, model, self.nir_graph)
            factor = self.threshold_scale
            self._host = self._model.guided(factor) if factor != 1.0 else self._model
        return self._host


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _body_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sealed(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` as JSON reads it back, with the digest of its own content (build.json's seal)."""
    plain = json.loads(json.dumps(meta, default=json_default))
    return {**plain, "digest": _body_digest(plain)}


def checked_file(directory: Path, files: dict[str, str], name: str) -> Path:
    """``directory / name`` if its digest is the one ``files`` (build.json's) records; else one SncError."""
    path = directory / name
    if name not in files:
        raise SncError(f"{directory}: build.json lists no {name} (files: {', '.join(sorted(files))}); recompile")
    if not path.is_file():
        raise SncError(f"{directory}: {name} is missing; recompile")
    if file_digest(path) != files[name]:
        raise SncError(f"{directory}: {name} is not the file this build was compiled with (changed since, or "
                       "from another build); recompile")
    return path


def check_destination(directory: Path) -> None:
    """Before a compile: ``directory`` must be new (in an existing directory), empty, or an snc build (which
    the new one replaces whole)."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise SncError(f"{directory}: exists and is not a directory")
        if not any((directory / f).is_file() for f in ("build.json", PIPELINE_FILE)) and any(directory.iterdir()):
            raise SncError(f"{directory}: neither empty nor an snc build directory; refusing to replace it")
    elif not directory.parent.is_dir():
        raise SncError(f"{directory}: no such directory {directory.parent}")


def write_build(directory: Path, build: Build, checkpoint: Optional[Path]) -> Build:
    """Write ``build`` (in memory, with every netlist and its host program) as ``directory``, whole or not at all.

    The files go into a staging directory beside it; build.json, with their digests, last; then the staging
    directory takes the place of ``directory`` (an atomic exchange where Linux offers it). ``checkpoint``: an
    snc checkpoint file to copy as the host parts; without one the host program's model is saved (float32,
    as checkpoints hold it; unguided: the build's factor applies on loading), unless there are no host parts.
    """
    directory = Path(directory)
    with _written_whole(directory) as staging:
        write_graph(staging / "graph.nir", build.nir_graph)
        for mode in build.modes:
            save_netlist(build.netlist(mode), staging / f"netlist-{mode}")
        if checkpoint is not None:
            shutil.copyfile(checkpoint, staging / MODEL_FILE)
        elif build._model is not None and not build._model.kept_in_graph:
            # a preset's random weights or a converted reference checkpoint
            model = build._model.model  # its own architecture: a frontend's arch may name a part of it
            save_checkpoint(staging / MODEL_FILE, arch_of(model), model, build.meta.get("host_meta", {}),
                            dtype=torch.float32)
        meta = _sealed({**build.meta, "files": {f.name: file_digest(f) for f in sorted(staging.iterdir())}})
        (staging / "build.json").write_text(json.dumps(meta, indent=1))
    build.meta, build.path, build._checked = meta, directory, set(meta["files"])
    return build


@contextlib.contextmanager
def _written_whole(directory: Path) -> Iterator[Path]:
    """A staging directory beside ``directory`` to write into; when the block ends without an error it takes
    the place of ``directory`` (which must be new, empty or a build: ``check_destination``)."""
    check_destination(directory)
    _remove_abandoned_staging(directory)
    staging = directory.parent / f".{directory.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        _swap_into_place(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the old build, after an exchange


def _remove_abandoned_staging(directory: Path) -> None:
    """Remove the staging directories of compiles of ``directory`` that were killed (SIGKILL, power loss):
    ``.<name>.partial-<pid>`` whose process is gone (or is this one, from an earlier call)."""
    for stale in directory.parent.glob(f".{directory.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[1].removesuffix(".old")
        if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(staging: Path, directory: Path) -> None:
    """``staging`` becomes ``directory``; an existing ``directory`` ends up at ``staging`` (to be removed)."""
    if not directory.exists():
        os.rename(staging, directory)
        return
    with contextlib.suppress(AttributeError, OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(AT_FDCWD, os.fsencode(staging), AT_FDCWD, os.fsencode(directory), RENAME_EXCHANGE) == 0:
            return
    aside = staging.with_name(staging.name + ".old")  # no atomic exchange here: two renames
    os.rename(directory, aside)
    os.rename(staging, directory)
    os.rename(aside, staging)


def read_build(directory: Path) -> Build:
    directory = Path(directory)
    meta_path = directory / "build.json"
    if (directory / PIPELINE_FILE).is_file():
        stages = ", ".join(str(directory / name) for name in _pipeline_meta(directory)["stages"])
        raise SncError(f"{directory}: a pipeline build (several cores); this takes one core's build: {stages}")
    if not meta_path.is_file():
        raise SncError(f"{directory}: not an snc build directory (no build.json); make one with snc compile")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SncError(f"{meta_path}: corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        what = (f"build format {meta.get('format')!r} v{meta.get('format_version')!r}" if isinstance(meta, dict)
                else f"build.json holds a {type(meta).__name__}")
        raise SncError(f"{directory}: {what}, this snc reads {FORMAT} v{FORMAT_VERSION}; recompile")
    if meta.get("digest") != _body_digest(meta):
        raise SncError(f"{meta_path}: changed since the compile (its content does not match its digest); recompile")
    graph = read_graph(checked_file(directory, meta["files"], "graph.nir"))
    return Build(meta, graph, directory, _checked={"graph.nir"})


@dataclass
class PipelineBuild(_Described):
    """A model compiled as several cores run one after another: a ``Build`` per stage (in process order)."""

    meta: dict[str, Any]  # format, arch, target, stages: {name: {arch, digest of its build.json}}
    stages: dict[str, Build]
    path: Optional[Path] = None

    def stage(self, name: str) -> Build:
        if name not in self.stages:
            raise SncError(f"the {self.arch} build has no stage {name!r} (stages: {', '.join(self.stages)})")
        return self.stages[name]


def write_pipeline(directory: Path, pipeline: PipelineBuild, checkpoint: Optional[Path]) -> PipelineBuild:
    """Write every stage's build into ``directory/<stage>`` and ``pipeline.json`` last, whole or not at all
    (staged and swapped into place as ``write_build``)."""
    directory = Path(directory)
    with _written_whole(directory) as staging:
        stages = {}
        for name, build in pipeline.stages.items():
            write_build(staging / name, build, checkpoint)
            stages[name] = {"arch": build.arch, "digest": file_digest(staging / name / "build.json")}
        meta = _sealed({**pipeline.meta, "format": PIPELINE_FORMAT, "format_version": FORMAT_VERSION,
                        "stages": stages})
        (staging / PIPELINE_FILE).write_text(json.dumps(meta, indent=1))
    for name, build in pipeline.stages.items():
        build.path = directory / name
    pipeline.meta, pipeline.path = meta, directory
    return pipeline


def _pipeline_meta(directory: Path) -> dict[str, Any]:
    path = directory / PIPELINE_FILE
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise SncError(f"{path}: corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != PIPELINE_FORMAT \
            or meta.get("format_version") != FORMAT_VERSION or not isinstance(meta.get("stages"), dict):
        raise SncError(f"{path}: not an snc pipeline build of this version ({PIPELINE_FORMAT} v{FORMAT_VERSION}); "
                       "recompile")
    if meta.get("digest") != _body_digest(meta):
        raise SncError(f"{path}: changed since the compile (its content does not match its digest); recompile")
    return meta


def read_pipeline(directory: Path) -> PipelineBuild:
    directory = Path(directory)
    meta = _pipeline_meta(directory)
    stages = {}
    for name, entry in meta["stages"].items():
        stage_meta = directory / name / "build.json"
        if not stage_meta.is_file() or file_digest(stage_meta) != entry.get("digest"):
            raise SncError(f"{directory}: the build of stage {name!r} is missing or not the one compiled with "
                           "this pipeline; recompile")
        stages[name] = read_build(directory / name)
    return PipelineBuild(meta, stages, directory)


def read_any_build(directory: Path) -> Build | PipelineBuild:
    """A build directory: one core's build, or a pipeline build."""
    directory = Path(directory)
    return read_pipeline(directory) if (directory / PIPELINE_FILE).is_file() else read_build(directory)
