"""What the tests share besides fixtures: the tiny dataset's names, the nnU-Net environment for a work folder, the
real entry points in subprocesses, the published reference architecture (a fixture file), and one tiny search config
per registered method (the test-fixture entry a new method adds)."""

import os
import shutil
import subprocess
from dataclasses import replace

from nnunet_nas.config import DASTSearchConfig, DiNTSSearchConfig, IACSearchConfig, SCNASSearchConfig
from nnunet_nas.planned_network import PlannedNetwork

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_TRAINERS = os.path.join(HERE, "fixtures", "trainers")
REFERENCE = os.path.join(HERE, "fixtures", "reference")
CVPR_JSON = os.path.join(REFERENCE, "dints_arch_code_cvpr.json")  # the published DiNTS architecture (MONAI layout)
CVPR_PTH = os.path.join(REFERENCE, "dints_arch_code_cvpr.pth")
DATASET_ID = 991
DATASET_NAME = "Dataset991_NASDemo"


def nnunet_env(root: str) -> dict:
    from nnunet_nas.nnunet.environment import nnunet_env as env_for
    return env_for(root, [TEST_TRAINERS], n_proc_DA=0, OMP_NUM_THREADS="2")


def run_cli(cmd, env, timeout=900, check=True):
    """Run a real nnU-Net / nnunet-nas entry point in a subprocess; on failure show its output tail."""
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def run_search(env, trainer, extra=(), crash_after=None):
    """``nnUNetv2_train DATASET 3d_fullres 0 -tr trainer -device cpu``; with ``crash_after=k`` the test trainers
    die right after epoch k (as a killed job would) and the exit code is left to the caller."""
    env = dict(env)
    if crash_after is not None:
        env["NAS_TEST_CRASH_AFTER_EPOCH"] = str(crash_after)
    return run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *extra],
                   env, check=crash_after is None)


def fold_folder(env, trainer, config="3d_fullres"):
    """nnU-Net's fold-0 output folder of ``trainer`` on the tiny dataset."""
    return os.path.join(env["nnUNet_results"], DATASET_NAME, f"{trainer}__nnUNetPlans__{config}", "fold_0")


def copy_work(source_root: str, root: str) -> dict:
    """Copy a work folder (nnUNet_raw / preprocessed / results, e.g. the planned dataset's) to ``root`` and return
    the nnU-Net environment pointing at the copy."""
    shutil.copytree(source_root, root, dirs_exist_ok=True)
    return nnunet_env(str(root))


def search_on_copy(planned_dataset, root, trainer):
    """``(env, completed process)`` of one search on a private copy of the planned dataset in ``root``."""
    env = copy_work(planned_dataset[0], root)
    return env, run_search(env, trainer)


TINY_CONFIGS = {
    "dints": replace(DiNTSSearchConfig(), num_blocks=2, num_depths=2, channel_mul=0.125, export_channel_mul=0.125),
    "scnas": replace(SCNASSearchConfig(), num_nodes=2, channel_mul=0.0625, export_channel_mul=0.0625),
    "iac": replace(IACSearchConfig(), num_nodes=2, partial_channels=2),
    "dast": replace(DASTSearchConfig(), num_blocks=2, num_depths=2, channel_mul=0.125, export_channel_mul=0.125),
}


def tiny_planned_block(dims: int) -> dict:
    """A plans ``architecture`` block as nnU-Net writes it: PlainConvUNet, 3 stages of 4, 8, 16 channels."""
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16],
                            "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": [[3] * dims] * 3,
                            "strides": [[1] * dims, [2] * dims, [2] * dims], "n_conv_per_stage": [2, 2, 2],
                            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def tiny_planned(dims: int, patch_size=None) -> PlannedNetwork:
    return PlannedNetwork.from_block(tiny_planned_block(dims), patch_size=patch_size)


# the tiny search trainer of every registered method (tests/fixtures/trainers) and the configuration it searches
SEARCH_TEST_TRAINERS = {
    "dints": ("nnUNetTrainerDiNTSSearchTest", "3d_fullres"),
    "scnas": ("nnUNetTrainerSCNASSearchTest", "3d_fullres"),
    "dast": ("nnUNetTrainerDASTSearchTest", "3d_fullres"),
    "iac": ("nnUNetTrainerIACSearchTest", "2d"),  # on the host nnUNetTrainerNASTest trained (2d, fold 0)
}
