"""From a search result to a drop-in nnU-Net configuration, for every registered method: genotype JSON and
picture beside the checkpoint, and a plans entry ``<base>_<method>`` naming the method's fixed network."""

import math
import os
from dataclasses import dataclass
from typing import Optional

from nnunet_nas.convergence import convergence_summary, unseparated_warning
from nnunet_nas.errors import ConfigError, EnvironmentSetupError, InputFileError, MissingFileError
from nnunet_nas.genotypes.schema import Genotype
from nnunet_nas.io import read_json
from nnunet_nas.nnunet.plans_io import (PlansError, check_configuration_name, check_registration, load_plans,
                                        plans_file, register_configuration)
from nnunet_nas.nnunet.host import per_fold_host
from nnunet_nas.nnunet.search_state import SEARCH_STATE_KEY, read_checkpoint, saved_search_config
from nnunet_nas.patch import round_up_patch
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import SearchMethod, get_method

EXPORT_NAME_ENV = "NNUNET_NAS_EXPORT_NAME"  # pins the configuration name a search registers (nnunet-nas run)

def architecture_block(method: SearchMethod, genotype: Genotype, channel_mul: Optional[float],
                       planned: Optional[PlannedNetwork] = None) -> dict:
    """The plans ``architecture`` block of ``genotype`` (nnU-Net builds the network from it by dotted path)."""
    return {"network_class_name": method.network_class_name,
            "arch_kwargs": method.fixed_network_kwargs(genotype, channel_mul, planned=planned),
            "_kw_requires_import": []}


@dataclass
class Registration:
    """A configuration checked and built, not written yet: :func:`prepare_registration` makes every check (plans,
    base configuration, dimensionality, width, name) and :meth:`commit` writes it under the plans lock, where the
    name is checked again against the plans as they are then."""
    plans_path: str
    base_config: str
    name: str
    architecture: dict
    patch: list
    overwrite: bool
    auto_rename: bool
    memory_text: str

    def commit(self, log=print) -> str:
        used = register_configuration(self.plans_path, self.base_config, self.name, self.architecture,
                                      patch_size=self.patch, overwrite=self.overwrite, auto_rename=self.auto_rename)
        if used != self.name:
            log(f"configuration {self.name!r} already holds a different architecture; registered as {used!r} instead")
        log(f"registered configuration {used!r} in {self.plans_path}; estimated training memory of the fixed network "
            f"{self.memory_text}")
        return used


def prepare_registration(plans_path: str, base_config: str, method: SearchMethod, genotype: Genotype,
                         channel_mul: Optional[float] = None, name: Optional[str] = None, overwrite: bool = False,
                         auto_rename: bool = False, host_checkpoint: Optional[str] = None,
                         log=print) -> Registration:
    """Check and build the registration of ``genotype`` as configuration ``name`` (default ``<base>_<method>``);
    nothing is written.

    The patch size of the base configuration is rounded up to what the architecture needs. ``channel_mul=None``
    fits the width to the method's share of the memory nnU-Net planned for the base configuration
    (``export_memory_share``, :mod:`nnunet_nas.nnunet.width`: 1.0 for a network that replaces nnU-Net's, more for
    IAC's host plus cells); a method without a share keeps its own default and the added memory is printed.
    ``host_checkpoint``: the trained model of the base configuration's network the search built on (IAC; the fixed
    network starts from it). The training memory of the fixed network at that patch and the base batch size is
    estimated and printed.
    """
    plans = load_plans(plans_path)
    name = name or f"{base_config}_{method.name}"
    check_registration(plans_path, plans, base_config, name, None, overwrite)  # base and name, before any work
    if channel_mul is not None and not (isinstance(channel_mul, (int, float)) and math.isfinite(channel_mul)
                                        and channel_mul > 0):
        raise ConfigError(f"channel_mul {channel_mul} must be a finite positive number (the width of the exported "
                          f"network relative to the method's base width; leave it out to fit it to nnU-Net's plan).")
    base = _resolved(plans, base_config)
    if len(base["patch_size"]) != genotype.spatial_dims:
        raise PlansError(f"configuration {base_config!r} is {len(base['patch_size'])}-D but the genotype is "
                         f"{genotype.spatial_dims}-D; pick a matching base configuration.")
    if not isinstance(base.get("architecture"), dict):
        raise PlansError(f"{plans_path}: configuration {base_config!r} has no architecture object; it is not an "
                         f"nnU-Net configuration. Re-plan the dataset or restore a backup.")
    _log_geometry(method, genotype, base, base_config, log)
    divisor = method.genotype_patch_divisor(genotype)
    patch = round_up_patch(base["patch_size"], divisor)
    if patch != list(base["patch_size"]):
        log(f"patch size {list(base['patch_size'])} -> {patch} (this architecture needs multiples of {divisor} per "
            f"axis)")
    channels, classes = network_channels(plans_path, plans, base_config)
    planned = PlannedNetwork.from_block(base["architecture"], host_checkpoint, patch)
    if channel_mul is None and method.export_memory_share is not None:
        channel_mul = _fitted_channel_mul(plans_path, base_config, method, genotype, patch, channels, classes, planned,
                                          log)
    arch = architecture_block(method, genotype, channel_mul, planned)
    # the fixed network as nnU-Net trains it (deep supervision on), built once for the memory figures below
    fixed = method.network_class(channels, classes, deep_supervision=True, **arch["arch_kwargs"])
    if method.export_memory_share is None:
        _log_added_memory(plans_path, base_config, method.name, fixed, patch, channels, classes, log)
    name = check_registration(plans_path, plans, base_config, name, arch, overwrite, auto_rename)
    return Registration(plans_path, base_config, name, arch, patch, overwrite, auto_rename,
                        _memory_text(fixed, patch, base.get("batch_size", 2), channels, classes))


def _log_geometry(method: SearchMethod, genotype: Genotype, base: dict, base_config: str, log) -> None:
    """Say where the found network's geometry (the genotype's) is not the base configuration's plan."""
    if method.search_downsamplings is None:  # the method's network is nnU-Net's own
        return
    searched = getattr(genotype, "geometry", None)
    if searched is None:
        log("note: the genotype records no geometry (written before nnunet_nas recorded the plan's strides and "
            "kernels, or imported from MONAI): the network is built isotropic, 2x per axis with kernels 3")
        return
    from nnunet_nas.geometry import Geometry
    plan = Geometry.from_plan(base["architecture"].get("arch_kwargs"), genotype.spatial_dims,
                              f"configuration {base_config!r}")
    plan = Geometry.isotropic(genotype.spatial_dims, searched.num_stages) if plan is None else \
        plan.fit(searched.num_stages)[0]
    if plan != searched:
        log(f"note: the architecture was searched at strides {[list(s) for s in searched.strides]} and kernels "
            f"{[list(k) for k in searched.kernels]}; configuration {base_config!r} plans strides "
            f"{[list(s) for s in plan.strides]} and kernels {[list(k) for k in plan.kernels]}. The network keeps "
            f"the searched geometry (search on this configuration to follow its plan).")


def sampled_genotype(method: SearchMethod, cfg, planned: PlannedNetwork, spatial_dims: int, input_channels: int,
                     num_heads: int, seed: int = 0):
    """A definite random architecture of ``method``: architecture logits drawn N(0, 2) (a mix of ops), discretised by
    the method's own rule, with the geometry the search space takes from ``planned`` (as the export records it)."""
    import torch
    op_set = method.op_set_for(cfg, spatial_dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        supernet = method.build_supernet(cfg, op_set, input_channels, num_heads, spatial_dims, True, planned=planned)
        arch = method.build_arch_params(cfg, supernet, op_set)
        with torch.no_grad():
            for p in arch.parameters():
                p.normal_(0, 2)
        genotype = method.discretize(arch.state_dict(), op_set, cfg=cfg)
    genotype.geometry = method.search_geometry(cfg, planned, spatial_dims)[0]
    return genotype


def planned_fixed_network(method: SearchMethod, genotype: Genotype, channel_mul: Optional[float],
                          planned: PlannedNetwork, input_channels: int, num_heads: int):
    """``genotype``'s network as its export registers and nnU-Net builds it (``get_network_from_plans``, deep
    supervision on)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    block = architecture_block(method, genotype, channel_mul, planned=planned)
    return get_network_from_plans(block["network_class_name"], block["arch_kwargs"], block["_kw_requires_import"],
                                  input_channels, num_heads, allow_init=True, deep_supervision=True)


def sampled_fixed_network(method: SearchMethod, cfg, planned: PlannedNetwork, spatial_dims: int,
                          input_channels: int, num_heads: int, channel_mul: Optional[float] = None, seed: int = 0):
    """The fixed network of :func:`sampled_genotype`: what a found network costs before any search (its memory,
    whether it compiles). ``channel_mul`` None: the search config's ``export_channel_mul``, else (a method whose
    export fits the width) its search width."""
    import torch
    genotype = sampled_genotype(method, cfg, planned, spatial_dims, input_channels, num_heads, seed)
    if channel_mul is None:
        channel_mul = cfg.export_channel_mul
    if channel_mul is None and method.export_memory_share is not None:  # where the export fits it
        channel_mul = getattr(cfg, method.search_width_field or "channel_mul", 1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return planned_fixed_network(method, genotype, channel_mul, planned, input_channels, num_heads)


def register_searched_configuration(plans_path: str, base_config: str, method: SearchMethod, genotype: Genotype,
                                    channel_mul: Optional[float] = None, name: Optional[str] = None,
                                    overwrite: bool = False, auto_rename: bool = False,
                                    host_checkpoint: Optional[str] = None, log=print) -> str:
    """:func:`prepare_registration` and :meth:`Registration.commit`; returns the configuration name used."""
    return prepare_registration(plans_path, base_config, method, genotype, channel_mul, name, overwrite, auto_rename,
                                host_checkpoint, log).commit(log)


def _resolved(plans: dict, name: str, _seen: tuple = ()) -> dict:
    configs = plans["configurations"]
    if name not in configs:
        raise PlansError(f"plans have no configuration {name!r}; available: {sorted(configs)}")
    if name in _seen:
        raise PlansError(f"plans configurations inherit in a circle ({' -> '.join(_seen + (name,))}); nnU-Net refuses "
                         f"such a plans file. Restore a backup (nnUNetPlans.json.bak.<n>) or re-plan the dataset.")
    c = dict(configs[name])
    if "inherits_from" in c:
        parent = _resolved(plans, c["inherits_from"], _seen + (name,))
        parent.update(c)
        c = parent
    if not isinstance(c.get("patch_size"), list) or not all(isinstance(p, int) and p > 0 for p in c["patch_size"]):
        raise PlansError(f"plans configuration {name!r} has no patch_size list of positive integers; it is not an "
                         f"nnU-Net configuration. Re-plan the dataset or restore a backup.")
    return c


def _fitted_channel_mul(plans_path, base_config, method, genotype, patch, channels, classes, planned, log) -> float:
    from nnunet_nas.nnunet.width import FIT_TOLERANCE, fit_channel_mul, planned_network_elements
    planned_count = planned_network_elements(plans_path, base_config, channels, classes)
    share = method.export_memory_share
    target = int(share * planned_count)

    def build(mul):
        return method.network_class(channels, classes, deep_supervision=True,
                                    **method.fixed_network_kwargs(genotype, mul, planned=planned))
    mul, elements = fit_channel_mul(build, channels, patch, target)
    what = "nnU-Net's planned network" if share == 1.0 else f"{share:g}x nnU-Net's planned network"
    log(f"width fitted to {what} for {base_config!r}: channel_mul {mul} (conv feature maps "
        f"{elements / 1e6:.2f} M elements at patch {patch} vs {planned_count / 1e6:.2f} M planned; pass --channel-mul "
        f"to choose another width)")
    if elements > target * (1 + FIT_TOLERANCE):
        log(f"warning: this architecture does not fit {what} for {base_config!r} at any width it can be built at: "
            f"{elements / planned_count:.2f}x the planned conv feature maps at channel_mul {mul}. Search with a "
            f"smaller memory budget, or lower the configuration's batch size.")
    return mul


def _log_added_memory(plans_path, base_config, method_name, net, patch, channels, classes, log) -> None:
    from nnunet_nas.nnunet.width import planned_network_elements
    planned = planned_network_elements(plans_path, base_config, channels, classes)
    elements = net.compute_conv_feature_map_size(patch)
    log(f"{method_name} adds to nnU-Net's planned network for {base_config!r} (width not fitted): conv feature maps "
        f"{elements / 1e6:.2f} M elements at patch {patch} vs {planned / 1e6:.2f} M planned "
        f"({elements / planned:.2f}x); pass --channel-mul to choose the cells' width")


def network_channels(plans_path: str, plans: dict, configuration: str):
    """(input channels, output channels) of the network nnU-Net builds for ``configuration``, counted as nnU-Net
    counts them: the image channels, plus the previous stage's one-hot foreground labels in a cascade
    (``determine_num_input_channels``); one output per label, or per region for a region-based (BraTS-style)
    dataset, the ignore label excluded (the label manager's ``num_segmentation_heads``). (1, 2) where the
    dataset.json beside the plans is missing."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    path = os.path.join(os.path.dirname(plans_path), "dataset.json")
    if not os.path.isfile(path):
        return 1, 2
    d = read_json(path, "nnU-Net's dataset.json")
    if not isinstance(d.get("channel_names"), dict) or not isinstance(d.get("labels"), dict):
        raise InputFileError(f"{path}: no 'channel_names' and 'labels' objects; it is not nnU-Net's dataset.json. "
                             f"Copy it again from the raw dataset (nnUNetv2_plan_and_preprocess writes it).")
    manager = PlansManager(plans)
    try:
        return (determine_num_input_channels(manager, configuration, d),
                manager.get_label_manager(d).num_segmentation_heads)
    except Exception as e:  # noqa: BLE001 - nnU-Net's own checks of labels, regions and the ignore label
        raise InputFileError(f"{path}: nnU-Net cannot read its labels ({type(e).__name__}: {e}); fix dataset.json "
                             f"as nnU-Net's documentation on labels, regions and the ignore label says.") from None


def _memory_text(net, patch, batch_size, channels, classes) -> str:
    from nnunet_nas.arch.memory import estimate_training_memory_bytes
    fp32 = estimate_training_memory_bytes(net, patch, batch_size, amp=False) / 2 ** 30
    amp = estimate_training_memory_bytes(net, patch, batch_size, amp=True) / 2 ** 30
    params = sum(p.numel() for p in net.parameters()) / 1e6
    activations = batch_size * net.compute_conv_feature_map_size(patch) * 4 / 2 ** 30
    return (f"{amp:.2f} GiB with AMP / {fp32:.2f} GiB fp32, of which activations {activations:.2f} GiB fp32 "
            f"(patch {patch}, batch {batch_size}, {channels} input channels, {classes} outputs, {params:.2f} M "
            f"parameters)")


def genotype_tag(checkpoint_path: str) -> Optional[str]:
    """None for a search's final checkpoint (its files are the search's result), else the checkpoint's file stem:
    an export of another checkpoint writes its genotype under a name of its own."""
    stem = os.path.splitext(os.path.basename(checkpoint_path))[0]
    return None if stem == "checkpoint_final" else stem


def write_genotype_files(method: SearchMethod, genotype: Genotype, folder: str, tag: Optional[str] = None,
                         log=print) -> str:
    """``<method>_genotype[_<tag>].json`` and, where the method draws one, ``<method>_architecture[_<tag>].png`` in
    ``folder``."""
    path = os.path.join(folder, method.output_file("genotype", tag))
    genotype.save(path)
    if method.plot_genotype is not None:
        try:
            method.plot_genotype(genotype, os.path.join(folder, method.output_file("architecture", tag)))
        except Exception as e:  # noqa: BLE001 - a missing picture must never lose the genotype
            log(f"could not draw the architecture picture: {e}")
    log(f"genotype written to {path}")
    return path


def read_search_checkpoint(checkpoint_path: str):
    """``(checkpoint, search state, method)`` of a search checkpoint; a clear error for anything else."""
    ckpt = read_checkpoint(checkpoint_path, "a search checkpoint (a search fold folder's checkpoint_final.pth / "
                                            "checkpoint_latest.pth / checkpoint_best.pth)")
    state = ckpt.get(SEARCH_STATE_KEY)
    if not isinstance(state, dict) or not any(k.startswith("arch.") for k in ckpt["network_weights"]):
        raise InputFileError(f"{checkpoint_path} is not an architecture-search checkpoint (no architecture "
                             f"parameters). Pass the checkpoint of a search trainer (-tr nnUNetTrainer<Method>Search).")
    init = ckpt.get("init_args")
    if not isinstance(init, dict) or not isinstance(init.get("plans"), dict) or "configuration" not in init or \
            not isinstance(state.get("search_config"), dict):
        raise InputFileError(f"{checkpoint_path}: the search checkpoint lacks its init_args (plans, configuration) or "
                             f"search_config; it is truncated or was not written by nnunet_nas.")
    return ckpt, state, get_method(state.get("method", "dints"))  # checkpoints of 0.1.0 are DiNTS searches


@dataclass
class SearchedArchitecture:
    """What a search checkpoint's discretiser reads: the method, its validated config, the op set, the ``arch.*``
    tensors (prefix dropped) and the searched configuration's spatial dims, beside the checkpoint and its state."""
    checkpoint: dict
    state: dict
    method: SearchMethod
    config: object
    op_set: str
    arch_state: dict
    dims: int


def search_checkpoint(path: str) -> str:
    """A search checkpoint, or the first of nnU-Net's checkpoints in a search fold folder."""
    if os.path.isdir(path):
        names = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
        found = [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise MissingFileError(f"{path} holds none of {names}; pass a search fold folder or one of its "
                                   f"checkpoints.")
        return found[0]
    return path


def read_searched_architecture(checkpoint_path: str) -> SearchedArchitecture:
    ckpt, state, method = read_search_checkpoint(checkpoint_path)
    config = method.config_class.from_dict(saved_search_config(state), source=f"{checkpoint_path}: search_config")
    init = ckpt["init_args"]
    dims = len(_resolved(init["plans"], init["configuration"])["patch_size"])
    arch_state = {k[len("arch."):]: v for k, v in ckpt["network_weights"].items() if k.startswith("arch.")}
    return SearchedArchitecture(ckpt, state, method, config, state.get("op_set") or method.default_op_sets[dims],
                                arch_state, dims)


def preprocessed_plans_path(dataset_name: str, plans_identifier: str) -> str:
    """The plans file nnU-Net reads for a dataset; one error naming the fix when the environment lacks it."""
    from nnunetv2.paths import nnUNet_preprocessed
    if not nnUNet_preprocessed:
        raise EnvironmentSetupError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file. Set it "
                                    "as for nnUNetv2_train.")
    return plans_file(os.path.join(nnUNet_preprocessed, dataset_name), plans_identifier)


def export_from_checkpoint(checkpoint_path: str, name: Optional[str] = None, channel_mul: Optional[float] = None,
                           base_config: Optional[str] = None, overwrite: bool = False,
                           random_seed: Optional[int] = None, log=print) -> str:
    """Discretise a search checkpoint, write the genotype beside it and register the configuration.

    Every input is checked before anything is written; the genotype of a checkpoint other than
    ``checkpoint_final.pth`` goes to ``<method>_genotype_<checkpoint>.json`` (:func:`genotype_tag`). Returns the
    configuration name used. With ``random_seed``, the architecture registered is the random one that seed draws from
    the checkpoint's space (:mod:`nnunet_nas.random_architecture`) instead of the found one, with everything else the
    found one's: geometry, width rule (so the same memory where the width is fitted), trained start; its files are
    tagged ``random<seed>`` and its default name is ``<configuration>_<method>_random<seed>``: the found
    architecture's control, which tells whether the search chose better than chance.
    """
    arch = read_searched_architecture(checkpoint_path)
    ckpt, state, method, config = arch.checkpoint, arch.state, arch.method, arch.config
    init = ckpt["init_args"]
    plans, searched = init["plans"], init["configuration"]
    path = preprocessed_plans_path(plans.get("dataset_name"), plans.get("plans_name"))
    dims = arch.dims
    provenance = {"method": method.name, "dataset": plans["dataset_name"], "configuration": searched,
                  "fold": init.get("fold"), "epoch": int(ckpt.get("current_epoch", -1)),
                  "trainer": ckpt.get("trainer_name"), "checkpoint": os.path.abspath(checkpoint_path),
                  "search_config": config.to_dict(), "stopped_early": bool(state.get("stopped_early", False)),
                  "search_fit": state.get("fit"), "nnunet_nas_version": _version()}
    tag = genotype_tag(checkpoint_path)
    if random_seed is None:
        provenance["convergence"] = convergence_summary(state.get("arch_history") or {})  # the search's: not a draw's
        genotype = method.discretize(arch.arch_state, arch.op_set, provenance, cfg=config)
    else:
        from nnunet_nas.random_architecture import random_genotype
        provenance["random_draw"] = {"seed": int(random_seed), "of": "the search's space, not its result"}
        genotype = random_genotype(method, arch.arch_state, arch.op_set, config, random_seed, provenance)
        tag = "_".join(t for t in (tag, f"random{int(random_seed)}") if t)
        if name is None:
            name = f"{base_config or searched}_{method.name}_random{int(random_seed)}"
    genotype.geometry = _searched_geometry(state, method, config, _resolved(plans, searched), dims, checkpoint_path)
    mul = config.export_channel_mul if channel_mul is None else channel_mul  # None: fitted
    registration = prepare_registration(path, base_config or searched, method, genotype, mul, name=name,
                                        overwrite=overwrite, auto_rename=name is None and not overwrite,
                                        host_checkpoint=per_fold_host(state.get("host_checkpoint"), init.get("fold")),
                                        log=log)
    if mul is None and random_seed is None:
        _log_width_correction(config, state.get("fit"), registration.architecture["arch_kwargs"].get("channel_mul"),
                              log)
    write_genotype_files(method, genotype, os.path.dirname(os.path.abspath(checkpoint_path)), tag, log=log)
    name = registration.commit(log)
    warning = unseparated_warning(provenance.get("convergence"))
    if warning:
        log(warning)
    return name


def _log_width_correction(config, fit: Optional[dict], fitted: Optional[float], log) -> None:
    """Where the search counted its memory in nnU-Net's terms at an export width (``counted_export_width``), how
    far the export's fit to nnU-Net's plan moved from it (a search whose memory term bound: a small correction)."""
    counted = getattr(config, "counted_export_width", None)
    aimed = counted() if counted is not None else None
    if aimed is None or fitted is None:
        return
    aimed /= (fit or {}).get("width_scale") or 1.0  # the config's width, before the memory fit narrowed the search
    log(f"width: the search counted its memory at channel_mul {aimed:.4g}; fitted to nnU-Net's plan "
        f"{fitted:g}, a correction of {fitted / aimed:.2f}x")


def _searched_geometry(state: dict, method: SearchMethod, config, searched: dict, dims: int, source: str):
    """The geometry the search's space had: recorded in its state since 0.2, else what the plans it ran with and
    its config give."""
    from nnunet_nas.geometry import Geometry
    if state.get("geometry") is not None:
        return Geometry.from_dict(state["geometry"], dims, f"{source}: geometry")
    block = searched.get("architecture")
    planned = PlannedNetwork.from_block(block) if isinstance(block, dict) and "network_class_name" in block else None
    return method.search_geometry(config, planned, dims)[0]


def pinned_export_name() -> Optional[str]:
    """The configuration name a search registers its result under when ``NNUNET_NAS_EXPORT_NAME`` pins one
    (``nnunet-nas run`` chooses its names up front); None: ``<configuration>_<method>``, renamed rather than
    replaced."""
    return os.environ.get(EXPORT_NAME_ENV) or None


def check_export_inputs(dataset_name: str, plans_identifier: str, configuration: str, method: SearchMethod,
                        cfg, name: Optional[str] = None) -> None:
    """What :func:`export_from_checkpoint` will need at the end of a search, checked when it starts: nnU-Net's
    environment, the plans file, the base configuration, the name the result will be registered under (a pinned
    ``name`` must be one the export may replace: never nnU-Net's own or one nnunet_nas did not write), the
    dataset.json beside the plans and, where the export fits the width, the planned network it fits to."""
    from nnunet_nas.nnunet.width import planned_network_elements
    path = preprocessed_plans_path(dataset_name, plans_identifier)
    plans = load_plans(path)
    _resolved(plans, configuration)
    if name is None:
        check_configuration_name(f"{configuration}_{method.name}")
    else:
        check_registration(path, plans, configuration, name, None, overwrite=True)
    channels, classes = network_channels(path, plans, configuration)
    if method.export_memory_share is not None and cfg.export_channel_mul is None:
        planned_network_elements(path, configuration, channels, classes)  # on the meta device: shapes only


def _version() -> str:
    from nnunet_nas import __version__
    return __version__
