"""Patch sizes a search space can take: every extent a multiple of the space's divisor (e.g. 2^D for the
DiNTS grid). The one place where patches are rounded up; nnU-Net pads smaller images."""

from typing import List, Sequence


def round_up_patch(patch_size: Sequence[int], divisor: int) -> List[int]:
    """Each extent rounded up to the next multiple of ``divisor``."""
    d = int(divisor)
    return [-(-int(p) // d) * d for p in patch_size]
