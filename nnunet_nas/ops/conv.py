"""Convolutional building blocks of the candidate operations (DiNTS, DARTS-style cells).

Every block follows the DiNTS / DARTS order: nonlinearity before, norm after, convolutions without bias. Blocks
take ``spatial_dims`` (2 or 3), a ``stride`` and an :class:`OpStyle` (nonlinearity, norm, affine switch: DiNTS
uses ReLU + affine InstanceNorm, SCNAS LeakyReLU, PC-DARTS non-affine norms during the search). Module layouts
of the DiNTS blocks match MONAI's ``dints_block`` so parameter counts agree.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_nas.geometry import as_axes

_cpu_fast_paths = True  # plain_torch_paths() turns them off


def cpu_fast_paths() -> bool:
    """Whether the package's CPU-only kernels may run (the norm and 1x1 conv kernels below, the grid's lean edge of
    :mod:`nnunet_nas.spaces.lean_edge`): not under ``torch.compile``, which traces the plain PyTorch path and picks
    its own kernels, nor inside :func:`plain_torch_paths`."""
    return not torch.compiler.is_compiling() and _cpu_fast_paths


@contextmanager
def plain_torch_paths():
    """Eager on the plain PyTorch path that ``torch.compile`` traces (the same operators, so a compiled network's
    results compare with eager's to float rounding). Not thread-safe."""
    global _cpu_fast_paths
    before, _cpu_fast_paths = _cpu_fast_paths, False
    try:
        yield
    finally:
        _cpu_fast_paths = before


class _InstanceNormByGroupKernel:
    """InstanceNorm that, on the CPU, runs PyTorch's fused group-norm kernel with one group per channel (the same
    function: per-sample, per-channel mean and biased variance, ``eps`` inside the root, per-channel affine).
    ``nn.InstanceNorm`` routes through ``batch_norm`` after repeating the affine parameters and reshaping, some ten
    operators per call; a DiNTS network runs dozens of norms per forward, and at batch 1 on the CPU (nnU-Net's
    sliding-window inference) those operators cost more than the arithmetic. Same parameters and state dict as
    ``nn.InstanceNorm``; other devices, running statistics, unbatched input and ``torch.compile`` (which traces and
    fuses the plain path itself) keep ``nn.InstanceNorm``'s path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or self.track_running_stats or x.dim() != self._spatial_dims + 2
                or not cpu_fast_paths()):
            return super().forward(x)
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)


class InstanceNorm2d(_InstanceNormByGroupKernel, nn.InstanceNorm2d):
    _spatial_dims = 2


class InstanceNorm3d(_InstanceNormByGroupKernel, nn.InstanceNorm3d):
    _spatial_dims = 3


NORMS = {"instance": {2: InstanceNorm2d, 3: InstanceNorm3d}, "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}}


class _PointwiseByMatmul:
    """Conv that, on the CPU, computes a 1x1 (1x1x1) stride-1 ungrouped convolution as one matrix product
    ``W[out, in] @ x[n, in, voxels]``: the same function. PyTorch hands such convs to oneDNN whenever it runs with
    more than one thread and the input has more than 20,480 elements, which at batch 1 (nnU-Net's sliding window)
    is 4-6x slower than the matrix product (BENCHMARKS.md, "Inference time per case"). Same parameters and state
    dict as the ``nn.Conv`` it extends; every other case, and ``torch.compile`` (which picks its own kernels), keeps
    the conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or not cpu_fast_paths() or self.groups != 1
                or x.dim() != self._spatial_dims + 2
                or isinstance(self.padding, str) or any(p != 0 for p in self.padding)
                or any(k != 1 for k in self.kernel_size) or any(s != 1 for s in self.stride)):
            return super().forward(x)
        n = x.shape[0]  # a batched product of [n, out, in] and [n, in, voxels] copies neither operand
        y = torch.bmm(self.weight.flatten(1).expand(n, -1, -1), x.flatten(2))
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.view((n, self.out_channels) + tuple(x.shape[2:]))


class Conv2d(_PointwiseByMatmul, nn.Conv2d):
    _spatial_dims = 2


class Conv3d(_PointwiseByMatmul, nn.Conv3d):
    _spatial_dims = 3


def conv_nd(spatial_dims: int):
    return {2: Conv2d, 3: Conv3d}[spatial_dims]


@dataclass(frozen=True)
class OpStyle:
    """How an operation normalises and activates (DNA's ``norm_op`` / ``nonlin`` in one record)."""
    nonlin: type = nn.ReLU
    nonlin_kwargs: dict = field(default_factory=dict)
    norm: str = "instance"  # a key of NORMS
    affine: bool = True

    def make_nonlin(self) -> nn.Module:
        return self.nonlin(**self.nonlin_kwargs)

    def make_norm(self, spatial_dims: int, channels: int) -> nn.Module:
        try:
            return NORMS[self.norm][spatial_dims](channels, affine=self.affine)
        except KeyError:
            raise ValueError(f"OpStyle: norm {self.norm!r} in {spatial_dims}-D is not one of {sorted(NORMS)} "
                             f"in 2-D / 3-D.") from None


DINTS_STYLE = OpStyle()
SCNAS_STYLE = OpStyle(nonlin=nn.LeakyReLU, nonlin_kwargs={"negative_slope": 0.01})


def norm_nd(spatial_dims: int, channels: int, style: OpStyle = DINTS_STYLE) -> nn.Module:
    return style.make_norm(spatial_dims, channels)


def _pad_for(kernel: Sequence[int], dilation: int = 1) -> tuple:
    return tuple(dilation * (k // 2) for k in kernel)


class ActConvNorm(nn.Sequential):
    """Nonlinearity -> conv (no bias) -> norm. ``kernel`` is an int or a per-axis tuple; ``groups=in_channels``
    makes the conv depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel=3, spatial_dims: int = 3, dilation: int = 1,
                 stride: int = 1, style: OpStyle = DINTS_STYLE, groups: int = 1):
        kernel = as_axes(kernel, spatial_dims)
        super().__init__()
        self.act = style.make_nonlin()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, kernel, stride=stride,
                                          padding=_pad_for(kernel, dilation), dilation=dilation, groups=groups,
                                          bias=False)
        self.norm = norm_nd(spatial_dims, out_channels, style)


class FactorizedConv(nn.Sequential):
    """Pseudo-3-D (P3D) or pseudo-2-D block: ReLU -> conv ``kernel`` (in->in) -> conv ``kernel2`` (in->out) -> norm.

    For 3-D, ``kernel=(3,3,1)`` with ``kernel2=(1,1,3)`` is the paper's "P3D 3x3x1" operation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], kernel2: Sequence[int],
                 spatial_dims: int = 3, stride: int = 1, style: OpStyle = DINTS_STYLE):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.act = style.make_nonlin()
        self.conv = conv(in_channels, in_channels, tuple(kernel), stride=stride, padding=_pad_for(kernel), bias=False)
        self.conv2 = conv(in_channels, out_channels, tuple(kernel2), padding=_pad_for(kernel2), bias=False)
        self.norm = norm_nd(spatial_dims, out_channels, style)


class SepConv(nn.Sequential):
    """Depthwise-separable conv (DARTS ``DilConv``): nonlinearity -> depthwise conv (``dilation``, ``stride``)
    -> 1x1 conv -> norm. SCNAS's dilated separable ops and DARTS's ``dil_conv`` are this block."""

    def __init__(self, in_channels: int, out_channels: int, kernel=3, spatial_dims: int = 3, dilation: int = 1,
                 stride: int = 1, style: OpStyle = DINTS_STYLE):
        kernel = as_axes(kernel, spatial_dims)
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.act = style.make_nonlin()
        self.conv = conv(in_channels, in_channels, kernel, stride=stride, padding=_pad_for(kernel, dilation),
                         dilation=dilation, groups=in_channels, bias=False)
        self.conv2 = conv(in_channels, out_channels, 1, bias=False)
        self.norm = norm_nd(spatial_dims, out_channels, style)


class FactorizedReduce(nn.Module):
    """Down-sampling edge (DARTS 'factorized reduce'): ReLU, two 1x1 convs at ``stride`` (2, or per axis: 1 or 2) on
    ``x`` and on ``x`` shifted by one voxel along the strided axes, concatenated, then InstanceNorm. Extents along
    the strided axes must be even."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, style: OpStyle = DINTS_STYLE,
                 stride=2):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.spatial_dims = spatial_dims
        self.stride = as_axes(stride, spatial_dims)
        self.act = style.make_nonlin()
        self.conv = conv(in_channels, out_channels // 2, 1, stride=self.stride, bias=False)
        self.conv2 = conv(in_channels, out_channels - out_channels // 2, 1, stride=self.stride, bias=False)
        self.norm = norm_nd(spatial_dims, out_channels, style)

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` shifted by one voxel along the strided axes (the second conv's input)."""
        return x[(Ellipsis,) + tuple(slice(1, None) if s > 1 else slice(None) for s in self.stride)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        return self.norm(torch.cat([self.conv(x), self.conv2(self.shifted(x))], dim=1))


class FactorizedIncrease(nn.Module):
    """Up-sampling edge: (tri/bi)linear x ``scale`` (2, or per axis; align_corners=True) -> ReLU -> 1x1 conv ->
    InstanceNorm."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, style: OpStyle = DINTS_STYLE,
                 scale=2):
        super().__init__()
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.scale = as_axes(scale, spatial_dims)
        self.act = style.make_nonlin()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 1, bias=False)
        self.norm = norm_nd(spatial_dims, out_channels, style)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(x, self.scale, self.mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.act(self.upsample(x))))


def upsample(x: torch.Tensor, scale, mode: str) -> torch.Tensor:
    """``x`` up-sampled by ``scale`` per axis (align_corners=True); ``x`` itself where the scale is all ones."""
    scale = tuple(scale)
    if all(s == 1 for s in scale):
        return x
    return resample(x, mode, scale_factor=tuple(float(s) for s in scale), align_corners=True)


def resample(x: torch.Tensor, mode: str, **kwargs) -> torch.Tensor:
    """``F.interpolate`` in ``x``'s dtype: CUDA's autocast runs (tri/bi)linear interpolation in float32, which would
    promote everything after it (a whole grid level) to float32 under AMP."""
    return F.interpolate(x, mode=mode, **kwargs).to(x.dtype)
