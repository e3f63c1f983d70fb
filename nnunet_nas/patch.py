"""Patch sizes a search space can take: every extent a multiple of the space's divisor (e.g. 2^D for the
DiNTS grid). The one place where patches are rounded up; nnU-Net pads smaller images."""

from typing import List, Sequence

from nnunet_nas.errors import PlansError


def round_up_patch(patch_size: Sequence[int], divisor: int) -> List[int]:
    """Each extent rounded up to the next multiple of ``divisor``."""
    d = int(divisor)
    return [-(-int(p) // d) * d for p in patch_size]


def check_patch_divisible(shape: Sequence[int], divisor: int, requirement: str) -> None:
    """One clear error, with the fix, when a patch extent is not a multiple of ``divisor``; ``requirement`` says
    which network needs it ("DiNTS with D=3 levels needs every patch extent divisible by 2^D=8")."""
    if any(int(s) % divisor for s in shape):
        raise PlansError(
            f"{requirement}, got patch {list(shape)}. Set the configuration's patch_size in the plans file to a "
            f"multiple of {divisor} (for example {round_up_patch(shape, divisor)}), or re-export with `nnunet-nas "
            f"export`, which adjusts it.")
