"""Lava processes for per-step values within a denoiser call (SDM's TSM), with
floating_pt and fixed_pt models.

SDM multiplies every conv's output by a learned p[t] at spiking step t. After
re-association a population's input is a sum of synapses whose paths passed
different convs (the residual stream), so the factor belongs to each synapse,
and the convs' biases become a bias per step of the population:

- ``StepGainSparse``: Lava's ``Sparse`` whose output for the spikes of Lava
  time step ``ts`` is multiplied by ``gain[(ts - 1) % len(gain)]``: fixed_pt
  ``(a * gain) >> gain_shift`` (an arithmetic shift, after Lava's own
  ``weight_exp`` shift; int64, the int32 port wraps it), floating_pt
  ``a * gain``. At a step whose gain is 0 it does no synaptic work (an expert
  the selection switched off, a recurrent synapse outside its window). One table entry per step of a call (the compiler maps each
  step to its logical step, ``compiler/netlist.py::logical_steps``).
- ``StepBiasLIFReset``: Lava's ``LIFReset`` whose ``bias_mant`` and
  ``bias_exp`` are taken from row ``(ts - 1) % rows`` of a table before
  every step; with ``subtractive_reset`` a spike subtracts the threshold
  from v (fixed_pt: ``vth << 6``, what the spike test compares with) instead
  of setting it to 0: the IF neuron of an ANN-to-SNN conversion, whose
  spike count is its input's quantized rate only with this reset. Everything
  else is LIFReset's.

On Loihi 2 both are a multiply or a table read per neuron and step in the
neuron's microcode: the same kind of work as its decays.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.variable import Var
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifResetModelBitAcc, PyLifResetModelFloat
from lava.proc.lif.process import LIFReset
from lava.proc.sparse.models import PySparseModelBitAcc, PySparseModelFloat
from lava.proc.sparse.process import Sparse

from snc.compiler.targets import get_target

RULES = get_target("loihi2").rules  # the declared precisions of the tables: Loihi 2's, from its profile


class StepGainSparse(Sparse):
    """``Sparse`` with a per-step output gain: ``gain`` [steps per call], ``gain_shift`` (fixed_pt)."""

    def __init__(self, *, weights, gain: np.ndarray, gain_shift: int = 0, **kwargs) -> None:
        super().__init__(weights=weights, gain_shift=int(gain_shift), **kwargs)
        self.gain = Var(shape=np.shape(gain), init=np.asarray(gain))


class StepBiasLIFReset(LIFReset):
    """``LIFReset`` with a bias per step: ``bias_table_mant`` / ``bias_table_exp`` [steps per call, n], and
    optionally reset by subtraction."""

    def __init__(self, *, shape, bias_table_mant: np.ndarray, bias_table_exp: np.ndarray,
                 subtractive_reset: bool = False, **kwargs) -> None:
        super().__init__(shape=shape, bias_mant=bias_table_mant[0], bias_exp=bias_table_exp[0], **kwargs)
        self.proc_params["subtractive_reset"] = bool(subtractive_reset)  # as LIFReset keeps its reset_interval
        self.bias_table_mant = Var(shape=bias_table_mant.shape, init=bias_table_mant)
        self.bias_table_exp = Var(shape=bias_table_exp.shape, init=bias_table_exp)


def _row(time_step: int, table: np.ndarray) -> int:
    return (time_step - 1) % table.shape[0]


def _skipped(model) -> bool:
    """At a step whose gain is 0 (a switched-off expert's synapse, a recurrent synapse outside its window)
    the synapse does no synaptic work: it sends its buffered output, takes the spikes and buffers zeros.
    The same numbers as computing and multiplying by 0."""
    if model.gain[_row(model.time_step, model.gain)] != 0:
        return False
    model.a_out.send(model.a_buff)
    model.s_in.recv()
    model.a_buff = np.zeros_like(model.a_buff)
    return True


# Lava's @implements refuses to re-bind a model class whose parent implements another
# process; these models reuse Lava's Sparse / LIFReset models, so they clear the binding
# first (tags and resources are inherited: fixed_pt / floating_pt, CPU).
@implements(proc=StepGainSparse, protocol=LoihiProtocol)
class PyStepGainSparseModelBitAcc(PySparseModelBitAcc):
    implements_process = None
    gain: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=RULES.gain_mant_bits)

    def run_spk(self) -> None:
        if _skipped(self):
            return
        super().run_spk()  # sends the last step's output, computes this step's into a_buff
        g = int(self.gain[_row(self.time_step, self.gain)])
        self.a_buff = np.right_shift(self.a_buff.astype(np.int64) * g, self.proc_params["gain_shift"])


@implements(proc=StepGainSparse, protocol=LoihiProtocol)
class PyStepGainSparseModelFloat(PySparseModelFloat):
    implements_process = None
    gain: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        if _skipped(self):
            return
        super().run_spk()
        self.a_buff = self.a_buff * self.gain[_row(self.time_step, self.gain)]


@implements(proc=StepBiasLIFReset, protocol=LoihiProtocol)
class PyStepBiasLifResetModelBitAcc(PyLifResetModelBitAcc):
    implements_process = None
    bias_table_mant: np.ndarray = LavaPyType(np.ndarray, np.int16, precision=RULES.bias_mant_bits)
    bias_table_exp: np.ndarray = LavaPyType(np.ndarray, np.int16, precision=RULES.bias_exp_max.bit_length())

    def run_spk(self) -> None:
        row = _row(self.time_step, self.bias_table_mant)
        self.bias_mant[:] = self.bias_table_mant[row]  # LIFReset's run_spk scales the bias every step
        self.bias_exp[:] = self.bias_table_exp[row]
        super().run_spk()

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        if self.proc_params["subtractive_reset"]:
            self.v[spike_vector] -= self.effective_vth
        else:
            super().reset_voltage(spike_vector)


@implements(proc=StepBiasLIFReset, protocol=LoihiProtocol)
class PyStepBiasLifResetModelFloat(PyLifResetModelFloat):
    implements_process = None
    bias_table_mant: np.ndarray = LavaPyType(np.ndarray, float)
    bias_table_exp: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        self.bias_mant[:] = self.bias_table_mant[_row(self.time_step, self.bias_table_mant)]
        super().run_spk()

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        if self.proc_params["subtractive_reset"]:
            self.v[spike_vector] -= self.vth
        else:
            super().reset_voltage(spike_vector)
