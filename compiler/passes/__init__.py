"""One module per compiler pass; ``snc.compiler.pipeline`` runs them in order.

Every pass module has ``run(graph, ctx) -> graph`` and ``verify(graph, ctx)``;
the docstring of each says what the pass requires and what it guarantees.
"""
