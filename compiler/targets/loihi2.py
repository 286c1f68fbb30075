"""Intel Loihi 2, as Lava 0.10 simulates it (``Loihi2SimCfg``): snc's first target.

Its rules are ``hw_profiles/loihi2.toml`` (``[fixed_point]``, read into
``FixedPoint``; ``[resources]`` for the core mapping). It owns:

- the pipeline (``passes``): import, host partition, re-association, gate
  specialisation, delay balancing, threshold folding, sign splitting,
  quantization, bit slicing (``--weight-bits 16``), the centering of
  right-shifted sums' floors, threshold guidance,
  then the lowering to the netlist (``lower``, in both modes: ``fixed`` is
  Lava's ``fixed_pt`` and the chip's integers, ``float`` is Lava's
  ``floating_pt`` of the same network) and
  the core mapping / DRC on the fixed netlist (``map_cores``);
- the lowering of a compiled graph: each population becomes a neuron group
  (``LIFReset`` with the offset of its pipeline depth, a plain ``LIF`` for a
  relay, a stateless ``graded`` group for a sum population), each chip edge
  a ``sparse`` synapse with its quantized integers,
  each host edge a host op;
- the range check of a netlist (``problems``: every parameter Lava's process
  models represent; Lava does not check them);
- threshold guidance of a compiled netlist (``guide``) and the compile
  report's per-population table (``layer_rows``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np

from snc.errors import SncError

from ..ir import Graph, HostInput, Population
from ..linear import LinearOp
from ..netlist import MODES, HostOp, Netlist, NeuronGroup, ReadoutPort, Synapse, window_reset
from ..pass_manager import Pass
from ..passes import (balance_delays, center_shifts, fold_thresholds, guide_thresholds, import_nir, lower, map_cores,
                      partition_host, quantize, reassociate, slice_weights, specialise_selection, split_signs)
from . import Target


class Loihi2(Target):
    name = "loihi2"
    modes = MODES  # fixed (the chip's integers, Lava fixed_pt) first, float (Lava floating_pt)

    def passes(self) -> Sequence[Pass]:
        return (import_nir.PASS, partition_host.PASS, reassociate.PASS, specialise_selection.PASS,
                balance_delays.PASS, fold_thresholds.PASS, split_signs.PASS, quantize.PASS, slice_weights.PASS,
                center_shifts.PASS, guide_thresholds.PASS, lower.PASS, map_cores.PASS)

    # --- lowering ----------------------------------------------------------------------------------
    def lower(self, graph: Graph, mode: str) -> Netlist:
        if mode not in self.modes:
            raise SncError(f"unknown mode {mode!r}; use {' or '.join(self.modes)}")
        fixed = mode == "fixed"
        length = graph.depth + graph.timestep
        groups: dict[str, NeuronGroup] = {}
        for p in graph.of_type(Population):
            n = int(np.prod(p.shape))
            if fixed:
                if not p.fixed:
                    raise SncError(f"{p.name} has no fixed-point parameters: the graph was not quantized")
                f = p.fixed
                mant = np.asarray(f["bias_mant"], dtype=np.int64)
                rows = (-1, n) if mant.size > n else (n,)  # per logical step: [T, n]
                params = dict(du=int(f["du"]), dv=int(f["dv"]), vth=int(f["vth"]), bias_mant=mant.reshape(rows),
                              bias_exp=np.asarray(f["bias_exp"], dtype=np.int64).reshape(rows))
            else:
                bias = np.asarray(p.bias, dtype=np.float64)
                bias = bias.reshape((-1, n) if bias.size > n else (n,))  # per logical step: [T, n]
                params = dict(du=1.0 - p.current_decay, dv=1.0 - p.decay, vth=float(p.threshold), bias_mant=bias,
                              bias_exp=np.zeros(bias.shape, np.int64))
            # relays and graded groups keep no state worth resetting; every other population starts each call
            # from zero
            reset = (0, 0) if p.role in ("relay", "graded") else window_reset(p.depth, length)
            groups[p.name] = NeuronGroup(p.name, tuple(p.shape), reset_interval=reset[0], reset_offset=reset[1],
                                         depth=p.depth, role=p.role, scale=float(p.scale) if fixed else 1.0,
                                         threshold=float(p.threshold), subtractive_reset=p.subtractive_reset,
                                         payload_shift=p.payload_shift if fixed else 0, **params)
        synapses, host_ops = [], []
        inputs: dict[str, float] = {}
        for e in graph.edges:
            if isinstance(graph.nodes[e.src], HostInput):
                host_ops.append(HostOp(e.src, e.dst, e.op, e.gain, e.origin))
                if e.dst in groups:
                    inputs[e.dst] = float(graph.nodes[e.dst].scale) if fixed else 1.0
                continue
            gain, gain_shift = e.gain, 0
            if gain is not None and fixed:
                gain, gain_shift = np.asarray(e.fixed["gain"], dtype=np.int64), int(e.fixed["gain_shift"])
            synapses.append(Synapse(e.name, e.src, e.dst, "sparse", _lowered_op(e.op, e.fixed, fixed),
                                    weight_exp=int(e.fixed["weight_exp"]) if fixed else 0, delay=e.delay,
                                    gain=gain, gain_shift=gain_shift, lag=e.lag, gate=e.gate, origin=e.origin))
        r = graph.readout
        # the fixed readout's bias also centers its right-shifted sums' floors (center_shifts), in model units
        bias = r.bias + r.fixed["offset"] / r.scale if fixed and "offset" in r.fixed else r.bias
        readout = ReadoutPort(r.name, tuple(r.shape), float(r.scale) if fixed else 1.0, r.depth, bias, r.filters)
        net = Netlist(mode, groups, synapses, readout, graph.timestep, inputs,
                      {n.name: tuple(n.shape) for n in graph.of_type(HostInput)}, host_ops, dict(graph.gates),
                      dict(graph.model_gates), target=self.name)
        self.check(net)
        return net

    # --- ranges ------------------------------------------------------------------------------------
    def problems(self, net: Netlist) -> list[str]:
        rules = self.rules
        out = []
        for s in net.synapses:
            if s.kind == "conv" and (s.weight_exp, s.num_weight_bits) != (0, rules.weight_bits):
                out.append(f"{s.name}: Lava's Conv ignores weight_exp and num_weight_bits: they must be 0 and "
                           f"{rules.weight_bits}")
            if not 0 <= s.delay <= rules.max_delay:
                out.append(f"{s.name}: delay {s.delay} outside 0..{rules.max_delay}")
        if net.mode != "fixed":
            return out
        for g in net.groups.values():
            out += self._group_problems(g)
        for s in net.synapses:
            out += self._synapse_problems(s)
        return out

    def _group_problems(self, g: NeuronGroup) -> list[str]:
        rules = self.rules
        for key in ("du", "dv", "vth"):
            if not isinstance(getattr(g, key), (int, np.integer)):
                return [f"{g.name}: {key} must be an integer in fixed mode"]
        if g.bias_mant.dtype.kind not in "iu" or g.bias_exp.dtype.kind not in "iu":
            return [f"{g.name}: bias_mant and bias_exp must be integer arrays in fixed mode"]
        out = []
        # Lava's LIF keeps u * (unity - du - 1) and v * (unity - dv): du = -1 keeps all of u and dv = unity
        # none of v (netx writes both: iDecay 0, vDecay 4096)
        if not (-1 <= g.du <= rules.decay_max and 0 <= g.dv <= rules.decay_unity):
            out.append(f"{g.name}: du {g.du}, dv {g.dv} outside -1..{rules.decay_max}, 0..{rules.decay_unity}")
        if not 0 <= g.vth < rules.vth_limit:
            out.append(f"{g.name}: vth {g.vth} outside 0..{rules.vth_limit - 1}")
        limit = rules.bias_mant_limit
        if g.bias_mant.max(initial=0) > limit - 1 or g.bias_mant.min(initial=0) < -limit:
            out.append(f"{g.name}: bias_mant outside {-limit}..{limit - 1}")
        if g.bias_exp.min(initial=0) < 0 or g.bias_exp.max(initial=0) > rules.bias_exp_max:
            out.append(f"{g.name}: bias_exp outside 0..{rules.bias_exp_max}")
        if not 0 <= g.payload_shift < rules.accumulator_bits:
            out.append(f"{g.name}: payload_shift {g.payload_shift} outside 0..{rules.accumulator_bits - 1}")
        return out

    def _synapse_problems(self, s: Synapse) -> list[str]:
        rules = self.rules
        w = s.op.weight
        if w is None or w.dtype.kind not in "iu":
            return []  # structural: Netlist.problems reports it
        out = []
        if np.abs(w.astype(np.int64)).max(initial=0) >= rules.handed_weight_limit:
            out.append(f"{s.name}: weights beyond +-{rules.handed_weight_limit - 1}")
        if not rules.weight_exp_min <= s.weight_exp <= rules.weight_exp_max:
            out.append(f"{s.name}: weight_exp {s.weight_exp} outside {rules.weight_exp_min}..{rules.weight_exp_max}")
        if not 1 <= s.num_weight_bits <= rules.weight_bits:
            out.append(f"{s.name}: num_weight_bits {s.num_weight_bits} outside 1..{rules.weight_bits}")
        if s.kind == "conv" and s.op.kind == "conv" and \
                np.abs(w.astype(np.int64)).sum(axis=(1, 2, 3)).max(initial=0) >= rules.accumulator_limit:
            out.append(f"{s.name}: a Conv sum can exceed {rules.accumulator_bits}-bit integers (Lava casts it)")
        if s.gain is not None and s.gain.dtype.kind in "iu":
            if np.abs(s.gain).max() >= rules.gain_mant_limit:
                out.append(f"{s.name}: gain mantissas must be integers in "
                           f"{-rules.gain_mant_limit + 1}..{rules.gain_mant_limit - 1}")
            if not 0 <= s.gain_shift <= rules.gain_shift_max:
                out.append(f"{s.name}: gain_shift {s.gain_shift} outside 0..{rules.gain_shift_max}")
        return out

    # --- guidance and the compile table ----------------------------------------------------------
    def guide(self, net: Netlist, factor: float) -> Netlist:
        """Every neuron group's threshold times ``factor`` (relays and ANDs excepted), as the
        ``guide_thresholds`` pass does on the IR: refused in fixed mode where a vth rounds away."""
        guide_thresholds.check_factor(factor)
        groups, problems = dict(net.groups), []
        for g in net.groups.values():
            if g.role != "neuron" or factor == 1.0:
                continue
            if net.mode == "fixed":
                vth, problem = guide_thresholds.guide_vth(g.name, g.threshold, g.scale, int(g.vth), factor, self.rules)
                problems += [problem] if problem else []
            else:
                vth = g.vth * factor
            groups[g.name] = replace(g, vth=vth, threshold=g.threshold * factor)
        guide_thresholds.refuse(factor, problems)
        return replace(net, groups=groups)

    def layer_rows(self, net: Netlist, weight_errors: dict[str, float]) -> list[dict[str, Any]]:
        if net.mode != "fixed":
            raise SncError("the compile table describes the fixed-point netlist")
        host = {h.dst for h in net.host_ops}
        rows = []
        for g in net.groups.values():
            chip = net.into(g.name)
            rows.append({
                "population": g.name, "role": g.role, "neurons": g.n, "depth": g.depth,
                "synapses_in": sum(s.op.synapse_count() for s in chip), "synapse_groups_in": len(chip),
                "weight_exp": sorted({int(s.weight_exp) for s in chip}),
                "weight_bits": sorted({self.rules.magnitude_bits(mixed=s.op.weight.min() < 0 < s.op.weight.max())
                                       for s in chip}),
                "weight_rel_error": max((weight_errors.get(s.name, 0.0) for s in chip), default=0.0),
                "delays_in": sorted({s.delay for s in chip if s.delay}),
                "vth": int(g.vth), "scale": g.scale,
                "partition": "chip" + ("+host" if g.name in host else ""),
            })
        return rows


def _lowered_op(op: LinearOp, fixed_params: dict, fixed: bool) -> LinearOp:
    if not fixed:
        return replace(op, weight=np.ones(1)) if op.kind == "identity" else op
    w: Optional[np.ndarray] = fixed_params.get("weight")
    if w is None:
        raise SncError("a chip edge has no integer weights: the graph was not quantized")
    w = np.asarray(w)  # the quantizer's integers as they are (int16: |w| <= 256; no copy)
    return replace(op, weight=w.reshape(1) if op.kind == "identity" else w)


TARGET = Loihi2()
