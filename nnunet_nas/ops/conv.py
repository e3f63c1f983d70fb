"""Convolutional building blocks of the DiNTS cell and edge operations (He et al., CVPR 2021, section 3.2).

Every block follows the paper's order: ReLU before, InstanceNorm (affine) after, convolutions without bias.
Blocks take ``spatial_dims`` (2 or 3); module layouts match MONAI's ``dints_block`` so parameter counts agree.
"""

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def conv_nd(spatial_dims: int):
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def norm_nd(spatial_dims: int, channels: int) -> nn.Module:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims](channels, affine=True)


def _pad_for(kernel: Sequence[int], dilation: int = 1) -> tuple:
    return tuple(dilation * (k // 2) for k in kernel)


class ActConvNorm(nn.Sequential):
    """ReLU -> conv (no bias) -> InstanceNorm. ``kernel`` is an int or a per-axis tuple."""

    def __init__(self, in_channels: int, out_channels: int, kernel=3, spatial_dims: int = 3, dilation: int = 1):
        kernel = (kernel,) * spatial_dims if isinstance(kernel, int) else tuple(kernel)
        super().__init__()
        self.act = nn.ReLU()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, kernel, padding=_pad_for(kernel, dilation),
                                          dilation=dilation, bias=False)
        self.norm = norm_nd(spatial_dims, out_channels)


class FactorizedConv(nn.Sequential):
    """Pseudo-3-D (P3D) or pseudo-2-D block: ReLU -> conv ``kernel`` (in->in) -> conv ``kernel2`` (in->out) -> norm.

    For 3-D, ``kernel=(3,3,1)`` with ``kernel2=(1,1,3)`` is the paper's "P3D 3x3x1" operation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], kernel2: Sequence[int],
                 spatial_dims: int = 3):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.act = nn.ReLU()
        self.conv = conv(in_channels, in_channels, tuple(kernel), padding=_pad_for(kernel), bias=False)
        self.conv2 = conv(in_channels, out_channels, tuple(kernel2), padding=_pad_for(kernel2), bias=False)
        self.norm = norm_nd(spatial_dims, out_channels)


class FactorizedReduce(nn.Module):
    """2x down-sampling edge (DARTS 'factorized reduce'): ReLU, two stride-2 1x1 convs on ``x`` and on ``x``
    shifted by one voxel, concatenated, then InstanceNorm. Input extents must be even."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.spatial_dims = spatial_dims
        self.act = nn.ReLU()
        self.conv = conv(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.conv2 = conv(in_channels, out_channels - out_channels // 2, 1, stride=2, bias=False)
        self.norm = norm_nd(spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        shifted = x[(Ellipsis,) + (slice(1, None),) * self.spatial_dims]
        return self.norm(torch.cat([self.conv(x), self.conv2(shifted)], dim=1))


class FactorizedIncrease(nn.Module):
    """2x up-sampling edge: (tri/bi)linear x2 (align_corners=True) -> ReLU -> 1x1 conv -> InstanceNorm."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__()
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.act = nn.ReLU()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 1, bias=False)
        self.norm = norm_nd(spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=True)
        return self.norm(self.conv(self.act(x)))
