import os
import shutil
import subprocess

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(REPO), "shared")
TEST_TRAINERS = os.path.join(HERE, "fixtures", "trainers")
DATASET_ID = 991
DATASET_NAME = "Dataset991_NASDemo"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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


def search_on_copy(planned_dataset, root, trainer):
    """``(env, completed process)`` of one search on a private copy of the planned dataset in ``root``."""
    shutil.copytree(planned_dataset[0], root, dirs_exist_ok=True)
    env = nnunet_env(root)
    return env, run_search(env, trainer)


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """A tiny generated 3-D dataset (10 cases of 32^3), planned and preprocessed (2d, 3d_fullres) by nnU-Net's
    real command."""
    from nnunet_nas.demo import make_demo_dataset
    root = str(tmp_path_factory.mktemp("nnunet"))
    env = nnunet_env(root)
    make_demo_dataset(env["nnUNet_raw"], DATASET_ID, num_cases=10, shape=(32, 32, 32), seed=1)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning calls set_num_threads(n_proc_DA)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-np", "1", "1",
             "-npfp", "1"], plan_env)
    return root, env


@pytest.fixture
def fresh_dataset(planned_dataset, tmp_path):
    """A private copy of the planned dataset (plans and results may be modified by the test)."""
    root, _ = planned_dataset
    new = str(tmp_path / "nnunet")
    shutil.copytree(root, new)
    return new, nnunet_env(new)


@pytest.fixture(scope="session")
def dints_search(planned_dataset, tmp_path_factory):
    """``(root, completed process)`` of one finished tiny DiNTS search (nnUNetTrainerDiNTSSearchTest) on its own copy
    of the planned dataset; tests copy ``root`` before changing anything."""
    root = str(tmp_path_factory.mktemp("dints_search"))
    env, out = search_on_copy(planned_dataset, root, "nnUNetTrainerDiNTSSearchTest")
    return root, out
