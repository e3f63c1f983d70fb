"""Register a searched architecture as an ordinary nnU-Net configuration in ``nnUNetPlans.json``.

The new configuration inherits from the searched one (``3d_fullres`` -> ``3d_fullres_<method>``), so it reuses the
preprocessed data, and carries a complete ``architecture`` block naming our network class. nnU-Net's own
``nnUNetv2_train``, ``nnUNetv2_predict -c`` and ``nnUNetv2_find_best_configuration`` then use it unchanged.

The user's plans file is never corrupted or silently changed:

* every write holds an exclusive lock (:func:`plans_lock`, a lock file ``<plans>.lock`` beside it) around the whole
  read-modify-write, the choice of a free configuration name included, so two searches registering at once both
  land under distinct names;
* the file is rewritten atomically (temporary file + ``os.replace``, its permissions kept); a temporary file left by
  a killed write is removed by the next write;
* the previous version is kept as a numbered backup, ``<plans>.bak.<n>`` (the highest number is the newest; the
  last :data:`BACKUPS_KEPT` are kept);
* nnU-Net's own configurations, any configuration another one inherits from, and configurations not written by
  nnunet_nas are never replaced; a configuration holding a *different* architecture is replaced only with
  ``overwrite``, and never while a trained model of it exists in ``nnUNet_results``.
"""

import glob
import json
import os
import re
import shutil
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

from nnunet_nas.errors import PlansError, UserError
from nnunet_nas.io import atomic_write_text, check_finite_json, read_json, temporary_files

BACKUPS_KEPT = 5
LOCK_TIMEOUT_S = 300
NNUNET_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
OUR_NETWORK_PREFIX = "nnunet_nas."


def plans_file(preprocessed_dataset_folder: str, plans_identifier: str = "nnUNetPlans") -> str:
    path = os.path.join(preprocessed_dataset_folder, plans_identifier + ".json")
    if not os.path.isfile(path):
        raise PlansError(f"No plans file {path}. Plan the dataset first: nnUNetv2_plan_and_preprocess -d ID "
                         f"(and pass the plans identifier with -p if it is not nnUNetPlans).")
    return path


def load_plans(path: str) -> dict:
    """The plans file's content; one :class:`PlansError` naming the file when it is not an nnU-Net plans file."""
    try:
        plans = read_json(path, "an nnU-Net plans file")
    except UserError as e:
        raise PlansError(f"{e} Re-plan the dataset with nnUNetv2_plan_and_preprocess, or restore the newest backup "
                         f"{path}.bak.<n>.") from None
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or not all(isinstance(c, dict) for c in configs.values()):
        raise PlansError(f"{path}: no 'configurations' object of configuration objects, so this is not an nnU-Net "
                         f"plans file. Re-plan the dataset with nnUNetv2_plan_and_preprocess, or restore a backup "
                         f"{path}.bak.<n>.")
    return plans


@contextmanager
def plans_lock(plans_path: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on ``<plans>.lock`` (``filelock``): ``flock`` where the file system supports it (local disks,
    NFS through the server's lock manager), else filelock's soft lock (an exclusively created lock file)."""
    import filelock
    lock_path = plans_path + ".lock"
    try:
        lock = filelock.FileLock(lock_path, timeout=timeout)
        lock.acquire()
    except NotImplementedError:  # filelock < 3.16 on a file system without flock
        lock = filelock.SoftFileLock(lock_path, timeout=timeout)
        lock.acquire()
    except filelock.Timeout:
        raise PlansError(f"{plans_path} is locked by another process for more than {timeout:.0f} s ({lock_path}). "
                         f"Wait for the other registration to finish; if no nnunet-nas or nnU-Net process is "
                         f"running, delete {lock_path}.") from None
    try:
        yield
    finally:
        lock.release()


def check_configuration_name(name: str) -> None:
    """nnU-Net uses the name as a folder component (``<trainer>__<plans>__<configuration>``)."""
    if not isinstance(name, str) or not name.strip():
        raise PlansError("the configuration name is empty; pass --name with a name such as 3d_fullres_dints.")
    if "__" in name:
        raise PlansError(f"configuration name {name!r} must not contain '__' (nnU-Net splits result folders on it).")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise PlansError(f"configuration name {name!r} can not be a folder name in nnU-Net's results (use letters, "
                         f"digits, '_', '-' and '.', starting with a letter or digit; no '/' or spaces).")


def written_by_us(entry: dict) -> bool:
    """A configuration entry whose architecture names a network class of nnunet_nas."""
    return str((entry.get("architecture") or {}).get("network_class_name", "")).startswith(OUR_NETWORK_PREFIX)


def protected_configurations(plans: dict) -> List[str]:
    """Configurations never replaced: nnU-Net's own, those another configuration inherits from, and those not
    written by nnunet_nas (no network class of ours)."""
    configs = plans["configurations"]
    protected = {c for c in NNUNET_CONFIGURATIONS if c in configs}
    protected |= {c.get("inherits_from") for c in configs.values() if c.get("inherits_from") in configs}
    protected |= {name for name, c in configs.items() if not written_by_us(c)}
    return sorted(protected)


def trained_model_folders(plans: dict, name: str, results_folder: Optional[str] = None) -> List[str]:
    """Fold folders of ``nnUNet_results`` holding a checkpoint of configuration ``name`` of this plans file."""
    if results_folder is None:
        from nnunetv2.paths import nnUNet_results as results_folder
    if not results_folder:
        return []
    pattern = os.path.join(results_folder, str(plans.get("dataset_name")), f"*__{plans.get('plans_name')}__{name}",
                           "fold_*", "checkpoint_*.pth")
    return sorted({os.path.dirname(p) for p in glob.glob(pattern)})


def free_configuration_name(plans: dict, name: str, architecture: dict) -> str:
    """``name`` if it is free or already holds ``architecture``, else ``name_2``, ``name_3``, ... (protected names
    are never reused)."""
    configs, protected = plans["configurations"], set(protected_configurations(plans))
    candidate, k = name, 1
    while candidate in protected or (candidate in configs and configs[candidate].get("architecture") != architecture):
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def check_registration(plans_path: str, plans: dict, base_config: str, name: str, architecture: Optional[dict],
                       overwrite: bool, auto_rename: bool = False, entry: Optional[dict] = None) -> str:
    """Every check a registration makes, before anything is written; returns the name it will use. Writing an
    ``entry`` identical to the one ``name`` holds changes nothing and is always allowed."""
    configs = plans["configurations"]
    if base_config not in configs:
        raise PlansError(f"{plans_path} has no configuration {base_config!r} to build on; available: "
                         f"{sorted(configs)}.")
    check_configuration_name(name)
    if entry is not None and configs.get(name) == entry and name != base_config:
        return name
    if auto_rename and architecture is not None:
        return free_configuration_name(plans, name, architecture)
    old = configs.get(name)
    same = old is not None and architecture is not None and old.get("architecture") == architecture
    children = sorted(n for n, c in configs.items() if c.get("inherits_from") == name)
    if name in NNUNET_CONFIGURATIONS or name == base_config:
        why = "nnU-Net's own configuration" if name in NNUNET_CONFIGURATIONS else "the base it would inherit from"
    elif children:
        why = f"the base of {children}"
    elif old is not None and not written_by_us(old) and not same:
        why = "not written by nnunet_nas"
    else:
        why = None
    if why is not None:
        raise PlansError(f"{plans_path}: configuration {name!r} is {why} and is never replaced (--overwrite or not). "
                         f"Choose another --name, e.g. {base_config}_custom.")
    if old is None or architecture is None or same:
        return name
    if not overwrite:
        raise PlansError(f"{plans_path}: configuration {name!r} already holds a different architecture. Choose another "
                         f"name, or pass --overwrite to replace it (the old plans are kept as {plans_path}.bak.<n>).")
    trained = trained_model_folders(plans, name)
    if trained:
        raise PlansError(f"configuration {name!r} has trained models ({', '.join(trained)}): replacing its "
                         f"architecture would make a resume or retrain silently change the network. Register under "
                         f"another --name, or move those folders away first.")
    return name


def update_plans(plans_path: str, change: Callable[[dict], object]):
    """Read, ``change(plans)`` in place, and write the plans file back, all under :func:`plans_lock`; returns what
    ``change`` returned. ``change`` raises to write nothing."""
    with plans_lock(plans_path):
        for stale in temporary_files(plans_path):  # left by a killed write; we hold the lock, so none is live
            os.remove(stale)
        plans = load_plans(plans_path)
        result = change(plans)
        try:
            check_finite_json(plans, "plans")
        except ValueError as e:
            raise PlansError(f"{plans_path} not changed: {e}.") from None
        text = json.dumps(plans, indent=4, sort_keys=False)
        _backup(plans_path)
        atomic_write_text(plans_path, text)
    return result


def _backup(plans_path: str) -> None:
    """Copy the plans file to ``<plans>.bak.<n+1>`` and keep the newest :data:`BACKUPS_KEPT`."""
    numbers = sorted(int(m.group(1)) for p in glob.glob(glob.escape(plans_path) + ".bak.*")
                     if (m := re.fullmatch(r".*\.bak\.(\d+)", p)))
    nxt = (numbers[-1] + 1) if numbers else 1
    shutil.copy2(plans_path, f"{plans_path}.bak.{nxt}")
    for n in (numbers + [nxt])[:-BACKUPS_KEPT]:
        os.remove(f"{plans_path}.bak.{n}")


def register_configuration(plans_path: str, base_config: str, name: str, architecture: dict, patch_size=None,
                           overwrite: bool = False, extra: Optional[dict] = None, auto_rename: bool = False) -> str:
    """Add configuration ``name`` (inheriting from ``base_config``) to the plans file; return the name used.

    If ``name`` exists with the same architecture it is refreshed; with a different architecture a
    :class:`PlansError` is raised unless ``overwrite`` (and no trained model of it exists); ``auto_rename`` picks
    the first free name ``name``, ``name_2``, ... under the lock instead.
    """
    entry = {"inherits_from": base_config, "architecture": architecture}
    if patch_size is not None:
        entry["patch_size"] = [int(p) for p in patch_size]
    entry.update(extra or {})

    def change(plans):
        used = check_registration(plans_path, plans, base_config, name, architecture, overwrite, auto_rename, entry)
        plans["configurations"][used] = entry
        return used

    return update_plans(plans_path, change)
