"""Energy, SOP and resource reports (see ``report`` for what is counted and how it is priced).

``counted``: what a report counts on (a build's netlist, or a model's NIR
graph) and the papers' layers of the NIR graph; ``spikes``: spike counts
and SOPs from calls on any backend; ``report``: the per-layer report priced
with a hardware profile.
"""

from .counted import LoweredCount, NirLayer, NirLevelCount, NirModel, nir_layers
from .report import (ENERGY_KEYS, EnergyReport, PipelineEnergyReport, energy_model, energy_report, host_work_macs,
                     module_macs)
from .spikes import CALIBRATION_FRACTIONS, SpikeCounts, calibration_pairs, exact_sops, layer_sops, tally_calls

__all__ = ["CALIBRATION_FRACTIONS", "ENERGY_KEYS", "EnergyReport", "LoweredCount", "NirLayer", "NirLevelCount",
           "NirModel", "PipelineEnergyReport", "SpikeCounts", "calibration_pairs", "energy_model", "energy_report", "exact_sops",
           "host_work_macs", "layer_sops", "module_macs", "nir_layers", "tally_calls"]
