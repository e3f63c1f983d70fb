"""Search hyper-parameters: :class:`SearchConfig`, what every search shares; each method's config extends it in the
method's own module (``methods/<name>.py``, paper defaults) and is re-exported here (``from nnunet_nas.config import
DiNTSSearchConfig``). Configs are saved next to every genotype and in every search checkpoint.

A trainer variant changes a field with ``dataclasses.replace`` in a class attribute (nnU-Net's attribute
style), e.g. ``search_config = replace(DiNTSSearchConfig(), memory_budget=0.5)``.

Every field a user can set has a rule (:mod:`nnunet_nas.config_rules`); :meth:`SearchConfig.validate` checks them all
when a search trainer starts and when a config is read from a file (:meth:`SearchConfig.from_dict`), never when a
config is created: a bad variant in one trainer module must not break nnU-Net's lookup of every other trainer.
Checks that need the plan (the op set's dimensionality, what the memory budget can reach, heads against channels) run
when the search network exists (:meth:`SearchConfig.validate` with ``spatial_dims``, and the method's
``check_search``).
"""

import sys
import warnings
from dataclasses import asdict, dataclass
from typing import ClassVar, Optional, Tuple

from nnunet_nas.config_rules import Rule, boolean, check_fields, integer, number, one_of, optional, pair, read_fields
from nnunet_nas.errors import ConfigError
from nnunet_nas.strategies.jsd_pruning import JSDRule

WEIGHT_OPTIMIZERS = ("sgd", "adam")
LOSSES = ("dice_ce", "jaccard")


def _op_set(value) -> Optional[str]:
    from nnunet_nas.ops.catalog import OP_SETS
    return None if value in OP_SETS else f"must be one of the op sets {sorted(OP_SETS)}"


def _jsd_rule(value) -> Optional[str]:
    if not isinstance(value, JSDRule):
        return "must be a JSDRule or None (no JSD stability pruning)"
    message = check_fields(value, JSD_RULES, "jsd_pruning", raise_error=False)
    return None if message is None else f"has {message}"


JSD_RULES = {"window": integer(1), "threshold": number(0), "top_k": integer(1), "gamma": number(0, 1, lo_open=True),
             "min_epoch": optional(integer(0)), "temperature": number(0, lo_open=True), "early_stop": boolean}


# config keys renamed since they were first saved: old name -> new name (old checkpoints and genotypes still load;
# the old keyword, in a constructor or ``dataclasses.replace``, and the old attribute warn)
RENAMED_FIELDS = {"jsd": "jsd_pruning"}


def _renamed(values: dict, warn: bool, replacing: bool = False) -> dict:
    """``values`` with the old names of :data:`RENAMED_FIELDS` replaced; both names with different values is one
    :class:`ConfigError`, except in ``dataclasses.replace`` (``replacing``), which passes the current value under the
    new name and the change under the old one."""
    for old, new in RENAMED_FIELDS.items():
        if old in values:
            if new in values and values[new] != values[old] and not replacing:
                raise ConfigError(f"both {old!r} (its old name) and {new!r} are set; keep {new!r} only.")
            if warn:
                warnings.warn(f"SearchConfig field {old!r} is now {new!r}", DeprecationWarning,
                              stacklevel=_caller_stacklevel())
            values[new] = values.pop(old)
    return values


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this module and :mod:`dataclasses` (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") in (__name__, "dataclasses"):
        frame, level = frame.f_back, level + 1
    return level


class _AcceptsRenamedFields(type):
    """Lets ``SearchConfig(jsd=...)`` and ``dataclasses.replace(cfg, jsd=...)`` (which calls the class) keep working,
    with a DeprecationWarning, after a field's rename."""

    def __call__(cls, *args, **kwargs):
        replacing = sys._getframe(1).f_globals.get("__name__") == "dataclasses"
        return super().__call__(*args, **_renamed(kwargs, warn=True, replacing=replacing))


@dataclass(frozen=True)
class SearchConfig(metaclass=_AcceptsRenamedFields):
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
    # [ours] a space with levels of its own takes nnU-Net's per-axis strides and kernels (nnunet_nas/geometry.py);
    # False: the papers' isotropic space (every level 2x, 3^dims kernels, the patch rounded up to it)
    follow_plan_geometry: bool = True
    # IAC-LTH's JSD stability pruning and early stop, for any method (strategies/jsd_pruning.py); None: off
    jsd_pruning: Optional[JSDRule] = None
    # augmentation workers of the architecture data stream, as a share of nnU-Net's (nnUNet_n_proc_DA): at least one
    # when nnU-Net uses workers, none when it augments in its own process
    arch_data_workers: float = 0.5
    # GiB one search iteration may take (nnunet_nas/memory_fit.py); None: the device's free memory (CUDA) or the
    # machine's available memory (CPU); the environment variable NNUNET_NAS_MEMORY_GB wins. Not a search setting: a
    # resume (--c) keeps the checkpoint's search batch and patch whatever it is
    memory_target_gb: Optional[float] = None

    rules: ClassVar[dict] = {
        "op_set": optional(Rule(_op_set)), "export_channel_mul": optional(number(0, lo_open=True)),
        "warmup_fraction": number(0, 1, hi_open=True), "warmup_epochs": optional(integer(0)),
        "data_split": pair(integer(1)), "weight_optimizer": one_of(WEIGHT_OPTIMIZERS),
        "weight_lr": optional(number(0, lo_open=True)), "weight_betas": pair(number(0, 1, hi_open=True)),
        "arch_lr": number(0, lo_open=True), "arch_betas": pair(number(0, 1, hi_open=True)),
        "arch_weight_decay": number(0), "arch_decoupled_weight_decay": boolean,
        "arch_grad_clip": optional(number(0, lo_open=True)), "loss": one_of(LOSSES),
        "follow_plan_geometry": boolean, "jsd_pruning": optional(Rule(_jsd_rule)),
        "arch_data_workers": number(0, 1, lo_open=True), "memory_target_gb": optional(number(0, lo_open=True)),
    }

    @property
    def jsd(self) -> Optional[JSDRule]:
        """Deprecated name of :attr:`jsd_pruning`."""
        warnings.warn("SearchConfig.jsd is now SearchConfig.jsd_pruning", DeprecationWarning, stacklevel=2)
        return self.jsd_pruning

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
        values = read_fields(cls, _renamed(dict(d), warn=False) if isinstance(d, dict) else d, source)
        if values.get("jsd_pruning") is not None:
            values["jsd_pruning"] = JSDRule(**read_fields(JSDRule, values["jsd_pruning"], f"{source}.jsd_pruning"))
        try:
            cfg = cls(**values)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}.") from None
        return cfg.validate(source=source)


# each method's config lives with its record; these names are re-exported here, resolved when first asked for
METHOD_CONFIGS = {"DiNTSSearchConfig": "dints", "DASTSearchConfig": "dast", "SCNASSearchConfig": "scnas",
                  "IACSearchConfig": "iac", "IAC_MODES": "iac"}


def __getattr__(name):
    if name in METHOD_CONFIGS:
        import importlib
        return getattr(importlib.import_module(f"nnunet_nas.methods.{METHOD_CONFIGS[name]}"), name)
    raise AttributeError(f"module 'nnunet_nas.config' has no attribute {name!r}")
