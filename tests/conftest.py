"""Fixtures: the tiny planned dataset (nnU-Net's real planning in a subprocess) and a finished tiny search on it.
A test that uses them, directly or through another fixture, runs real nnU-Net subprocesses and is marked ``e2e``."""

import json
import os
import shutil
import subprocess

import pytest
import torch

from helpers import DATASET_ID, TEST_TRAINERS, copy_work, nnunet_env, run_cli, search_on_copy
from nnunet_nas.nnunet.environment import trainer_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
E2E_FIXTURES = ("planned_dataset", "fresh_dataset", "dints_search")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in E2E_FIXTURES):
            item.add_marker(pytest.mark.e2e)


def built_once(tmp_path_factory, name, build):
    """The folder of a session fixture, built by ``build(folder)`` (which returns a JSON-able record, returned
    here) once for the whole run: under pytest-xdist the workers share one build (a file lock; the first builds,
    the others wait and read), as every test copies the folder before changing anything."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = str(tmp_path_factory.mktemp(name))
        return folder, build(folder)
    from filelock import FileLock
    folder = tmp_path_factory.getbasetemp().parent / name  # the run's folder, above every worker's own
    record = folder.with_suffix(".json")
    with FileLock(str(folder) + ".lock"):
        if not record.is_file():  # not built, or a build that failed: build again
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            record.write_text(json.dumps(build(str(folder))))
    return str(folder), json.loads(record.read_text())


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """A tiny generated 3-D dataset (10 cases of 32^3), planned and preprocessed (2d, 3d_fullres) by nnU-Net's
    real command."""
    def plan(root):
        from nnunet_nas.demo import make_demo_dataset
        env = nnunet_env(root)
        make_demo_dataset(env["nnUNet_raw"], DATASET_ID, num_cases=10, shape=(32, 32, 32), seed=1)
        plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning sets threads to n_proc_DA
        run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-np", "1", "1",
                 "-npfp", "1"], plan_env)
    root, _ = built_once(tmp_path_factory, "nnunet", plan)
    return root, nnunet_env(root)


@pytest.fixture
def fresh_dataset(planned_dataset, tmp_path):
    """A private copy of the planned dataset (plans and results may be modified by the test)."""
    new = str(tmp_path / "nnunet")
    return new, copy_work(planned_dataset[0], new)


@pytest.fixture
def nnunet_in_process(planned_dataset, tmp_path, monkeypatch):
    """A private copy of the planned dataset, and nnU-Net's environment variables pointing at it in this process (and
    in the processes it spawns)."""
    env = copy_work(planned_dataset[0], str(tmp_path / "nnunet"))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([trainer_dir(), TEST_TRAINERS]))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return env


@pytest.fixture(scope="session")
def dints_search(planned_dataset, tmp_path_factory):
    """``(root, completed process)`` of one finished tiny DiNTS search (nnUNetTrainerDiNTSSearchTest) on its own copy
    of the planned dataset; tests copy ``root`` before changing anything."""
    def search(root):
        out = search_on_copy(planned_dataset, root, "nnUNetTrainerDiNTSSearchTest")[1]
        return {"args": out.args, "returncode": out.returncode, "stdout": out.stdout, "stderr": out.stderr}
    root, out = built_once(tmp_path_factory, "dints_search", search)
    return root, subprocess.CompletedProcess(**out)
