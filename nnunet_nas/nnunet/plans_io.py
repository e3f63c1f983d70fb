"""Register a searched architecture as an ordinary nnU-Net configuration in ``nnUNetPlans.json``.

The new configuration inherits from the searched one (``3d_fullres`` -> ``3d_fullres_<method>``), so it reuses the
preprocessed data, and carries a complete ``architecture`` block naming our network class. nnU-Net's own
``nnUNetv2_train``, ``nnUNetv2_predict -c`` and ``nnUNetv2_find_best_configuration`` then use it unchanged.

The user's plans file is never corrupted: it is rewritten atomically (temporary file + ``os.replace``), the
previous version is kept as ``nnUNetPlans.json.bak``, and a configuration holding a *different* architecture
is never overwritten unless asked for.
"""

import json
import os
import shutil
from typing import Optional

from nnunet_nas.io import atomic_write_text


class PlansError(ValueError):
    pass


def plans_file(preprocessed_dataset_folder: str, plans_identifier: str = "nnUNetPlans") -> str:
    path = os.path.join(preprocessed_dataset_folder, plans_identifier + ".json")
    if not os.path.isfile(path):
        raise PlansError(f"No plans file {path}. Plan the dataset first: nnUNetv2_plan_and_preprocess -d ID "
                         f"(and pass the plans identifier with -p if it is not nnUNetPlans).")
    return path


def load_plans(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def register_configuration(plans_path: str, base_config: str, name: str, architecture: dict, patch_size=None,
                           overwrite: bool = False, extra: Optional[dict] = None) -> str:
    """Add configuration ``name`` (inheriting from ``base_config``) to the plans file; return the name used.

    If ``name`` exists with the same architecture it is refreshed; with a different architecture a
    :class:`PlansError` is raised unless ``overwrite`` (callers that must not fail pick a new name with
    :func:`free_configuration_name`).
    """
    plans = load_plans(plans_path)
    configs = plans.get("configurations", {})
    if base_config not in configs:
        raise PlansError(f"{plans_path} has no configuration {base_config!r} to build on; available: "
                         f"{sorted(configs)}.")
    if "__" in name:
        raise PlansError(f"configuration name {name!r} must not contain '__' (nnU-Net splits result folders on it).")
    old = configs.get(name)
    if old is not None and old.get("architecture") != architecture and not overwrite:
        raise PlansError(f"{plans_path}: configuration {name!r} already holds a different architecture. Choose another "
                         f"name, or pass --overwrite to replace it (a backup is kept as {plans_path}.bak).")
    entry = {"inherits_from": base_config, "architecture": architecture}
    if patch_size is not None:
        entry["patch_size"] = [int(p) for p in patch_size]
    entry.update(extra or {})
    configs[name] = entry
    plans["configurations"] = configs
    shutil.copyfile(plans_path, plans_path + ".bak")
    atomic_write_text(plans_path, json.dumps(plans, indent=4, sort_keys=False))
    return name


def free_configuration_name(plans_path: str, name: str, architecture: dict) -> str:
    """``name`` if it is free or already holds ``architecture``, else ``name_2``, ``name_3``, ..."""
    configs = load_plans(plans_path).get("configurations", {})
    candidate, k = name, 1
    while candidate in configs and configs[candidate].get("architecture") != architecture:
        k += 1
        candidate = f"{name}_{k}"
    return candidate
