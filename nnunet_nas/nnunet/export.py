"""From a search result to a drop-in nnU-Net configuration (genotype JSON, picture, plans entry)."""

import os
from typing import Optional

import numpy as np

from nnunet_nas.genotypes.schema import GridGenotype
from nnunet_nas.ops.catalog import default_op_set
from nnunet_nas.nnunet.plans_io import (DINTS_NETWORK_CLASS, free_configuration_name, load_plans,
                                        register_configuration)

GENOTYPE_FILE = "dints_genotype.json"
PICTURE_FILE = "dints_architecture.png"


def dints_architecture_block(genotype: GridGenotype, channel_mul: float, base_channels: int = 32) -> dict:
    dims = genotype.spatial_dims
    deepest = int(np.flatnonzero(genotype.node_a[-1]).max())
    strides = [[1] * dims] + [[2] * dims] * (deepest + 2)  # one output per decoder resolution 1/2^0..1/2^(k+1)
    return {"network_class_name": DINTS_NETWORK_CLASS,
            "arch_kwargs": {"genotype": genotype.to_dict(), "channel_mul": float(channel_mul),
                            "base_channels": int(base_channels), "strides": strides},
            "_kw_requires_import": []}


def adjusted_patch_size(patch_size, num_depths: int):
    div = 2 ** (num_depths + 1)
    return [int(np.ceil(p / div) * div) for p in patch_size]


def register_dints_configuration(plans_path: str, base_config: str, genotype: GridGenotype, channel_mul: float,
                                 name: Optional[str] = None, overwrite: bool = False, auto_rename: bool = False,
                                 log=print) -> str:
    """Register ``genotype`` as configuration ``name`` (default ``<base>_dints``) and return the name used.

    The patch size of the base configuration is rounded up to a multiple of 2^(D+1), and the memory of the
    discrete network at that patch and the base batch size is estimated and printed.
    """
    plans = load_plans(plans_path)
    base = _resolved(plans, base_config)
    if len(base["patch_size"]) != genotype.spatial_dims:
        raise ValueError(f"configuration {base_config!r} is {len(base['patch_size'])}-D but the genotype is "
                         f"{genotype.spatial_dims}-D ({genotype.op_set}); pick a matching base configuration.")
    arch = dints_architecture_block(genotype, channel_mul)
    name = name or f"{base_config}_dints"
    if auto_rename:
        new = free_configuration_name(plans_path, name, arch)
        if new != name:
            log(f"configuration {name!r} already holds a different architecture; registering as {new!r} instead")
        name = new
    patch = adjusted_patch_size(base["patch_size"], genotype.num_depths)
    if patch != list(base["patch_size"]):
        log(f"patch size {list(base['patch_size'])} -> {patch} (DiNTS needs multiples of 2^(D+1))")
    used = register_configuration(plans_path, base_config, name, arch, patch_size=patch, overwrite=overwrite)
    log(f"registered configuration {used!r} in {plans_path}; estimated training memory of the discrete network "
        f"{_memory_text(genotype, channel_mul, patch, base.get('batch_size', 2), plans_path)}")
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


def _memory_text(genotype, channel_mul, patch, batch_size, plans_path) -> str:
    try:
        from nnunet_nas.arch.memory import estimate_training_memory_bytes
        from nnunet_nas.networks.dints_net import DiNTSNet
        net = DiNTSNet(1, 2, genotype=genotype, channel_mul=channel_mul)
        fp32 = estimate_training_memory_bytes(net, patch, batch_size, amp=False) / 2 ** 30
        amp = estimate_training_memory_bytes(net, patch, batch_size, amp=True) / 2 ** 30
        params = sum(p.numel() for p in net.parameters()) / 1e6
        return f"{amp:.2f} GiB with AMP / {fp32:.2f} GiB fp32 (patch {patch}, batch {batch_size}, {params:.2f} M parameters)"
    except ImportError:  # memory model not available
        return "(no estimate)"


def write_genotype_files(genotype: GridGenotype, folder: str, log=print) -> str:
    path = os.path.join(folder, GENOTYPE_FILE)
    genotype.save(path)
    try:
        from nnunet_nas.viz import plot_grid_genotype
        plot_grid_genotype(genotype, os.path.join(folder, PICTURE_FILE),
                           title=f"DiNTS architecture ({int(genotype.arch_code_a.sum())} active edges)")
    except Exception as e:  # noqa: BLE001 - a missing picture must never lose the genotype
        log(f"could not draw the architecture picture: {e}")
    log(f"genotype written to {path}")
    return path


def genotype_from_logits(edge_logits, op_logits, op_set: str, provenance: Optional[dict] = None) -> GridGenotype:
    """Topology-guaranteed discretisation (DiNTS Eq. 3-4) of architecture logits into a genotype."""
    from nnunet_nas.discretize.grid_path import decode_monai
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    node_a, code_a, code_c = decode_monai(edge_logits, op_logits)
    return from_monai_codes(node_a, code_a, code_c, op_set=op_set, provenance=provenance, source="decoded search")


def export_from_checkpoint(checkpoint_path: str, name: Optional[str] = None, channel_mul: Optional[float] = None,
                           base_config: Optional[str] = None, overwrite: bool = False, log=print) -> str:
    """Decode a DiNTS search checkpoint, write the genotype beside it and register the configuration.

    Returns the configuration name used.
    """
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunet_nas.nnunet.plans_io import plans_file
    from nnunet_nas.nnunet.search_trainer import SEARCH_STATE_KEY

    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint. Pass a search fold folder's "
                                f"checkpoint_final.pth / checkpoint_latest.pth / checkpoint_best.pth.")
    try:
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same to the user
        raise ValueError(f"{checkpoint_path} cannot be read as a checkpoint ({type(e).__name__}: {e}).") from None
    state = ckpt.get(SEARCH_STATE_KEY) if isinstance(ckpt, dict) else None
    weights = ckpt.get("network_weights", {}) if isinstance(ckpt, dict) else {}
    if state is None or "arch.edge_logits" not in weights:
        raise ValueError(f"{checkpoint_path} is not a DiNTS search checkpoint (no architecture parameters).")
    config = state["search_config"]
    init = ckpt["init_args"]
    plans, searched = init["plans"], init["configuration"]
    op_set = default_op_set(len(_resolved(plans, searched)["patch_size"]))
    provenance = {"method": "dints", "dataset": plans["dataset_name"], "configuration": searched,
                  "fold": init.get("fold"), "epoch": int(ckpt["current_epoch"]), "trainer": ckpt["trainer_name"],
                  "checkpoint": os.path.abspath(checkpoint_path), "search_config": config,
                  "nnunet_nas_version": _version()}
    genotype = genotype_from_logits(weights["arch.edge_logits"], weights["arch.op_logits"], op_set, provenance)
    write_genotype_files(genotype, os.path.dirname(os.path.abspath(checkpoint_path)), log=log)
    if nnUNet_preprocessed is None:
        raise EnvironmentError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file.")
    path = plans_file(os.path.join(nnUNet_preprocessed, plans["dataset_name"]), plans["plans_name"])
    mul = config["export_channel_mul"] if channel_mul is None else channel_mul
    return register_dints_configuration(path, base_config or searched, genotype, mul, name=name,
                                        overwrite=overwrite, auto_rename=name is None and not overwrite, log=log)


def _version() -> str:
    from nnunet_nas import __version__
    return __version__
