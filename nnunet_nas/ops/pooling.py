"""Parameter-light candidate operations of DARTS-style cells: pooling, zero and skip, with stride and channel
change (DARTS / PC-DARTS ``OPS``; SCNAS's eight operations include max / average pooling, identity and zero)."""

import torch
from torch import nn

from nnunet_nas.ops.conv import DINTS_STYLE, ActConvNorm, FactorizedReduce, OpStyle, norm_nd

_POOLS = {"max": {2: nn.MaxPool2d, 3: nn.MaxPool3d}, "avg": {2: nn.AvgPool2d, 3: nn.AvgPool3d}}


class Pool(nn.Module):
    """``kind`` ("max" / "avg") pooling with 'same' padding and ``stride``, then (if the channels change) a 1x1
    conv, then a norm (PC-DARTS puts a non-affine norm after its pools; ``style.affine`` decides)."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, kernel: int = 3, spatial_dims: int = 3,
                 stride: int = 1, style: OpStyle = DINTS_STYLE):
        super().__init__()
        if kind not in _POOLS:
            raise ValueError(f"Pool: kind {kind!r} is not one of {sorted(_POOLS)}.")
        extra = {"count_include_pad": False} if kind == "avg" else {}
        self.pool = _POOLS[kind][spatial_dims](kernel, stride=stride, padding=kernel // 2, **extra)
        self.project = None if in_channels == out_channels else ActConvNorm(in_channels, out_channels, 1, spatial_dims,
                                                                            style=style)
        self.norm = norm_nd(spatial_dims, out_channels, style)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x) if min(x.shape[2:]) >= self.pool.kernel_size else self._pool_small(x)
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
        pad = (p,) * (2 * dims)
        if isinstance(self.pool, (nn.MaxPool2d, nn.MaxPool3d)):
            return (F.max_pool2d if dims == 2 else F.max_pool3d)(F.pad(x, pad, value=float("-inf")), k, s)
        avg = F.avg_pool2d if dims == 2 else F.avg_pool3d
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        return avg(F.pad(x, pad), k, s) / avg(F.pad(ones, pad), k, s)


class Zero(nn.Module):
    """The 'none' operation: zeros of the output shape (no parameters; connectivity through its weight)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, stride: int = 1):
        super().__init__()
        self.out_channels, self.stride, self.spatial_dims = out_channels, stride, spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0], self.out_channels] + [-(-s // self.stride) for s in x.shape[2:]]
        return x.new_zeros(shape)


def skip_op(in_channels: int, out_channels: int, spatial_dims: int = 3, stride: int = 1,
            style: OpStyle = DINTS_STYLE) -> nn.Module:
    """Identity, or DARTS's factorized reduce where the stride is 2, or a 1x1 conv where only channels change."""
    if stride == 2:
        return FactorizedReduce(in_channels, out_channels, spatial_dims, style)
    if stride != 1:
        raise ValueError(f"skip_op: stride {stride} is not supported (1 or 2).")
    if in_channels != out_channels:
        return ActConvNorm(in_channels, out_channels, 1, spatial_dims, style=style)
    return nn.Identity()

