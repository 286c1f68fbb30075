"""A Lava process for a sum population (``--residual graded``): a graded group of the netlist.

``GradedSum`` keeps nothing from one step to the next. Each step its value
is the sum of what reaches its ``a_in`` plus its bias (a row of a table per
step of a call, as ``StepBiasLIFReset``'s), and it sends a graded spike:

- fixed_pt: the value in int64 (the inputs arrive as Lava sums them, int32),
  plus ``bias_mant << bias_exp`` (no activation shift: the value is in the
  input's units), sent as ``compiler.netlist.graded_payload``: shifted right
  by ``payload_shift`` rounded half up, saturated at the target's payload
  bits (24 on Loihi 2);
- floating_pt: the value itself.

Its synapses are Lava's own ``Sparse`` / ``DelaySparse`` with
``num_message_bits`` set, whose graded path multiplies the weights by the
payload (``weights.dot(s_in)``, int32 in fixed_pt). ``u`` holds the step's
input and ``v`` its value, for traces.

On Loihi 2 this is a neuron program of an add and a shift per neuron and step
that sends a graded spike every step (Lava's own ``GradedVec`` does the same
without the bias and the shift, and has no floating_pt model).
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from snc.compiler.netlist import graded_payload
from snc.compiler.targets import get_target

RULES = get_target("loihi2").rules  # the payload's bits: Loihi 2's, from its profile


class GradedSum(AbstractProcess):
    """Sends its summed input plus a bias every step as a graded spike: ``bias_table_mant`` /
    ``bias_table_exp`` [rows, n] (row ``(time_step - 1) % rows``), ``payload_shift`` (fixed_pt)."""

    def __init__(self, *, shape: tuple[int, ...], bias_table_mant: np.ndarray, bias_table_exp: np.ndarray,
                 payload_shift: int = 0, name: str = "") -> None:
        super().__init__(shape=shape, name=name, payload_shift=int(payload_shift))
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.u = Var(shape=shape, init=0)
        self.v = Var(shape=shape, init=0)
        self.bias_table_mant = Var(shape=bias_table_mant.shape, init=bias_table_mant)
        self.bias_table_exp = Var(shape=bias_table_exp.shape, init=bias_table_exp)


def _row(model: PyLoihiProcessModel) -> int:
    return (model.time_step - 1) % model.bias_table_mant.shape[0]


@implements(proc=GradedSum, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGradedSumModelFixed(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=RULES.payload_bits)
    u: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    v: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=33)
    bias_table_mant: np.ndarray = LavaPyType(np.ndarray, np.int16, precision=RULES.bias_mant_bits)
    bias_table_exp: np.ndarray = LavaPyType(np.ndarray, np.int16, precision=RULES.bias_exp_max.bit_length())

    def run_spk(self) -> None:
        self.u[:] = self.a_in.recv()
        row = _row(self)
        self.v[:] = self.u + (self.bias_table_mant[row].astype(np.int64) << self.bias_table_exp[row].astype(np.int64))
        self.s_out.send(graded_payload(self.v, self.proc_params["payload_shift"], RULES.payload_limit))


@implements(proc=GradedSum, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyGradedSumModelFloat(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    u: np.ndarray = LavaPyType(np.ndarray, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    bias_table_mant: np.ndarray = LavaPyType(np.ndarray, float)
    bias_table_exp: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        self.u[:] = self.a_in.recv()
        self.v[:] = self.u + self.bias_table_mant[_row(self)]
        self.s_out.send(self.v)
