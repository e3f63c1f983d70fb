"""The plan's geometry as a search space uses it: per-axis strides and kernels of each resolution stage.

nnU-Net plans its U-Net to the data: on anisotropic data (thick slices) it pools the through-plane axis later or
never and uses in-plane kernels (``[1, 3, 3]``) at the fine stages. Its plans hold both in the configuration's
``architecture.arch_kwargs`` (``strides``, ``kernel_sizes``: one entry per stage, the first stride all ones).
:class:`Geometry` is that pair; a space with ``n`` down-samplings takes the plan's first ``n + 1`` stages
(:meth:`Geometry.fit`), so its level ``l`` lives at ``patch / scale(l)`` per axis and the patch needs to be
divisible only by :attr:`Geometry.divisor`, as nnU-Net's own is.

Where the plan has fewer stages than the space, the extra stages keep the plan's coarsest resolution (stride 1 on
every axis) and its last kernel: the space keeps its depth, nothing is padded beyond what nnU-Net needs, and the
search's log says so. A plan without strides (a network class other than nnU-Net's U-Nets) gives the isotropic
geometry (2x on every axis, 3^dims kernels), as does a genotype written before geometries were recorded.

How ops use a stage's kernel (:func:`fit_kernel`): an axis the plan does not convolve at that stage (kernel 1) is
not convolved by any op there; on the other axes an op keeps its own kernel (a 5x5 separable conv stays 5 wide).
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from nnunet_nas.errors import PlansError

Axes = Tuple[int, ...]


def as_axes(value, spatial_dims: int) -> Axes:
    """An int or a per-axis sequence as a per-axis tuple."""
    return (int(value),) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)


def fit_kernel(kernel, planned_kernel: Optional[Sequence[int]], spatial_dims: int) -> Axes:
    """An op's ``kernel`` (int or per axis) at a stage whose planned kernel is ``planned_kernel``: 1 on the axes the
    plan does not convolve, the op's own elsewhere (``None``: unchanged)."""
    kernel = as_axes(kernel, spatial_dims)
    if planned_kernel is None:
        return kernel
    return tuple(1 if int(p) == 1 else k for k, p in zip(kernel, planned_kernel))


@dataclass(frozen=True)
class Geometry:
    """``strides[s]``: the per-axis down-sampling into stage ``s`` (stage 0's is all ones); ``kernels[s]``: the
    per-axis conv kernel at stage ``s``."""
    strides: Tuple[Axes, ...]
    kernels: Tuple[Axes, ...]

    def __post_init__(self):
        object.__setattr__(self, "strides", tuple(tuple(int(v) for v in s) for s in self.strides))
        object.__setattr__(self, "kernels", tuple(tuple(int(v) for v in k) for k in self.kernels))

    @property
    def spatial_dims(self) -> int:
        return len(self.strides[0])

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @classmethod
    def isotropic(cls, spatial_dims: int, num_stages: int) -> "Geometry":
        """2x on every axis at every stage after the first, 3^dims kernels (the papers' and today's default)."""
        return cls(((1,) * spatial_dims,) + ((2,) * spatial_dims,) * (num_stages - 1),
                   ((3,) * spatial_dims,) * num_stages)

    @classmethod
    def from_plan(cls, arch_kwargs: Optional[dict], spatial_dims: int, source: str = "the plan"
                  ) -> Optional["Geometry"]:
        """The geometry of a plans ``arch_kwargs`` (nnU-Net's ``strides`` and ``kernel_sizes``); None when it has
        none (a network class without them)."""
        kwargs = arch_kwargs or {}
        if "strides" not in kwargs or "kernel_sizes" not in kwargs:
            return None
        return cls.checked(kwargs["strides"], kwargs["kernel_sizes"], spatial_dims, source)

    @classmethod
    def checked(cls, strides, kernels, spatial_dims: int, source: str) -> "Geometry":
        """A geometry from untrusted lists, with one :class:`PlansError` naming what is wrong."""
        def is_count(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        def rows(value, what):  # one entry per stage: an int (every axis) or one per axis, as nnU-Net's U-Nets take
            if not isinstance(value, (list, tuple)) or not value or not all(
                    is_count(r) or isinstance(r, (list, tuple)) and len(r) == spatial_dims and all(map(is_count, r))
                    for r in value):
                raise PlansError(f"{source}: {what} must be a non-empty list of {spatial_dims} positive integers per "
                                 f"stage, found {value!r}.")
            return [as_axes(r, spatial_dims) for r in value]
        strides, kernels = rows(strides, "strides"), rows(kernels, "kernel_sizes")
        if len(strides) != len(kernels):
            raise PlansError(f"{source}: {len(strides)} strides but {len(kernels)} kernel sizes; nnU-Net plans one of "
                             f"each per stage.")
        if any(v != 1 for v in strides[0]):
            raise PlansError(f"{source}: the first stage's stride is {list(strides[0])}; the search spaces start at "
                             f"full resolution (nnU-Net plans [1, ..., 1] there).")
        if any(v not in (1, 2) for s in strides for v in s):
            raise PlansError(f"{source}: strides {[list(s) for s in strides]} hold a value other than 1 or 2; the "
                             f"search spaces resample by 1 or 2 per axis and stage (as nnU-Net plans).")
        if any(k % 2 == 0 for ks in kernels for k in ks):
            raise PlansError(f"{source}: kernel sizes {[list(k) for k in kernels]} hold an even size; use odd kernels "
                             f"('same' padding needs them).")
        return cls(tuple(strides), tuple(kernels))

    def fit(self, num_stages: int) -> Tuple["Geometry", Optional[str]]:
        """This geometry cut or extended to ``num_stages`` stages, and a note where it had fewer (None where not):
        the extra stages keep the coarsest resolution (stride 1) and the last kernel."""
        if num_stages <= self.num_stages:
            return Geometry(self.strides[:num_stages], self.kernels[:num_stages]), None
        extra = num_stages - self.num_stages
        note = (f"the plan has {self.num_stages - 1} down-sampling stages and the search space {num_stages - 1}: the "
                f"last {extra} level{'s' if extra > 1 else ''} keep{'' if extra > 1 else 's'} the plan's coarsest "
                f"resolution (stride 1) and kernel {list(self.kernels[-1])}")
        return Geometry(self.strides + ((1,) * self.spatial_dims,) * extra,
                        self.kernels + (self.kernels[-1],) * extra), note

    def scale(self, stage: int) -> Axes:
        """Per-axis down-sampling of stage ``stage`` relative to the input (product of the strides up to it)."""
        # a list, not a generator, inside math.prod: torch.compile folds it to constants (a generator breaks the graph)
        return tuple(math.prod([s[a] for s in self.strides[:stage + 1]]) for a in range(self.spatial_dims))

    @property
    def divisor(self) -> Axes:
        """What every patch extent must be a multiple of: the coarsest stage's scale, per axis."""
        return self.scale(self.num_stages - 1)

    def shape(self, patch: Sequence[int], stage: int) -> Axes:
        """The spatial extents of stage ``stage`` for an input ``patch`` (divisible by :attr:`divisor`)."""
        return tuple(int(p) // s for p, s in zip(patch, self.scale(stage)))

    @property
    def is_isotropic(self) -> bool:
        return self == Geometry.isotropic(self.spatial_dims, self.num_stages)

    def output_strides(self, num_outputs: int) -> list:
        """nnU-Net's deep-supervision ``strides`` for outputs at stages ``0 .. num_outputs - 1``: one entry per
        output and one more (nnU-Net drops the last product), past the last stage its stride repeated."""
        strides = list(self.strides) + [self.strides[-1]] * max(0, num_outputs + 1 - self.num_stages)
        return [list(s) for s in strides[:num_outputs + 1]]

    def to_dict(self) -> dict:
        return {"strides": [list(s) for s in self.strides], "kernels": [list(k) for k in self.kernels]}

    @classmethod
    def from_dict(cls, d, spatial_dims: int, source: str = "geometry") -> "Geometry":
        if not isinstance(d, dict) or set(d) != {"strides", "kernels"}:
            raise PlansError(f"{source}: expected an object with 'strides' and 'kernels', found {d!r}.")
        return cls.checked(d["strides"], d["kernels"], spatial_dims, source)


def space_geometry(geometry, spatial_dims: int, num_stages: int, source: str = "geometry") -> Geometry:
    """The geometry a space with ``num_stages`` stages uses: ``geometry`` (a :class:`Geometry`, its dict, or None
    for the isotropic one), which must have exactly that many stages."""
    if geometry is None:
        return Geometry.isotropic(spatial_dims, num_stages)
    if not isinstance(geometry, Geometry):
        geometry = Geometry.from_dict(geometry, spatial_dims, source)
    if geometry.spatial_dims != spatial_dims or geometry.num_stages != num_stages:
        raise PlansError(f"{source}: a {geometry.spatial_dims}-D geometry of {geometry.num_stages} stages for a "
                         f"{spatial_dims}-D space of {num_stages} stages.")
    return geometry


def planned_geometry(planned, spatial_dims: int, num_stages: int, follow_plan: bool = True
                     ) -> Tuple[Geometry, Optional[str]]:
    """The geometry of ``num_stages`` stages a search space takes from the configuration nnU-Net planned
    (a :class:`~nnunet_nas.planned_network.PlannedNetwork` or None), and a note for the search's log (None when the
    plan's geometry is used as it is). ``follow_plan=False``: the papers' isotropic space whatever the plan."""
    if not follow_plan:
        return Geometry.isotropic(spatial_dims, num_stages), (
            "follow_plan_geometry=False: the search space is isotropic (2x per axis, kernels 3), as in the papers")
    try:
        plan = None if planned is None else Geometry.from_plan(planned.kwargs, spatial_dims,
                                                               f"the planned network ({planned.class_name})")
    except PlansError as e:
        raise PlansError(f"{e} Or search in the papers' isotropic space: follow_plan_geometry=False in the search "
                         f"config.") from None
    if plan is None:
        return Geometry.isotropic(spatial_dims, num_stages), (
            "the planned network names no strides and kernel sizes: the search space is isotropic (2x per axis, "
            "kernels 3)")
    return plan.fit(num_stages)
