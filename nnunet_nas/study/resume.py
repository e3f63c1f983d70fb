"""Resuming a training that was cut off. nnU-Net's ``--c`` loads ``checkpoint_final``, else ``checkpoint_latest``,
else ``checkpoint_best`` of the fold folder; nnU-Net's own trainer writes them in place, so a training killed while
saving leaves a truncated file that ``--c`` would load and crash on, every time the study is started again. Before a
training starts, such a file is moved aside (``*.unreadable-<time>``, never deleted) and the training resumes from the
next readable checkpoint, or starts anew when none is left."""

import os
import time
import zipfile
from typing import Callable, List

from nnunet_nas.study.steps import TRAINING_KINDS, Step

CHECKPOINTS = ("final", "latest", "best")  # the order nnU-Net's --c tries them


def readable_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file: its zip directory, written last, is there (a truncated or
    empty file has none)."""
    return os.path.isfile(path) and zipfile.is_zipfile(path)


def checkpoint_paths(step: Step) -> List[str]:
    return [os.path.join(step.fold_folder, f"checkpoint_{k}.pth") for k in CHECKPOINTS]


def command_to_run(step: Step) -> List[str]:
    """The step's command, with nnU-Net's ``--c`` where a training left a readable checkpoint (a killed run
    resumes)."""
    if step.kind in TRAINING_KINDS and any(readable_checkpoint(p) for p in checkpoint_paths(step)):
        return step.command + ["--c"]
    return list(step.command)


def set_aside_unreadable_checkpoints(step: Step, log: Callable[[str], None]) -> None:
    """Move a training's truncated checkpoints aside before it starts, saying so."""
    if step.kind not in TRAINING_KINDS or not step.fold_folder:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in checkpoint_paths(step):
        if os.path.isfile(path) and not readable_checkpoint(path):
            os.rename(path, f"{path}.unreadable-{stamp}")
            log(f"[nnunet-nas run] {step.name}: {path} is cut short ({os.path.getsize(f'{path}.unreadable-{stamp}')} "
                f"bytes; the training was stopped while saving it); moved to {path}.unreadable-{stamp}, the training "
                f"resumes from the next readable checkpoint or starts anew")
