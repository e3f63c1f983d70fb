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
    """nnU-Net's environment for the subprocess chains. The memory fit is off there: a tiny search always fits, and
    its count (a few seconds per process) is tested in-process (test_trainer_contract, test_memory_fit)."""
    from nnunet_nas.memory_fit import MEMORY_ENV
    from nnunet_nas.nnunet.environment import nnunet_env as env_for
    return env_for(root, [TEST_TRAINERS], n_proc_DA=0, OMP_NUM_THREADS="2", **{MEMORY_ENV: "off"})


def run_cli(cmd, env, timeout=900, check=True):
    """Run a real nnU-Net / nnunet-nas entry point in a subprocess; on failure show its output tail."""
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def point_nnunet_at(monkeypatch, env: dict) -> None:
    """nnU-Net's folders and trainer lookup of ``env`` for this process (nnU-Net reads them when it uses them)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(var, env[var])


def run_main(capsys, argv):
    """``(exit code, stdout, stderr)`` of ``nnunet-nas`` run in this process (its own checks, where no nnU-Net
    entry point runs; argparse's usage errors exit through SystemExit)."""
    from nnunet_nas import cli
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(rc, err: str, command: str) -> str:
    """The one line a bad input gets from ``nnunet-nas COMMAND`` run by :func:`run_main`: exit code 2 and a single
    ``nnunet-nas COMMAND: error: ...`` line on stderr (asserted here); returns the line."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith(f"nnunet-nas {command}: error: "), err
    return lines[0]


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


def fake_trained_host(env: dict, configuration: str, trainer: str = "nnUNetTrainerNASTest") -> None:
    """A 'trained' host for a method that builds on one (IAC): nnU-Net's planned network with its initial weights,
    saved where ``trainer`` would have written it for fold 0 (the tests are about the search trainer, not the host's
    quality). Needs nnU-Net's environment variables set in this process."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    host = get_trainer_from_args(DATASET_NAME, configuration, 0, trainer, device=torch.device("cpu"))
    host.initialize()
    folder = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{trainer}__nnUNetPlans__{configuration}", "fold_0")
    os.makedirs(folder, exist_ok=True)
    torch.save({"network_weights": host.network.state_dict(), "init_args": host.my_init_kwargs,
                "trainer_name": trainer, "current_epoch": 1}, os.path.join(folder, "checkpoint_final.pth"))


def write_dataset(raw_root: str, dataset_id: int, name: str, kind: str = "labels", num_cases: int = 6,
                  shape=(16, 32, 32), spacing=(1.0, 1.0, 1.0), channels: int = 1, seed: int = 0) -> str:
    """A tiny raw dataset ``Dataset<id>_<name>`` in nnU-Net's layout, its arrays ``shape`` (nnU-Net's axis order)
    at ``spacing`` mm: nested ellipsoids, labelled as ``kind`` says: "labels" (background, shell, core),
    "regions" (BraTS style: labels 1-3 and the three overlapping regions whole / core / enhancing) or "ignore"
    (shell and core, and an ignore label over a slab of every case)."""
    import json

    import nibabel as nib
    import numpy as np
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    rng = np.random.RandomState(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    # nnU-Net reads NIfTI through SimpleITK, whose array axes are the file's reversed: write them reversed
    affine = np.diag(list(reversed([float(s) for s in spacing])) + [1.0])
    for i in range(num_cases):
        center = np.array([rng.uniform(0.4, 0.6) * s for s in shape])[:, None, None, None]
        radii = np.array([rng.uniform(0.25, 0.35) * s for s in shape])[:, None, None, None]
        r = np.sqrt((((grid - center) / radii) ** 2).sum(0))
        label = np.zeros(shape, np.uint8)
        for value, radius in ((1, 1.0), (2, 0.6), (3, 0.3) if kind == "regions" else (2, 0.6)):
            label[r < radius] = value
        if kind == "ignore":
            label[:, : max(1, shape[1] // 4)] = 3  # an unannotated slab
        for c in range(channels):
            image = rng.normal(0, 1, shape).astype(np.float32) + (1.0 + c) * (label > 0) + (label > 1)
            nib.save(nib.Nifti1Image(image.transpose(), affine),
                     os.path.join(folder, "imagesTr", f"case_{i:03d}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label.transpose(), affine), os.path.join(folder, "labelsTr", f"case_{i:03d}.nii.gz"))
    labels = {"background": 0, "shell": 1, "core": 2}
    dataset = {"channel_names": {str(c): f"channel{c}" for c in range(channels)}, "numTraining": num_cases,
               "file_ending": ".nii.gz", "name": name}
    if kind == "regions":
        labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
        dataset["regions_class_order"] = [1, 2, 3]
    elif kind == "ignore":
        labels["ignore"] = 3
    dataset["labels"] = labels
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset, f, indent=2)
    return folder


def plan_dataset(env: dict, dataset_id: int, configurations=("3d_fullres",)) -> None:
    """nnU-Net's real planning and preprocessing of a raw dataset, one process."""
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning calls set_num_threads(n_proc_DA)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations, "-np",
             *(["1"] * len(configurations)), "-npfp", "1"], plan_env)
