"""The method registry: one :class:`SearchMethod` record per NAS method, looked up by name.

The search trainer, the export, the CLI, the pictures and the contract tests find everything method-specific
here; shared code never branches on a method's name. A method module (``nnunet_nas/methods/<name>.py``) builds
its record from its own pieces (space, architecture parameters, weighting, regularisers, discretiser, genotype,
fixed network, config) and calls :func:`register_method`.
"""

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from nnunet_nas.errors import ConfigError


OUTPUT_FILES = {"genotype": "genotype.json", "architecture": "architecture.png",
                "trajectories": "arch_trajectories.png", "network": "network.png"}


@dataclass(frozen=True)
class SearchMethod:
    """Everything the machinery needs to know about one method.

    Callables (``cfg`` is the method's config dataclass, ``net`` the :class:`~nnunet_nas.nnunet.search_network.
    SearchNetwork`):

    * ``build_supernet(cfg, op_set, input_channels, num_classes, spatial_dims, deep_supervision, planned=None)``
      -> the search space module, ``forward(x, weights)``; it exposes ``strides`` (nnU-Net's deep-supervision
      convention); ``planned`` is the :class:`~nnunet_nas.planned_network.PlannedNetwork` of the searched
      configuration (a method that builds on nnU-Net's network reads it, the others ignore it);
    * ``build_arch_params(cfg, supernet, op_set)`` -> :class:`~nnunet_nas.arch.params.ArchParams`;
    * ``make_weighting(cfg)`` -> :class:`~nnunet_nas.arch.weighting.Weighting`;
    * ``regularizers(net, cfg)`` -> ``{name: scalar tensor}``, unramped terms of the architecture loss;
    * ``discretize(arch_state, op_set, provenance, cfg=None)`` -> genotype, from the ``arch.*`` tensors of a state
      dict (``cfg``: the search's config where the rule has settings; None: the method's defaults);
    * ``describe(net, cfg)`` -> per-epoch record: a float for each of ``history_keys`` plus arrays for pictures;
    * ``fixed_network_kwargs(genotype, channel_mul, planned=None)`` -> the ``arch_kwargs`` of the plans'
      architecture block (``planned``: the base configuration's network and, after a search on a trained model of it,
      that model's checkpoint);
    * ``export_memory_share``: the export fits ``channel_mul`` so that the found network takes this share of the
      memory nnU-Net planned (1.0: it replaces nnU-Net's network; IAC's cells add to it), by the export's counter;
      None: the method's own default width is used and the memory it adds is printed;
    * ``trained_host``: True: the search starts from a trained model of the configuration's planned network, which
      the trainer finds, loads and freezes (the supernet has ``load_host_weights`` and ``host_parameters``);
    * ``search_downsamplings(cfg)`` -> how many down-sampling stages the search space has; it takes the plan's
      first ones (per-axis strides and kernels, :mod:`nnunet_nas.geometry`) and the search patch must be divisible
      by their product per axis. None: the method searches inside nnU-Net's own network, whose plan it keeps (IAC);
    * ``genotype_patch_divisor(genotype)``: what a found network's patch extents must be multiples of (an int or
      one per axis);
    * ``make_strategies(cfg)`` -> list of :class:`~nnunet_nas.strategies.base.SearchStrategy`;
    * ``kept_edges(genotype)`` -> bool array over the leading shape of ``op_logits``: the edges the genotype uses
      (optional; the JSD strategy's stop rule looks at those only, at every edge without it);
    * ``plot_genotype(genotype, path)``, ``plot_history(history, path, net, cfg)``: pictures (optional);
    * ``plot_supernet(supernet, path)``: a picture of the searched network, drawn when the search starts (optional);
    * ``search_notes(net, cfg)`` -> lines logged when the search starts (optional);
    * ``check_search(net, cfg)``: raises :class:`~nnunet_nas.errors.ConfigError` when the config asks for what this
      search network cannot do (a memory budget it cannot reach); called when the search starts (optional);
    * ``choose_op_set(cfg, spatial_dims)`` -> the op set where a config option picks it (optional; default:
      ``default_op_sets``); ``cfg.op_set`` wins over both;
    * ``count_export_memory(cfg, build, input_channels, patch_size, reference)`` -> an object whose memory ratio the
      method's ``regularizers`` read as ``net.export_memory`` (the found network counted by the export's counter at
      its export width, against nnU-Net's planned network's ``reference()`` elements), or None where the config does
      not budget in nnU-Net's terms; ``build(cfg)`` makes the supernet at the configuration's patch (optional).
    """
    name: str  # registry key, file stem and configuration suffix: "dints" -> dints_genotype.json, 3d_fullres_dints
    paper: str
    config_class: type
    genotype_class: type
    network_class: type  # the fixed network nnU-Net's stock trainer builds from the plans
    default_op_sets: Mapping[int, str]  # spatial_dims -> op set name
    build_supernet: Callable
    build_arch_params: Callable
    make_weighting: Callable
    regularizers: Callable
    discretize: Callable
    describe: Callable
    fixed_network_kwargs: Callable
    search_downsamplings: Optional[Callable]
    genotype_patch_divisor: Callable
    history_keys: Tuple[str, ...] = ()
    make_strategies: Callable = field(default=lambda cfg: [])
    kept_edges: Optional[Callable] = None
    export_memory_share: Optional[float] = 1.0
    # the config field that scales the supernet's width ("channel_mul"): the memory fit's last resort narrows it; None:
    # the fit never narrows this method's search
    search_width_field: Optional[str] = None
    trained_host: bool = False
    plot_genotype: Optional[Callable] = None
    plot_history: Optional[Callable] = None
    plot_supernet: Optional[Callable] = None
    search_notes: Optional[Callable] = None
    check_search: Optional[Callable] = None
    choose_op_set: Optional[Callable] = None
    count_export_memory: Optional[Callable] = None

    @property
    def network_class_name(self) -> str:
        return f"{self.network_class.__module__}.{self.network_class.__qualname__}"

    def output_file(self, kind: str, tag: Optional[str] = None) -> str:
        """File name of a search output beside nnU-Net's ``progress.png``: ``kind`` is one of ``OUTPUT_FILES``;
        ``tag`` names an export of another checkpoint than the final one (``dints_genotype_checkpoint_best.json``)."""
        stem, ext = os.path.splitext(OUTPUT_FILES[kind])
        return f"{self.name}_{stem}{'_' + tag if tag else ''}{ext}"

    def search_geometry(self, cfg, planned, spatial_dims: int):
        """``(geometry, note)``: the :class:`~nnunet_nas.geometry.Geometry` the search space takes from the
        configuration nnU-Net planned (``planned``: a :class:`~nnunet_nas.planned_network.PlannedNetwork`) and a
        line for the log where it departs from the plan. A method in nnU-Net's own network (no
        ``search_downsamplings``) keeps all the plan's stages: ``(plan, None)``, or ``(None, None)`` where the plan
        names none or ``cfg.follow_plan_geometry`` is off."""
        from nnunet_nas.geometry import Geometry, planned_geometry
        if self.search_downsamplings is None:
            plan = None if planned is None else Geometry.from_plan(planned.kwargs, spatial_dims)
            return (plan if cfg.follow_plan_geometry else None), None
        return planned_geometry(planned, spatial_dims, self.search_downsamplings(cfg) + 1, cfg.follow_plan_geometry)

    def op_set_for(self, cfg, spatial_dims: int) -> str:
        """The op set a search with ``cfg`` uses in ``spatial_dims`` (``cfg.op_set`` or the method's default)."""
        if cfg.op_set is not None:
            return cfg.op_set
        if self.choose_op_set is not None:
            return self.choose_op_set(cfg, spatial_dims)
        if spatial_dims not in self.default_op_sets:
            raise ConfigError(f"method {self.name!r} has no op set for {spatial_dims}-D configurations (it has "
                             f"{sorted(self.default_op_sets)}-D).")
        return self.default_op_sets[spatial_dims]


METHODS: Dict[str, SearchMethod] = {}


def register_method(method: SearchMethod) -> SearchMethod:
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"NAS method {method.name!r} is registered twice.")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> SearchMethod:
    import nnunet_nas.methods  # noqa: F401 - registers the package's methods
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown NAS method {name!r}; registered methods: {sorted(METHODS)}.") from None


def method_names() -> List[str]:
    import nnunet_nas.methods  # noqa: F401
    return sorted(METHODS)
