"""The search trainer of every registered method, in-process on the CPU (the trainer-side contract beside
tests/contract): nnU-Net's own trainer lookup finds it, it builds on the tiny planned dataset, takes one architecture
step and one weight step, saves a checkpoint, and a fresh trainer loading that checkpoint has the same architecture
parameters, weights and optimiser states. A new method gets this for free once it adds its tiny trainer to
``SEARCH_TEST_TRAINERS``."""

import os

import pytest
import torch

from helpers import DATASET_NAME, SEARCH_TEST_TRAINERS, TEST_TRAINERS, copy_work
from nnunet_nas.nnunet.environment import trainer_dir
from nnunet_nas.nnunet.search_state import SEARCH_STATE_KEY, read_checkpoint
from nnunet_nas.registry import get_method, method_names

HOST_TRAINER = "nnUNetTrainerNASTest"


def test_every_registered_method_has_a_tiny_search_trainer():
    assert sorted(SEARCH_TEST_TRAINERS) == method_names()


@pytest.fixture
def nnunet_in_process(planned_dataset, tmp_path, monkeypatch):
    """A private copy of the planned dataset, and nnU-Net's environment variables pointing at it in this process."""
    env = copy_work(planned_dataset[0], str(tmp_path / "nnunet"))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([trainer_dir(), TEST_TRAINERS]))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return env


def _trainer(name, configuration):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(DATASET_NAME, configuration, 0, name, device=torch.device("cpu"))


def _fake_host(env, configuration):
    """A 'trained' host for IAC: nnU-Net's planned network with its initial weights, saved where nnU-Net's default
    trainer would have written it (the contract is about the search trainer, not the host's quality)."""
    host = _trainer(HOST_TRAINER, configuration)
    host.initialize()
    folder = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{HOST_TRAINER}__nnUNetPlans__{configuration}",
                          "fold_0")
    os.makedirs(folder, exist_ok=True)
    torch.save({"network_weights": host.network.state_dict(), "init_args": host.my_init_kwargs,
                "trainer_name": HOST_TRAINER, "current_epoch": 1}, os.path.join(folder, "checkpoint_final.pth"))


def _state(trainer):
    net = trainer._unwrap()
    return {"arch": {k: v.clone() for k, v in net.arch.state_dict().items()},
            "weights": {k: v.clone() for k, v in net.state_dict().items()},
            "arch_optimizer": trainer.arch_optimizer.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "weighting": net.weighting.state_dict(), "arch_steps_done": trainer.arch_steps_done}


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("method", method_names())
def test_search_trainer_steps_saves_loads_and_resumes_as_the_uninterrupted_run(method, nnunet_in_process, tmp_path):
    name, configuration = SEARCH_TEST_TRAINERS[method]
    trainer = _trainer(name, configuration)
    assert trainer.nas_method == method
    if trainer.method.trained_host:
        _fake_host(nnunet_in_process, configuration)
    trainer.on_train_start()
    trainer.current_epoch = trainer.warmup_epochs  # an epoch with architecture steps
    trainer.on_train_epoch_start()
    before = _state(trainer)
    out = trainer.train_step(next(trainer.dataloader_train))
    assert torch.isfinite(torch.as_tensor(out["loss"])) and torch.isfinite(torch.as_tensor(out["arch_loss"]))
    after = _state(trainer)
    assert after["arch_steps_done"] == 1
    assert any(not torch.equal(before["arch"][k], after["arch"][k]) for k in after["arch"]), "alpha did not move"
    assert after["arch_optimizer"]["state"] and after["optimizer"]["state"]
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    assert read_checkpoint(path)[SEARCH_STATE_KEY]["method"] == method

    fresh = _trainer(name, configuration)
    fresh.load_checkpoint(path)
    _assert_same(_state(fresh), after, method)
    # resumed equals uninterrupted: the next step (same batch) from the loaded state is the original trainer's
    fresh.on_train_start()  # restores the random streams where the checkpoint left them
    fresh.current_epoch = trainer.current_epoch
    fresh.on_train_epoch_start()
    batch, arch_batch = next(trainer.dataloader_train), next(trainer.dataloader_arch)  # the same data for both
    for t in (trainer, fresh):
        t.dataloader_arch = iter([arch_batch])
        torch.manual_seed(7)  # dropout and the like: the same global stream for both
        t.train_step(batch)
    _assert_same(_state(fresh), _state(trainer), f"{method} after the resumed step")


@pytest.mark.e2e
def test_gpu_acceptance_script_rehearses_on_the_cpu(tmp_path):
    """benchmarks/gpu_acceptance.py --device cpu --tiny: every registered method's search iteration runs, so the one
    GPU shot does not die on a typo."""
    import json
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "gpu_acceptance.py"), "--device", "cpu",
                        "--tiny", "--geometry", "plan", "isotropic", "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = json.load(open(out))["runs"]
    own_geometry = [n for n in method_names() if get_method(n).search_downsamplings is not None]
    assert sorted(r["method"] for r in runs) == sorted(method_names() + own_geometry + ["nnunet_plainconvunet"])
    by_geometry = {(r["method"], r.get("geometry")): r["search_patch"] for r in runs}
    assert by_geometry["dints", "plan"] == [4, 16, 16] and by_geometry["dints", "isotropic"] == [4, 16, 16]
    assert all(r["seconds_per_iteration"] > 0 and "oom" not in r for r in runs), runs
