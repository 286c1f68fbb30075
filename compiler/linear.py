"""Linear maps between tensors of one spiking step, and their algebra.

A ``LinearOp`` maps a source tensor (a population's spikes, or a host input)
to a target tensor. It stays structural (a conv kernel, not a matrix) so that
compiling a CIFAR-sized U-Net never materialises a 10^8-entry matrix; the
lowering expands it to a sparse matrix only for the graphs it runs.

Kinds:
- ``identity``: y = x reshaped to ``out_shape`` (same number of elements).
- ``conv``: y = conv2d(upsample_nearest(x, upsample), weight, stride, padding)
  (torch's cross-correlation convention; no bias: biases live in the target);
  with ``zeros`` the input is upsampled by zero insertion instead (each element
  followed by ``upsample - 1`` zeros along both axes: a transposed conv).
  Its ``out_shape`` may be a *view* of the conv's own output (``conv_shape``):
  the same C-order vector, reshaped (a conv followed by a reshape).
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
    zeros: bool = False  # upsampled by inserting zeros, not by repeating (nearest)

    # --- constructors ----------------------------------------------------------------
    @staticmethod
    def identity(in_shape: Shape, out_shape: Shape | None = None) -> "LinearOp":
        out_shape = tuple(in_shape) if out_shape is None else tuple(out_shape)
        if int(np.prod(in_shape)) != int(np.prod(out_shape)):
            raise GraphError(f"reshape {in_shape} -> {out_shape} changes the number of elements")
        return LinearOp("identity", tuple(in_shape), out_shape)

    @staticmethod
    def conv(weight: np.ndarray, in_shape: Shape, stride: int, padding: int, upsample: int = 1,
             zeros: bool = False) -> "LinearOp":
        c, h, w = in_shape
        k = weight.shape[-1]
        hu, wu = h * upsample, w * upsample
        out = (weight.shape[0], (hu + 2 * padding - k) // stride + 1, (wu + 2 * padding - k) // stride + 1)
        if weight.shape[1] != c or weight.shape[2] != weight.shape[3]:
            raise GraphError(f"conv weight {weight.shape} does not fit input {in_shape}")
        return LinearOp("conv", tuple(in_shape), out, np.asarray(weight, dtype=np.float64), stride, padding, upsample,
                        zeros and upsample > 1)

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
    def conv_shape(self) -> Shape:
        """The shape the op computes before any reshape: a conv's (C, H, W) output, else ``out_shape``."""
        if self.kind != "conv":
            return self.out_shape
        _, h, w = self.in_shape
        k, s, p, u = self.weight.shape[-1], self.stride, self.padding, self.upsample
        return (self.weight.shape[0], (h * u + 2 * p - k) // s + 1, (w * u + 2 * p - k) // s + 1)

    @property
    def is_pointwise_conv(self) -> bool:
        return self.kind == "conv" and self.weight.shape[-1] == 1 and self.stride == 1 and self.padding == 0 \
            and self.upsample == 1 and self.out_shape == self.conv_shape

    def geometry(self) -> tuple:
        """What two ops must share for their weights to be added."""
        if self.kind == "conv":
            return ("conv", self.in_shape, self.out_shape, self.weight.shape, self.stride, self.padding, self.upsample,
                    self.zeros)
        return (self.kind, self.in_shape, self.out_shape)

    def describe(self) -> str:
        if self.kind == "conv":
            k = self.weight.shape[-1]
            up = f" after {'zero insertion' if self.zeros else 'nearest'} x{self.upsample}" if self.upsample > 1 else ""
            return f"conv{k}x{k}/s{self.stride}{up}"
        return self.kind

    # --- evaluation ----------------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """y for a batch x [B, ...] of ``n_in`` elements each (any float dtype), read in ``in_shape``."""
        batch = x.shape[0]
        if self.kind == "identity":
            return x.reshape(batch, *self.out_shape)
        w = torch.as_tensor(self.weight, dtype=x.dtype, device=x.device)
        if self.kind == "dense":
            return (x.reshape(batch, -1) @ w.T).reshape(batch, *self.out_shape)
        x = x.reshape(batch, *self.in_shape)
        if self.upsample > 1:
            x = zero_insert(x, self.upsample) if self.zeros else F.interpolate(x, scale_factor=self.upsample,
                                                                               mode="nearest")
        return F.conv2d(x, w, stride=self.stride, padding=self.padding).reshape(batch, *self.out_shape)

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
            count = int(self.fan_out().sum())
            object.__setattr__(self, "_synapse_count", count)  # frozen dataclass: a cache, not state
        return count

    def fan_out(self) -> np.ndarray:
        """Synapses leaving each input element [n_in]: exact (border-, stride-, upsample- and zero-aware)."""
        return self._fan("out")

    def fan_in(self) -> np.ndarray:
        """Synapses entering each output element [n_out], exact like ``fan_out``."""
        return self._fan("in")

    def _fan(self, side: str) -> np.ndarray:
        if self.kind == "identity":
            return np.ones(self.n_in, dtype=np.int64)  # n_in == n_out
        if self.kind == "dense":
            return np.count_nonzero(self.weight, axis=0 if side == "out" else 1).astype(np.int64)
        return _conv_fan(self, side).reshape(-1)

    @property
    def taps_per_synapse(self) -> int:
        """Along each axis, how many kernel taps one synapse's weight can sum: after nearest upsampling one
        input fills u x u positions, so up to ``min(upsample, k)`` taps of a k x k kernel; else 1."""
        return 1 if self.zeros or self.kind != "conv" else min(self.upsample, self.weight.shape[-1])

    @property
    def moves_only(self) -> bool:
        """True when the op does no arithmetic: a reshape, or a nearest upsampling of every channel."""
        if self.kind == "identity":
            return True
        return self.kind == "conv" and self.weight.shape[-1] == 1 and self.stride == 1 and self.padding == 0 \
            and self.weight.shape[0] == self.weight.shape[1] \
            and np.array_equal(self.weight[:, :, 0, 0], np.eye(self.weight.shape[0]))

    def dense_macs(self) -> int:
        """Multiply-accumulates of evaluating the op as a dense layer: an ANN's count (every
        kernel tap of every output, padding taps included, as the papers count FLOPs);
        0 for an op that only moves data."""
        if self.moves_only:
            return 0
        if self.kind == "dense":
            return int(self.weight.size)
        cin, k = self.weight.shape[1], self.weight.shape[-1]
        return self.n_out * cin * k * k


def _conv_csr(op: LinearOp) -> sparse.csr_matrix:
    """Expand a (possibly upsampling) conv into its sparse matrix by index arithmetic."""
    cin, h, w = op.in_shape
    cout, ho, wo = op.conv_shape
    k, s, p, u = op.weight.shape[-1], op.stride, op.padding, op.upsample
    oc, oy, ox, ic, ky, kx = np.meshgrid(
        np.arange(cout), np.arange(ho), np.arange(wo), np.arange(cin), np.arange(k), np.arange(k), indexing="ij"
    )
    yu = oy * s - p + ky  # row in the upsampled input
    xu = ox * s - p + kx
    inside = (yu >= 0) & (yu < h * u) & (xu >= 0) & (xu < w * u)
    if op.zeros:  # only every u-th row and column holds an input
        inside &= (yu % u == 0) & (xu % u == 0)
    rows = ((oc * ho + oy) * wo + ox)[inside]
    cols = (ic[inside] * h + yu[inside] // u) * w + xu[inside] // u
    vals = op.weight[oc[inside], ic[inside], ky[inside], kx[inside]]
    keep = vals != 0
    # Nearest upsampling makes several kernel taps read one input: duplicates sum in csr.
    m = sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(op.n_out, op.n_in))
    m.sum_duplicates()
    m.eliminate_zeros()
    return m


def _axis_links(n_out: int, n_in: int, k: int, stride: int, padding: int, upsample: int,
                zeros: bool = False) -> tuple[list, list]:
    """Along one axis: (out, in, group) for every connected pair, and the groups of kernel taps.

    An output reads its valid kernel taps; after nearest upsampling several
    taps can fall on one input element: together they are one synapse, and
    the tuple of those taps is the pair's group.
    """
    groups: dict[tuple[int, ...], int] = {}
    links = []
    for o in range(n_out):
        by_input: dict[int, list[int]] = {}
        for tap in range(k):
            pos = o * stride - padding + tap
            if 0 <= pos < n_in * upsample and not (zeros and pos % upsample):
                by_input.setdefault(pos // upsample, []).append(tap)
        for i, taps in by_input.items():
            links.append((o, i, groups.setdefault(tuple(taps), len(groups))))
    return links, list(groups)


def _conv_fan(op: LinearOp, side: str) -> np.ndarray:
    """Fan-out per input element (side "out") or fan-in per output element (side "in") of a conv.

    Separable by axis: a (y, x) position pair is connected through a y-group
    and an x-group of taps, and every channel pair whose weights in that
    block of taps have a non-zero sum makes one synapse.
    """
    cin, h, w = op.in_shape
    cout, ho, wo = op.conv_shape
    k, s, p, u = op.weight.shape[-1], op.stride, op.padding, op.upsample
    links_y, groups_y = _axis_links(ho, h, k, s, p, u, op.zeros)
    links_x, groups_x = _axis_links(wo, w, k, s, p, u, op.zeros)
    block = np.zeros((cout, cin, len(groups_y), len(groups_x)), dtype=bool)
    for gy, ty in enumerate(groups_y):
        for gx, tx in enumerate(groups_x):
            # one synapse's weight is the sum of its taps (they can cancel)
            block[:, :, gy, gx] = op.weight[:, :, list(ty)][:, :, :, list(tx)].sum(axis=(2, 3)) != 0
    counted = 1 if side == "out" else 0  # which end of a link is the element being counted
    ay = np.zeros((h if side == "out" else ho, len(groups_y)), dtype=np.int64)
    ax = np.zeros((w if side == "out" else wo, len(groups_x)), dtype=np.int64)
    for link in links_y:
        ay[link[counted], link[2]] += 1
    for link in links_x:
        ax[link[counted], link[2]] += 1
    channels = block.sum(axis=0 if side == "out" else 1).astype(np.int64)  # [c, gy, gx]
    return np.einsum("yg,cgh,xh->cyx", ay, channels, ax)


def compose(outer: LinearOp, inner: LinearOp) -> LinearOp:
    """The op ``outer(inner(x))``, exact."""
    if outer.in_shape != inner.out_shape and outer.n_in != inner.n_out:
        raise GraphError(f"cannot compose {outer.describe()} on {inner.describe()}: shapes differ")
    if inner.kind == "identity":
        if outer.kind == "identity":
            return LinearOp.identity(inner.in_shape, outer.out_shape)
        if outer.kind == "dense":
            return replace(outer, in_shape=inner.in_shape)
        return outer  # a reshape keeps the C-order vector: the conv reads it in its own (C, H, W) view
    if outer.kind == "identity":
        return replace(inner, out_shape=outer.out_shape)  # a dense op's output, or a view of a conv's
    # Kernels fold only when the outer conv reads the inner one's output as that conv computes it (no view).
    aligned = inner.kind == "conv" and outer.in_shape == inner.out_shape == inner.conv_shape
    if outer.is_pointwise_conv and aligned:
        w = inner.weight
        kernel = (outer.weight[:, :, 0, 0] @ w.reshape(w.shape[0], -1)).reshape(-1, *w.shape[1:])
        return replace(inner, out_shape=outer.out_shape, weight=kernel)
    if outer.kind == "conv" and outer.upsample == 1 and aligned and inner.weight.shape[-1] == 1 \
            and inner.stride == 1 and inner.padding == 0:
        # a 1x1 map commutes with nearest upsampling and with zero insertion: fold it into the outer kernel
        kernel = np.tensordot(outer.weight, inner.weight[:, :, 0, 0], axes=([1], [0])).transpose(0, 3, 1, 2)
        return replace(outer, in_shape=inner.in_shape, weight=kernel, upsample=inner.upsample, zeros=inner.zeros)
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


def op_to_dict(op: LinearOp) -> dict:
    """The op's geometry as JSON (its weights go to an array file)."""
    return {"kind": op.kind, "in_shape": list(op.in_shape), "out_shape": list(op.out_shape),
            "stride": op.stride, "padding": op.padding, "upsample": op.upsample, "zeros": op.zeros}


def op_from_dict(d: dict, weight: np.ndarray | None) -> LinearOp:
    return LinearOp(d["kind"], tuple(d["in_shape"]), tuple(d["out_shape"]), weight, d["stride"], d["padding"],
                    d["upsample"], bool(d.get("zeros", False)))


def upsample_op(in_shape: Shape, scale: int, zeros: bool = False) -> LinearOp:
    """Nearest upsampling (or zero insertion) as a conv with an identity 1x1 kernel after upsampling."""
    c = in_shape[0]
    return LinearOp.conv(np.eye(c).reshape(c, c, 1, 1), in_shape, stride=1, padding=0, upsample=scale, zeros=zeros)


def zero_insert(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, s*H, s*W]: each element followed by ``scale - 1`` zeros along both axes."""
    b, c, h, w = x.shape
    out = x.new_zeros((b, c, h * scale, w * scale))
    out[:, :, ::scale, ::scale] = x
    return out


def add_ops(a: LinearOp, b: LinearOp) -> LinearOp | None:
    """a + b as one op when their geometry matches, else None."""
    if a.kind == "identity" or b.kind == "identity":
        return None
    if a.geometry() != b.geometry():
        return None
    return replace(a, weight=a.weight + b.weight)
