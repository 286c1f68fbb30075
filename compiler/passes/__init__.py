"""One module per compiler pass; ``snc.compiler.pipeline`` runs them in order.

Every pass module has ``run(graph, ...) -> graph`` and ``verify(graph, ...)``
(the extra arguments are the target's limits or calibration peaks; pipeline.py
shows each call); the docstring of each says what it requires and guarantees.
"""
