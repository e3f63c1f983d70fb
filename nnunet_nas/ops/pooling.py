"""Parameter-light candidate operations of DARTS-style cells: pooling, zero and skip, with stride and channel
change (DARTS / PC-DARTS ``OPS``; SCNAS's eight operations include max / average pooling, identity and zero)."""

import torch
from torch import nn

from nnunet_nas.geometry import as_axes
from nnunet_nas.ops.conv import DINTS_STYLE, ActConvNorm, FactorizedReduce, OpStyle, norm_nd

_POOLS = {"max": {2: nn.MaxPool2d, 3: nn.MaxPool3d}, "avg": {2: nn.AvgPool2d, 3: nn.AvgPool3d}}


class Pool(nn.Module):
    """``kind`` ("max" / "avg") pooling with 'same' padding and ``stride`` (``kernel`` and ``stride`` an int or per
    axis), then (if the channels change) a 1x1 conv, then a norm (PC-DARTS puts a non-affine norm after its pools;
    ``style.affine`` decides)."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, kernel=3, spatial_dims: int = 3,
                 stride=1, style: OpStyle = DINTS_STYLE):
        super().__init__()
        if kind not in _POOLS:
            raise ValueError(f"Pool: kind {kind!r} is not one of {sorted(_POOLS)}.")
        extra = {"count_include_pad": False} if kind == "avg" else {}
        kernel, stride = as_axes(kernel, spatial_dims), as_axes(stride, spatial_dims)
        self.pool = _POOLS[kind][spatial_dims](kernel, stride=stride, padding=tuple(k // 2 for k in kernel), **extra)
        self.project = None if in_channels == out_channels else ActConvNorm(in_channels, out_channels, 1, spatial_dims,
                                                                            style=style)
        self.norm = norm_nd(spatial_dims, out_channels, style)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = any(s < k for s, k in zip(x.shape[2:], self.pool.kernel_size))
        x = self._pool_small(x) if small else self.pool(x)
        if self.project is not None:
            x = self.project(x)
        return self.norm(x)

    def _pool_small(self, x: torch.Tensor) -> torch.Tensor:
        """The same pooling on an input smaller than the kernel (a coarse level of a small patch), which PyTorch's
        pooling refuses: explicit padding, with -inf for max pooling and, for average pooling, the sum divided by
        the count of real voxels (``count_include_pad=False``)."""
        from torch.nn import functional as F
        k, s, p = self.pool.kernel_size, self.pool.stride, self.pool.padding
        dims = x.dim() - 2
        pad = tuple(q for axis in reversed(range(dims)) for q in (p[axis], p[axis]))  # F.pad: last axis first
        if isinstance(self.pool, (nn.MaxPool2d, nn.MaxPool3d)):
            return (F.max_pool2d if dims == 2 else F.max_pool3d)(F.pad(x, pad, value=float("-inf")), k, s)
        avg = F.avg_pool2d if dims == 2 else F.avg_pool3d
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        return avg(F.pad(x, pad), k, s) / avg(F.pad(ones, pad), k, s)


class Zero(nn.Module):
    """The 'none' operation: zeros of the output shape (no parameters; connectivity through its weight)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, stride=1):
        super().__init__()
        self.out_channels, self.stride, self.spatial_dims = out_channels, as_axes(stride, spatial_dims), spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0], self.out_channels] + [-(-s // t) for s, t in zip(x.shape[2:], self.stride)]
        return x.new_zeros(shape)


def skip_op(in_channels: int, out_channels: int, spatial_dims: int = 3, stride=1,
            style: OpStyle = DINTS_STYLE) -> nn.Module:
    """Identity, or DARTS's factorized reduce where the stride is 2 (on some axis), or a 1x1 conv where only
    channels change."""
    stride = as_axes(stride, spatial_dims)
    if any(s not in (1, 2) for s in stride):
        raise ValueError(f"skip_op: stride {list(stride)} is not supported (1 or 2 per axis).")
    if any(s == 2 for s in stride):
        return FactorizedReduce(in_channels, out_channels, spatial_dims, style, stride)
    if in_channels != out_channels:
        return ActConvNorm(in_channels, out_channels, 1, spatial_dims, style=style)
    return nn.Identity()

