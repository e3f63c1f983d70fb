"""Search hyper-parameters: one frozen dataclass per method, extending :class:`SearchConfig`; paper defaults,
saved next to every genotype and in every search checkpoint.

A trainer variant changes a field with ``dataclasses.replace`` in a class attribute (nnU-Net's attribute
style), e.g. ``search_config = replace(DiNTSSearchConfig(), memory_budget=0.5)``.
"""

from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

from nnunet_nas.strategies.jsd_pruning import JSDRule

WEIGHT_OPTIMIZERS = ("sgd", "adam")
LOSSES = ("dice_ce", "jaccard")


@dataclass(frozen=True)
class SearchConfig:
    """What every search shares: the bi-level loop, the data split, the optimisers and the export width.

    ``data_split`` (weight : architecture) divides the fold's training cases: (1, 1) is DARTS / DiNTS's 50/50,
    (4, 1) SCNAS's. ``warmup_epochs`` (weight steps only) wins over ``warmup_fraction`` when set. The weight
    optimiser is nnU-Net's SGD (its learning rate, momentum 0.99, Nesterov, poly schedule) or Adam
    (``weight_lr``, ``weight_betas``, same poly schedule).
    """
    op_set: Optional[str] = None  # candidate operations; None: the method's default for 2-D / 3-D
    export_channel_mul: Optional[float] = None  # width of the exported network; None: fitted to nnU-Net's plan
    warmup_fraction: float = 0.5  # share of the epochs with weight steps only
    warmup_epochs: Optional[int] = None  # absolute warm-up, overrides warmup_fraction
    data_split: Tuple[int, int] = (1, 1)  # weight : architecture training cases
    weight_optimizer: str = "sgd"  # "sgd" (nnU-Net's) or "adam"
    weight_lr: Optional[float] = None  # None: nnU-Net's initial_lr (SGD) / 1e-3 (Adam)
    weight_betas: Tuple[float, float] = (0.9, 0.999)  # Adam only
    arch_lr: float = 3e-4
    arch_betas: Tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    # False: L2 added to alpha's gradient before Adam (DARTS / PC-DARTS's torch.optim.Adam); True: decoupled (AdamW),
    # alpha shrinks by lr * weight_decay per step whatever its gradient's scale
    arch_decoupled_weight_decay: bool = False
    arch_grad_clip: Optional[float] = None  # max norm of the architecture gradient; None: no clipping
    loss: str = "dice_ce"  # the search's segmentation loss: nnU-Net's Dice + CE, or "jaccard" (SCNAS's)
    # IAC-LTH's JSD stability pruning and early stop, for any method (strategies/jsd_pruning.py); None: off
    jsd: Optional[JSDRule] = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"{type(self).__name__}: loss {self.loss!r} is not one of {LOSSES}.")
        if self.weight_optimizer not in WEIGHT_OPTIMIZERS:
            raise ValueError(f"{type(self).__name__}: weight_optimizer {self.weight_optimizer!r} is not one of "
                             f"{WEIGHT_OPTIMIZERS}.")
        if len(self.data_split) != 2 or min(self.data_split) < 1:
            raise ValueError(f"{type(self).__name__}: data_split {self.data_split} must be two positive integers "
                             f"(weight cases : architecture cases), e.g. (1, 1) or (4, 1).")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"{type(self).__name__}: warmup_fraction {self.warmup_fraction} must lie in [0, 1).")

    def num_warmup_epochs(self, num_epochs: int) -> int:
        if self.warmup_epochs is not None:
            return min(int(self.warmup_epochs), num_epochs)
        return int(round(self.warmup_fraction * num_epochs))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        """The config of :meth:`to_dict` (a checkpoint's or a genotype's ``search_config``); keys this version does
        not know are ignored, missing ones take the defaults."""
        known = {f.name: f for f in fields(cls)}
        values = {}
        for k, v in d.items():
            if k not in known:
                continue
            if k == "jsd" and v is not None:
                v = JSDRule(**v)
            elif isinstance(v, list):
                v = tuple(v)
            values[k] = v
        return cls(**values)


@dataclass(frozen=True)
class DiNTSSearchConfig(SearchConfig):
    """DiNTS (He et al., CVPR 2021)."""
    num_blocks: int = 12  # L [paper 4.1]
    num_depths: int = 4  # D [paper 4.1]
    channel_mul: float = 0.5  # search width: f = 32 * 2^i * mul [MONAI tutorial]
    # retrained width: None fits it to the memory nnU-Net planned for the base configuration [ours, default];
    # 2 * channel_mul is the paper's literal "twice the search filters" [paper 4.1]
    export_channel_mul: Optional[float] = None
    memory_budget: float = 0.8  # sigma of Eq. 10 [paper]: a share of memory_reference
    memory_reference: str = "max_discrete"  # [ours] largest discrete architecture; "paper": Eq. 9's M_a, see README
    # Eq. 10 holds the ratio at sigma from both sides [paper]; "upper": only memory above sigma costs (a cap)
    memory_penalty: str = "two_sided"
    topology_weight: float = 0.001  # lambda of Eq. 11 [paper]
    warmup_fraction: float = 0.5  # [paper: 11k of 21k iterations]
    arch_lr: float = 0.008  # Adam [paper 4.1]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [MONAI tutorial]
    arch_weight_decay: float = 0.0  # [paper]
    arch_grad_clip: Optional[float] = 0.5  # [Auto3DSeg]
    recompute_norms: bool = True  # [ours] search-memory saving, see spaces/grid.py


@dataclass(frozen=True)
class DASTSearchConfig(DiNTSSearchConfig):
    """DAST (Yang et al., MICCAI 2023): the DiNTS search (its grid, budget, losses and decoder) with the transformer in
    the op set; NAS_METHODS.md section 4 for the token grid."""
    # tokens per axis of every transformer: None [ours, default] = min(8, the level's extent) per axis, i.e. the
    # paper's 512 tokens (8^3) wherever a level is that large and every cell of a smaller level; an int: that grid at
    # every level (one clear error where a level is smaller)
    token_grid: Optional[int] = None
    num_heads: int = 8  # [paper]; every grid level's channels are rounded down to a multiple of it
    # [ours, the option] the DiNTS set's factorised (P3D / 2-D analogue) ops beside skip, conv, transformer
    factorised_ops: bool = False
    # [ours] the budget is a cap: Eq. 10's two-sided term pushed a search at sigma 0.8 to transformers on 41 of 55
    # edges (the costliest op: memory below sigma is pushed up), 1.51x nnU-Net's planned memory at the narrowest width
    # (BENCHMARKS.md); memory_penalty="two_sided" is the paper's literal reading
    memory_penalty: str = "upper"

    def __post_init__(self):
        super().__post_init__()
        if self.token_grid is not None and self.token_grid < 1 or self.num_heads < 1:
            raise ValueError(f"DASTSearchConfig: token_grid {self.token_grid} and num_heads {self.num_heads} must be "
                             f"positive (token_grid None: fitted to each level).")

    def op_options(self) -> dict:
        """The transformer's options (``OpSpec.options``), as the space and the fixed network take them."""
        return {"token_grid": self.token_grid, "num_heads": self.num_heads}


@dataclass(frozen=True)
class SCNASSearchConfig(SearchConfig):
    """SCNAS (Kim et al., MICCAI 2019), NAS_METHODS.md section 3 for the open points."""
    num_nodes: int = 4  # intermediate nodes per cell [paper]
    channel_mul: float = 1.5  # search width: stem = 32 * 1.5 = 48 channels [paper]
    # retrained width: None fits it to the memory nnU-Net planned [ours, default]; 2.125 (68 stem channels) is the
    # paper's FLOPs-matched retraining width
    export_channel_mul: Optional[float] = None
    data_split: Tuple[int, int] = (4, 1)  # weight : architecture cases [paper]
    warmup_fraction: float = 0.0  # [paper: Algorithm 1 updates alpha from the first step]
    weight_optimizer: str = "adam"  # [paper]
    # [ours] the paper prints lr 0.025 and betas "(0.1, 0.001)" for the search weights; we read the betas as a typo
    # of Adam's (0.9, 0.999) and use the paper's own retraining rate 3e-4 (Adam at 0.025 is far above what Adam
    # trains a conv net at); the literal reading: replace(cfg, weight_lr=0.025, weight_betas=(0.1, 0.001))
    weight_lr: Optional[float] = 3e-4
    weight_betas: Tuple[float, float] = (0.9, 0.999)
    arch_lr: float = 3e-3  # Adam [paper]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [paper]
    arch_weight_decay: float = 1e-3  # [DARTS; the paper gives none]
    temperature_start: float = 10.0  # tau [ours: GDAS's public default, the paper gives none]
    temperature_end: float = 0.1
    temperature_schedule: str = "linear"  # or "exponential"


IAC_MODES = ("fusion", "skip_only")


@dataclass(frozen=True)
class IACSearchConfig(SearchConfig):
    """IAC (implantable adaptive cells) and IAC-LTH: NAS_METHODS.md sections 1.3 and 2.2 for the open points; PC-DARTS
    search settings where the IAC papers give none."""
    num_nodes: int = 4  # intermediate nodes per cell [PC-DARTS]
    partial_channels: int = 4  # K of PC-DARTS: the mixed ops see 1/K of the channels during the search
    cell_channel_mul: float = 1.0  # cell width / skip channels, during the search [NAS_METHODS 1.3]
    # width of the exported cells / skip channels; None: 1 (cells as wide as the skips). The cells add to nnU-Net's
    # planned network, so there is no memory fit: the host keeps nnU-Net's width
    export_channel_mul: Optional[float] = None
    mode: str = "fusion"  # the cell reads (encoder skip, up-sampled decoder feature); "skip_only": (skip, skip)
    shared_cell: bool = True  # one genotype for every skip level; False: one per level
    edges_per_node: int = 2  # kept incoming edges per node at discretisation [PC-DARTS]
    # [ours, P-DARTS's cap on skip connections] at most this many parameter-free ops (skip, pooling) per discretised
    # cell; the weakest beyond it take their best op with parameters. None: no cap
    max_parameter_free_ops: Optional[int] = 2
    data_split: Tuple[int, int] = (1, 1)  # [PC-DARTS train_portion 0.5]
    warmup_fraction: float = 0.075  # [PC-DARTS: 15 of 200 epochs without architecture steps]
    # [ours] the weights are nnU-Net's SGD (its lr 0.01, momentum 0.99, poly); PC-DARTS trains its supernet with SGD
    # lr 0.1, momentum 0.9, cosine, which nnU-Net's loop does not offer
    arch_lr: float = 6e-4  # Adam [PC-DARTS]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [PC-DARTS]
    arch_weight_decay: float = 1e-3  # [PC-DARTS]
    # [ours] decoupled, not PC-DARTS's L2-in-Adam: behind the zero-initialised cell output alpha's loss gradient is
    # about 7e-5 RMS (measured on Hippocampus 2-D), which PC-DARTS's L2 term 1e-3 * alpha equals at |alpha| 0.07:
    # every logit stayed within 0.15 of zero and alpha never separated. Literal: arch_decoupled_weight_decay=False
    arch_decoupled_weight_decay: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in IAC_MODES:
            raise ValueError(f"IACSearchConfig: mode {self.mode!r} is not one of {IAC_MODES}.")
        if self.partial_channels < 1:
            raise ValueError(f"IACSearchConfig: partial_channels={self.partial_channels} must be at least 1.")
        if not 1 <= self.edges_per_node:
            raise ValueError(f"IACSearchConfig: edges_per_node={self.edges_per_node} must be at least 1.")
