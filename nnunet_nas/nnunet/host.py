"""The trained nnU-Net model a search builds on (IAC's host): where it is found and how it is checked.

Default: the model nnU-Net's default trainer wrote for the same dataset, plans, configuration and fold,
``$nnUNet_results/<dataset>/<host trainer>__<plans>__<configuration>/fold_<fold>/checkpoint_final.pth`` (the host
trainer is ``nnUNetTrainer`` unless a trainer variant says otherwise). The environment variable ``NNUNET_NAS_HOST``
points elsewhere: a checkpoint file, a fold folder, or a model folder holding ``fold_<fold>``.
"""

import os
import warnings
from typing import Optional

from nnunet_nas.errors import EnvironmentSetupError, InputFileError, MissingFileError

HOST_ENV = "NNUNET_NAS_HOST"
FOLD_FIELD = "{fold}"  # in a configuration's host path: the fold of the training that builds the network


def per_fold_host(path: Optional[str], fold) -> Optional[str]:
    """``path`` with its ``fold_<fold>`` folder written as ``fold_{fold}``: a configuration naming it fine-tunes
    every fold from that fold's own trained model (fold f's validation cases were training cases of every other
    fold's model). A path without such a folder (a checkpoint kept elsewhere) is returned as it is."""
    if path is None or fold is None:
        return path
    parts = os.path.normpath(path).split(os.sep)
    if f"fold_{fold}" not in parts[:-1]:
        return path
    at = len(parts) - 2 - parts[:-1][::-1].index(f"fold_{fold}")
    parts[at] = "fold_" + FOLD_FIELD
    return os.sep.join(parts)


def host_for_fold(path: str, fold) -> str:
    """A configuration's host path for the training of ``fold`` (:func:`per_fold_host`)."""
    return path.replace(FOLD_FIELD, str(fold))


def host_to_load(path: str, training: bool, what: str) -> Optional[str]:
    """The trained model a network named by a configuration starts from, for the training that builds it: the
    fold field filled in (:func:`building_trainer_fold`); None where nothing is to be loaded (nnU-Net's predictor,
    whose trained checkpoint replaces every weight next). A missing file stops a training with one error and is a
    warning at prediction."""
    per_fold = FOLD_FIELD in path
    if per_fold:
        fold = building_trainer_fold()
        if fold is None:
            return None
        path = host_for_fold(path, fold)
    if os.path.isfile(path):
        return path
    fix = "train that fold of the model first (every fold starts from its own trained model), " if per_fold else ""
    message = (f"{what}: the trained model {path} named by this configuration does not exist; the network starts "
               f"from nnU-Net's random initialisation. Training this configuration needs it: {fix}restore the file, "
               f"or re-register the configuration.")
    if training:
        raise MissingFileError(message)
    warnings.warn(message)
    return None


def building_trainer_fold():
    """The fold of the nnU-Net trainer whose ``initialize`` is building a network right now (nnU-Net builds its
    network inside ``nnUNetTrainer.initialize``), or None where no trainer is building one (the predictor)."""
    import inspect
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, nnUNetTrainer):
                return owner.fold
            frame = frame.f_back
        return None
    finally:
        del frame


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
            raise EnvironmentSetupError("nnUNet_results is not set; nnU-Net needs it to find the trained model. Set it "
                                        "as for nnUNetv2_train.")
        candidates = [os.path.join(results_folder, dataset_name, f"{host_trainer}__{plans_identifier}__{configuration}",
                                   fold_dir, checkpoint_name)]
        where = candidates[0]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise MissingFileError(
        f"IAC implants cells into a trained nnU-Net model of the same dataset, plans, configuration and fold, and "
        f"found none ({where}). Train it first: nnUNetv2_train {dataset_name} {configuration} {fold}"
        f"{'' if plans_identifier == 'nnUNetPlans' else ' -p ' + plans_identifier}"
        f"{'' if host_trainer == 'nnUNetTrainer' else ' -tr ' + host_trainer} "
        f"(or set {HOST_ENV} to another model folder, fold folder or {checkpoint_name}).")


def load_host_checkpoint(path: str, configuration: str, dataset_name: str, fold) -> dict:
    """The host checkpoint's ``network_weights``; one clear error when it is not a trained model of this
    configuration (another configuration's or another dataset's model), and a warning when it was trained on another
    fold (that fold's training cases include this fold's validation cases)."""
    from nnunet_nas.nnunet.search_state import read_checkpoint
    checkpoint = read_checkpoint(path)
    init = checkpoint.get("init_args") if isinstance(checkpoint.get("init_args"), dict) else {}
    command = f"nnUNetv2_train {dataset_name} {configuration} {'FOLD' if fold is None else fold}"
    if any(k.startswith(("arch.", "supernet.")) for k in checkpoint["network_weights"]):
        raise InputFileError(f"{path} is an architecture-search checkpoint, not a trained nnU-Net model. Train the "
                             f"host first: {command}.")
    plans = init.get("plans") if isinstance(init.get("plans"), dict) else {}
    if plans.get("dataset_name") not in (None, dataset_name):
        raise InputFileError(f"{path} was trained on {plans.get('dataset_name')}, not {dataset_name}. Train the host "
                             f"first: {command}.")
    if init.get("configuration") not in (None, configuration):
        raise InputFileError(f"{path} is a model of configuration {init.get('configuration')!r}, not {configuration!r}."
                             f" Train the host first: {command}.")
    if fold is not None and init.get("fold") is not None and str(init.get("fold")) != str(fold):
        warnings.warn(f"the host {path} was trained on fold {init.get('fold')}, not fold {fold}: its training cases "
                      f"include fold {fold}'s validation cases, so fold {fold}'s validation overstates the result. "
                      f"Use fold {fold}'s own model ({command}).", stacklevel=2)
    return checkpoint["network_weights"]


def load_and_freeze_host(supernet, dataset_name: str, plans_identifier: str, configuration: str, fold,
                         host_trainer: str = "nnUNetTrainer") -> str:
    """Find the host checkpoint (:func:`find_host_checkpoint`), load its weights into ``supernet``'s host
    (``load_host_weights``) and freeze them (``host_parameters``); returns the checkpoint's path."""
    path = find_host_checkpoint(dataset_name, plans_identifier, configuration, fold, host_trainer)
    weights = load_host_checkpoint(path, configuration, dataset_name, fold)
    try:
        supernet.load_host_weights(weights, source=path)
    except ValueError as e:
        raise InputFileError(f"{e} Command: nnUNetv2_train {dataset_name} {configuration} {fold}") from None
    for p in supernet.host_parameters():
        p.requires_grad_(False)
    return path
