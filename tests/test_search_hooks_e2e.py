"""The search machinery's hooks through nnU-Net's real ``nnUNetv2_train``, in subprocesses: a frozen part reaches no
optimiser, the weight optimiser and data split come from the config, operation pruning reaches the checkpoint and
the export, early stopping ends the run cleanly with a final checkpoint and an export, and a search killed after
pruning resumes to the uninterrupted result."""

import os

import torch

from helpers import DATASET_NAME, copy_work, run_search
from nnunet_nas.genotypes.grid import GridGenotype

HOOKS = "nnUNetTrainerSearchHooksTest"


def _fold(env):
    return os.path.join(env["nnUNet_results"], DATASET_NAME, f"{HOOKS}__nnUNetPlans__3d_fullres", "fold_0")


def _search(env, extra=(), crash_after=None):
    return run_search(env, HOOKS, extra, crash_after)


def test_hooks_prune_freeze_stop_and_resume(planned_dataset, tmp_path):
    env = copy_work(planned_dataset[0], str(tmp_path / "full"))
    out = _search(env)
    fold = _fold(env)
    log = out.stdout
    assert "weight split 6 / arch split 2" in log  # 8 training cases of fold 0 at 3:1
    assert "operation pruning: " in log and "search stopped early at epoch 3" in log
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 4  # epochs 0..3 of 6
    weights = ckpt["network_weights"]
    alive = weights["arch.alive_ops"]
    assert alive[..., :2].all() and not alive[..., 2:].any()
    frozen = [k for k in weights if k.startswith("supernet.stem_down.0.")]
    assert frozen and all(torch.all(weights[k] == 0.5) for k in frozen)  # never updated
    opt = ckpt["optimizer_state"]
    trainable = [k for k in weights if k.startswith("supernet.") and not k.startswith("supernet.stem_down.0.")]
    assert len(opt["param_groups"][0]["params"]) == len(trainable) and "exp_avg" in next(iter(opt["state"].values()))
    g = GridGenotype.load(os.path.join(fold, "dints_genotype.json"))
    assert {o for row in g.ops for o in row if o is not None} <= {"skip", "conv_3x3x3"}
    assert g.provenance["stopped_early"] is True and g.provenance["epoch"] == 4
    assert not os.path.isfile(os.path.join(fold, "checkpoint_latest.pth"))

    # killed after the pruning epoch, resumed with --c: the same architecture parameters as uninterrupted
    env2 = copy_work(planned_dataset[0], str(tmp_path / "resumed"))
    assert _search(env2, crash_after=2).returncode == 17
    _search(env2, extra=("--c",))
    resumed = torch.load(os.path.join(_fold(env2), "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    for key in ("arch.edge_logits", "arch.op_logits", "arch.alive_ops"):
        assert torch.equal(resumed["network_weights"][key], weights[key]), key
    assert GridGenotype.load(os.path.join(_fold(env2), "dints_genotype.json")).ops == g.ops
