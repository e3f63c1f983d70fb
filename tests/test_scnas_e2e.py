"""SCNAS through nnU-Net's real entry points, in subprocesses, on the tiny generated dataset (CPU)."""

import json
import os
import re

import pytest
import torch

from helpers import DATASET_ID, DATASET_NAME, copy_work, fold_folder, run_cli, run_search, search_on_copy
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.ops.catalog import op_names

SEARCH = "nnUNetTrainerSCNASSearchTest"
PLAIN = "nnUNetTrainerNASTest"


@pytest.fixture(scope="module")
def searched(planned_dataset, tmp_path_factory):
    return search_on_copy(planned_dataset, str(tmp_path_factory.mktemp("scnas")), SEARCH)


def test_search_writes_genotype_pictures_and_a_dropin_configuration(searched, tmp_path):
    env, out = searched
    fold = fold_folder(env, SEARCH)
    g = CellGenotype.load(os.path.join(fold, "scnas_genotype.json"))
    assert g.cell_types == ["encoder_normal", "reduction", "decoder_normal", "expansion"] and g.spatial_dims == 3
    for picture in ("scnas_architecture.png", "scnas_arch_trajectories.png", "progress.png"):
        assert os.path.getsize(os.path.join(fold, picture)) > 1000, picture
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    temps = ckpt["logging"]["arch_temperature"]
    assert temps[0] == pytest.approx(10.0) and temps[-1] == pytest.approx(0.1)  # annealed over the search
    plans = json.load(open(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")))
    config = plans["configurations"]["3d_fullres_scnas"]
    assert config["architecture"]["network_class_name"] == "nnunet_nas.networks.scnas_net.SCNASNet"
    assert CellGenotype.from_dict(config["architecture"]["arch_kwargs"]["genotype"]) == g
    # the stock trainer trains the found configuration and nnU-Net predicts with it
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres_scnas", "0", "-tr", PLAIN, "-device", "cpu"], env)
    images = os.path.join(env["nnUNet_raw"], DATASET_NAME, "imagesTr")
    inp = tmp_path / "in"
    inp.mkdir()
    for name in sorted(os.listdir(images))[:2]:
        os.symlink(os.path.join(images, name), inp / name)
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID), "-c",
             "3d_fullres_scnas", "-f", "0", "-tr", PLAIN, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    assert len([f for f in os.listdir(tmp_path / "out") if f.endswith(".nii.gz")]) == 2


def test_found_cells_transfer_to_another_planned_dataset(searched):
    """The paper's transfer (brain tumour -> heart, lung): the genotype is registered on a second dataset, whose
    stem the network builds for that dataset's input channels, and nnU-Net trains it there."""
    from nnunet_nas.demo import make_demo_dataset
    env, _ = searched
    other = 992
    make_demo_dataset(env["nnUNet_raw"], other, num_cases=6, shape=(24, 40, 32), seed=5)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(other), "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
            plan_env)
    genotype = os.path.join(fold_folder(env, SEARCH), "scnas_genotype.json")
    res = run_cli(["nnunet-nas", "add-arch", str(other), "-c", "3d_fullres", "--genotype", genotype,
                   "--name", "3d_fullres_scnas_brats", "--channel-mul", "0.125"], env)
    assert "registered configuration '3d_fullres_scnas_brats'" in res.stdout
    run_cli(["nnUNetv2_train", str(other), "3d_fullres_scnas_brats", "0", "-tr", PLAIN, "-device", "cpu"], env)
    summary = os.path.join(env["nnUNet_results"], f"Dataset{other}_NASDemo",
                           f"{PLAIN}__nnUNetPlans__3d_fullres_scnas_brats", "fold_0", "validation", "summary.json")
    assert os.path.isfile(summary)


def test_jsd_stability_prunes_and_stops_the_scnas_search(planned_dataset, tmp_path):
    """The JSD strategy as an option of a method's trainer, through nnU-Net: pruned ops, early stop, picture,
    strategy state in the checkpoint, and the export of the stopped search."""
    trainer = "nnUNetTrainerSCNASSearchJSDTest"
    root = str(tmp_path / "jsd")
    env = copy_work(planned_dataset[0], root)
    log = run_search(env, trainer).stdout
    assert "search stopped early at epoch 1" in log and "jsd_max_score" in log
    pruned = re.search(r"operation pruning: (\d+) candidate ops pruned, (\d+) op modules removed", log)
    assert pruned and int(pruned.group(1)) > 0 and int(pruned.group(2)) > int(pruned.group(1))  # in every cell
    fold = fold_folder(env, trainer)
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    alive = ckpt["network_weights"]["arch.alive_ops"]
    assert alive.any(-1).all() and 0 < int((~alive).sum(-1).max()) <= 4  # at most half of 8 ops per edge
    jsd = ckpt["nnunet_nas_search_state"]["strategies"][-1]
    assert jsd["stop_epoch"] == 1 and jsd["events"] and jsd["trajectory"]["epoch"] == [0, 1]
    assert os.path.getsize(os.path.join(fold, "jsd_stability.png")) > 1000
    g = CellGenotype.load(os.path.join(fold, "scnas_genotype.json"))
    assert g.provenance["stopped_early"] is True
    names = op_names(g.op_set)
    for t, cell_type in enumerate(g.cell_types):  # the export picks only ops that survived pruning
        for e, op in enumerate(g.edge_ops(cell_type)):
            assert op is None or alive[t, e, names.index(op)], (cell_type, e, op)


def test_jsd_pruning_resumes_to_the_uninterrupted_search(planned_dataset, tmp_path):
    """Killed after the first pruning epoch and resumed with --c: the same pruned sets, alpha and strategy state
    (snapshots, events, trajectory) as the uninterrupted search."""
    trainer = "nnUNetTrainerSCNASSearchJSDPruneTest"
    final = {}
    for run in ("full", "resumed"):
        root = str(tmp_path / run)
        env = copy_work(planned_dataset[0], root)
        if run == "resumed":
            assert run_search(env, trainer, crash_after=1).returncode == 17
            run_search(env, trainer, ("--c",))
        else:
            run_search(env, trainer)
        final[run] = torch.load(os.path.join(fold_folder(env, trainer), "checkpoint_final.pth"), map_location="cpu",
                                weights_only=False)
    full, resumed = final["full"], final["resumed"]
    for key in ("arch.op_logits", "arch.alive_ops"):
        assert torch.equal(resumed["network_weights"][key], full["network_weights"][key]), key
    jsd_full = full["nnunet_nas_search_state"]["strategies"][-1]
    assert [e["epoch"] for e in jsd_full["events"]][:1] == [1] and jsd_full["stop_epoch"] is None
    jsd_resumed = resumed["nnunet_nas_search_state"]["strategies"][-1]
    assert json.dumps(jsd_resumed, sort_keys=True) == json.dumps(jsd_full, sort_keys=True)  # NaN-safe equality
