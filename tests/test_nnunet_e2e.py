"""DiNTS through nnU-Net's real entry points, in subprocesses, on a tiny generated dataset."""

import json
import os

import numpy as np
import pytest
import torch

from helpers import DATASET_ID, DATASET_NAME, copy_work, fold_folder, point_nnunet_at, run_cli, run_main, run_search
from nnunet_nas.genotypes.grid import GridGenotype

SEARCH = "nnUNetTrainerDiNTSSearchTest"
PLAIN = "nnUNetTrainerNASTest"



def _plans(env):
    with open(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")) as f:
        return json.load(f)


def _search(env, extra=(), crash_after=None):
    return run_search(env, SEARCH, extra, crash_after)


@pytest.fixture(scope="module")
def searched(dints_search, tmp_path_factory):
    """One finished tiny search on a private copy of the dataset (shared by the tests of this module)."""
    root = str(tmp_path_factory.mktemp("searched"))
    return copy_work(dints_search[0], root), dints_search[1]


def test_search_exports_a_dropin_configuration(searched):
    env, out = searched
    fold = fold_folder(env, SEARCH)
    assert "Found class nnUNetTrainerDiNTSSearchTest" in out.stdout
    # the default budget is in nnU-Net's terms: the found network at its export width against nnU-Net's planned one
    assert "memory budget: sigma 1.0 of nnU-Net's planned network" in out.stdout
    g = GridGenotype.load(os.path.join(fold, "dints_genotype.json"))
    assert (g.num_blocks, g.num_depths) == (3, 2) and g.provenance["epoch"] == 4
    for picture in ("dints_architecture.png", "dints_arch_trajectories.png", "progress.png"):
        assert os.path.getsize(os.path.join(fold, picture)) > 1000, picture
    config = _plans(env)["configurations"]["3d_fullres_dints"]
    assert config["inherits_from"] == "3d_fullres"
    assert config["architecture"]["network_class_name"] == "nnunet_nas.networks.dints_net.DiNTSNet"
    assert GridGenotype.from_dict(config["architecture"]["arch_kwargs"]["genotype"]) == g
    assert all(p % 4 == 0 for p in config["patch_size"])  # 2^D, D = 2
    assert os.path.isfile(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json.bak.1"))
    # per-epoch architecture curves went through nnU-Net's logger (and so into the checkpoint)
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    logged = ckpt["logging"]["arch_discretization_gap"]
    assert len(logged) == 4 and len(ckpt["logging"]["arch_separation"]) == 4
    # alpha's signal: no gradient and no movement in the two warm-up epochs, both once architecture steps run
    rms, shift = ckpt["logging"]["arch_grad_rms"], ckpt["logging"]["arch_softmax_shift"]
    assert np.isnan(rms[:2]).all() and all(r > 0 for r in rms[2:])
    assert np.isnan(shift[0]) and shift[1] == 0.0 and all(d > 0 for d in shift[2:])
    # four tiny epochs do not separate: the genotype records it and the export says so in one line
    convergence = g.provenance["convergence"]
    assert convergence["epochs"] == 4 and convergence["separation"] < convergence["separation_floor"]
    assert not convergence["separated"] and "close to a random draw" in out.stdout
    assert "arch.edge_logits" in ckpt["network_weights"]


def test_export_on_demand_from_a_checkpoint(searched, monkeypatch, capsys):
    """``nnunet-nas export`` (in this process: it launches no nnU-Net command) of a finished search's checkpoint."""
    env, _ = searched
    point_nnunet_at(monkeypatch, env)
    fold = fold_folder(env, SEARCH)
    rc, out, _ = run_main(capsys, ["export", fold, "--name", "3d_fullres_dints_wide", "--channel-mul", "0.25"])
    assert rc == 0 and "registered configuration '3d_fullres_dints_wide'" in out
    configs = _plans(env)["configurations"]
    kwargs = configs["3d_fullres_dints_wide"]["architecture"]["arch_kwargs"]
    assert kwargs["channel_mul"] == 0.25
    searched_genotype = configs["3d_fullres_dints"]["architecture"]["arch_kwargs"]["genotype"]
    for g in (kwargs["genotype"], searched_genotype):  # the search ran in another folder (this one is its copy)
        g["provenance"].pop("checkpoint")
    assert kwargs["genotype"] == searched_genotype
    # a search that left the export width to the fit: the export says how far the fit moved from the width the
    # search counted its budget at (twice the search width)
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    ckpt["nnunet_nas_search_state"]["search_config"]["export_channel_mul"] = None
    fitted_checkpoint = os.path.join(fold, "checkpoint_fitted.pth")
    torch.save(ckpt, fitted_checkpoint)
    rc, out, _ = run_main(capsys, ["export", fitted_checkpoint, "--name", "3d_fullres_fitted"])
    assert rc == 0
    fitted = _plans(env)["configurations"]["3d_fullres_fitted"]["architecture"]["arch_kwargs"]["channel_mul"]
    assert f"the search counted its memory at channel_mul 0.25; fitted to nnU-Net's plan {fitted:g}, a " \
           f"correction of {fitted / 0.25:.2f}x" in out
    rc, _, err = run_main(capsys, ["export", os.path.join(fold, "debug.json")])
    assert rc == 2 and "error" in err
    # the control a study trains beside it: a random architecture of the same space, registered the same way
    rc, out, _ = run_main(capsys, ["export", fold, "--random", "3"])
    assert rc == 0 and "registered configuration '3d_fullres_dints_random3'" in out and "random draw" not in out
    random = _plans(env)["configurations"]["3d_fullres_dints_random3"]["architecture"]["arch_kwargs"]
    found = _plans(env)["configurations"]["3d_fullres_dints"]["architecture"]["arch_kwargs"]
    assert random["genotype"]["provenance"]["random_draw"]["seed"] == 3
    assert random["channel_mul"] == found["channel_mul"] and random["strides"] == found["strides"]
    assert os.path.isfile(os.path.join(fold, "dints_genotype_random3.json"))
    rc, _, err = run_main(capsys, ["export", fold, "--random", "-1"])
    assert rc == 2 and "a seed (a whole number of at least 0)" in err


@pytest.fixture(scope="module")
def trained(searched):
    """The found configuration trained on fold 0 by nnU-Net's stock training (with the validation probabilities
    that model selection needs)."""
    env, _ = searched
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres_dints", "0", "-tr", PLAIN, "-device", "cpu", "--npz"], env)
    return env


def test_exported_configuration_trains_predicts_and_is_selected_by_stock_nnunet(trained, tmp_path):
    env = trained
    summary = json.load(open(os.path.join(fold_folder(env, PLAIN, "3d_fullres_dints"), "validation", "summary.json")))
    assert "foreground_mean" in summary
    images = os.path.join(env["nnUNet_raw"], DATASET_NAME, "imagesTr")
    inp = tmp_path / "in"
    inp.mkdir()
    for name in sorted(os.listdir(images))[:2]:
        os.symlink(os.path.join(images, name), inp / name)
    out = tmp_path / "out"
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres_dints",
             "-f", "0", "-tr", PLAIN, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    assert len([f for f in os.listdir(out) if f.endswith(".nii.gz")]) == 2
    # the search trainer's own checkpoint is usable for inference too (alpha is part of network_weights)
    out2 = tmp_path / "out_search"
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out2), "-d", str(DATASET_ID), "-c", "3d_fullres",
             "-f", "0", "-tr", SEARCH, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    assert len([f for f in os.listdir(out2) if f.endswith(".nii.gz")]) == 2
    # nnU-Net's model selection accepts the searched configuration by name
    res = run_cli(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", "3d_fullres_dints", "-tr", PLAIN,
                   "-f", "0", "--disable_ensembling"], env)
    assert "3d_fullres_dints" in res.stdout


def test_resume_after_kill_gives_the_uninterrupted_result(searched, planned_dataset, tmp_path):
    env_done, _ = searched
    reference = GridGenotype.load(os.path.join(fold_folder(env_done, SEARCH), "dints_genotype.json"))
    ref_ckpt = torch.load(os.path.join(fold_folder(env_done, SEARCH), "checkpoint_final.pth"), map_location="cpu",
                          weights_only=False)
    root = str(tmp_path / "resume")
    env = copy_work(planned_dataset[0], root)
    killed = _search(env, crash_after=2)  # dies after epoch 2 (the first epoch with architecture steps)
    assert killed.returncode == 17
    assert os.path.isfile(os.path.join(fold_folder(env, SEARCH), "checkpoint_latest.pth"))
    _search(env, extra=("--c",))
    resumed = GridGenotype.load(os.path.join(fold_folder(env, SEARCH), "dints_genotype.json"))
    assert resumed.to_dict()["edges"] == reference.to_dict()["edges"]
    assert resumed.to_dict()["ops"] == reference.to_dict()["ops"]
    ckpt = torch.load(os.path.join(fold_folder(env, SEARCH), "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    for key in ("arch.edge_logits", "arch.op_logits"):
        assert torch.equal(ckpt["network_weights"][key], ref_ckpt["network_weights"][key]), key
    state, ref_state = ckpt["nnunet_nas_search_state"], ref_ckpt["nnunet_nas_search_state"]
    assert state["arch_steps_done"] == ref_state["arch_steps_done"] == 4
    np.testing.assert_allclose(ckpt["logging"]["train_losses"], ref_ckpt["logging"]["train_losses"], rtol=1e-6)
    # nnunet-nas agreement: the resumed and the uninterrupted search decide every edge alike; random ones do not
    result = json.loads(run_cli(["nnunet-nas", "agreement", fold_folder(env, SEARCH), fold_folder(env_done, SEARCH),
                                 "--samples", "200", "--json"], env).stdout)
    assert result["agreement"] == {"ops": 1.0, "edges": 1.0} and result["edges_total"] == 3 * 4  # L x (3D - 2)
    assert 0.0 < result["chance"]["ops"] < result["chance"]["edges"] < 1.0


def test_published_architecture_is_added_with_one_command(fresh_dataset, monkeypatch, capsys):
    """``nnunet-nas add-arch`` (in this process; a different architecture under a taken name is one of the bad
    inputs of test_bad_inputs)."""
    root, env = fresh_dataset
    point_nnunet_at(monkeypatch, env)
    rc, out, _ = run_main(capsys, ["add-arch", str(DATASET_ID), "--channel-mul", "0.0625"])
    assert rc == 0 and "3d_fullres_dints_cvpr" in out
    config = _plans(env)["configurations"]["3d_fullres_dints_cvpr"]
    assert all(p % 32 == 0 for p in config["patch_size"])
    # nnU-Net's own network construction path builds it from the plans
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = config["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                 allow_init=True, deep_supervision=True)
    outs = net(torch.zeros(1, 1, 32, 32, 32))
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]
