"""Patch sizes a network can take: every extent a multiple of the network's divisor on its axis (the product of the
strides down to its coarsest stage, e.g. 2^D per axis for an isotropic DiNTS grid). The one place where patches are
rounded up; nnU-Net pads smaller images."""

from typing import List, Sequence, Union

from nnunet_nas.errors import PlansError
from nnunet_nas.geometry import as_axes

Divisor = Union[int, Sequence[int]]


def round_up_patch(patch_size: Sequence[int], divisor: Divisor) -> List[int]:
    """Each extent rounded up to the next multiple of ``divisor`` (an int, or one per axis); a patch that is already
    divisible is returned as it is."""
    return [-(-int(p) // d) * d for p, d in zip(patch_size, as_axes(divisor, len(patch_size)))]


def check_patch_divisible(shape: Sequence[int], divisor: Divisor, requirement: str) -> None:
    """One clear error, with the fix, when a patch extent is not a multiple of ``divisor`` on its axis;
    ``requirement`` says which network needs it ("DiNTS with D=3 levels needs ...")."""
    if any(int(s) % d for s, d in zip(shape, as_axes(divisor, len(shape)))):
        raise PlansError(
            f"{requirement}, got patch {list(shape)}. Set the configuration's patch_size in the plans file to a "
            f"multiple per axis (for example {round_up_patch(shape, divisor)}), or re-export with `nnunet-nas "
            f"export`, which adjusts it.")


def scaled_patch(patch_size: Sequence[int], divisor: Divisor, scale: float) -> List[int]:
    """``patch_size`` times ``scale`` on every axis (its aspect kept), each extent rounded down to a multiple of
    ``divisor`` on its axis and at least one multiple."""
    return [max(d, int(p * scale) // d * d) for p, d in zip(patch_size, as_axes(divisor, len(patch_size)))]


def patch_divisor(strides, spatial_dims: int) -> List[int]:
    """The product of per-stage ``strides`` (a plan's ``arch_kwargs["strides"]``, ints or per axis) on each axis:
    what a U-Net with those strides divides."""
    divisor = [1] * spatial_dims
    for stride in strides:
        divisor = [d * s for d, s in zip(divisor, as_axes(stride, spatial_dims))]
    return divisor
