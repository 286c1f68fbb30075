"""The lateral-selection spiking transformer denoiser (paper 000, Feng et al.).

A spiking transformer on patches whose blocks each hold N candidate MLP
substructures ("experts") of which the top k are used, chosen by router
logits that depend on the diffusion step only and are refined over the T_s
spiking inner steps by a lateral circuit (section III-C, eqs. 9-13):

- patchify (patch 2) + positional embedding: a conv on the analog image, on
  the host; direct encoding repeats it over the T_s inner steps;
- every block: a spiking neuron on the real-valued residual stream, then
  spike-driven self-attention (SDSA, Yao et al. 2023: ``Q * SN(sum over tokens
  of K * V)`` with spiking Q, K, V; ``*`` of spikes is a logical AND) and its
  projection added to the stream; a spiking neuron again, then the experts
  ``S_i`` (Linear -> LIF -> Linear, BatchNorm after each Linear) mixed as
  ``sum_i h_i S_i`` (eq. 13) and added to the stream; a time-embedding bias
  per block (host-computed, as in the U-Net);
- router ``l = S_r(e_t)`` (eq. 9): a Linear of the diffusion-step embedding;
- lateral correction (eqs. 10-11) per block, over the inner steps: the
  lateral LIF population Omega (N neurons, membrane m) integrates
  ``A_agg @ l_hat[t-1]`` (``l_hat[-1] = l``), fires delta[t], and
  ``l_hat[t] = l + gamma * delta[t]``; A_agg starts at I - 1 (mutual
  inhibition), gamma at 0 (no lateral effect at the start of training);
- selection (eq. 12): ``h = TopK(softmax(l_hat[t]), k)``, the probabilities
  of the k largest kept, the others 0;
- output: the last stream read every inner step, a Linear back to patch
  pixels on the host, averaged over the inner steps (the spike-to-static
  decoder of eq. 8).

Because Omega's input ``A_agg l + gamma A_agg delta[t-1]`` depends on the
diffusion step only, the selection of every block at every inner step is a
function of t alone (``selection``): the compiler computes it per step.
All spiking modules take ``[T, B, ...]`` sequences, as in ``neurons``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import init

from .neurons import NeuronConfig, SpikeAnd, fire, make_activation
from .time_embedding import TimeEmbedding, temb_projection


@dataclass(frozen=True)
class LateralConfig:
    img_size: int = 32
    img_ch: int = 3
    patch: int = 2
    hidden: int = 768  # D, the paper's CIFAR-10 width (halved for MNIST)
    depth: int = 12  # transformer blocks, each with a selection module
    mlp_ratio: int = 4  # expert hidden width = mlp_ratio * D
    experts: int = 3  # N candidate substructures per block
    top_k: int = 2
    timestep: int = 2  # T_s inner spiking steps per denoiser call
    diffusion_steps: int = 1000
    spiking: bool = True  # False: the ANN twin (ReLU, one step, products of activations)
    neuron: NeuronConfig = field(default_factory=lambda: NeuronConfig(decay=0.5))
    attention_threshold: float = 0.5  # SN after the token sum of K * V
    lateral_neuron: NeuronConfig = field(default_factory=lambda: NeuronConfig(decay=0.5))

    def __post_init__(self) -> None:
        for key in ("neuron", "lateral_neuron"):
            if isinstance(getattr(self, key), dict):
                object.__setattr__(self, key, NeuronConfig(**getattr(self, key)))
        if self.img_size % self.patch:
            raise ValueError(f"img_size {self.img_size} is not divisible by the patch size {self.patch}")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"top_k {self.top_k} must be in 1..experts ({self.experts})")
        if not self.spiking and self.timestep != 1:
            raise ValueError("the ANN twin runs one step: set timestep=1")

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch) ** 2


class LinearBN(nn.Module):
    """Linear then BatchNorm over the feature axis, on ``[..., features]`` (export folds the BN)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)
        init.xavier_uniform_(self.fc.weight)
        init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return self.bn(y.reshape(-1, y.shape[-1])).reshape(y.shape)


class SpikeDrivenAttention(nn.Module):
    """SDSA: ``Q * SN(sum over tokens of K * V)``, then a projection; on ``[T, B, tokens, D]`` spikes."""

    def __init__(self, cfg: LateralConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.q, self.k, self.v = LinearBN(d, d), LinearBN(d, d), LinearBN(d, d)
        self.q_neuron = make_activation(cfg.spiking, cfg.neuron)
        self.k_neuron = make_activation(cfg.spiking, cfg.neuron)
        self.v_neuron = make_activation(cfg.spiking, cfg.neuron)
        self.kv_and, self.q_and = SpikeAnd(), SpikeAnd()
        self.kv_neuron = make_activation(cfg.spiking, replace(cfg.neuron, threshold=cfg.attention_threshold))
        self.proj = LinearBN(d, d)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_neuron(self.q(s)), self.k_neuron(self.k(s)), self.v_neuron(self.v(s))
        kv = self.kv_neuron(self.kv_and(k, v).sum(dim=2))  # [T, B, D]: tokens summed, a spike per channel
        return self.proj(self.q_and(q, kv.unsqueeze(2)))


class Expert(nn.Module):
    """One candidate substructure S_i: Linear+BN -> LIF -> Linear+BN."""

    def __init__(self, cfg: LateralConfig) -> None:
        super().__init__()
        width = cfg.mlp_ratio * cfg.hidden
        self.fc1 = LinearBN(cfg.hidden, width)
        self.neuron = make_activation(cfg.spiking, cfg.neuron)
        self.fc2 = LinearBN(width, cfg.hidden)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.neuron(self.fc1(s)))


class LateralSelection(nn.Module):
    """Router (eq. 9) and lateral correction (eqs. 10-11) of one block; ``forward(temb) -> l_hat [T, B, N]``.

    ``trace`` keeps the spikes delta of Omega for inspection and verification.
    """

    def __init__(self, cfg: LateralConfig, tdim: int) -> None:
        super().__init__()
        n = cfg.experts
        self.router = nn.Linear(tdim, n)
        self.aggregation = nn.Parameter(torch.eye(n) - torch.ones(n, n))  # A_agg = I - 1
        self.gamma = nn.Parameter(torch.zeros(()))
        self.omega = cfg.lateral_neuron  # Omega's LIF parameters
        self.steps = cfg.timestep
        self.spiking = cfg.spiking

    def logits(self, temb: torch.Tensor) -> torch.Tensor:
        """The uncorrected logits l [B, N]."""
        return self.router(temb)

    def drive(self, temb: torch.Tensor) -> torch.Tensor:
        """Omega's input from the router, ``A_agg l`` [B, N]: the same at every inner step."""
        return self.logits(temb) @ self.aggregation.T

    def recurrent_weights(self) -> torch.Tensor:
        """``gamma A_agg`` [N, N]: Omega's input from its own spikes of the previous inner step."""
        return self.gamma * self.aggregation

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(l_hat [T, B, N], delta [T, B, N]): corrected logits and Omega's spikes per inner step."""
        l = self.logits(temb)
        if not self.spiking:
            return l.unsqueeze(0), torch.zeros_like(l).unsqueeze(0)
        cfg = self.omega
        drive, recurrent = self.drive(temb), self.recurrent_weights()
        m = torch.zeros_like(l)
        delta = torch.zeros_like(l)
        deltas = []
        for _ in range(self.steps):
            # eq. 10: Omega integrates A_agg l_hat of the previous inner step, A_agg (l + gamma delta) =
            # A_agg l + gamma A_agg delta (written so: a constant drive and a recurrent synapse), then fires
            m = cfg.decay * m + drive + delta @ recurrent.T
            delta = fire(m, cfg)
            m = m * (1.0 - delta)
            deltas.append(delta)
        deltas = torch.stack(deltas)
        return self.corrected(l, deltas), deltas

    def corrected(self, logits: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """eq. 11: ``l_hat = l + gamma delta`` for Omega's spikes delta [T, B, N] (from any backend)."""
        return logits + self.gamma * delta


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """h of eq. 12: softmax probabilities of the k largest logits, 0 elsewhere (last axis)."""
    p = torch.softmax(logits, dim=-1)
    keep = torch.zeros_like(p).scatter(-1, logits.topk(k, dim=-1).indices, 1.0)
    return p * keep


class LateralBlock(nn.Module):
    def __init__(self, cfg: LateralConfig, tdim: int) -> None:
        super().__init__()
        self.temb_proj = temb_projection(tdim, cfg.hidden)
        self.neuron1 = make_activation(cfg.spiking, cfg.neuron)
        self.attention = SpikeDrivenAttention(cfg)
        self.neuron2 = make_activation(cfg.spiking, cfg.neuron)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.experts))
        self.selection = LateralSelection(cfg, tdim)
        self.top_k = cfg.top_k

    def forward(self, x: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x [T, B, tokens, D] stream, bias [B, D], h [T, B, N] expert weights."""
        x = x + bias[None, :, None, :]
        x = x + self.attention(self.neuron1(x))
        s = self.neuron2(x)
        return x + sum(h[..., i, None, None] * expert(s) for i, expert in enumerate(self.experts))


class SpikingLateralTransformer(nn.Module):
    """``forward(x, t)``: x [B, C, H, W] noisy images, t [B] diffusion steps -> epsilon.

    Split as the U-Net for the host / chip boundary: ``encode`` (patchify +
    positions, repeated over the inner steps), ``time_biases`` (per-block
    time-embedding biases), ``selection`` (every block's expert weights per
    inner step, from t alone), ``core`` (the spiking blocks) and ``decode``.
    """

    def __init__(self, config: LateralConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden
        tdim = 4 * d if d <= 128 else d
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, d, tdim)
        self.patchify = nn.Conv2d(cfg.img_ch, d, cfg.patch, stride=cfg.patch)
        self.positions = nn.Parameter(torch.zeros(cfg.tokens, d))
        self.blocks = nn.ModuleList(LateralBlock(cfg, tdim) for _ in range(cfg.depth))
        self.head = nn.Linear(d, cfg.patch * cfg.patch * cfg.img_ch)
        init.trunc_normal_(self.positions, std=0.02)
        init.xavier_uniform_(self.patchify.weight)
        init.zeros_(self.patchify.bias)
        init.zeros_(self.head.weight)  # starts predicting 0 noise: a stable start
        init.zeros_(self.head.bias)

    # --- the parts of a denoiser call ---------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens + positions [T, B, tokens, D], the same every inner step (direct encoding)."""
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.positions
        return tokens.unsqueeze(0).repeat(self.config.timestep, 1, 1, 1)

    def time_biases(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        temb = self.time_embedding(t)
        return {f"blocks.{i}": block.temb_proj(temb) for i, block in enumerate(self.blocks)}

    def selection(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h [depth, T, B, N] expert weights, delta [depth, T, B, N] Omega's spikes) for steps t."""
        temb = self.time_embedding(t)
        deltas = torch.stack([block.selection(temb)[1] for block in self.blocks])
        return self.selection_from_spikes(t, deltas), deltas

    def selection_from_spikes(self, t: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """h [depth, T, B, N] from the lateral circuits' spikes [depth, T, B, N] (eqs. 11-12), e.g. a chip's."""
        temb = self.time_embedding(t)
        return torch.stack([top_k_mask(block.selection.corrected(block.selection.logits(temb), delta), block.top_k)
                            for block, delta in zip(self.blocks, deltas)])

    def core(self, x_seq: torch.Tensor, biases: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x_seq = block(x_seq, biases[f"blocks.{i}"], h[i])
        return x_seq

    def decode(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Head on every inner step's stream, averaged (eq. 8), then patches back to images."""
        cfg = self.config
        y = self.head(x_seq).mean(0)  # [B, tokens, p*p*C]
        side, p = cfg.img_size // cfg.patch, cfg.patch
        y = y.reshape(-1, side, side, p, p, cfg.img_ch)
        return y.permute(0, 5, 1, 3, 2, 4).reshape(-1, cfg.img_ch, cfg.img_size, cfg.img_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, _ = self.selection(t)
        return self.decode(self.core(self.encode(x), self.time_biases(t), h))
