"""Running compiled builds: backends behind one protocol (``backends``), the diffusion samplers
(``samplers``, ``moments``), verification across backends (``verify``), energy reports (``energy``),
and image files (``images``); the NIR reference executor is ``compiler.nir_reference``."""
