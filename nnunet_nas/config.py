"""Search hyper-parameters: one frozen dataclass per method, extending :class:`SearchConfig`; paper defaults,
saved next to every genotype and in every search checkpoint.

A trainer variant changes a field with ``dataclasses.replace`` in a class attribute (nnU-Net's attribute
style), e.g. ``search_config = replace(DiNTSSearchConfig(), memory_budget=0.5)``.

Every field a user can set has a rule (:mod:`nnunet_nas.config_rules`); :meth:`SearchConfig.validate` checks them all
when a search trainer starts and when a config is read from a file (:meth:`SearchConfig.from_dict`), never when a
config is created: a bad variant in one trainer module must not break nnU-Net's lookup of every other trainer.
Checks that need the plan (the op set's dimensionality, what the memory budget can reach, heads against channels) run
when the search network exists (:meth:`SearchConfig.validate` with ``spatial_dims``, and the method's
``check_search``).
"""

from dataclasses import asdict, dataclass
from typing import ClassVar, Optional, Tuple

from nnunet_nas.arch.memory import MEMORY_PENALTIES, MEMORY_REFERENCES
from nnunet_nas.config_rules import (Rule, boolean, check_fields, integer, number, one_of, optional, pair,
                                     read_fields)
from nnunet_nas.errors import ConfigError
from nnunet_nas.spaces.grid_topology import MAX_DEPTHS, MIN_DEPTHS
from nnunet_nas.strategies.jsd_pruning import JSDRule
from nnunet_nas.strategies.temperature import SCHEDULES

WEIGHT_OPTIMIZERS = ("sgd", "adam")
LOSSES = ("dice_ce", "jaccard")
IAC_MODES = ("fusion", "skip_only")


def _op_set(value) -> Optional[str]:
    from nnunet_nas.ops.catalog import OP_SETS
    return None if value in OP_SETS else f"must be one of the op sets {sorted(OP_SETS)}"


def _jsd_rule(value) -> Optional[str]:
    if not isinstance(value, JSDRule):
        return "must be a JSDRule or None (no JSD stability pruning)"
    message = check_fields(value, JSD_RULES, "jsd", raise_error=False)
    return None if message is None else f"has {message}"


JSD_RULES = {"window": integer(1), "threshold": number(0), "top_k": integer(1), "gamma": number(0, 1, lo_open=True),
             "min_epoch": optional(integer(0)), "temperature": number(0, lo_open=True), "early_stop": boolean}


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

    rules: ClassVar[dict] = {
        "op_set": optional(Rule(_op_set)), "export_channel_mul": optional(number(0, lo_open=True)),
        "warmup_fraction": number(0, 1, hi_open=True), "warmup_epochs": optional(integer(0)),
        "data_split": pair(integer(1)), "weight_optimizer": one_of(WEIGHT_OPTIMIZERS),
        "weight_lr": optional(number(0, lo_open=True)), "weight_betas": pair(number(0, 1, hi_open=True)),
        "arch_lr": number(0, lo_open=True), "arch_betas": pair(number(0, 1, hi_open=True)),
        "arch_weight_decay": number(0), "arch_decoupled_weight_decay": boolean,
        "arch_grad_clip": optional(number(0, lo_open=True)), "loss": one_of(LOSSES), "jsd": optional(Rule(_jsd_rule)),
    }

    @classmethod
    def all_rules(cls) -> dict:
        """The rule of every field, the subclasses' added to (and overriding) their bases'."""
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("rules", {}))
        return merged

    def validate(self, spatial_dims: Optional[int] = None, source: Optional[str] = None) -> "SearchConfig":
        """Raise one :class:`~nnunet_nas.errors.ConfigError` naming the field and its allowed range, for the first
        field out of range (``source``: where the config came from); with ``spatial_dims``, also the checks that need
        the configuration's dimensionality. Returns the config."""
        check_fields(self, self.all_rules(), source or type(self).__name__)
        self.check_consistency(source or type(self).__name__)
        if spatial_dims is not None and self.op_set is not None:
            from nnunet_nas.ops.catalog import get_op_set
            if get_op_set(self.op_set).spatial_dims != spatial_dims:
                raise ConfigError(f"{source or type(self).__name__}: op_set {self.op_set!r} is "
                                  f"{get_op_set(self.op_set).spatial_dims}-D but the configuration is "
                                  f"{spatial_dims}-D; choose a {spatial_dims}-D op set or None (the method's "
                                  f"default).")
        return self

    def check_consistency(self, source: str) -> None:
        """Rules between fields (a subclass adds its own)."""

    def num_warmup_epochs(self, num_epochs: int) -> int:
        if self.warmup_epochs is not None:
            return min(int(self.warmup_epochs), num_epochs)
        return int(round(self.warmup_fraction * num_epochs))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, source: Optional[str] = None):
        """The config of :meth:`to_dict` (a checkpoint's or a genotype's ``search_config``), validated; missing keys
        take the defaults, an unknown key at any depth is one :class:`~nnunet_nas.errors.ConfigError` naming its
        path (a typo must not be dropped silently)."""
        source = source or f"{cls.__name__} (from a file)"
        values = read_fields(cls, d, source)
        if values.get("jsd") is not None:
            values["jsd"] = JSDRule(**read_fields(JSDRule, values["jsd"], f"{source}.jsd"))
        try:
            cfg = cls(**values)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}.") from None
        return cfg.validate(source=source)


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
    memory_reference: str = "max_discrete"  # [ours] largest discrete architecture; "paper": Eq. 9's M_a, see documentation/dints.md
    # Eq. 10 holds the ratio at sigma from both sides [paper]; "upper": only memory above sigma costs (a cap)
    memory_penalty: str = "two_sided"
    topology_weight: float = 0.001  # lambda of Eq. 11 [paper]
    warmup_fraction: float = 0.5  # [paper: 11k of 21k iterations]
    arch_lr: float = 0.008  # Adam [paper 4.1]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [MONAI tutorial]
    arch_weight_decay: float = 0.0  # [paper]
    arch_grad_clip: Optional[float] = 0.5  # [Auto3DSeg]
    recompute_norms: bool = True  # [ours] search-memory saving, see spaces/grid.py

    rules: ClassVar[dict] = {
        "num_blocks": integer(1), "num_depths": integer(MIN_DEPTHS, MAX_DEPTHS), "channel_mul": number(0, lo_open=True),
        "memory_budget": number(0, lo_open=True), "memory_reference": one_of(MEMORY_REFERENCES),
        "memory_penalty": one_of(MEMORY_PENALTIES), "topology_weight": number(0), "recompute_norms": boolean,
    }


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

    rules: ClassVar[dict] = {"token_grid": optional(integer(1)), "num_heads": integer(1), "factorised_ops": boolean}

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

    rules: ClassVar[dict] = {
        "num_nodes": integer(1), "channel_mul": number(0, lo_open=True), "temperature_start": number(0, lo_open=True),
        "temperature_end": number(0, lo_open=True), "temperature_schedule": one_of(SCHEDULES),
    }

    def check_consistency(self, source: str) -> None:
        if self.temperature_start < self.temperature_end:
            raise ConfigError(f"{source}: temperature_start {self.temperature_start} is below temperature_end "
                              f"{self.temperature_end}; the Gumbel-softmax temperature anneals downwards (start >= "
                              f"end > 0).")



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

    rules: ClassVar[dict] = {
        "num_nodes": integer(1), "partial_channels": integer(1), "cell_channel_mul": number(0, lo_open=True),
        "mode": one_of(IAC_MODES), "shared_cell": boolean, "edges_per_node": integer(1),
        "max_parameter_free_ops": optional(integer(0)),
    }
