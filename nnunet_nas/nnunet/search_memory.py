"""The memory of a search at an nnU-Net configuration, before it starts: the search patch the space takes, one
search iteration counted at any batch, patch and width (what the trainer's memory fit compares with its target), and
the report of ``nnunet-nas memory`` beside nnU-Net's own planned network."""

import os
from typing import Optional

from nnunet_nas.memory_count import IterationMemory, count_search_iteration, count_training_step
from nnunet_nas.memory_fit import GIB, MEMORY_ENV, card_target, fit_search, memory_target, narrowed
from nnunet_nas.nnunet.search_network import build_search_network
from nnunet_nas.patch import patch_divisor, round_up_patch
from nnunet_nas.planned_network import PlannedNetwork


def search_patch(method, cfg, configuration_manager):
    """``(geometry, note, patch)``: the space's geometry from the plan (:meth:`SearchMethod.search_geometry`), its
    note for the log, and the configuration's patch rounded up only where that geometry does not divide it."""
    cm = configuration_manager
    geometry, note = method.search_geometry(cfg, PlannedNetwork.from_configuration_manager(cm), len(cm.patch_size))
    patch = list(cm.patch_size)
    return geometry, note, (patch if geometry is None else round_up_patch(patch, geometry.divisor))


def search_divisor(geometry, planned_kwargs: dict, spatial_dims: int):
    """What the search patch must divide per axis: the space's strides, or (a method in nnU-Net's own network,
    IAC) the planned network's (``planned_kwargs``: the configuration's ``arch_kwargs``)."""
    return list(geometry.divisor) if geometry is not None else \
        patch_divisor(planned_kwargs.get("strides", []), spatial_dims)


def estimate_search_iteration(method, cfg, configuration_manager, input_channels: int, num_heads: int, batch: int,
                              patch, width_scale: float = 1.0, cuda: bool = True, deep_supervision: bool = True,
                              ddp: bool = False) -> IterationMemory:
    """One search iteration of ``method`` with ``cfg`` at ``batch`` x ``patch`` x ``width_scale`` its width,
    counted without running it (:mod:`nnunet_nas.memory_count`) on the CUDA path: with nnU-Net's fp16 autocast where
    ``cuda``, in fp32 otherwise (the CPU's upper bound: its lean grid edge keeps about half); ``ddp``: with DDP's
    gradient buckets. The network it builds draws from a forked random stream: a count never changes the search's."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    cm = ConfigurationManager(dict(configuration_manager.configuration, patch_size=list(patch)))
    with torch.random.fork_rng(devices=[]):
        net = build_search_network(method, narrowed(cfg, method.search_width_field, width_scale), cm,
                                   input_channels, num_heads, deep_supervision)
        if method.trained_host:
            for p in net.supernet.host_parameters():
                p.requires_grad_(False)
        states = 2 if cfg.weight_optimizer == "adam" else 1
        return count_search_iteration(net, batch, patch, input_channels, "cuda", amp=cuda,
                                      weight_optimizer_states=states, ddp=ddp)


def planned_network_memory(configuration_manager, input_channels: int, num_heads: int) -> IterationMemory:
    """One training step of nnU-Net's own planned network at its configuration (AMP, CUDA path)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    cm = configuration_manager
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, input_channels, num_heads, allow_init=True,
                                 deep_supervision=True)
    return count_training_step(net, cm.batch_size, cm.patch_size, input_channels, "cuda", amp=True)


def memory_report(trainer_class, plans_manager, configuration: str, dataset_json: dict,
                  gpu_gib: Optional[float] = None) -> dict:
    """What ``nnunet-nas memory`` prints: the search of ``trainer_class`` at ``configuration``, as planned and as
    the memory fit would run it on a card of ``gpu_gib`` (None: the visible CUDA device's free memory), beside
    nnU-Net's planned network and the found network's width fit."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    method, cfg = trainer_class.method_and_config()
    cm = plans_manager.get_configuration(configuration)
    in_ch = determine_num_input_channels(plans_manager, cm, dataset_json)
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    geometry, _, patch = search_patch(method, cfg, cm)
    if gpu_gib is not None:
        target = card_target(gpu_gib)
    elif os.environ.get(MEMORY_ENV, "").strip() or cfg.memory_target_gb is not None:
        target = memory_target(None, cfg.memory_target_gb)  # the setting wins before any device is asked
    else:
        target = memory_target(_visible_cuda())

    def estimate(b, p, w=1.0):
        return estimate_search_iteration(method, cfg, cm, in_ch, heads, b, p, w)
    divisor = search_divisor(geometry, cm.network_arch_init_kwargs, len(patch))
    fit = fit_search(estimate, cm.batch_size, patch, divisor, target, method.search_width_field)
    planned_net = planned_network_memory(cm, in_ch, heads).peak
    found = None
    share = method.export_memory_share
    if share != 1.0:  # more than nnU-Net's network (IAC's cells on top): a sampled architecture, width as exported
        from nnunet_nas.nnunet.export import planned_fixed_network, sampled_genotype
        from nnunet_nas.nnunet.width import fit_channel_mul, planned_elements
        planned = PlannedNetwork.from_configuration_manager(cm)
        genotype = sampled_genotype(method, cfg, planned, len(cm.patch_size), in_ch, heads)

        def build(mul):
            return planned_fixed_network(method, genotype, mul, planned, in_ch, heads)
        mul = cfg.export_channel_mul
        if mul is None and share is not None:
            mul = fit_channel_mul(build, in_ch, cm.patch_size, int(share * planned_elements(planned, in_ch, heads)))[0]
        found = count_training_step(build(mul), cm.batch_size, cm.patch_size, in_ch, "cuda", amp=True).peak
    return {"trainer": trainer_class.__name__, "method": method.name, "configuration": configuration,
            "target_gib": None if target.bytes is None else round(target.bytes / GIB, 2), "target": target.source,
            "search_planned": {"batch": cm.batch_size, "patch": list(patch),
                               "estimate_gib": round(fit.planned_estimate_bytes / GIB, 2)},
            "search_fitted": {"batch": fit.batch_size, "patch": list(fit.patch_size), "width_scale": fit.width_scale,
                              "estimate_gib": round(fit.estimate_bytes / GIB, 2), "changed": fit.changed},
            "nnunet_planned_network_gib": round(planned_net / GIB, 2),
            "found_network_gib": None if found is None else round(found / GIB, 2),
            "found_network": _found_network_text(share)}


def _found_network_text(share) -> str:
    """What the report's found-network figure is, for a method's ``export_memory_share``."""
    if share == 1.0:
        return "at most nnU-Net's planned network's memory (the export fits its width to it)"
    sampled = ("nnU-Net's planned network plus the cells found: a sampled architecture at the configuration's batch "
               "and patch")
    if share is None:
        return f"{sampled} (the export prints the found one's)"
    return f"{sampled}, at the width the export fits (host plus cells at most {share:g}x nnU-Net's conv feature maps)"


def _visible_cuda():
    import torch
    from nnunet_nas.errors import EnvironmentSetupError
    if not torch.cuda.is_available():
        raise EnvironmentSetupError("no CUDA device is visible here: give the card's memory with --gpu-memory GB "
                                    "(e.g. --gpu-memory 24).")
    return torch.device("cuda", torch.cuda.current_device())


def describe(report: dict) -> str:
    s, f = report["search_planned"], report["search_fitted"]
    width = "" if f["width_scale"] == 1.0 else f", {f['width_scale']:g}x the search width"
    fitted = "fits as planned" if not f["changed"] else \
        f"fitted: batch {f['batch']}, patch {f['patch']}{width}: {f['estimate_gib']:.2f} GiB"
    return "\n".join([
        f"{report['trainer']} ({report['method']}) at {report['configuration']}, target "
        f"{report['target_gib']} GiB ({report['target']}):",
        f"  search, as planned: batch {s['batch']}, patch {s['patch']}: {s['estimate_gib']:.2f} GiB",
        f"  search, {fitted}",
        f"  nnU-Net's planned network (training step): {report['nnunet_planned_network_gib']:.2f} GiB",
        f"  found network: {report['found_network']}" + ("" if report["found_network_gib"] is None else
                                                         f": {report['found_network_gib']:.2f} GiB")])


def count_export_memory(method, cfg, planned: PlannedNetwork, input_channels: int, num_heads: int,
                        reference: Optional[PlannedNetwork] = None):
    """The method's memory model in nnU-Net's terms (``SearchMethod.count_export_memory``: the found network counted
    by the export's counter at its export width and the patch of ``planned``, the configuration's, against nnU-Net's
    planned network at that patch, or against ``reference`` where the search is built on another geometry than the
    plan's), or None where the method or its config budgets otherwise. Shapes only (the meta device)."""
    import torch
    from nnunet_nas.nnunet.width import planned_elements
    if method.count_export_memory is None:
        return None
    dims = len(planned.patch_size)
    op_set = method.op_set_for(cfg, dims)

    def build(c):
        return method.build_supernet(c, op_set, input_channels, num_heads, dims, True, planned=planned)
    with torch.random.fork_rng(devices=[]):
        return method.count_export_memory(cfg, build, input_channels, planned.patch_size,
                                          lambda: planned_elements(reference or planned, input_channels, num_heads))
