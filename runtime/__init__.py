"""Backends that execute a denoiser's spiking core, and the diffusion samplers that drive them."""
