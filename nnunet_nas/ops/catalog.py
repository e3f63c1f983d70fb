"""Op sets by name: the only table of candidate operations.

Each op has a stable name (used in genotypes, never indices), a factory ``(channels, spatial_dims) -> nn.Module``
mapping ``channels -> channels`` at constant resolution, and a memory cost: the number of stored activation
tensors of the op's output size that training keeps for the backward pass (the "tensor size" estimate of the
DiNTS paper, section 3.5; same table as MONAI's ``ram_cost`` so figures stay comparable).

Edge (topology-level) operations are in :func:`edge_preprocess` with their own costs.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from torch import nn

from nnunet_nas.ops.conv import ActConvNorm, FactorizedConv, FactorizedIncrease, FactorizedReduce


@dataclass(frozen=True)
class OpSpec:
    name: str
    factory: Callable[[int, int], nn.Module]
    memory_cost: float  # stored tensors of the op's output size (ReLU input, conv output, norm output...)


def _skip(c, dims):
    return nn.Identity()


# [paper] section 3.2: skip, 3x3x3, P3D 3x3x1, 3x1x3, 1x3x3. Order = MONAI's op index 0..4.
DINTS_3D = (
    OpSpec("skip", _skip, 0.0),
    OpSpec("conv_3x3x3", lambda c, d: ActConvNorm(c, c, 3, d), 3.0),
    OpSpec("p3d_3x3x1", lambda c, d: FactorizedConv(c, c, (3, 3, 1), (1, 1, 3), d), 4.0),
    OpSpec("p3d_3x1x3", lambda c, d: FactorizedConv(c, c, (3, 1, 3), (1, 3, 1), d), 4.0),
    OpSpec("p3d_1x3x3", lambda c, d: FactorizedConv(c, c, (1, 3, 3), (3, 1, 1), d), 4.0),
)

# [ours] 2-D analogue for nnU-Net's 2d configuration: the same five roles with 2-D kernels; the factorised
# ops become 3x1 -> 1x3 and 1x3 -> 3x1, and a dilated 3x3 replaces the third axis' variant.
DINTS_2D = (
    OpSpec("skip", _skip, 0.0),
    OpSpec("conv_3x3", lambda c, d: ActConvNorm(c, c, 3, d), 3.0),
    OpSpec("p2d_3x1", lambda c, d: FactorizedConv(c, c, (3, 1), (1, 3), d), 4.0),
    OpSpec("p2d_1x3", lambda c, d: FactorizedConv(c, c, (1, 3), (3, 1), d), 4.0),
    OpSpec("dil_conv_3x3", lambda c, d: ActConvNorm(c, c, 3, d, dilation=2), 3.0),
)

OP_SETS: Dict[str, Tuple[OpSpec, ...]] = {"dints_3d": DINTS_3D, "dints_2d": DINTS_2D}


def op_set(name: str) -> Tuple[OpSpec, ...]:
    try:
        return OP_SETS[name]
    except KeyError:
        raise ValueError(f"Unknown op set {name!r}; known op sets: {sorted(OP_SETS)}.") from None


def default_op_set(spatial_dims: int) -> str:
    return {2: "dints_2d", 3: "dints_3d"}[spatial_dims]


def op_names(name: str) -> Tuple[str, ...]:
    return tuple(o.name for o in op_set(name))


def edge_preprocess_cost(in_channels: int, out_channels: int, direction: int, spatial_dims: int) -> float:
    """Memory cost (in output-size tensors) of :func:`edge_preprocess`, without building modules (which would
    draw from the RNG)."""
    ratio = in_channels / out_channels
    if direction == -1:
        return 3.0 + ratio * 2 ** spatial_dims  # ReLU input at 2x resolution, the concat, the norm output
    if direction == 1:
        return 2.0 + 2.0 * ratio  # up-sampled input, its ReLU, the norm output
    return 0.0 if in_channels == out_channels else 1.0 + 2.0 * ratio


def edge_preprocess(in_channels: int, out_channels: int, direction: int, spatial_dims: int) -> Tuple[nn.Module, float]:
    """Resolution/channel change in front of a cell and its memory cost (in output-size tensors).

    ``direction`` is ``edge_in - edge_out`` in levels: -1 means the source is finer (2x down-sampling),
    +1 coarser (2x up-sampling), 0 same resolution (identity, or a 1x1 conv when the channels differ).
    """
    cost = edge_preprocess_cost(in_channels, out_channels, direction, spatial_dims)
    if direction == -1:
        return FactorizedReduce(in_channels, out_channels, spatial_dims), cost
    if direction == 1:
        return FactorizedIncrease(in_channels, out_channels, spatial_dims), cost
    if in_channels == out_channels:
        return nn.Identity(), cost
    return ActConvNorm(in_channels, out_channels, 1, spatial_dims), cost
