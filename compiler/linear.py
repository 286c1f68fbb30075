"""Linear maps between tensors of one spiking step, and their algebra.

A ``LinearOp`` maps a source tensor (a population's spikes, or a host input)
to a target tensor. It stays structural (a conv kernel, not a matrix) so that
compiling a CIFAR-sized U-Net never materialises a 10^8-entry matrix; the
lowering expands it to a sparse matrix only for the graphs it runs.

Kinds:
- ``identity``: y = x reshaped to ``out_shape`` (same number of elements).
- ``conv``: y = conv2d(upsample_nearest(x, upsample), weight, stride, padding)
  (torch's cross-correlation convention; no bias: biases live in the target).
- ``dense``: y = weight @ x.flatten().

``compose(outer, inner)`` is exact (float64) for every pair the U-Net and MLP
exporters produce; other pairs fall back to dense matrices under a size limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from snc.errors import GraphError

Shape = tuple[int, ...]

# A dense fallback larger than this many entries is refused (about 0.5 GB in float64).
MAX_DENSE_ENTRIES = 1 << 26


@dataclass(frozen=True)
class LinearOp:
    kind: str  # identity | conv | dense
    in_shape: Shape
    out_shape: Shape
    weight: np.ndarray | None = field(default=None, compare=False)
    stride: int = 1
    padding: int = 0
    upsample: int = 1

    # --- constructors ----------------------------------------------------------------
    @staticmethod
    def identity(in_shape: Shape, out_shape: Shape | None = None) -> "LinearOp":
        out_shape = tuple(in_shape) if out_shape is None else tuple(out_shape)
        if int(np.prod(in_shape)) != int(np.prod(out_shape)):
            raise GraphError(f"reshape {in_shape} -> {out_shape} changes the number of elements")
        return LinearOp("identity", tuple(in_shape), out_shape)

    @staticmethod
    def conv(weight: np.ndarray, in_shape: Shape, stride: int, padding: int, upsample: int = 1) -> "LinearOp":
        c, h, w = in_shape
        k = weight.shape[-1]
        hu, wu = h * upsample, w * upsample
        out = (weight.shape[0], (hu + 2 * padding - k) // stride + 1, (wu + 2 * padding - k) // stride + 1)
        if weight.shape[1] != c or weight.shape[2] != weight.shape[3]:
            raise GraphError(f"conv weight {weight.shape} does not fit input {in_shape}")
        return LinearOp("conv", tuple(in_shape), out, np.asarray(weight, dtype=np.float64), stride, padding, upsample)

    @staticmethod
    def dense(weight: np.ndarray, in_shape: Shape, out_shape: Shape) -> "LinearOp":
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != (int(np.prod(out_shape)), int(np.prod(in_shape))):
            raise GraphError(f"dense weight {weight.shape} does not map {in_shape} -> {out_shape}")
        return LinearOp("dense", tuple(in_shape), tuple(out_shape), weight)

    # --- properties --------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def is_pointwise_conv(self) -> bool:
        return self.kind == "conv" and self.weight.shape[-1] == 1 and self.stride == 1 and self.padding == 0 \
            and self.upsample == 1

    def geometry(self) -> tuple:
        """What two ops must share for their weights to be added."""
        if self.kind == "conv":
            return ("conv", self.in_shape, self.out_shape, self.weight.shape, self.stride, self.padding, self.upsample)
        return (self.kind, self.in_shape, self.out_shape)

    def describe(self) -> str:
        if self.kind == "conv":
            k = self.weight.shape[-1]
            up = f" after nearest x{self.upsample}" if self.upsample > 1 else ""
            return f"conv{k}x{k}/s{self.stride}{up}"
        return self.kind

    # --- evaluation ----------------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """y for a batch x [B, *in_shape] (any float dtype)."""
        batch = x.shape[0]
        if self.kind == "identity":
            return x.reshape(batch, *self.out_shape)
        w = torch.as_tensor(self.weight, dtype=x.dtype, device=x.device)
        if self.kind == "dense":
            return (x.reshape(batch, -1) @ w.T).reshape(batch, *self.out_shape)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)

    def to_csr(self) -> sparse.csr_matrix:
        """The op as a sparse matrix [n_out, n_in] over C-order flattened tensors."""
        if self.kind == "identity":
            return sparse.identity(self.n_in, format="csr", dtype=np.float64)
        if self.kind == "dense":
            return sparse.csr_matrix(self.weight)
        return _conv_csr(self)

    def synapse_count(self) -> int:
        """Non-zero connections of the op (the synapses a static lowering needs); memoised."""
        count = self.__dict__.get("_synapse_count")
        if count is None:
            if self.kind == "identity":
                count = self.n_in
            elif self.kind == "dense":
                count = int(np.count_nonzero(self.weight))
            else:
                count = _conv_synapse_count(self)
            object.__setattr__(self, "_synapse_count", count)  # frozen dataclass: a cache, not state
        return count


def _conv_csr(op: LinearOp) -> sparse.csr_matrix:
    """Expand a (possibly upsampling) conv into its sparse matrix by index arithmetic."""
    cin, h, w = op.in_shape
    cout, ho, wo = op.out_shape
    k, s, p, u = op.weight.shape[-1], op.stride, op.padding, op.upsample
    oc, oy, ox, ic, ky, kx = np.meshgrid(
        np.arange(cout), np.arange(ho), np.arange(wo), np.arange(cin), np.arange(k), np.arange(k), indexing="ij"
    )
    yu = oy * s - p + ky  # row in the upsampled input
    xu = ox * s - p + kx
    inside = (yu >= 0) & (yu < h * u) & (xu >= 0) & (xu < w * u)
    rows = ((oc * ho + oy) * wo + ox)[inside]
    cols = (ic[inside] * h + yu[inside] // u) * w + xu[inside] // u
    vals = op.weight[oc[inside], ic[inside], ky[inside], kx[inside]]
    keep = vals != 0
    # Nearest upsampling makes several kernel taps read one input: duplicates sum in csr.
    m = sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(op.n_out, op.n_in))
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def _conv_synapse_count(op: LinearOp) -> int:
    """Non-zero (input, output) connections of a conv: exact, border- and upsample-aware.

    Along each axis an output position reads its valid kernel taps grouped by
    the input position they fall on (after nearest upsampling several taps
    fall on one input: one synapse). Positions with the same grouping share a
    pattern; a synapse exists for a group pair where any (out, in) channel
    pair has a non-zero tap in the block.
    """
    cin, h, w = op.in_shape
    cout, ho, wo = op.out_shape
    k, s, p, u = op.weight.shape[-1], op.stride, op.padding, op.upsample

    def patterns(n_out: int, n_in: int) -> dict[tuple, int]:
        found: dict[tuple, int] = {}
        for o in range(n_out):
            groups: dict[int, list[int]] = {}
            for tap in range(k):
                pos = o * s - p + tap
                if 0 <= pos < n_in * u:
                    groups.setdefault(pos // u, []).append(tap)
            key = tuple(tuple(g) for g in groups.values())
            found[key] = found.get(key, 0) + 1
        return found

    nonzero = op.weight != 0
    block_pairs: dict[tuple, int] = {}  # (taps y, taps x) -> channel pairs with a non-zero tap there

    def pairs(ty: tuple, tx: tuple) -> int:
        if (ty, tx) not in block_pairs:
            block_pairs[ty, tx] = int(nonzero[:, :, list(ty)][:, :, :, list(tx)].any(axis=(2, 3)).sum())
        return block_pairs[ty, tx]

    total = 0
    for gy, ny in patterns(ho, h).items():
        for gx, nx in patterns(wo, w).items():
            total += sum(pairs(ty, tx) for ty in gy for tx in gx) * ny * nx
    return total


def compose(outer: LinearOp, inner: LinearOp) -> LinearOp:
    """The op ``outer(inner(x))``, exact."""
    if outer.in_shape != inner.out_shape and outer.n_in != inner.n_out:
        raise GraphError(f"cannot compose {outer.describe()} on {inner.describe()}: shapes differ")
    if inner.kind == "identity":
        if outer.kind == "identity":
            return LinearOp.identity(inner.in_shape, outer.out_shape)
        if outer.kind == "dense":
            return replace(outer, in_shape=inner.in_shape)
        if outer.in_shape == inner.in_shape:
            return outer
    if outer.kind == "identity":
        return replace(inner, out_shape=outer.out_shape) if inner.kind == "dense" or outer.out_shape == inner.out_shape \
            else _dense_compose(outer, inner)
    if outer.is_pointwise_conv and inner.kind == "conv":
        w = inner.weight
        kernel = (outer.weight[:, :, 0, 0] @ w.reshape(w.shape[0], -1)).reshape(-1, *w.shape[1:])
        return replace(inner, out_shape=outer.out_shape, weight=kernel)
    if outer.kind == "conv" and outer.upsample == 1 and inner.kind == "conv" and inner.weight.shape[-1] == 1 \
            and inner.stride == 1 and inner.padding == 0:
        # a 1x1 map commutes with nearest upsampling: fold it into the outer kernel
        kernel = np.tensordot(outer.weight, inner.weight[:, :, 0, 0], axes=([1], [0])).transpose(0, 3, 1, 2)
        return replace(outer, in_shape=inner.in_shape, weight=kernel, upsample=inner.upsample)
    if outer.kind == "dense" and inner.kind == "dense":
        return LinearOp.dense(outer.weight @ inner.weight, inner.in_shape, outer.out_shape)
    return _dense_compose(outer, inner)


def _dense_compose(outer: LinearOp, inner: LinearOp) -> LinearOp:
    if inner.n_in * outer.n_out > MAX_DENSE_ENTRIES:
        raise GraphError(
            f"re-associating {outer.describe()} after {inner.describe()} needs a dense "
            f"{outer.n_out}x{inner.n_in} matrix; snc has no structured form for this pair"
        )
    m = (outer.to_csr() @ inner.to_csr()).toarray()
    return LinearOp.dense(m, inner.in_shape, outer.out_shape)


def upsample_op(in_shape: Shape, scale: int) -> LinearOp:
    """Nearest upsampling as a conv with an identity 1x1 kernel after upsampling."""
    c = in_shape[0]
    return LinearOp.conv(np.eye(c).reshape(c, c, 1, 1), in_shape, stride=1, padding=0, upsample=scale)


def add_ops(a: LinearOp, b: LinearOp) -> LinearOp | None:
    """a + b as one op when their geometry matches, else None."""
    if a.kind == "identity" or b.kind == "identity":
        return None
    if a.geometry() != b.geometry():
        return None
    return replace(a, weight=a.weight + b.weight)
