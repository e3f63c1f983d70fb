"""The search checkpoint's format: nnU-Net's checkpoint plus one entry, ``SEARCH_STATE_KEY``, holding what the
search adds (method, op set, config, the plan geometry the space took, architecture optimiser, strategies, RNG
states, history). The trainer writes
and resumes it; the export reads it."""

from typing import List

from nnunet_nas.errors import InputFileError
from nnunet_nas.io import load_torch_file

SEARCH_STATE_KEY = "nnunet_nas_search_state"

# config fields whose default changed meaning when they were added: the value a checkpoint written before implies
# (a 0.1 search ran in the papers' isotropic space)
LEGACY_DEFAULTS = {"follow_plan_geometry": False}
# config fields that say how a run uses its machine, not what it searches: a resume (--c) may change them
MACHINE_SETTINGS = ("memory_target_gb", "arch_data_workers")


def saved_search_config(state: dict) -> dict:
    """A checkpoint's ``search_config`` with today's field names and, for fields added since it was written whose
    default changed what the search does, the value its version implied."""
    from nnunet_nas.config import RENAMED_FIELDS
    saved = {RENAMED_FIELDS.get(k, k): v for k, v in (state.get("search_config") or {}).items()}
    return {**LEGACY_DEFAULTS, **saved}


def read_checkpoint(path: str, what: str = "an nnU-Net checkpoint (checkpoint_final.pth / checkpoint_latest.pth)"
                    ) -> dict:
    """A checkpoint file as data (``weights_only``), with one error naming the file and ``what`` was expected when it
    is no checkpoint."""
    checkpoint = load_torch_file(path, what)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise InputFileError(f"{path} is not an nnU-Net checkpoint (no network_weights); expected {what}.")
    return checkpoint


def differing_settings(saved: dict, current: dict) -> List[str]:
    """``"key: saved -> current"`` for every search setting (method, op set, config field) that differs between a
    checkpoint's search state and the trainer resuming it. A config field the checkpoint does not hold (added by a
    later version, at its default) is not a difference, unless its default changed what a search does
    (:data:`LEGACY_DEFAULTS`); :data:`MACHINE_SETTINGS` never are."""
    lines = [f"{k}: {saved.get(k)!r} in the checkpoint, {current[k]!r} now" for k in ("method", "op_set")
             if saved.get(k) != current[k]]
    old, new = saved_search_config(saved), current["search_config"]
    for k in sorted(set(old) - set(MACHINE_SETTINGS)):
        if old[k] != new.get(k, "<absent>"):
            lines.append(f"search_config.{k}: {old[k]!r} in the checkpoint, {new.get(k, '<absent>')!r} now")
    return lines
