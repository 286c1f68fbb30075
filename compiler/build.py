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

The netlists are the truth: backends, verification, energy and resource
reports read them, never a re-lowering. A ``Build`` read from disk loads
each netlist and the host program when first asked for; one made by
``snc.api.compile`` without an output directory holds them in memory.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import nir
import torch

from snc.errors import SncError
from snc.models import arch_of
from snc.models.checkpoint import load_checkpoint, save_checkpoint

from .frontends import host_program
from .frontends.base import HostProgram
from .ir_io import json_default
from .netlist import Netlist, load_netlist, save_netlist
from .nir_io import read_graph, write_graph

FORMAT = "snc-build"
FORMAT_VERSION = 2
MODEL_FILE = "model.pt"


@dataclass
class Build:
    meta: dict[str, Any]
    nir_graph: nir.NIRGraph
    path: Optional[Path] = None  # None: in memory only
    _netlists: dict[str, Netlist] = field(default_factory=dict, repr=False)
    _model: Optional[HostProgram] = field(default=None, repr=False)  # the host program of the model, unguided
    _host: Optional[HostProgram] = field(default=None, repr=False)  # ... with the build's guidance

    @classmethod
    def in_memory(cls, meta: dict[str, Any], nir_graph: nir.NIRGraph, netlists: dict[str, Netlist],
                  host: Optional[HostProgram]) -> "Build":
        """A build a compile just made: every netlist and the host program (its model unguided) held."""
        return cls(meta, nir_graph, None, dict(netlists), host)

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def target(self) -> str:
        return self.meta["target"]

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
            try:
                self._netlists[mode] = load_netlist(self.path / f"netlist-{mode}")
            except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
                raise SncError(f"{self.path}: {mode} netlist unreadable ({type(exc).__name__}: {exc})") from None
        return self._netlists[mode]

    @property
    def has_host(self) -> bool:
        return self._model is not None or (self.path is not None and (self.path / MODEL_FILE).is_file())

    @property
    def host(self) -> HostProgram:
        """The host program in float64, with the build's threshold guidance (the torch side of a guided
        build is the guided model: the chip's vth were guided at compile time); read once."""
        if self._host is None:
            if not self.has_host:
                where = self.path or "the build"
                raise SncError(f"{where} was compiled from a NIR file: it has no host-side parts "
                               "(time embedding, stem, tail); compile the checkpoint to sample or verify")
            if self._model is None:
                model = load_checkpoint(self.path / MODEL_FILE).model.double().eval()
                self._model = host_program(self.arch, model, self.nir_graph)
            factor = self.threshold_scale
            self._host = self._model.guided(factor) if factor != 1.0 else self._model
        return self._host


def write_build(directory: Path, build: Build, checkpoint: Optional[Path]) -> Build:
    """Write ``build`` (in memory, with every netlist and its host program) into ``directory``.

    ``checkpoint``: an snc checkpoint file to copy as the host parts; without one the host program's
    model is saved (float32, as checkpoints hold it; unguided: the build's factor applies on loading),
    unless there are no host parts.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_graph(directory / "graph.nir", build.nir_graph)
    for mode in build.modes:
        save_netlist(build.netlist(mode), directory / f"netlist-{mode}")
    model_file = directory / MODEL_FILE
    if checkpoint is not None:
        if Path(checkpoint).resolve() != model_file.resolve():
            shutil.copyfile(checkpoint, model_file)
    elif build._model is not None:  # a preset's random weights or a converted reference checkpoint
        model = build._model.model  # its own architecture: a frontend's arch may name a part of it
        save_checkpoint(model_file, arch_of(model), model, build.meta.get("host_meta", {}), dtype=torch.float32)
    else:
        model_file.unlink(missing_ok=True)  # a stale copy from an earlier build would mislead
    (directory / "moments.json").unlink(missing_ok=True)  # the cached epsilon moments were the old model's
    for stale in ("lowered.json", "lowered.npz"):  # a build of format 1 in the same directory
        (directory / stale).unlink(missing_ok=True)
    (directory / "build.json").write_text(json.dumps(build.meta, indent=1, default=json_default))
    build.path = directory
    return build


def read_build(directory: Path) -> Build:
    directory = Path(directory)
    meta_path = directory / "build.json"
    if not meta_path.is_file():
        raise SncError(f"{directory}: not an snc build directory (no build.json); make one with snc compile")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise SncError(f"{meta_path}: corrupt ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise SncError(f"{directory}: build format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                       f"this snc reads {FORMAT} v{FORMAT_VERSION}; recompile")
    return Build(meta, read_graph(directory / "graph.nir"), directory)
