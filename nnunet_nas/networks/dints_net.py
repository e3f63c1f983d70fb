"""DiNTS network: multi-resolution stems, the L x D grid and a U-Net-like tail (He et al., CVPR 2021, Fig. 2).

The same class is the search supernet (``genotype=None``: every edge and op, forward takes op weights) and the
fixed network that nnU-Net trains and predicts with (``genotype`` given), built by the stock nnU-Net trainer
from a plans ``architecture`` block::

    "network_class_name": "nnunet_nas.networks.dints_net.DiNTSNet",
    "arch_kwargs": {"genotype": {...}, "channel_mul": 1.0, "strides": [[1,1,1],[2,2,2],...]}

An op set with ops that fit themselves to the feature maps (DAST's transformer: its token grid) needs
``patch_size`` (level d is ``patch / scale(d + 1)``) and takes their settings in ``op_options``; ``channel_multiple``
rounds the grid's channels down to a multiple (DAST: of the attention heads). DAST's export writes all three.

Stems and tail follow MONAI's layout (parameter counts agree): level d of the grid lives at stage d + 1, 1/2^(d+1)
of the input resolution on an isotropic geometry (``1 / scale(d + 1)`` per axis in general, below), with ``f[d+1]``
channels, ``f[i] = int(base_channels * 2^i * channel_mul)``.

Deep supervision [ours]: the tail has decoder features at stages r = 0..k+1 (k = deepest active node of the last
block: the grid output entering the tail at stage k+1, then the output of each up-sampling stem); a 1x1 head on
each gives nnU-Net's extra outputs, highest resolution first. ``strides`` in ``arch_kwargs`` (the geometry's
strides, nnU-Net's convention: one entry more than outputs) tells nnU-Net how many there are (at most k+2) and at
which scales. The heads exist only when the network is built with ``deep_supervision=True`` (nnU-Net's training);
built without (nnU-Net's prediction), it has none and ignores head weights in a state dict it loads.

A fixed network holds no parameter its forward pass does not use (nnU-Net wraps it in DDP without
``find_unused_parameters``): stems are built only for the input levels the genotype reads (the published
architecture leaves level 3 unread, so it has 3,547,392 parameters fewer than MONAI's instance, which builds that
stem anyway). The tail runs from the coarsest level D-1 in both the supernet and the fixed network, and a level
the last block leaves empty enters it as zeros, as it does in the supernet (whose empty levels are sums of
zero-weighted edges): with one-hot architecture weights, supernet and fixed network compute the same function.
"""

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_nas.errors import ConfigError, PlansError
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.networks.common import DecoderSwitch, drop_head_weights, with_deep_supervision
from nnunet_nas.ops.catalog import op_specs
from nnunet_nas.geometry import space_geometry
from nnunet_nas.ops.conv import ActConvNorm, conv_nd, norm_nd, resample, upsample
from nnunet_nas.patch import check_patch_divisible
from nnunet_nas.spaces.grid import GridSpace, default_grid_op_set
from nnunet_nas.spaces.grid_topology import check_num_depths


MIN_CHANNELS = 2  # per level, the narrowest a DiNTSNet builds


def narrowest_channel_mul(base_channels: int = 32, channel_multiple: int = 1) -> float:
    """The smallest ``channel_mul`` a :class:`DiNTSNet` builds at: the input stage and the first grid level (rounded
    down to a multiple of ``channel_multiple``) at least :data:`MIN_CHANNELS` channels; deeper levels are wider."""
    return max(MIN_CHANNELS / base_channels, max(MIN_CHANNELS, channel_multiple) / (2 * base_channels))


class DiNTSNet(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, genotype=None, num_blocks: int = 12,
                 num_depths: int = 4, spatial_dims: int = 3, channel_mul: float = 1.0, base_channels: int = 32,
                 op_set: Optional[str] = None, strides: Optional[Sequence] = None, deep_supervision: bool = False,
                 recompute_norms: bool = True, patch_size: Optional[Sequence[int]] = None,
                 op_options: Optional[dict] = None, channel_multiple: int = 1, geometry=None, **unused):
        super().__init__()
        if unused:
            raise TypeError(f"DiNTSNet got unexpected arguments {sorted(unused)}.")
        if genotype is not None:
            genotype = genotype if isinstance(genotype, GridGenotype) else GridGenotype.from_dict(genotype)
            num_blocks, num_depths = genotype.num_blocks, genotype.num_depths
            spatial_dims, op_set = genotype.spatial_dims, genotype.op_set
            if genotype.geometry is not None:
                if geometry is not None and space_geometry(geometry, spatial_dims, num_depths + 1) != genotype.geometry:
                    raise PlansError("DiNTSNet: the geometry given differs from the genotype's; leave it out (the "
                                     "genotype records the geometry it was searched in).")
                geometry = genotype.geometry
        check_num_depths(num_depths)
        # per-axis strides and kernels of the input stage and the D levels (level d: stage d + 1)
        self.geometry = space_geometry(geometry, spatial_dims, num_depths + 1, "DiNTSNet geometry")
        op_set = op_set or default_grid_op_set(spatial_dims)
        self.genotype = genotype
        self.num_blocks, self.num_depths, self.spatial_dims = num_blocks, num_depths, spatial_dims
        # the grid levels' channels are rounded down to a multiple of channel_multiple (DAST: the attention heads)
        self.filters = [int(base_channels * 2 ** i * channel_mul) for i in range(num_depths + 1)]
        self.filters[1:] = [f // channel_multiple * channel_multiple for f in self.filters[1:]]
        if min(self.filters) < MIN_CHANNELS:
            heads = f" (grid levels rounded down to a multiple of {channel_multiple} heads)" \
                if channel_multiple > 1 else ""
            raise ConfigError(f"DiNTSNet: channel_mul={channel_mul} gives {self.filters} channels per level{heads}; "
                              f"use a larger channel_mul{' or fewer num_heads' if heads else ''}.")
        f, conv = self.filters, conv_nd(spatial_dims)
        self.patch_size = None if patch_size is None else [int(p) for p in patch_size]
        shaped = [s.name for s in op_specs(op_set) if "feature_shape" in s.options]
        if shaped and self.patch_size is None:
            raise PlansError(f"DiNTSNet: the ops {shaped} of op set {op_set} fit themselves to the feature maps; give "
                             f"patch_size (the configuration's patch, as the export writes it into arch_kwargs).")
        if self.patch_size is not None and len(self.patch_size) != spatial_dims:
            raise PlansError(f"DiNTSNet: patch_size {self.patch_size} is not {spatial_dims}-D.")
        geo = self.geometry
        grid = dict(feature_shapes=None if self.patch_size is None else
                    [list(geo.shape(self.patch_size, d + 1)) for d in range(num_depths)], op_options=op_options,
                    geometry=geo)
        if genotype is None:
            self.input_nodes = (True,) * num_depths
            self.deepest = num_depths - 1
            self.space = GridSpace(num_blocks, num_depths, f[1:], spatial_dims, op_set, recompute_norms=recompute_norms,
                                   **grid)
        else:
            # Python bools, not a numpy array: torch.compile reads numpy values as tensors (a data-dependent branch)
            self.input_nodes = tuple(bool(v) for v in genotype.node_a[0])
            self.deepest = int(np.flatnonzero(genotype.node_a[-1]).max())
            self.space = GridSpace(num_blocks, num_depths, f[1:], spatial_dims, op_set,
                                   edge_mask=genotype.arch_code_a, op_index=genotype.op_indices(), **grid)
        self.input_channels = input_channels
        k, pad = geo.kernels, [tuple(a // 2 for a in kernel) for kernel in geo.kernels]
        self.stem_down = nn.ModuleDict({str(d): nn.Sequential(
            conv(input_channels, f[d], k[d], padding=pad[d], bias=False), norm_nd(spatial_dims, f[d]), nn.ReLU(),
            conv(f[d], f[d + 1], k[d + 1], stride=geo.strides[d + 1], padding=pad[d + 1], bias=False),
            norm_nd(spatial_dims, f[d + 1]),
        ) for d in range(num_depths) if self.input_nodes[d]})
        self.stem_up = nn.ModuleList([nn.Sequential(
            nn.ReLU(), conv(f[d + 1], f[d], k[d + 1], padding=pad[d + 1], bias=False), norm_nd(spatial_dims, f[d]),
        ) for d in range(num_depths)])
        self.stem_finals = nn.Sequential(ActConvNorm(f[0], f[0], k[0], spatial_dims), conv(f[0], num_classes, 1))
        self.strides = [list(s) for s in strides] if strides is not None else None
        num_outputs = 1 if strides is None else len(strides) - 1
        if num_outputs < 1 or num_outputs > self.deepest + 2:
            raise PlansError(
                f"DiNTSNet: strides {strides} ask for {num_outputs} deep-supervision outputs, but this architecture "
                f"has decoder features at only {self.deepest + 2} resolutions; use strides of length "
                f"2..{self.deepest + 3}.")
        self.num_outputs = num_outputs
        self.ds_heads = nn.ModuleList([conv(f[r], num_classes, 1) for r in range(1, num_outputs)]
                                      if deep_supervision else [])
        if not deep_supervision:  # a checkpoint trained with deep supervision loads into it
            self._register_load_state_dict_pre_hook(drop_head_weights)
        self.decoder = DecoderSwitch(deep_supervision)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"

    @property
    def memory_model(self):
        """The grid's :class:`~nnunet_nas.arch.memory.GridMemoryModel` (built once)."""
        if getattr(self, "_memory_model", None) is None:
            from nnunet_nas.arch.memory import GridMemoryModel
            self._memory_model = GridMemoryModel.from_network(self)
        return self._memory_model

    @property
    def divisor(self) -> tuple:
        """Each spatial extent of the input must be divisible by this, per axis: the deepest level's scale, 2^D on
        an isotropic geometry (MONAI asks for 2^(D+1); nothing in this network needs it, and nnU-Net's 2-D
        Hippocampus patch 56 x 40 is a multiple of 8 but not of 16)."""
        return self.geometry.divisor

    def check_input_shape(self, shape) -> None:
        check_patch_divisible(shape, self.divisor, f"DiNTS with D={self.num_depths} levels needs the patch extents "
                                                   f"divisible by the deepest level's scale {list(self.divisor)}")

    def forward(self, x: torch.Tensor, weights: Optional[torch.Tensor] = None):
        self.check_input_shape(x.shape[2:])
        nodes = []
        for d in range(self.num_depths):
            if not self.input_nodes[d]:
                nodes.append(None)
                continue
            scale = self.geometry.scale(d)
            xd = x if all(a == 1 for a in scale) else resample(x, self.mode, scale_factor=tuple(1.0 / a for a in scale),
                                                               align_corners=True)
            nodes.append(self.stem_down[str(d)](xd))
        outs = self.space(nodes, weights)
        feats, tmp = [None] * (self.num_depths + 1), None  # feats[r]: decoder feature at stage r, f[r] channels
        for r in range(self.num_depths - 1, -1, -1):
            s = outs[r] if tmp is None else (tmp if outs[r] is None else outs[r] + tmp)
            if s is None:  # an empty coarse level of the last block: zeros, as in the supernet
                s = x.new_zeros((x.shape[0], self.filters[r + 1]) + self.geometry.shape(x.shape[2:], r + 1))
            if tmp is None:
                feats[r + 1] = s
            tmp = upsample(self.stem_up[r](s), self.geometry.strides[r + 1], self.mode)
            feats[r] = tmp
        return with_deep_supervision(self, self.stem_finals(tmp), feats)

    def compute_conv_feature_map_size(self, input_size) -> int:
        """Feature-map elements of one forward at batch 1 (DNA's planner convention); see arch/memory.py."""
        from nnunet_nas.arch.memory import network_feature_map_size
        return network_feature_map_size(self, input_size)
