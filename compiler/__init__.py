"""The snc compiler: export to NIR and NIR I/O (``export``, ``nir_io``)."""
