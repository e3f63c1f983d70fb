"""The search checkpoint's format: nnU-Net's checkpoint plus one entry, ``SEARCH_STATE_KEY``, holding what the
search adds (method, op set, config, architecture optimiser, strategies, RNG states, history). The trainer writes
and resumes it; the export reads it."""

from typing import List

from nnunet_nas.errors import InputFileError
from nnunet_nas.io import load_torch_file

SEARCH_STATE_KEY = "nnunet_nas_search_state"


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
    later version, at its default) is not a difference."""
    lines = [f"{k}: {saved.get(k)!r} in the checkpoint, {current[k]!r} now" for k in ("method", "op_set")
             if saved.get(k) != current[k]]
    from nnunet_nas.config import RENAMED_FIELDS
    old, new = saved.get("search_config") or {}, current["search_config"]
    old = {RENAMED_FIELDS.get(k, k): v for k, v in old.items()}  # a checkpoint written before a field's rename
    for k in sorted(old):
        if old[k] != new.get(k, "<absent>"):
            lines.append(f"search_config.{k}: {old[k]!r} in the checkpoint, {new.get(k, '<absent>')!r} now")
    return lines
