"""snc: a neuromorphic deployment toolchain for spiking diffusion models.

Subpackages: ``snc.models`` (torch modules, training, checkpoints),
``snc.compiler`` (export to NIR, IR, passes, lowering), ``snc.runtime``
(backends and diffusion samplers), ``snc.hw_profiles`` (target data files).
"""

__version__ = "0.1.0"
