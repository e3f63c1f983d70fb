"""Do two searches agree (nnunet_nas.agreement): agreement of decision lists by hand, chance through the method's
discretiser against the share computed by hand for PC-DARTS's two-edges-per-node rule, and the same architecture
agreeing with itself for every method."""

import numpy as np
import pytest
import torch

from nnunet_nas.agreement import chance_agreement, decisions_agreement
from nnunet_nas.errors import UserError
from nnunet_nas.registry import get_method, method_names


def test_agreement_counts_ops_and_kept_edges():
    a = ["conv", None, "skip", "conv"]
    b = ["conv", None, "conv", None]
    assert decisions_agreement(a, b) == {"ops": 0.5, "edges": 0.75}
    with pytest.raises(UserError, match="different search spaces"):
        decisions_agreement(a, b[:3])


def test_chance_for_two_kept_edges_per_node_is_what_the_rule_gives_by_hand():
    """IAC keeps 2 of the n incoming edges of each node (nodes with n = 2, 3, 4, 5 edges). Random logits make every
    pair equally likely, so two random cells keep or drop an edge alike with probability p^2 + (1 - p)^2, p = 2/n."""
    from nnunet_nas.methods.iac import IACSearchConfig
    iac = get_method("iac")
    cfg = IACSearchConfig()
    shapes = {"op_logits": torch.zeros(1, 14, 8), "edge_norm_logits": torch.zeros(1, 14)}
    by_hand = sum(n * ((2 / n) ** 2 + (1 - 2 / n) ** 2) for n in (2, 3, 4, 5)) / 14
    chance = chance_agreement(iac, shapes, "darts_2d", cfg, samples=1500, seed=1)
    assert chance["edges"] == pytest.approx(by_hand, abs=0.02)
    assert chance["ops"] < chance["edges"]


@pytest.mark.parametrize("name", method_names())
def test_an_architecture_agrees_with_itself_and_random_ones_agree_less(name):
    from helpers import TINY_CONFIGS
    from contract.test_method_contract import _search_network
    method, cfg, op_set, net = _search_network(name, 2)
    torch.manual_seed(4)
    state = {k: torch.randn_like(v) for k, v in net.arch.state_dict().items()}
    found = method.discretize(state, op_set, cfg=cfg).edge_decisions()
    assert len(found) == int(np.prod(net.arch.op_logits.shape[:-1]))  # one decision per edge of op_logits
    assert decisions_agreement(found, found) == {"ops": 1.0, "edges": 1.0}
    chance = chance_agreement(method, state, op_set, TINY_CONFIGS[name], samples=50)
    assert 0.0 < chance["ops"] < 1.0 and chance["ops"] <= chance["edges"] <= 1.0
