"""Whether a search separated (nnunet_nas.convergence): the separation index on hand-computed distributions, the
share of edges whose op still changes, the summary the export records and its one-line warning, IAC's edge choice
(beta included, two kept per node)."""

import numpy as np
import pytest

from nnunet_nas.convergence import (CHANGE_CEILING, SEPARATION_FLOOR, argmax_changed_share, convergence_summary,
                                    gate_separation, separation_index, unseparated_warning)


def test_separation_index_is_zero_when_uniform_one_when_decided_and_counts_only_live_options():
    probs = np.array([[0.25, 0.25, 0.25, 0.25],   # uniform: 0
                      [1.0, 0.0, 0.0, 0.0],       # decided: 1
                      [0.4, 0.2, 0.2, 0.2],       # (0.4 - 1/4) / (1 - 1/4) = 0.2
                      [0.5, 0.5, 0.0, 0.0],       # two ops pruned: uniform over the 2 left
                      [0.7, 0.3, 0.0, 0.0]])      # (0.7 - 1/2) / (1/2) = 0.4
    assert separation_index(probs) == pytest.approx([0.0, 1.0, 0.2, 0.0, 0.4])
    # a discretiser keeping the 2 best: (top-2 mass - 2/N) / (1 - 2/N)
    assert separation_index(np.array([0.4, 0.4, 0.1, 0.1]), keep=2) == pytest.approx(0.6)
    assert separation_index(np.array([0.6, 0.4]), keep=2) == pytest.approx(1.0)  # no choice left
    assert gate_separation([0.5, 0.9, 0.1, 1.0]) == pytest.approx([0.0, 0.8, 0.8, 1.0])


def test_argmax_changes_are_counted_over_the_window():
    a, b = [[0.6, 0.4], [0.6, 0.4]], [[0.4, 0.6], [0.6, 0.4]]  # edge 0 flips in b
    assert argmax_changed_share([a]) is None
    assert argmax_changed_share([a, a, a]) == 0.0
    assert argmax_changed_share([a, b, b]) == 0.5
    assert argmax_changed_share([a] + [b] * 5, window=5) == 0.5  # a is 5 epochs back: inside the window
    assert argmax_changed_share([a] + [b] * 6, window=5) == 0.0  # 6 back: outside


def test_summary_and_warning_name_what_did_not_separate_and_the_lever():
    settled = {"arch_separation": [0.1, 0.5], "op_probs": [[[0.9, 0.1]]] * 6}
    summary = convergence_summary(settled)
    assert summary["separated"] and summary["separation"] == 0.5 and summary["argmax_changed"] == 0.0
    assert unseparated_warning(summary) is None
    flat = {"arch_separation": [0.01, 0.02], "arch_edge_separation": [0.3, 0.4],
            "op_probs": [[[0.51, 0.49], [0.5, 0.5]], [[0.49, 0.51], [0.5, 0.5]]]}
    summary = convergence_summary(flat)
    assert not summary["separated"] and summary["edge_separation"] == 0.4 and summary["argmax_changed"] == 0.5
    line = unseparated_warning(summary)
    assert "random draw" in line and f"< {SEPARATION_FLOOR:g}" in line and "50% of the edges" in line
    assert "arch_lr" in line and "architecture steps" in line
    changing = {"arch_separation": [0.9], "op_probs": [[[0.9, 0.1]] * 10, [[0.1, 0.9]] * 2 + [[0.9, 0.1]] * 8]}
    assert convergence_summary(changing)["argmax_changed"] == 0.2 > CHANGE_CEILING
    assert "separation" not in unseparated_warning(convergence_summary(changing)).split("(")[1].split(")")[0]
    assert convergence_summary({}) is None and unseparated_warning(None) is None  # a checkpoint of an older version


def test_iacs_edge_choice_includes_beta_and_keeps_two_edges_per_node():
    from nnunet_nas.methods.iac import decision_distributions
    names = ["zero", "skip", "conv"]
    probs = np.array([[[0.5, 0.25, 0.25]] * 5])  # 2 nodes: 2 + 3 edges; zero dropped: uniform over skip, conv
    beta = np.array([[0.5, 0.5, 0.6, 0.3, 0.1]])  # node 1: scores 0.5 * (0.6, 0.3, 0.1)
    ops, edges = decision_distributions(probs, beta, names, num_nodes=2, keep=2)
    assert ops[0, 0] == pytest.approx([0.0, 0.5, 0.5]) and separation_index(ops).mean() == 0.0
    assert edges == pytest.approx([(0.9 - 2 / 3) / (1 - 2 / 3)])  # node 0 has no choice and is left out
