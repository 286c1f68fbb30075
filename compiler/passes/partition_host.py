"""Host partition: decide which real-valued ops run on the host.

Requires: an imported graph (HostInput, Linear, Population, Readout nodes).
Guarantees: every Linear node has ``placement``: ``host`` when nothing
upstream of it is a spiking population (it sees only host inputs: the
analog input conv of direct encoding, an MLP's first affine layer), else
``chip``. Host-placed ops are evaluated by the host once per denoiser call
(their inputs are constant over the spiking steps) and enter the chip as
per-step currents; ``reassociate`` turns them into host-input edges. The
time-embedding MLP and the output tail never enter the NIR graph: export
already keeps them on the host (they arrive as HostInputs / leave via the
Readout).
"""

from __future__ import annotations

from snc.errors import GraphError

from ..ir import Graph, HostInput, Linear, Population
from ..pass_manager import CompileContext, Pass


def run(graph: Graph, ctx: CompileContext) -> Graph:
    spiking_upstream: dict[str, bool] = {}
    for name in graph.topological():
        node = graph.nodes[name]
        preds = [e.src for e in graph.into(name)]
        if isinstance(node, Population):
            spiking_upstream[name] = True
        elif isinstance(node, HostInput):
            spiking_upstream[name] = False
        elif getattr(node, "lag", 0):  # a delay is ordered before its inputs; it delays spikes, on chip
            spiking_upstream[name] = True
        else:
            spiking_upstream[name] = any(spiking_upstream[p] for p in preds)
        if isinstance(node, Linear):
            node.placement = "chip" if spiking_upstream[name] else "host"
    host = [n.name for n in graph.of_type(Linear) if n.placement == "host"]
    graph.log.append({"pass": "partition_host", "host_ops": host})
    return graph


def verify(graph: Graph, ctx: CompileContext) -> None:
    graph.check()
    bad = [n.name for n in graph.of_type(Linear) if n.placement not in ("host", "chip")]
    if bad:
        raise GraphError(f"partition_host left ops unplaced: {', '.join(bad)}")
    for node in graph.of_type(Linear):  # the guarantee, locally: a host op reads only host values
        spiking = [e.src for e in graph.into(node.name) if isinstance(graph.nodes[e.src], Population)
                   or getattr(graph.nodes[e.src], "placement", "") == "chip"]
        if (node.placement == "host") == bool(spiking or node.lag):
            raise GraphError(f"partition_host placed {node.name} on the {node.placement}, but it reads "
                             f"{'spikes (' + ', '.join(spiking) + ')' if spiking else 'host values only'}")


PASS = Pass("partition_host", run, verify, requires=("ir",), provides=("placement",))
