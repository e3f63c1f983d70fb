"""The environment nnU-Net's commands need, for the demo, the tests and the benchmarks alike: the three data
folders under one root, our trainer shims in ``nnUNet_extTrainer`` (plus any extra trainer folders), one
preprocessing process, and this interpreter's scripts first on ``PATH``."""

import os
import sys
from typing import Optional, Sequence

from nnunet_nas.errors import UserError


def trainer_dir() -> str:
    """The shim folder for ``nnUNet_extTrainer`` (``trainers/`` beside the package in a source checkout)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "trainers")
    if not os.path.isfile(os.path.join(path, "nnunet_nas_trainers.py")):
        raise UserError(f"trainer shim folder not found at {path}; install nnunet_nas from its source "
                                f"checkout with `pip install -e .`.")
    return path


def nnunet_env(root: str, extra_trainer_dirs: Sequence[str] = (), n_proc_DA: Optional[int] = None,
               **overrides: str) -> dict:
    """``os.environ`` plus ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` under ``root``."""
    env = dict(os.environ)
    env.update(nnUNet_raw=os.path.join(root, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(root, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(root, "nnUNet_results"),
               nnUNet_extTrainer=os.pathsep.join([trainer_dir(), *extra_trainer_dirs]), nnUNet_def_n_proc="1",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]))
    if n_proc_DA is not None:
        env["nnUNet_n_proc_DA"] = str(n_proc_DA)
    env.update(overrides)
    return env
