"""One module per compiler pass, each exporting ``PASS`` (``pass_manager.Pass``).

Every pass is ``run(graph, ctx) -> graph`` and ``verify(graph, ctx)`` over
the IR and one ``CompileContext`` (the target and its fixed-point rules, the
options, calibration data, gate tables); the docstring of each says what it
requires and guarantees. A target lists the passes it runs
(``compiler/targets/<name>.py``).
"""
