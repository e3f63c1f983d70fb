"""From a search result to a drop-in nnU-Net configuration, for every registered method: genotype JSON and
picture beside the checkpoint, and a plans entry ``<base>_<method>`` naming the method's fixed network."""

import json
import os
from typing import Optional

from nnunet_nas.genotypes.schema import Genotype
from nnunet_nas.nnunet.plans_io import free_configuration_name, load_plans, register_configuration
from nnunet_nas.patch import round_up_patch
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import SearchMethod, get_method


def architecture_block(method: SearchMethod, genotype: Genotype, channel_mul: Optional[float],
                       planned: Optional[PlannedNetwork] = None) -> dict:
    """The plans ``architecture`` block of ``genotype`` (nnU-Net builds the network from it by dotted path)."""
    return {"network_class_name": method.network_class_name,
            "arch_kwargs": method.fixed_network_kwargs(genotype, channel_mul, planned=planned),
            "_kw_requires_import": []}


def register_searched_configuration(plans_path: str, base_config: str, method: SearchMethod, genotype: Genotype,
                                    channel_mul: Optional[float] = None, name: Optional[str] = None,
                                    overwrite: bool = False, auto_rename: bool = False,
                                    host_checkpoint: Optional[str] = None, log=print) -> str:
    """Register ``genotype`` as configuration ``name`` (default ``<base>_<method>``) and return the name used.

    The patch size of the base configuration is rounded up to what the architecture needs. ``channel_mul=None``
    fits the width to the memory nnU-Net planned for the base configuration (:mod:`nnunet_nas.nnunet.width`) for a
    method whose network replaces nnU-Net's (``fits_width``); a method that adds to nnU-Net's network (IAC) keeps
    its own default and the added memory is printed. ``host_checkpoint``: the trained model of the base
    configuration's network the search built on (IAC; the fixed network starts from it). The training memory of
    the fixed network at that patch and the base batch size is estimated and printed.
    """
    plans = load_plans(plans_path)
    base = _resolved(plans, base_config)
    if len(base["patch_size"]) != genotype.spatial_dims:
        raise ValueError(f"configuration {base_config!r} is {len(base['patch_size'])}-D but the genotype is "
                         f"{genotype.spatial_dims}-D; pick a matching base configuration.")
    divisor = method.genotype_patch_divisor(genotype)
    patch = round_up_patch(base["patch_size"], divisor)
    if patch != list(base["patch_size"]):
        log(f"patch size {list(base['patch_size'])} -> {patch} (this architecture needs multiples of {divisor})")
    channels, classes = _dataset_channels_and_classes(plans_path)
    planned = PlannedNetwork.from_block(base["architecture"], host_checkpoint, patch)
    if channel_mul is None and method.fits_width:
        channel_mul = _fitted_channel_mul(plans_path, base_config, method, genotype, patch, channels, classes, planned,
                                          log)
    arch = architecture_block(method, genotype, channel_mul, planned)
    # the fixed network as nnU-Net trains it (deep supervision on), built once for the memory figures below
    fixed = method.network_class(channels, classes, deep_supervision=True, **arch["arch_kwargs"])
    if not method.fits_width:
        _log_added_memory(plans_path, base_config, method.name, fixed, patch, channels, classes, log)
    name = name or f"{base_config}_{method.name}"
    if auto_rename:
        new = free_configuration_name(plans_path, name, arch)
        if new != name:
            log(f"configuration {name!r} already holds a different architecture; registering as {new!r} instead")
        name = new
    used = register_configuration(plans_path, base_config, name, arch, patch_size=patch, overwrite=overwrite)
    log(f"registered configuration {used!r} in {plans_path}; estimated training memory of the fixed network "
        f"{_memory_text(fixed, patch, base.get('batch_size', 2))}")
    return used


def _resolved(plans: dict, name: str) -> dict:
    configs = plans["configurations"]
    if name not in configs:
        raise ValueError(f"plans have no configuration {name!r}; available: {sorted(configs)}")
    c = dict(configs[name])
    if "inherits_from" in c:
        parent = _resolved(plans, c["inherits_from"])
        parent.update(c)
        c = parent
    return c


def _fitted_channel_mul(plans_path, base_config, method, genotype, patch, channels, classes, planned, log) -> float:
    from nnunet_nas.nnunet.width import FIT_TOLERANCE, fit_channel_mul, planned_network_elements
    target = planned_network_elements(plans_path, base_config, channels, classes)

    def build(mul):
        return method.network_class(channels, classes, deep_supervision=True,
                                    **method.fixed_network_kwargs(genotype, mul, planned=planned))
    mul, elements = fit_channel_mul(build, channels, patch, target)
    log(f"width fitted to nnU-Net's planned network for {base_config!r}: channel_mul {mul} (conv feature maps "
        f"{elements / 1e6:.2f} M elements at patch {patch} vs {target / 1e6:.2f} M planned; pass --channel-mul to "
        f"choose another width)")
    if elements > target * (1 + FIT_TOLERANCE):
        log(f"warning: this architecture does not fit nnU-Net's planned memory for {base_config!r} at any width it "
            f"can be built at: {elements / target:.2f}x the planned conv feature maps at channel_mul {mul}. Search "
            f"with a smaller memory budget, or lower the configuration's batch size.")
    return mul


def _log_added_memory(plans_path, base_config, method_name, net, patch, channels, classes, log) -> None:
    from nnunet_nas.nnunet.width import planned_network_elements
    planned = planned_network_elements(plans_path, base_config, channels, classes)
    elements = net.compute_conv_feature_map_size(patch)
    log(f"{method_name} adds to nnU-Net's planned network for {base_config!r} (width not fitted): conv feature maps "
        f"{elements / 1e6:.2f} M elements at patch {patch} vs {planned / 1e6:.2f} M planned "
        f"({elements / planned:.2f}x); pass --channel-mul to choose the cells' width")


def _dataset_channels_and_classes(plans_path: str):
    """(input channels, output channels) from the dataset.json beside the plans (1, 2 if it is missing)."""
    try:
        with open(os.path.join(os.path.dirname(plans_path), "dataset.json")) as f:
            d = json.load(f)
        return len(d["channel_names"]), len(d["labels"])
    except (OSError, KeyError, ValueError):
        return 1, 2


def _memory_text(net, patch, batch_size) -> str:
    from nnunet_nas.arch.memory import estimate_training_memory_bytes
    fp32 = estimate_training_memory_bytes(net, patch, batch_size, amp=False) / 2 ** 30
    amp = estimate_training_memory_bytes(net, patch, batch_size, amp=True) / 2 ** 30
    params = sum(p.numel() for p in net.parameters()) / 1e6
    activations = batch_size * net.compute_conv_feature_map_size(patch) * 4 / 2 ** 30
    return (f"{amp:.2f} GiB with AMP / {fp32:.2f} GiB fp32, of which activations {activations:.2f} GiB fp32 "
            f"(patch {patch}, batch {batch_size}, {params:.2f} M parameters)")


def write_genotype_files(method: SearchMethod, genotype: Genotype, folder: str, log=print) -> str:
    """``<method>_genotype.json`` and, where the method draws one, ``<method>_architecture.png`` in ``folder``."""
    path = os.path.join(folder, method.output_file("genotype"))
    genotype.save(path)
    if method.plot_genotype is not None:
        try:
            method.plot_genotype(genotype, os.path.join(folder, method.output_file("architecture")))
        except Exception as e:  # noqa: BLE001 - a missing picture must never lose the genotype
            log(f"could not draw the architecture picture: {e}")
    log(f"genotype written to {path}")
    return path


def read_search_checkpoint(checkpoint_path: str):
    """``(checkpoint, search state, method)`` of a search checkpoint; a clear error for anything else."""
    import torch
    from nnunet_nas.nnunet.search_trainer import SEARCH_STATE_KEY
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint. Pass a search fold folder's "
                                f"checkpoint_final.pth / checkpoint_latest.pth / checkpoint_best.pth.")
    try:
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        raise ValueError(f"{checkpoint_path} cannot be read as a checkpoint ({type(e).__name__}: {e}).") from None
    state = ckpt.get(SEARCH_STATE_KEY) if isinstance(ckpt, dict) else None
    if state is None or not any(k.startswith("arch.") for k in ckpt.get("network_weights", {})):
        raise ValueError(f"{checkpoint_path} is not an architecture-search checkpoint (no architecture parameters).")
    return ckpt, state, get_method(state.get("method", "dints"))  # checkpoints of 0.1.0 are DiNTS searches


def export_from_checkpoint(checkpoint_path: str, name: Optional[str] = None, channel_mul: Optional[float] = None,
                           base_config: Optional[str] = None, overwrite: bool = False, log=print) -> str:
    """Discretise a search checkpoint, write the genotype beside it and register the configuration.

    Returns the configuration name used.
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunet_nas.nnunet.plans_io import plans_file

    ckpt, state, method = read_search_checkpoint(checkpoint_path)
    config = state["search_config"]
    init = ckpt["init_args"]
    plans, searched = init["plans"], init["configuration"]
    dims = len(_resolved(plans, searched)["patch_size"])
    op_set = state.get("op_set") or method.default_op_sets[dims]
    provenance = {"method": method.name, "dataset": plans["dataset_name"], "configuration": searched,
                  "fold": init.get("fold"), "epoch": int(ckpt["current_epoch"]), "trainer": ckpt["trainer_name"],
                  "checkpoint": os.path.abspath(checkpoint_path), "search_config": config,
                  "stopped_early": bool(state.get("stopped_early", False)), "nnunet_nas_version": _version()}
    arch_state = {k[len("arch."):]: v for k, v in ckpt["network_weights"].items() if k.startswith("arch.")}
    genotype = method.discretize(arch_state, op_set, provenance, cfg=method.config_class.from_dict(config))
    write_genotype_files(method, genotype, os.path.dirname(os.path.abspath(checkpoint_path)), log=log)
    if nnUNet_preprocessed is None:
        raise EnvironmentError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file.")
    path = plans_file(os.path.join(nnUNet_preprocessed, plans["dataset_name"]), plans["plans_name"])
    mul = config.get("export_channel_mul") if channel_mul is None else channel_mul  # None: fitted
    return register_searched_configuration(path, base_config or searched, method, genotype, mul, name=name,
                                           overwrite=overwrite, auto_rename=name is None and not overwrite,
                                           host_checkpoint=state.get("host_checkpoint"), log=log)


def _version() -> str:
    from nnunet_nas import __version__
    return __version__
