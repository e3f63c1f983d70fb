"""IAC and IAC-LTH through nnU-Net's real entry points, in subprocesses, on the tiny generated dataset (CPU, 2d):
baseline training, IAC search on the trained model, export, fine-tune from the trained model, predict; IAC-LTH's
pruning and early stop; the missing-model error."""

import json
import os

import pytest
import torch

from helpers import DATASET_ID, DATASET_NAME, copy_work, run_cli
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.nnunet.host import host_for_fold

HOST = "nnUNetTrainerNASTest"  # the "baseline" nnU-Net model (default trainer, tiny schedule)
IAC = "nnUNetTrainerIACSearchTest"
IAC_LTH = "nnUNetTrainerIACLTHSearchTest"
CONFIG = "2d"


def _fold(env, trainer, config=CONFIG):
    return os.path.join(env["nnUNet_results"], DATASET_NAME, f"{trainer}__nnUNetPlans__{config}", "fold_0")


def _train(env, config, trainer, check=True):
    return run_cli(["nnUNetv2_train", str(DATASET_ID), config, "0", "-tr", trainer, "-device", "cpu"], env,
                   check=check)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


@pytest.fixture(scope="module")
def host(planned_dataset, tmp_path_factory):
    """A copy of the planned dataset with a trained 2d model (the host) in nnUNet_results."""
    root = str(tmp_path_factory.mktemp("iac"))
    env = copy_work(planned_dataset[0], root)
    _train(env, CONFIG, HOST)
    return env


@pytest.fixture(scope="module")
def searched(host):
    _train(host, CONFIG, IAC)
    return host


def test_search_without_a_trained_model_names_the_command_to_run_first(planned_dataset, tmp_path):
    p = _train(copy_work(planned_dataset[0], str(tmp_path / "nnunet")), CONFIG, IAC, check=False)
    assert p.returncode != 0
    assert f"Train it first: nnUNetv2_train {DATASET_NAME} {CONFIG} 0 -tr {HOST}" in p.stdout + p.stderr


def test_search_freezes_the_host_and_exports_a_configuration_that_starts_from_it(searched, tmp_path):
    env = searched
    fold = _fold(env, IAC)
    host_ckpt = os.path.join(_fold(env, HOST), "checkpoint_final.pth")
    host_weights = _weights(host_ckpt)
    search_weights = _weights(os.path.join(fold, "checkpoint_final.pth"))
    # freezing really freezes: after the whole search every host tensor is bit-identical to the trained model's
    for k, v in host_weights.items():
        assert torch.equal(search_weights[f"supernet.{k}"], v), k
    assert any(k.startswith("supernet.cells.") for k in search_weights) and "arch.edge_norm_logits" in search_weights
    g = CellGenotype.load(os.path.join(fold, "iac_genotype.json"))
    assert g.cell_types == ["fusion"] and g.spatial_dims == 2 and g.num_nodes == 2
    for picture in ("iac_architecture.png", "iac_arch_trajectories.png", "iac_network.png", "progress.png"):
        assert os.path.getsize(os.path.join(fold, picture)) > 1000, picture
    plans = json.load(open(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")))
    arch = plans["configurations"][f"{CONFIG}_iac"]["architecture"]
    assert arch["network_class_name"] == "nnunet_nas.networks.iac_net.IACUNet"
    # every fold fine-tunes from its own trained model: the search fold's folder written as fold_{fold}
    assert arch["arch_kwargs"]["host_checkpoint"] == os.path.abspath(host_ckpt).replace("fold_0", "fold_{fold}")
    assert arch["arch_kwargs"]["host_kwargs"] == plans["configurations"][CONFIG]["architecture"]["arch_kwargs"]
    assert CellGenotype.from_dict(arch["arch_kwargs"]["genotype"]) == g
    # registered by hand on fold 0's model (nnunet-nas add-arch), every fold starts from its own model just the same
    run_cli(["nnunet-nas", "add-arch", str(DATASET_ID), "-c", CONFIG, "--genotype",
             os.path.join(fold, "iac_genotype.json"), "--host-checkpoint", host_ckpt, "--name", f"{CONFIG}_iac_added"],
            env)
    added = json.load(open(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")))
    assert added["configurations"][f"{CONFIG}_iac_added"]["architecture"]["arch_kwargs"]["host_checkpoint"] == \
        arch["arch_kwargs"]["host_checkpoint"]

    # the network nnU-Net's stock trainer builds for fine-tuning computes the trained model's function
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json"))
    # built outside a trainer, the network knows no fold: the test names fold 0's host as fold 0's training would
    kwargs = pm.plans["configurations"][f"{CONFIG}_iac"]["architecture"]["arch_kwargs"]
    kwargs["host_checkpoint"] = host_for_fold(kwargs["host_checkpoint"], 0)
    fine = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(f"{CONFIG}_iac"), 1, 3, True).eval()
    plain = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(CONFIG), 1, 3, True).eval()
    plain.load_state_dict(host_weights)
    # the cells' width was fitted: host plus cells take at most 2x the planned network's conv feature maps
    from nnunet_nas.methods.iac import IAC_MEMORY_SHARE
    from nnunet_nas.networks.common import conv_output_elements
    counts = [conv_output_elements(lambda: nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(c), 1, 3,
                                                                                   True), 1,
                                   pm.get_configuration(CONFIG).patch_size) for c in (f"{CONFIG}_iac", CONFIG)]
    assert 1.0 < counts[0] / counts[1] <= IAC_MEMORY_SHARE and arch["arch_kwargs"]["cell_channel_mul"] < 1.0
    x = torch.randn(2, 1, *pm.get_configuration(CONFIG).patch_size)
    with torch.no_grad():
        for a, b in zip(fine(x), plain(x)):
            assert torch.equal(a, b)

    # plain nnUNetv2_train fine-tunes it, nnUNetv2_predict uses it
    _train(env, f"{CONFIG}_iac", HOST)
    images = os.path.join(env["nnUNet_raw"], DATASET_NAME, "imagesTr")
    inp = tmp_path / "in"
    inp.mkdir()
    for name in sorted(os.listdir(images))[:2]:
        os.symlink(os.path.join(images, name), inp / name)
    # prediction does not need the trained host any more (a model shipped elsewhere has no such file)
    os.rename(host_ckpt, host_ckpt + ".away")
    try:
        run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "out"), "-d", str(DATASET_ID), "-c",
                 f"{CONFIG}_iac", "-f", "0", "-tr", HOST, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    finally:
        os.rename(host_ckpt + ".away", host_ckpt)
    assert len([f for f in os.listdir(tmp_path / "out") if f.endswith(".nii.gz")]) == 2


def test_a_missing_host_checkpoint_stops_fine_tuning_with_one_clear_error(searched, tmp_path):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    plans = json.load(open(os.path.join(searched["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")))
    arch = plans["configurations"][f"{CONFIG}_iac"]["architecture"]
    kwargs = dict(arch["arch_kwargs"], host_checkpoint=str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match="does not exist"):  # training: deep supervision on
        get_network_from_plans(arch["network_class_name"], kwargs, [], 1, 3, allow_init=True, deep_supervision=True)
    with pytest.warns(UserWarning, match="does not exist"):  # prediction: the checkpoint's weights come next
        get_network_from_plans(arch["network_class_name"], kwargs, [], 1, 3, allow_init=True, deep_supervision=False)


def test_iac_lth_prunes_and_stops_early(host):
    env = host
    _train(env, CONFIG, IAC_LTH)
    fold = _fold(env, IAC_LTH)
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    state = ckpt["nnunet_nas_search_state"]
    assert state["stopped_early"] and ckpt["current_epoch"] < 8  # stopped before its cap
    alive = ckpt["network_weights"]["arch.alive_ops"]
    assert not alive.all() and alive.any(-1).all()  # pruned, never an edge without an op
    # pruned candidates lost their modules in the implanted cells
    from nnunet_nas.ops.catalog import op_names
    for edge in range(alive.shape[1]):
        prefix = f"supernet.cells.0.edge_ops.{edge}.ops."
        held = {k[len(prefix):].split(".")[0] for k in ckpt["network_weights"] if k.startswith(prefix)}
        kept = {n for n, a in zip(op_names("darts_2d"), alive[0, edge].tolist()) if a}
        assert held <= kept, (edge, held, kept)
    assert os.path.getsize(os.path.join(fold, "jsd_stability.png")) > 1000
    g = CellGenotype.load(os.path.join(fold, "iac_genotype.json"))
    assert g.provenance["stopped_early"]
    log = open(sorted(f for f in (os.path.join(fold, n) for n in os.listdir(fold)) if "training_log" in f)[-1]).read()
    assert "operation pruning" in log and "search stopped early" in log
    assert "JSD rule: an edge with no architecture signal scores S_e about" in log  # the threshold's calibration
