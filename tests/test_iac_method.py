"""IAC's record pieces by hand: PC-DARTS discretisation (top-2 edges per node by op x edge weight, argmax non-zero
op), the cap on parameter-free ops, edge-normalised weights, config round trips, and finding the trained host."""

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from nnunet_nas.arch.params import CellEdgeArchParams
from nnunet_nas.arch.weighting import EdgeNormalisedWeighting
from nnunet_nas.config import DiNTSSearchConfig, IACSearchConfig, SCNASSearchConfig
from nnunet_nas.errors import ConfigError
from nnunet_nas.discretize.cell import edge_scores, top_edges_cell
from nnunet_nas.methods.iac import discretize
from nnunet_nas.nnunet.host import HOST_ENV, find_host_checkpoint, load_host_checkpoint
from nnunet_nas.ops.catalog import op_names
from nnunet_nas.strategies.jsd_pruning import JSDRule

NAMES = list(op_names("darts_2d"))  # zero, max_pool_3, avg_pool_3, skip, sep_conv_3, sep_conv_5, dil_conv_3, dil_conv_5


def _probs(rows):
    """``[E, 8]`` from ``{op name: probability}`` per edge, the rest spread evenly."""
    out = np.zeros((len(rows), len(NAMES)))
    for e, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (len(NAMES) - len(row))
        out[e] = [row.get(n, rest) for n in NAMES]
    return out


def test_pc_darts_rule_keeps_the_two_strongest_incoming_edges_with_their_best_nonzero_op():
    # 2 nodes: node 0 has edges 0, 1 (from s0, s1); node 1 has edges 2, 3, 4 (from s0, s1, node 0)
    probs = _probs([{"zero": 0.5, "sep_conv_3": 0.3}, {"dil_conv_5": 0.4}, {"sep_conv_5": 0.6},
                    {"zero": 0.9, "avg_pool_3": 0.05}, {"dil_conv_3": 0.5}])
    edges = np.array([0.5, 0.5, 0.2, 0.7, 0.1])
    # scores = max non-zero prob x edge weight: edge 2 0.6*0.2=0.12, edge 3 0.05*0.7=0.035, edge 4 0.5*0.1=0.05
    np.testing.assert_allclose(edge_scores(probs, edges, NAMES)[2:], [0.12, 0.035, 0.05])
    ops = top_edges_cell(probs, edges, "darts_2d", 2, edges_per_node=2, max_parameter_free_ops=None)
    assert ops == ["sep_conv_3", "dil_conv_5", "sep_conv_5", None, "dil_conv_3"]  # zero is never chosen
    # an edge pruned down to "zero" alone is dropped even where its node could keep two
    zero_only = probs.copy()
    zero_only[0] = np.eye(len(NAMES))[NAMES.index("zero")]
    assert top_edges_cell(zero_only, edges, "darts_2d", 2, 2, None)[:2] == [None, "dil_conv_5"]
    # one edge per node: the strongest only
    assert top_edges_cell(probs, edges, "darts_2d", 2, 1, None) == [None, "dil_conv_5", "sep_conv_5", None, None]


def test_the_cap_on_parameter_free_ops_swaps_the_weakest_ones_for_their_best_op_with_parameters():
    probs = _probs([{"skip": 0.6, "sep_conv_5": 0.2}, {"skip": 0.5, "dil_conv_3": 0.3},
                    {"max_pool_3": 0.7, "sep_conv_3": 0.1}, {"skip": 0.4, "dil_conv_5": 0.35}, {"sep_conv_3": 0.9}])
    edges = np.array([0.5, 0.5, 0.45, 0.45, 0.1])  # node 1 keeps edges 2 (0.315) and 3 (0.18), not 4 (0.09)
    free = top_edges_cell(probs, edges, "darts_2d", 2, 2, None)
    assert free == ["skip", "skip", "max_pool_3", "skip", None]
    # four parameter-free ops, cap 2: the two weakest (skip 0.4 on edge 3, skip 0.5 on edge 1) change
    assert top_edges_cell(probs, edges, "darts_2d", 2, 2, 2) == ["skip", "dil_conv_3", "max_pool_3", "dil_conv_5",
                                                                  None]
    # a pruned edge without any op with parameters keeps its op: the cap yields to the pruned set
    pruned = probs.copy()
    pruned[3, [NAMES.index(n) for n in NAMES if n.startswith(("sep", "dil"))]] = 0.0
    pruned[3] /= pruned[3].sum()
    capped = top_edges_cell(pruned, edges, "darts_2d", 2, 2, 2)
    assert capped[3] == "skip" and capped[1] == "dil_conv_3" and capped[0] == "sep_conv_5"


def test_discretize_names_cell_types_by_mode_and_sharing():
    arch = CellEdgeArchParams(3, 5, len(NAMES))
    state = arch.state_dict()
    g = discretize(state, "darts_2d", cfg=replace(IACSearchConfig(), shared_cell=False, mode="skip_only"))
    assert g.cell_types == ["skip_only_0", "skip_only_1", "skip_only_2"] and g.num_nodes == 2
    one = CellEdgeArchParams(1, 14, len(NAMES)).state_dict()
    assert discretize(one, "darts_2d").cell_types == ["fusion"]


def test_edge_normalised_weighting_is_a_softmax_per_edge_and_per_node():
    torch.manual_seed(0)
    arch = CellEdgeArchParams(2, 5, len(NAMES))
    with torch.no_grad():
        arch.edge_norm_logits.normal_()
        arch.op_logits.normal_()
    w = EdgeNormalisedWeighting()(arch)
    torch.testing.assert_close(w.ops, torch.softmax(arch.op_logits, -1))
    torch.testing.assert_close(w.edges[:, :2], torch.softmax(arch.edge_norm_logits[:, :2], -1))
    torch.testing.assert_close(w.edges[:, 2:], torch.softmax(arch.edge_norm_logits[:, 2:], -1))
    assert w.edges.requires_grad and not w.detach().edges.requires_grad


@pytest.mark.parametrize("cfg", [DiNTSSearchConfig(), replace(SCNASSearchConfig(), jsd_pruning=JSDRule(window=3)),
                                 replace(IACSearchConfig(), shared_cell=False, data_split=(2, 1))])
def test_configs_round_trip_through_their_dict(cfg):
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown key checkpoint\.unknown_key"):  # a typo is never dropped
        type(cfg).from_dict(dict(cfg.to_dict(), unknown_key=1), source="checkpoint")


def test_the_trained_host_is_found_by_default_or_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(HOST_ENV, raising=False)
    results = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match="Train it first: nnUNetv2_train Dataset7_X 2d 1 -p MyPlans -tr T"):
        find_host_checkpoint("Dataset7_X", "MyPlans", "2d", 1, "T", results_folder=str(results))
    fold = results / "Dataset7_X" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"x")
    assert find_host_checkpoint("Dataset7_X", "nnUNetPlans", "2d", 1, results_folder=str(results)) == \
        os.path.abspath(fold / "checkpoint_final.pth")
    for where in (fold.parent, fold, fold / "checkpoint_final.pth"):  # model folder, fold folder, file
        monkeypatch.setenv(HOST_ENV, str(where))
        assert find_host_checkpoint("Other", "nnUNetPlans", "3d_fullres", 1) == os.path.abspath(
            fold / "checkpoint_final.pth")
    monkeypatch.setenv(HOST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{HOST_ENV}="):
        find_host_checkpoint("Other", "nnUNetPlans", "2d", 1)


def test_a_search_checkpoint_or_another_datasets_model_is_no_host(tmp_path):
    path = str(tmp_path / "c.pth")
    torch.save({"network_weights": {"arch.op_logits": torch.zeros(1)}, "init_args": {}}, path)
    with pytest.raises(ValueError, match="architecture-search checkpoint"):
        load_host_checkpoint(path, "2d", "Dataset7_X", 0)
    torch.save({"network_weights": {"encoder.w": torch.zeros(1)},
                "init_args": {"plans": {"dataset_name": "Dataset8_Y"}}}, path)
    with pytest.raises(ValueError, match="trained on Dataset8_Y"):
        load_host_checkpoint(path, "2d", "Dataset7_X", 0)
