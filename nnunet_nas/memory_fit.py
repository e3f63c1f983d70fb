"""The search's memory fit: before the first step, the peak memory of one search iteration
(:mod:`nnunet_nas.memory_count`) is compared with a memory target and, above it, the search batch, the search patch
and, last, the search's width are made smaller until it fits.

The target (:func:`memory_target`), first match wins:

1. the environment variable ``NNUNET_NAS_MEMORY_GB``: a number of GiB, or ``off`` (no fit);
2. the search config's ``memory_target_gb``;
3. on CUDA the device's free memory when the search starts less :data:`CUDA_RESERVE_GIB` (the CUDA context is already
   counted out of the free memory; the reserve is for cuDNN's workspaces and the allocator's fragmentation); on the
   CPU the machine's available memory less :data:`CPU_RESERVE_GIB`.

The fit (:func:`fit_search`), in this order, each step only where the previous one was not enough:

1. a smaller search batch, down to :data:`MIN_BATCH` (nnU-Net's smallest planned batch);
2. a smaller search patch at that batch: the configuration's patch times a scale on every axis (its aspect kept),
   in steps of 5 % down to :data:`PATCH_FLOOR` (half per axis), each extent rounded down to a multiple of what the
   search space divides on its axis, and never below two voxels at the coarsest level where the configuration's
   patch has them (instance normalisation needs more than one);
3. batch 1 at the smallest patch;
4. a narrower search (the method's ``search_width_field``, e.g. DiNTS's ``channel_mul``) at :data:`WIDTH_SCALES` of
   the config's width, at batch 1 and the smallest patch.

If nothing fits, one error gives the estimate and the options (a larger card, a smaller patch in the plans, another
target). Both data streams use the search batch and patch; the found network is exported and trained at the
configuration's own batch and patch, and at the export's width (which the search's width does not set).
"""

import math
import os
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

from nnunet_nas.errors import ConfigError, EnvironmentSetupError
from nnunet_nas.geometry import as_axes
from nnunet_nas.memory_count import IterationMemory
from nnunet_nas.patch import scaled_patch

MEMORY_ENV = "NNUNET_NAS_MEMORY_GB"
CUDA_RESERVE_GIB = 1.0
CUDA_CONTEXT_GIB = 0.5  # what the CUDA context takes of a card before a search sees its free memory
CPU_RESERVE_GIB = 2.0
MIN_BATCH = 2
PATCH_FLOOR = 0.5
PATCH_SCALES = tuple(round(1 - 0.05 * k, 2) for k in range(1, 11))  # 0.95 ... 0.5
WIDTH_SCALES = (0.75, 0.5)
# a narrowed search's width in its configuration (the trainer's and the plans copy beside its checkpoint):
# {"field": the config field, "scale": its factor}; the search trainer's network builder reads it
SEARCH_WIDTH_KEY = "nnunet_nas_search_width"
GIB = 2 ** 30


@dataclass(frozen=True)
class MemoryTarget:
    bytes: Optional[int]  # None: no fit
    source: str  # where it came from, for the log


def _available_cpu_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_target(device, configured_gib: Optional[float] = None) -> MemoryTarget:
    """The memory one search iteration may take on ``device`` (see the module's docstring)."""
    value = os.environ.get(MEMORY_ENV)
    if value is not None and value.strip():
        if value.strip().lower() == "off":
            return MemoryTarget(None, f"{MEMORY_ENV}=off")
        try:
            gib = float(value)
        except ValueError:
            gib = float("nan")
        if not 0 < gib < float("inf"):
            raise EnvironmentSetupError(f"{MEMORY_ENV}={value!r} is not a memory size: give the GiB one search "
                                        f"iteration may take (e.g. {MEMORY_ENV}=22), or 'off' for no fit.") from None
        return MemoryTarget(int(gib * GIB), f"{MEMORY_ENV}={value}")
    if configured_gib is not None:
        return MemoryTarget(int(configured_gib * GIB), f"search config memory_target_gb={configured_gib}")
    if device.type == "cuda":
        import torch
        free, total = torch.cuda.mem_get_info(device)
        return MemoryTarget(int(free - CUDA_RESERVE_GIB * GIB), f"free memory of {torch.cuda.get_device_name(device)} "
                                                                f"({free / GIB:.1f} of {total / GIB:.1f} GiB) less "
                                                                f"{CUDA_RESERVE_GIB:g} GiB")
    available = _available_cpu_bytes()
    return MemoryTarget(int(available - CPU_RESERVE_GIB * GIB), f"available memory of this machine "
                                                                 f"({available / GIB:.1f} GiB) less "
                                                                 f"{CPU_RESERVE_GIB:g} GiB")


def narrowed(cfg, width_field: Optional[str], scale: float):
    """``cfg`` with its ``width_field`` times ``scale`` (``cfg`` itself at scale 1)."""
    if scale == 1.0 or width_field is None:
        return cfg
    return replace(cfg, **{width_field: getattr(cfg, width_field) * scale})


def card_target(total_gib: float) -> MemoryTarget:
    """The target on a card of ``total_gib`` GiB: its memory less the CUDA context and :data:`CUDA_RESERVE_GIB`."""
    return MemoryTarget(int((total_gib - CUDA_CONTEXT_GIB - CUDA_RESERVE_GIB) * GIB), f"a {total_gib:g} GiB card")


@dataclass(frozen=True)
class SearchFit:
    """The batch, patch and width a search runs at, the configuration's, and what one iteration takes at each."""
    batch_size: int
    patch_size: Tuple[int, ...]
    planned_batch_size: int
    planned_patch_size: Tuple[int, ...]
    estimate_bytes: Optional[int]  # one search iteration at (batch_size, patch_size, width_scale); None: not counted
    planned_estimate_bytes: Optional[int]  # at the configuration's batch and patch and the config's width
    target_bytes: Optional[int]
    target_source: str
    width_scale: float = 1.0  # times the config's search width
    width_field: Optional[str] = None  # the config field it scales (the method's search_width_field)

    @classmethod
    def as_planned(cls, batch: int, patch: Sequence[int], source: str) -> "SearchFit":
        """The configuration's batch and patch, not counted (the fit off, or a checkpoint written without one)."""
        patch = tuple(int(p) for p in patch)
        return cls(batch, patch, batch, patch, None, None, None, source)

    @property
    def changed(self) -> bool:
        return (self.batch_size, tuple(self.patch_size), self.width_scale) != \
            (self.planned_batch_size, tuple(self.planned_patch_size), 1.0)

    def applied_to(self, cfg):
        """``cfg`` at the fit's width."""
        return narrowed(cfg, self.width_field, self.width_scale)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"], d["planned_patch_size"] = list(self.patch_size), list(self.planned_patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SearchFit":
        return cls(**dict(d, patch_size=tuple(d["patch_size"]), planned_patch_size=tuple(d["planned_patch_size"])))

    @property
    def width(self) -> str:
        return "" if self.width_scale == 1.0 else f", {self.width_scale:g}x the search width ({self.width_field})"

    def describe(self) -> str:
        planned = f"batch {self.planned_batch_size}, patch {list(self.planned_patch_size)}"
        if self.planned_estimate_bytes is None:
            return f"memory fit: none ({self.target_source}); searching at the configuration's {planned}"
        est = f"{self.planned_estimate_bytes / GIB:.2f} GiB"
        target = "no target" if self.target_bytes is None else f"target {self.target_bytes / GIB:.2f} GiB"
        if not self.changed:
            return f"memory fit: one search iteration at {planned} takes about {est} ({target}: " \
                   f"{self.target_source}); searching at the configuration's batch and patch"
        return (f"memory fit: one search iteration at {planned} takes about {est}, above the {target} "
                f"({self.target_source}); searching at batch {self.batch_size}, patch {list(self.patch_size)}"
                f"{self.width} (about {self.estimate_bytes / GIB:.2f} GiB). The found network is exported and trained "
                f"at the configuration's batch and patch.")


Estimate = Callable[[int, Sequence[int], float], IterationMemory]  # (batch, patch, width scale)


def candidates(batch: int, patch: Sequence[int], divisor, narrows: bool = False
               ) -> List[Tuple[int, List[int], float]]:
    """The (batch, patch, width scale) the fit tries after the configuration's, in its order; the width only where
    ``narrows``."""
    patch, low = list(patch), min(batch, MIN_BATCH)
    out = [(b, patch) for b in range(batch - 1, low - 1, -1)]
    seen = {tuple(patch)}
    two = [2 * d for d in as_axes(divisor, len(patch))]  # two voxels at the coarsest level, where the plan has them
    for scale in PATCH_SCALES:
        p = [max(q, min(r, t)) for q, r, t in zip(scaled_patch(patch, divisor, scale), patch, two)]
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append((low, p))
    smallest = out[-1][1] if len(out) > batch - low else patch
    if low > 1:
        out.append((1, smallest))
    out = [(b, p, 1.0) for b, p in out]
    return out + [(1, smallest, w) for w in (WIDTH_SCALES if narrows else ())]


def fit_search(estimate: Estimate, batch: int, patch: Sequence[int], divisor, target: MemoryTarget,
               width_field: Optional[str] = None) -> SearchFit:
    """The largest search batch and patch (and, last, width), in the module's order, whose iteration fits
    ``target``; ``width_field``: the config field a narrower search scales (None: the width stays)."""
    patch = tuple(int(p) for p in patch)
    planned = estimate(batch, patch, 1.0)
    found = partial(SearchFit, planned_batch_size=batch, planned_patch_size=patch, planned_estimate_bytes=planned.peak,
                    target_bytes=target.bytes, target_source=target.source, width_field=width_field)
    if target.bytes is None or planned.peak <= target.bytes:
        return found(batch_size=batch, patch_size=patch, estimate_bytes=planned.peak)
    order = candidates(batch, patch, divisor, narrows=width_field is not None)
    counted = {}
    for b, p, w in order:
        # activations are about linear in batch x voxels: skip the candidates that cannot fit without counting them
        if w == 1.0 and planned.peak_at(b * _voxels(p) / (batch * _voxels(patch))) > 1.15 * target.bytes:
            continue
        try:
            counted[b, tuple(p), w] = got = estimate(b, p, w).peak
        except ConfigError:  # a width the space cannot take (e.g. channels against attention heads)
            continue
        if got <= target.bytes:
            return found(batch_size=b, patch_size=tuple(p), estimate_bytes=got, width_scale=w)
    b, p, w = order[-1] if order else (batch, list(patch), 1.0)
    floor = counted.get((b, tuple(p), w))
    if floor is None:
        try:
            floor = estimate(b, p, w).peak
        except ConfigError:
            pass
    at_floor = "" if floor is None else f", still {floor / GIB:.2f} GiB"
    raise ConfigError(
        f"one search iteration does not fit the memory target {target.bytes / GIB:.2f} GiB ({target.source}): "
        f"{planned.peak / GIB:.2f} GiB at the configuration's batch {batch} and patch {list(patch)}{at_floor} at "
        f"the fit's floor (batch {b}, patch {list(p)}: about half the patch per axis"
        f"{f', {w:g}x the search width' if w != 1.0 else ''}). Options: a GPU with more memory; a configuration with "
        f"a smaller patch; a narrower search set by hand (the search config's "
        f"{width_field or 'width'}); or {MEMORY_ENV}=<GiB> / {MEMORY_ENV}=off if the target is wrong.")


def _voxels(patch) -> int:
    return math.prod(int(p) for p in patch)
