"""Op sets by name: the only table of candidate operations.

Each op has a stable name (used in genotypes, never indices), a builder
``build(in_channels, out_channels, spatial_dims, stride=1, style=OpStyle()) -> nn.Module`` and a memory cost.
The cost is a function of the op's output shape, ``memory_elements(out_shape)`` with ``out_shape = (C, *spatial)``:
the activation elements training stores for its backward pass (the "tensor size" estimate of the DiNTS paper,
section 3.5). For the convolutional ops it is ``memory_cost`` tensors of the output size (the same table as
MONAI's ``ram_cost``, so figures stay comparable); an op whose cost is not a multiple of its output size (DAST's
transformer: a token-grid term besides the feature map) passes its own ``memory_fn`` and is not ``linear``.

An op may take keyword options (``OpSpec.options``): ``feature_shape``, the spatial extents of the map it reads (a
space that knows its patch passes them), and op settings a space forwards from its config (the transformer's
``token_grid`` and ``num_heads``). :meth:`OpSpec.make` and :meth:`OpSpec.memory_elements` pass each op the options it
names and no others.

Every op set knows its ``spatial_dims``. Edge (topology-level) resolution changes of the DiNTS grid are in
:func:`edge_preprocess` with their own costs.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from nnunet_nas.errors import ConfigError
from nnunet_nas.geometry import as_axes, fit_kernel
from nnunet_nas.ops.conv import (DINTS_STYLE, SCNAS_STYLE, ActConvNorm, FactorizedConv, FactorizedIncrease,
                                 FactorizedReduce, OpStyle, SepConv)
from nnunet_nas.ops.pooling import Pool, Zero, skip_op
from nnunet_nas.ops.transformer import NUM_HEADS, TransformerOp, resolve_token_grid, transformer_memory_elements


@dataclass(frozen=True)
class OpSpec:
    name: str
    # (in_channels, out_channels, spatial_dims, stride=1, style=..., planned_kernel=None, **options) -> module
    build: Callable[..., nn.Module]
    memory_cost: float  # stored tensors of the op's output size (for linear ops)
    memory_fn: Optional[Callable[[Sequence[int]], float]] = None  # out_shape (C, *spatial) -> elements
    # tensors of the output size autograd really keeps for the op in a discrete network (its nonlinearity's output,
    # which is also the first conv's input, and each conv's output); None: memory_cost
    saved: Optional[float] = None
    # no convolution (identity, pooling, zero): what DARTS-style caps on "parameter-free operations" count
    parameter_free: bool = False
    # keyword options of build (and, except feature_shape, of memory_fn): see the module docstring
    options: Tuple[str, ...] = ()

    @property
    def saved_cost(self) -> float:
        return self.memory_cost if self.saved is None else self.saved

    @property
    def linear(self) -> bool:
        """True when the memory is ``memory_cost`` x the output size (per-voxel cost tables are exact)."""
        return self.memory_fn is None

    def _options(self, options: Optional[Mapping]) -> dict:
        return {k: v for k, v in (options or {}).items() if k in self.options and k != "feature_shape"}

    def make(self, in_channels: int, out_channels: int, spatial_dims: int, stride=1, style: OpStyle = None,
             feature_shape: Optional[Sequence[int]] = None, options: Optional[Mapping] = None,
             planned_kernel: Optional[Sequence[int]] = None) -> nn.Module:
        """``build`` with the options this op takes (``feature_shape``: spatial extents of the map it reads;
        ``stride``: an int or per axis; ``planned_kernel``: the kernel nnU-Net planned at this resolution, whose
        axes of size 1 the op does not convolve either, :func:`~nnunet_nas.geometry.fit_kernel`)."""
        kwargs = self._options(options)
        if "feature_shape" in self.options:
            kwargs["feature_shape"] = feature_shape
        return self.build(in_channels, out_channels, spatial_dims, stride, style or DINTS_STYLE,
                          planned_kernel=planned_kernel, **kwargs)

    def memory_elements(self, out_shape: Sequence[int], options: Optional[Mapping] = None) -> float:
        """Stored activation elements of one sample of this op with output shape ``(C, *spatial)``."""
        if self.memory_fn is not None:
            return float(self.memory_fn(out_shape, **self._options(options)))
        return self.memory_cost * float(np.prod([int(s) for s in out_shape], dtype=np.float64))


@dataclass(frozen=True)
class OpSet:
    name: str
    spatial_dims: int
    ops: Tuple[OpSpec, ...]
    style: OpStyle = DINTS_STYLE  # how its convs activate and normalise

    def index(self, name: str) -> int:
        names = [o.name for o in self.ops]
        if name not in names:
            raise ValueError(f"operation {name!r} is not in op set {self.name!r} (its operations: {names}).")
        return names.index(name)


def _skip(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None):
    return skip_op(ci, co, d, stride, style)


def _conv(kernel, dilation=1):
    def build(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None):
        return ActConvNorm(ci, co, fit_kernel(kernel, planned_kernel, d), d, dilation, stride, style)
    return build


def _p3d(kernel, kernel2):
    def build(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None):
        return FactorizedConv(ci, co, fit_kernel(kernel, planned_kernel, d), fit_kernel(kernel2, planned_kernel, d), d,
                              stride, style)
    return build


def _sep(kernel, dilation=1, repeats=1):
    """DARTS's ``dil_conv`` (one separable block, dilated) and ``sep_conv`` (two blocks, stride on the first)."""
    def build(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None):
        k = fit_kernel(kernel, planned_kernel, d)
        if repeats == 1:
            return SepConv(ci, co, k, d, dilation, stride, style)
        return nn.Sequential(SepConv(ci, ci, k, d, dilation, stride, style), SepConv(ci, co, k, d, 1, 1, style))
    return build


def _pool(kind):
    def build(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None):
        return Pool(kind, ci, co, fit_kernel(3, planned_kernel, d), d, stride, style)
    return build


def _zero(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None):
    return Zero(ci, co, d, stride)


def _transformer(ci, co, d, stride=1, style=DINTS_STYLE, planned_kernel=None, feature_shape=None, token_grid=None,
                 num_heads=NUM_HEADS):
    return TransformerOp(ci, co, d, stride, style, resolve_token_grid(token_grid, d, feature_shape), num_heads)


# [paper] DAST's transformer (ops/transformer.py); its memory: Eq. 3 as measured (transformer_memory_elements)
TRANSFORMER = OpSpec("transformer", _transformer, float("nan"), memory_fn=transformer_memory_elements,
                     options=("feature_shape", "token_grid", "num_heads"))


# [paper] DiNTS section 3.2: skip, 3x3x3, P3D 3x3x1, 3x1x3, 1x3x3. Order = MONAI's op index 0..4.
DINTS_3D = OpSet("dints_3d", 3, (
    OpSpec("skip", _skip, 0.0, parameter_free=True),
    OpSpec("conv_3x3x3", _conv(3), 3.0, saved=2.0),
    OpSpec("p3d_3x3x1", _p3d((3, 3, 1), (1, 1, 3)), 4.0, saved=3.0),
    OpSpec("p3d_3x1x3", _p3d((3, 1, 3), (1, 3, 1)), 4.0, saved=3.0),
    OpSpec("p3d_1x3x3", _p3d((1, 3, 3), (3, 1, 1)), 4.0, saved=3.0),
))

# [ours] 2-D analogue for nnU-Net's 2d configuration: the same five roles with 2-D kernels; the factorised
# ops become 3x1 -> 1x3 and 1x3 -> 3x1, and a dilated 3x3 replaces the third axis' variant.
DINTS_2D = OpSet("dints_2d", 2, (
    OpSpec("skip", _skip, 0.0, parameter_free=True),
    OpSpec("conv_3x3", _conv(3), 3.0, saved=2.0),
    OpSpec("p2d_3x1", _p3d((3, 1), (1, 3)), 4.0, saved=3.0),
    OpSpec("p2d_1x3", _p3d((1, 3), (3, 1)), 4.0, saved=3.0),
    OpSpec("dil_conv_3x3", _conv(3, dilation=2), 3.0, saved=2.0),
))


def _darts(name: str, dims: int) -> OpSet:
    """The eight DARTS / PC-DARTS primitives (zero, pools, skip, separable and dilated separable convs) in 2-D or
    3-D. Costs: stored tensors per output size (nonlinearity output, conv outputs, norm output)."""
    return OpSet(name, dims, (
        OpSpec("zero", _zero, 0.0, parameter_free=True),
        OpSpec("max_pool_3", _pool("max"), 2.0, parameter_free=True),
        OpSpec("avg_pool_3", _pool("avg"), 2.0, parameter_free=True),
        OpSpec("skip", _skip, 0.0, parameter_free=True),
        OpSpec("sep_conv_3", _sep(3, repeats=2), 8.0),
        OpSpec("sep_conv_5", _sep(5, repeats=2), 8.0),
        OpSpec("dil_conv_3", _sep(3, dilation=2), 4.0),
        OpSpec("dil_conv_5", _sep(5, dilation=2), 4.0),
    ))


def _scnas(dims: int) -> OpSet:
    """[paper] SCNAS section 2.3: 3x3x3 conv, depthwise-separable dilated 3x3x3 convs at rates 2, 3, 4, 3x3x3 max and
    average pooling, identity, zero; convs LeakyReLU -> conv -> InstanceNorm. [ours] The 2-D set has the 2-D
    kernels; LeakyReLU's slope is PyTorch's (and nnU-Net's) 0.01."""
    k = "3x3x3" if dims == 3 else "3x3"
    return OpSet(f"scnas_{dims}d", dims, (
        OpSpec("zero", _zero, 0.0, parameter_free=True),
        OpSpec("skip", _skip, 0.0, parameter_free=True),
        OpSpec(f"conv_{k}", _conv(3), 3.0, saved=2.0),
        OpSpec(f"dil_sep_conv_{k}_r2", _sep(3, dilation=2), 4.0, saved=3.0),
        OpSpec(f"dil_sep_conv_{k}_r3", _sep(3, dilation=3), 4.0, saved=3.0),
        OpSpec(f"dil_sep_conv_{k}_r4", _sep(3, dilation=4), 4.0, saved=3.0),
        OpSpec("max_pool_3", _pool("max"), 2.0, parameter_free=True),
        OpSpec("avg_pool_3", _pool("avg"), 2.0, parameter_free=True),
    ), style=SCNAS_STYLE)




def _dast(dints: OpSet, with_factorised: bool) -> OpSet:
    """[paper] DAST section 3: skip, conv, transformer; ``with_factorised`` [ours, the issue's option] adds the
    DiNTS set's factorised (P3D) ops back: the DiNTS set in its order, then the transformer."""
    ops = dints.ops if with_factorised else dints.ops[:2]
    suffix = {3: "_p3d", 2: "_p2d"}[dints.spatial_dims] if with_factorised else ""
    return OpSet(f"dast_{dints.spatial_dims}d{suffix}", dints.spatial_dims, ops + (TRANSFORMER,), dints.style)


OP_SETS: Dict[str, OpSet] = {s.name: s for s in (DINTS_3D, DINTS_2D, _darts("darts_2d", 2), _darts("darts_3d", 3),
                                                  _scnas(2), _scnas(3), _dast(DINTS_3D, False), _dast(DINTS_2D, False),
                                                  _dast(DINTS_3D, True), _dast(DINTS_2D, True))}


def op_sets_with(op_name: str, spatial_dims: int) -> Tuple[str, ...]:
    """The op sets of ``spatial_dims`` that hold an op called ``op_name`` (for error messages)."""
    return tuple(n for n, s in OP_SETS.items() if s.spatial_dims == spatial_dims and op_name in [o.name for o in s.ops])


def get_op_set(name: str) -> OpSet:
    try:
        return OP_SETS[name]
    except KeyError:
        raise ConfigError(f"Unknown op set {name!r}; known op sets: {sorted(OP_SETS)}.") from None


def op_specs(name: str) -> Tuple[OpSpec, ...]:
    """The ops of op set ``name`` (an op set is a name everywhere else; :func:`get_op_set` gives the whole
    :class:`OpSet`)."""
    return get_op_set(name).ops


def op_set(name: str) -> Tuple[OpSpec, ...]:
    """Deprecated name of :func:`op_specs`."""
    import warnings
    warnings.warn("nnunet_nas.ops.catalog.op_set() is now op_specs()", DeprecationWarning, stacklevel=2)
    return op_specs(name)


def op_names(name: str) -> Tuple[str, ...]:
    return tuple(o.name for o in op_specs(name))


def _factor_voxels(factor, spatial_dims: int) -> int:
    return int(np.prod(as_axes(2 if factor is None else factor, spatial_dims)))


def edge_preprocess_cost(in_channels: int, out_channels: int, direction: int, spatial_dims: int,
                         factor=None) -> float:
    """Memory cost (in output-size tensors) of :func:`edge_preprocess`, without building modules (which would
    draw from the RNG)."""
    ratio = in_channels / out_channels
    if direction == -1:  # ReLU input at the finer resolution, the concat, the norm output
        return 3.0 + ratio * _factor_voxels(factor, spatial_dims)
    if direction == 1:
        return 2.0 + 2.0 * ratio  # up-sampled input, its ReLU, the norm output
    return 0.0 if in_channels == out_channels else 1.0 + 2.0 * ratio


def edge_preprocess_saved_cost(in_channels: int, out_channels: int, direction: int, spatial_dims: int,
                               factor=None) -> float:
    """What autograd keeps for :func:`edge_preprocess` in a discrete network (output-size tensors): the ReLU output
    (the input of its convs) and the norm's input; interpolation and concatenation keep nothing."""
    ratio = in_channels / out_channels
    if direction == -1:
        return ratio * _factor_voxels(factor, spatial_dims) + 1.0
    if direction == 1:
        return ratio + 1.0
    return 0.0 if in_channels == out_channels else ratio + 1.0


def edge_preprocess(in_channels: int, out_channels: int, direction: int, spatial_dims: int,
                    style: OpStyle = DINTS_STYLE, factor=None) -> nn.Module:
    """Resolution/channel change in front of a grid cell (its cost: :func:`edge_preprocess_cost`).

    ``direction`` is ``edge_in - edge_out`` in levels: -1 means the source is finer (down-sampling by ``factor``),
    +1 coarser (up-sampling by ``factor``), 0 same resolution (identity, or a 1x1 conv when the channels differ).
    ``factor``: per axis (the plan's stride between the two levels), default 2 on every axis.
    """
    factor = as_axes(2 if factor is None else factor, spatial_dims)
    if direction == -1:
        return FactorizedReduce(in_channels, out_channels, spatial_dims, style, factor)
    if direction == 1:
        return FactorizedIncrease(in_channels, out_channels, spatial_dims, style, factor)
    if in_channels == out_channels:
        return nn.Identity()
    return ActConvNorm(in_channels, out_channels, 1, spatial_dims, style=style)
