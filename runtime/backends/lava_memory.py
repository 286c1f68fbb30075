"""How much memory Lava needs for a netlist at a batch, and the largest batch this machine can run.

Lava runs every process model as an OS process and holds a copy of the
network per image (``LavaNetwork``: every group ``batch`` copies long, every
synapse block-diagonal), so memory grows with the number of processes and
with the batch. Measured on this machine (``tools/bench_lava_memory.py``:
the proportional set size of every process of a supervised run, summed, its
peak over the run; the digits MLP, U-Net and lateral transformer at batches
1 to 8), a run takes about

    18 MB per Lava process (one per group, synapse, injector and extractor)
    + per image: 20 bytes per synapse (CSR entries, in the synapse's process
      and in its initial value) + 550 bytes per element of every port
      (each synapse's input and output, each group's a_in, s_out and
      state: Lava's channel buffers)

plus 160 MB, which over-estimates the measured runs by 15 to 36 % (an
estimate that errs on the safe side: Lava itself never checks memory, and the
kernel's OOM killer is what answers a run that does not fit). Before any
process starts, ``check_batch`` compares the estimate with the memory
available now (``MemAvailable``, less a reserve) and refuses a batch that
does not fit, naming the largest that does; ``fitting_batch`` picks it.
"""

from __future__ import annotations

from typing import Optional

from snc.compiler.netlist import Netlist
from snc.errors import SncError

from snc.memory import available_mb

BASE_MB = 160.0
PER_PROCESS_MB = 18.0
PER_SYNAPSE_BYTES = 20.0
PER_PORT_ELEMENT_BYTES = 550.0
EXTRA_PROCESSES = 3  # the worker, Lava's runtime service and its manager


def processes(net: Netlist, record: bool = True) -> int:
    """Lava processes of a ``LavaNetwork`` of ``net``: groups, synapses, injectors, extractors, the runtime."""
    return len(net.groups) * (2 if record else 1) + len(net.synapses) + len(net.inputs) + 1 + EXTRA_PROCESSES


def per_image_mb(net: Netlist) -> float:
    synapses = sum(s.op.weight.size if s.kind == "conv" else s.op.synapse_count() for s in net.synapses)
    ports = sum(net.size(s.src) + net.size(s.dst) for s in net.synapses) + sum(3 * g.n for g in net.groups.values())
    return (PER_SYNAPSE_BYTES * synapses + PER_PORT_ELEMENT_BYTES * ports) / 2**20


def estimate_mb(net: Netlist, batch: int, record: bool = True) -> float:
    """Estimated memory of a Lava run of ``net`` at ``batch`` images (MB; see the module docstring)."""
    return BASE_MB + PER_PROCESS_MB * processes(net, record) + batch * per_image_mb(net)


def fitting_batch(net: Netlist, record: bool = True, available: Optional[float] = None) -> Optional[int]:
    """The largest batch whose estimate fits the available memory (0: not even one image; None: unknown)."""
    available = available_mb() if available is None else available
    if available is None:
        return None
    spare = available - estimate_mb(net, 0, record)
    return max(0, int(spare // per_image_mb(net))) if per_image_mb(net) > 0 else None


def check_batch(net: Netlist, batch: int, record: bool = True, available: Optional[float] = None) -> None:
    """Refuse, before any process starts, a batch whose estimated memory exceeds what is available."""
    available = available_mb() if available is None else available
    if available is None:
        return
    need = estimate_mb(net, batch, record)
    if need <= available:
        return
    fits = fitting_batch(net, record, available)
    hint = f"the largest batch that fits is {fits}: --batch {fits}" if fits else \
        "not even one image fits: free memory or run it with --backend emu"
    raise SncError(f"Lava would need about {need / 1024:.1f} GB for a batch of {batch} ({processes(net, record)} "
                   f"processes, {per_image_mb(net):.0f} MB per image; an estimate), {max(available, 0) / 1024:.1f} "
                   f"GB is available; {hint}")
