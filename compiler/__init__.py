"""The snc compiler (see ARCHITECTURE.md for the data flow).

``frontends``: sources -> ``Deployable`` (NIR graph + host program);
``ir`` / ``linear``: the graph IR and its linear algebra; ``passes``: one
module per pass; ``pass_manager``: passes as data over one compile context;
``targets``: a target's pipeline, fixed-point rules and lowering;
``netlist``: what a build holds and every backend reads; ``driver``: compile
a deployable; ``build``: the build directory; ``nir_io``: NIR files with
snc's extension nodes.
"""
