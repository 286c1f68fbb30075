"""Torch modules of the spiking denoisers, their training and checkpoints.

No compiler knowledge lives here: ``snc.compiler`` reads these modules.
"""

from . import absorbing
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint, shipped_checkpoint
from .lateral import LateralConfig, SpikingLateralTransformer
from .mlp import MLPConfig, SpikingMLP
from .neurons import IFNeuron, NeuronConfig
from .presets import PRESETS, ann_twin, arch_of, build_model, preset
from .spiking_diffusion import SDID, VQSVAE, SDIDConfig, SpikingDiffusionVQ, SpikingDiffusionVQConfig, VQSVAEConfig
from .unet import SpikingUNet, SpikingUNetTSM, TSMConv2d, UNetConfig

__all__ = [
    "Checkpoint",
    "IFNeuron",
    "LateralConfig",
    "MLPConfig",
    "NeuronConfig",
    "PRESETS",
    "SDID",
    "SDIDConfig",
    "SpikingLateralTransformer",
    "SpikingMLP",
    "SpikingUNet",
    "SpikingDiffusionVQ",
    "SpikingDiffusionVQConfig",
    "SpikingUNetTSM",
    "TSMConv2d",
    "UNetConfig",
    "VQSVAE",
    "VQSVAEConfig",
    "absorbing",
    "ann_twin",
    "arch_of",
    "build_model",
    "load_checkpoint",
    "preset",
    "save_checkpoint",
    "shipped_checkpoint",
]
