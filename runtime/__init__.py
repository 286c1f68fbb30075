"""Running compiled builds: backends behind one protocol (``backends``), the diffusion samplers
(``samplers``, ``moments``), verification across backends (``verify``), energy reports (``energy``),
the NIR reference executor (``nir_reference``) and image files (``images``)."""
