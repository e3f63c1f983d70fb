"""SCNAS network (Kim et al., MICCAI 2019, Fig. 1): a U-Net of searched cells of four types.

Layout, with level l at 1/2^l of the input resolution (per axis: ``1 / scale(l)`` of the ``geometry`` nnU-Net planned,
whose kernels the level's ops follow, :mod:`nnunet_nas.geometry`) and ``c_l = c_0 * 2^l`` channels (``c_0 =
int(base_channels * channel_mul)``, the stem width)::

    stem (level 0)
    reduction 0->1, encoder-normal 1, reduction 1->2, encoder-normal 2, reduction 2->3, encoder-normal 3
    inter-cell 3 (a copy of the encoder-normal cell)
    expansion 3->2, decoder-normal 2, expansion 2->1, decoder-normal 1, expansion 1->0, decoder-normal 0
    out block (level 0)

The paper's 12 cells are the six encoder cells and the six decoder cells; the inter-cell is the 13th module, with
the encoder-normal structure. Every cell takes the outputs of the previous two cells (the first reduction cell takes
the stem output twice); in the decoder the previous cell's output is first summed with the encoder output of the
same level (the stem at level 0, the encoder-normal cell at levels 1-3). Reduction cells double the channels and run
their input edges at stride 2, expansion cells up-sample their inputs first and halve them. Cells of one type share
one structure at every level.

The same class is the search supernet (``genotype=None``; forward takes op weights ``[4, E, N]`` or
:class:`~nnunet_nas.arch.weighting.SampledOpWeights`) and the fixed network nnU-Net's stock trainer builds from a
plans ``architecture`` block (``genotype`` given). Deep supervision [ours]: 1x1 heads on the decoder states at
1/2, 1/4 (decoder-normal cells) and 1/8 (inter-cell), highest resolution first, as many as ``strides`` asks (at most
3); built only with ``deep_supervision=True``.
"""

from typing import List, Optional, Sequence

import torch
from torch import nn

from nnunet_nas.arch.weighting import SampledOpWeights
from nnunet_nas.errors import ConfigError, PlansError
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.geometry import space_geometry
from nnunet_nas.networks.common import DecoderSwitch, drop_head_weights, with_deep_supervision
from nnunet_nas.ops.catalog import get_op_set
from nnunet_nas.ops.conv import ActConvNorm, conv_nd, norm_nd
from nnunet_nas.patch import check_patch_divisible
from nnunet_nas.spaces.cell import Cell

CELL_TYPES = ("encoder_normal", "reduction", "decoder_normal", "expansion")
NUM_LEVELS = 3  # three 2x down-samplings and up-samplings [paper]
_KIND = {"encoder_normal": "normal", "reduction": "reduction", "decoder_normal": "normal", "expansion": "expansion"}
DEFAULT_OP_SETS = {2: "scnas_2d", 3: "scnas_3d"}
MIN_STEM_CHANNELS = 2  # the narrowest stem an SCNASNet builds


def narrowest_channel_mul(base_channels: int = 32) -> float:
    """The smallest ``channel_mul`` an :class:`SCNASNet` builds at (its stem :data:`MIN_STEM_CHANNELS` channels)."""
    return MIN_STEM_CHANNELS / base_channels


def cell_plan():
    """The cells in order: ``(cell type, input level, output level, role)``, role "encoder", "inter" (an
    encoder-normal cell at level 3) or "decoder"."""
    plan = []
    for level in range(NUM_LEVELS):
        plan += [("reduction", level, level + 1, "encoder"), ("encoder_normal", level + 1, level + 1, "encoder")]
    plan.append(("encoder_normal", NUM_LEVELS, NUM_LEVELS, "inter"))
    for level in range(NUM_LEVELS, 0, -1):
        plan += [("expansion", level, level - 1, "decoder"), ("decoder_normal", level - 1, level - 1, "decoder")]
    return plan


class SCNASNet(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, genotype=None, spatial_dims: int = 3,
                 channel_mul: float = 1.5, base_channels: int = 32, num_nodes: int = 4, op_set: Optional[str] = None,
                 strides: Optional[Sequence] = None, deep_supervision: bool = False, geometry=None, **unused):
        super().__init__()
        if unused:
            raise TypeError(f"SCNASNet got unexpected arguments {sorted(unused)}.")
        self._kwargs = dict(input_channels=input_channels, num_classes=num_classes, genotype=genotype,
                            spatial_dims=spatial_dims, channel_mul=channel_mul, base_channels=base_channels,
                            num_nodes=num_nodes, op_set=op_set, strides=strides, deep_supervision=deep_supervision,
                            geometry=geometry)
        if genotype is not None:
            genotype = genotype if isinstance(genotype, CellGenotype) else CellGenotype.from_dict(genotype)
            genotype.validate("SCNASNet genotype", CELL_TYPES)
            spatial_dims, op_set, num_nodes = genotype.spatial_dims, genotype.op_set, genotype.num_nodes
            if genotype.geometry is not None:
                if geometry is not None and space_geometry(geometry, spatial_dims, NUM_LEVELS + 1) != genotype.geometry:
                    raise PlansError("SCNASNet: the geometry given differs from the genotype's; leave it out (the "
                                     "genotype records the geometry it was searched in).")
                geometry = genotype.geometry
        # per-axis strides and kernels of the levels 0 .. NUM_LEVELS (nnU-Net's plan; isotropic where absent)
        self.geometry = geo = space_geometry(geometry, spatial_dims, NUM_LEVELS + 1, "SCNASNet geometry")
        op_set = op_set or DEFAULT_OP_SETS[spatial_dims]
        if get_op_set(op_set).spatial_dims != spatial_dims:
            raise ConfigError(f"SCNASNet: op set {op_set!r} is not {spatial_dims}-D.")
        self.genotype, self.spatial_dims, self.op_set = genotype, spatial_dims, op_set
        c0 = int(base_channels * channel_mul)
        if c0 < MIN_STEM_CHANNELS:
            raise ConfigError(f"SCNASNet: channel_mul={channel_mul} gives a stem of {c0} channels; use a larger one.")
        self.channels = [c0 * 2 ** level for level in range(NUM_LEVELS + 1)]
        style = get_op_set(op_set).style
        k0 = geo.kernels[0]
        self.stem = nn.Sequential(conv_nd(spatial_dims)(input_channels, c0, k0, padding=tuple(k // 2 for k in k0),
                                                        bias=False),
                                  norm_nd(spatial_dims, c0, style))
        self.plan = cell_plan()
        self.cells = nn.ModuleList()
        levels = [0]  # level of every state: the stem, then each cell's output
        for i, (cell_type, level_in, level_out, _) in enumerate(self.plan):
            sources = self._sources(i)
            ops = None if genotype is None else genotype.edge_ops(cell_type)
            # an input is brought to the cell's working resolution (an expansion cell's output level) by the plan's
            # stride between the two levels
            target = level_out if _KIND[cell_type] == "expansion" else level_in
            self.cells.append(Cell(op_set, _KIND[cell_type], [self.channels[levels[s]] for s in sources],
                                   self.channels[level_out], num_nodes, [levels[s] - level_in for s in sources], ops,
                                   stride=geo.strides[max(level_in, level_out)],
                                   in_factors=[geo.strides[max(levels[s], target)] for s in sources],
                                   planned_kernel=geo.kernels[level_out]))
            levels.append(level_out)
        self.out = nn.Sequential(ActConvNorm(c0, c0, k0, spatial_dims, style=style),
                                 conv_nd(spatial_dims)(c0, num_classes, 1))
        self.strides = [list(s) for s in strides] if strides is not None else None
        num_outputs = 1 if strides is None else len(strides) - 1
        if not 1 <= num_outputs <= NUM_LEVELS + 1:
            raise PlansError(f"SCNASNet: strides {strides} ask for {num_outputs} outputs; this network has decoder "
                             f"states at {NUM_LEVELS + 1} resolutions (use strides of length 2..{NUM_LEVELS + 2}).")
        self.num_outputs = num_outputs
        self.ds_heads = nn.ModuleList([conv_nd(spatial_dims)(self.channels[r], num_classes, 1)
                                       for r in range(1, num_outputs)] if deep_supervision else [])
        if not deep_supervision:
            self._register_load_state_dict_pre_hook(drop_head_weights)
        self.decoder = DecoderSwitch(deep_supervision)

    @staticmethod
    def _sources(i: int) -> List[int]:
        """State indices (0: stem, k + 1: cell k) of cell ``i``'s two inputs: the previous two cells (the stem
        twice for the first cell)."""
        return [max(i - 1, 0), i]

    @property
    def divisor(self) -> tuple:
        """Per axis: the coarsest level's scale (8 on an isotropic geometry: three 2x down-samplings)."""
        return self.geometry.divisor

    def check_input_shape(self, shape) -> None:
        check_patch_divisible(shape, self.divisor, f"SCNAS needs the patch extents divisible by its coarsest "
                                                   f"level's scale {list(self.divisor)}")

    def forward(self, x: torch.Tensor, weights=None):
        self.check_input_shape(x.shape[2:])
        if self.genotype is None and weights is None:
            raise ValueError("SCNASNet: the supernet needs op weights [4, E, N]; a fixed network has none.")
        active = None
        if isinstance(weights, SampledOpWeights):
            weights, active = weights.weights, weights.active.tolist()  # read once (a CPU tensor)
        states = [self.stem(x)]
        encoder = {0: states[0]}  # level -> encoder output summed into the decoder
        decoder = {}  # level -> decoder state (deep supervision; the inter-cell's at level 3)
        for i, ((cell_type, _, level_out, role), cell) in enumerate(zip(self.plan, self.cells)):
            s0, s1 = (states[s] for s in self._sources(i))
            if role == "decoder":
                s1 = s1 + encoder[self.plan[i - 1][2]]  # the previous cell's output + the encoder's at its level
            t = CELL_TYPES.index(cell_type)
            out = cell(s0, s1, None if weights is None else weights[t], None if active is None else active[t])
            states.append(out)
            (encoder if role == "encoder" else decoder)[level_out] = out
        return with_deep_supervision(self, self.out(states[-1]), decoder)

    def remove_ops(self, alive) -> int:
        """Operation pruning of the supernet: delete the op modules that ``alive`` ``[cell types, edges, ops]``
        marks dead, in every cell of each type (cells of one type share alpha); returns how many were removed."""
        if self.genotype is not None:
            raise ValueError("SCNASNet.remove_ops: a fixed network has no candidate operations to prune.")
        return sum(cell.remove_ops(alive[CELL_TYPES.index(cell_type)])
                   for (cell_type, *_), cell in zip(self.plan, self.cells))

    def compute_conv_feature_map_size(self, input_size) -> int:
        """Elements of every conv output of one forward at batch 1 (dynamic_network_architectures' convention,
        which nnU-Net's planner uses), counted on the meta device."""
        from nnunet_nas.networks.common import conv_output_elements
        return conv_output_elements(lambda: SCNASNet(**self._kwargs), self._kwargs["input_channels"], input_size)
