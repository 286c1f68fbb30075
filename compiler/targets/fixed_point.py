"""A target's fixed-point rules, read from its hardware profile (``[fixed_point]``).

Every number the compiler's fixed-point passes and a target's range check
use comes from here, and every field comes from the profile file: there are
no defaults in code, so a second target states its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from snc.errors import SncError


@dataclass(frozen=True)
class FixedPoint:
    weight_bits: int  # magnitude bits of a synapse weight, plus a sign
    weight_exp_min: int  # a synapse group's exponent range
    weight_exp_max: int
    mixed_sign_drops_bit: bool  # a group with both signs loses its weights' low bit
    handed_weight_bits: int  # signed bits of the raw weights a backend accepts before its own clipping
    accumulator_bits: int  # signed bits of a synapse group's summed output (Lava: int32 channels)
    state_bits: int  # neuron state (u wraps, v saturates)
    activation_shift: int  # a_in and vth are shifted left by this
    decay_bits: int  # du, dv in 0..2^decay_bits - 1
    vth_bits: int  # unsigned threshold mantissa
    bias_mant_bits: int  # signed bias mantissa
    bias_exp_max: int  # bias = bias_mant << bias_exp, 0 <= bias_exp <= bias_exp_max
    max_delay: int  # synaptic delay steps
    gain_mant_bits: int  # signed per-step gain mantissa (TSM, gates)
    gain_shift_max: int  # gain = mantissa >> shift, 0 <= shift <= gain_shift_max
    payload_bits: int  # signed bits of a graded spike's payload (a graded group saturates it)

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> "FixedPoint":
        section = profile.get("fixed_point")
        name = profile.get("name", "?")
        if section is None:
            raise SncError(f"profile {name} has no [fixed_point] section: it is not a compile target")
        missing = [f.name for f in fields(cls) if f.name not in section]
        if missing:
            raise SncError(f"profile {name}: [fixed_point] lacks {', '.join(missing)}")
        return cls(**{f.name: section[f.name] for f in fields(cls)})

    # --- derived ranges ------------------------------------------------------------------------
    @property
    def decay_unity(self) -> int:
        """The decay denominator: ``v * (unity - dv) / unity`` (4096 on Loihi 2)."""
        return 1 << self.decay_bits

    @property
    def decay_max(self) -> int:
        return (1 << self.decay_bits) - 1

    @property
    def vth_limit(self) -> int:
        """vth must be below this."""
        return 1 << self.vth_bits

    @property
    def bias_mant_limit(self) -> int:
        """|bias_mant| must be below this (the negative end, -limit, also fits)."""
        return 1 << (self.bias_mant_bits - 1)

    @property
    def gain_mant_limit(self) -> int:
        """|gain mantissa| must be below this."""
        return 1 << (self.gain_mant_bits - 1)

    @property
    def current_limit(self) -> int:
        """|input current| below this keeps ``a_in << activation_shift`` inside the neuron state."""
        return 1 << (self.state_bits - 1 - self.activation_shift)

    @property
    def payload_limit(self) -> int:
        """The largest graded payload magnitude (a graded group saturates at it)."""
        return (1 << (self.payload_bits - 1)) - 1

    @property
    def handed_weight_limit(self) -> int:
        return 1 << (self.handed_weight_bits - 1)

    @property
    def accumulator_limit(self) -> int:
        return 1 << (self.accumulator_bits - 1)

    def magnitude_bits(self, mixed: bool) -> int:
        """Magnitude bits a synapse group's weights keep (one fewer with both signs, on Loihi)."""
        return self.weight_bits - (1 if mixed and self.mixed_sign_drops_bit else 0)

    def weight_range(self, mixed: bool) -> tuple[int, int, int]:
        """(lowest, highest, step) of a synapse group's integer weights: sign and ``weight_bits`` magnitude
        bits; with both signs, when the low bit is dropped, even values from -2^bits to 2^bits - 2."""
        if not mixed:
            return -((1 << self.weight_bits) - 1), (1 << self.weight_bits) - 1, 1
        step = 2 if self.mixed_sign_drops_bit else 1
        return -(1 << self.weight_bits), (1 << self.weight_bits) - step, step

    @property
    def weight_limit(self) -> float:
        """The largest weight magnitude any synapse group can carry: its mixed-sign mantissa at the largest
        exponent (a bound that holds whatever the group's signs)."""
        return ((1 << self.magnitude_bits(mixed=True)) - 1) * 2.0 ** self.weight_exp_max
