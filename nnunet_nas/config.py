"""Search hyper-parameters: one frozen dataclass per method, paper defaults, saved next to every genotype.

A trainer variant changes a field with ``dataclasses.replace`` in a class attribute (nnU-Net's attribute
style), e.g. ``search_config = replace(DiNTSSearchConfig(), memory_budget=0.5)``.
"""

from dataclasses import asdict, dataclass
from typing import Tuple


@dataclass(frozen=True)
class DiNTSSearchConfig:
    num_blocks: int = 12  # L [paper 4.1]
    num_depths: int = 4  # D [paper 4.1]
    channel_mul: float = 0.5  # search width: f = 32 * 2^i * mul [MONAI tutorial]
    export_channel_mul: float = 1.0  # retrained width: 2x the search filters [paper 4.1]
    memory_budget: float = 0.8  # sigma of Eq. 10 [paper]
    topology_weight: float = 0.001  # lambda of Eq. 11 [paper]
    warmup_fraction: float = 0.5  # share of epochs with weight steps only [paper: 11k of 21k iterations]
    arch_lr: float = 0.008  # Adam [paper 4.1]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [MONAI tutorial]
    arch_weight_decay: float = 0.0  # [paper]
    arch_grad_clip: float = 0.5  # max norm of the architecture gradient [Auto3DSeg]
    recompute_norms: bool = True  # [ours] search-memory saving, see spaces/grid.py

    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch_betas"] = list(d["arch_betas"])
        return d
