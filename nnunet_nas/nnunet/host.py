"""The trained nnU-Net model a search builds on (IAC's host): where it is found and how it is checked.

Default: the model nnU-Net's default trainer wrote for the same dataset, plans, configuration and fold,
``$nnUNet_results/<dataset>/<host trainer>__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth`` (the host
trainer is ``nnUNetTrainer`` unless a trainer variant says otherwise). The environment variable ``NNUNET_NAS_HOST``
points elsewhere: a checkpoint file, a fold folder, or a model folder holding ``fold_<fold>``.
"""

import os
from typing import Optional

import torch

HOST_ENV = "NNUNET_NAS_HOST"


def find_host_checkpoint(dataset_name: str, plans_identifier: str, configuration: str, fold,
                         host_trainer: str = "nnUNetTrainer", checkpoint_name: str = "checkpoint_final.pth",
                         results_folder: Optional[str] = None) -> str:
    """The host checkpoint's path; one error naming the command to run first when there is none."""
    fold_dir = f"fold_{fold}"
    override = os.environ.get(HOST_ENV)
    if override:
        candidates = [override, os.path.join(override, checkpoint_name),
                      os.path.join(override, fold_dir, checkpoint_name)]
        where = f"{HOST_ENV}={override}"
    else:
        if results_folder is None:
            from nnunetv2.paths import nnUNet_results
            results_folder = nnUNet_results
        if results_folder is None:
            raise EnvironmentError("nnUNet_results is not set; nnU-Net needs it to find the trained model.")
        candidates = [os.path.join(results_folder, dataset_name, f"{host_trainer}__{plans_identifier}__{configuration}",
                                   fold_dir, checkpoint_name)]
        where = candidates[0]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise FileNotFoundError(
        f"IAC implants cells into a trained nnU-Net model of the same dataset, plans, configuration and fold, and "
        f"found none ({where}). Train it first: nnUNetv2_train {dataset_name} {configuration} {fold}"
        f"{'' if plans_identifier == 'nnUNetPlans' else ' -p ' + plans_identifier}"
        f"{'' if host_trainer == 'nnUNetTrainer' else ' -tr ' + host_trainer} "
        f"(or set {HOST_ENV} to another model folder, fold folder or {checkpoint_name}).")


def load_host_checkpoint(path: str, configuration: str, dataset_name: str, fold) -> dict:
    """The host checkpoint's ``network_weights``; one clear error when it is not a trained model of this
    configuration (another configuration's or another dataset's model)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    init = checkpoint.get("init_args", {}) if isinstance(checkpoint, dict) else {}
    if "network_weights" not in checkpoint:
        raise ValueError(f"{path} is not an nnU-Net checkpoint (no network_weights).")
    if any(k.startswith(("arch.", "supernet.")) for k in checkpoint["network_weights"]):
        raise ValueError(f"{path} is an architecture-search checkpoint, not a trained nnU-Net model. Train the host "
                         f"first: nnUNetv2_train {dataset_name} {configuration} {fold}.")
    plans = init.get("plans", {})
    if plans.get("dataset_name") not in (None, dataset_name):
        raise ValueError(f"{path} was trained on {plans.get('dataset_name')}, not {dataset_name}. Train the host "
                         f"first: nnUNetv2_train {dataset_name} {configuration} {fold}.")
    return checkpoint["network_weights"]
