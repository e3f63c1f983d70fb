"""Tests for nnunet_nas.arch.grid_probs (DiNTS Eq. 2, 5-7), incl. oracle tests against MONAI 1.6.1."""

import itertools
import math
from functools import lru_cache

import numpy as np
import pytest
import torch

from nnunet_nas.arch import grid_probs as gp
from nnunet_nas.spaces.grid_topology import grid_topology


def _pattern_index(num_depths, edges_on):
    """Index of the pattern whose active edge set is exactly ``edges_on``."""
    topo = grid_topology(num_depths)
    vec = np.zeros(topo.num_edges, dtype=np.uint8)
    vec[list(edges_on)] = 1
    (idx,) = np.nonzero((topo.patterns == vec).all(axis=1))[0]
    return int(idx)


def _logit(p):
    return math.log(p / (1 - p))


# ------------------------------------------------------------------------------------------ hand-computed


def test_pattern_probs_d2_by_hand():
    # D=2: E=4 edges (0->0, 1->0, 0->1, 1->1), M=15 patterns; pattern j = bits of j+1, edge 0 = MSB.
    p = [[0.5, 0.2, 0.8, 0.5], [0.5, 0.5, 0.5, 0.5]]
    logits = torch.tensor([[_logit(v) for v in row] for row in p], dtype=torch.float64)
    eta = gp.pattern_probs(logits)
    assert eta.shape == (2, 15)
    # block 0: norm = 1 - 0.5*0.8*0.2*0.5 = 0.96
    expected0 = []
    for code in range(1, 16):
        bits = [(code >> (3 - e)) & 1 for e in range(4)]
        expected0.append(math.prod(p[0][e] if b else 1 - p[0][e] for e, b in enumerate(bits)) / 0.96)
    np.testing.assert_allclose(eta[0].numpy(), expected0, rtol=1e-12)
    assert eta[0, 14].item() == pytest.approx(0.04 / 0.96, rel=1e-12)  # all edges on: 0.5*0.2*0.8*0.5 / 0.96
    assert eta[0, 7].item() == pytest.approx(0.04 / 0.96, rel=1e-12)  # only edge 0: 0.5*0.8*0.2*0.5 / 0.96
    np.testing.assert_allclose(eta[1].numpy(), np.full(15, 1 / 15), rtol=1e-12)  # p = 0.5 everywhere: uniform


def test_edge_marginals_by_hand_and_identity():
    p = [0.5, 0.2, 0.8, 0.5]
    logits = torch.tensor([[_logit(v) for v in p]], dtype=torch.float64)
    np.testing.assert_allclose(gp.edge_marginals(logits)[0].numpy(), np.array(p) / 0.96, rtol=1e-12)
    # marginal = sum_j eta_j * cp_j(e) for every D
    g = torch.Generator().manual_seed(0)
    for num_depths in (2, 3, 4, 5):
        x = torch.randn(3, 3 * num_depths - 2, generator=g, dtype=torch.float64) * 2
        pats = torch.tensor(grid_topology(num_depths).patterns, dtype=torch.float64)
        np.testing.assert_allclose(gp.edge_marginals(x).numpy(), (gp.pattern_probs(x) @ pats).numpy(), rtol=1e-10)


def test_edge_probs_is_sigmoid():
    x = torch.tensor([[-2.0, 0.0, 3.0, 1.0]])
    torch.testing.assert_close(gp.edge_probs(x), torch.sigmoid(x))


@pytest.mark.parametrize("num_depths", [2, 3, 4, 5])
def test_pattern_probs_normalised_and_stable(num_depths):
    num_edges = 3 * num_depths - 2
    x = torch.randn(4, num_edges, generator=torch.Generator().manual_seed(num_depths)) * 3
    x[1] = -40.0  # every edge nearly off: MONAI's 1 - prod(1-p) is 0 in float32 here
    x[2] = 40.0
    x.requires_grad_(True)
    eta = gp.pattern_probs(x)
    assert eta.shape == (4, 2 ** num_edges - 1)
    assert torch.isfinite(eta).all() and (eta >= 0).all()
    torch.testing.assert_close(eta.sum(-1), torch.ones(4), atol=1e-5, rtol=0)
    # all edges equally (un)likely and nearly off: only the single-edge patterns survive, each 1/E
    single = grid_topology(num_depths).patterns.sum(1) == 1
    torch.testing.assert_close(eta[1, torch.tensor(single)], torch.full((num_edges,), 1 / num_edges))
    marg = gp.edge_marginals(x)
    assert torch.isfinite(marg).all()
    torch.testing.assert_close(marg[1], torch.full((num_edges,), 1 / num_edges))
    (gp.entropy_loss_patterns(eta) + gp.topology_loss(eta, num_depths) + marg.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_entropy_losses_by_hand():
    ops = torch.zeros(3, 4, 5)
    assert gp.entropy_loss_ops(ops).item() == pytest.approx(math.log(5) / 5, rel=1e-6)
    eta = torch.full((2, 15), 1 / 15, dtype=torch.float64)
    assert gp.entropy_loss_patterns(eta).item() == pytest.approx(-(1 / 15) * math.log(1 / 15 + 1e-5), rel=1e-12)
    one_hot = torch.zeros(2, 15, dtype=torch.float64)
    one_hot[:, 3] = 1
    assert gp.entropy_loss_patterns(one_hot).item() == pytest.approx(-math.log(1 + 1e-5) / 15, rel=1e-12)


def test_topology_loss_by_hand_d2():
    # block 0 uses only edge 0->0 (outputs {0}); block 1 splits 50/50 between 0->0 (reads {0}) and 1->1 (reads {1})
    eta = torch.zeros(2, 15, dtype=torch.float64)
    eta[0, _pattern_index(2, [0])] = 1.0
    eta[1, _pattern_index(2, [0])] = 0.5
    eta[1, _pattern_index(2, [3])] = 0.5
    eps = 1e-5
    # a={0}: p_in=1, p_out=.5; a={1}: p_in=0, p_out=.5; a={0,1}: p_in=0, p_out=0
    expected = -(math.log(0.5 + eps) + math.log(1 - 0.5 + eps) + math.log(1 + eps))
    assert gp.topology_loss(eta, 2).item() == pytest.approx(expected, rel=1e-12)
    produced, consumed = gp.node_pattern_probs(eta, 2)
    # columns = node sets {0}, {1}, {0,1}; 0->0 reads/outputs {0}, 1->1 reads/outputs {1}
    np.testing.assert_allclose(produced.numpy(), [[1, 0, 0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(consumed.numpy(), [[1, 0, 0], [0.5, 0.5, 0]])
    # feasible chain: block 1 reads exactly what block 0 produced -> loss is only the eps terms
    eta[1] = 0
    eta[1, _pattern_index(2, [0, 2])] = 1.0  # reads {0}, outputs {0, 1}
    assert gp.topology_loss(eta, 2).item() == pytest.approx(-3 * math.log(1 + eps), rel=1e-9)
    assert gp.topology_loss(eta[:1], 2).item() == 0.0


def test_topology_loss_matches_loop_reference():
    num_depths = 3
    topo = grid_topology(num_depths)
    eta = gp.pattern_probs(torch.randn(4, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2)
    ref = 0.0
    for i, a in itertools.product(range(3), range(1, 2 ** num_depths)):
        p_in = eta[i, torch.tensor(topo.pattern_out_nodes == a)].sum().item()
        p_out = eta[i + 1, torch.tensor(topo.pattern_in_nodes == a)].sum().item()
        ref -= p_in * math.log(p_out + 1e-5) + (1 - p_in) * math.log(1 - p_out + 1e-5)
    assert gp.topology_loss(eta, num_depths).item() == pytest.approx(ref, rel=1e-12)


def test_discretisation_gap():
    # block 0 strongly prefers {0->1}, block 1 prefers {0->0, 1->1}
    x = torch.tensor([[-6.0, -6.0, 6.0, -6.0], [2.0, -6.0, -6.0, 1.0]])
    c_max = gp.argmax_patterns(x)
    torch.testing.assert_close(c_max, torch.tensor([[0.0, 0, 1, 0], [1.0, 0, 0, 1]]))
    assert gp.discretisation_gap(x, c_max) == 0
    assert gp.discretisation_gap(x, np.array([[0, 0, 1, 0], [0, 0, 0, 1]])) == 1
    assert gp.discretisation_gap(x, np.ones((2, 4))) == 5
    with pytest.raises(ValueError, match="expected"):
        gp.discretisation_gap(x, np.ones((3, 4)))


def test_bad_shapes():
    with pytest.raises(ValueError, match="3D-2"):
        gp.pattern_probs(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="shape"):
        gp.pattern_probs(torch.zeros(4))
    with pytest.raises(ValueError, match="patterns"):
        gp.topology_loss(torch.zeros(2, 14), 2)


def test_tables_cached_per_device_and_dtype():
    a = gp._torch_tables(3, torch.device("cpu"), torch.float32)
    assert a is gp._torch_tables(3, torch.device("cpu"), torch.float32)
    assert a is not gp._torch_tables(3, torch.device("cpu"), torch.float64)
    assert gp.pattern_probs(torch.zeros(1, 7, dtype=torch.float64)).dtype == torch.float64


# ------------------------------------------------------------------------------------------- MONAI oracle


@lru_cache(maxsize=None)
def _monai_space(num_depths, num_blocks):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.TopologySearch(channel_mul=0.1, num_blocks=num_blocks, num_depths=num_depths, use_downsample=True)


@pytest.mark.monai
@pytest.mark.parametrize("num_depths,num_blocks,draws", [(2, 5, 6), (3, 4, 4), (4, 3, 2)])
def test_against_monai(num_depths, num_blocks, draws):
    space = _monai_space(num_depths, num_blocks)
    g = torch.Generator().manual_seed(10 * num_depths)
    for _ in range(draws):
        with torch.no_grad():
            space.log_alpha_a.data = torch.randn(space.log_alpha_a.shape, generator=g) * 2
            space.log_alpha_c.data = torch.randn(space.log_alpha_c.shape, generator=g) * 2
            probs, marg = space.get_prob_a(child=True)
            x32 = space.log_alpha_a.detach().clone()
            x64 = x32.double()
            eta64 = gp.pattern_probs(x64)
            # MONAI is float32: its relative error on tiny etas reaches ~1e-5
            np.testing.assert_allclose(eta64.numpy(), probs.double().numpy(), rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(gp.pattern_probs(x32).numpy(), probs.numpy(), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(gp.edge_marginals(x64).numpy(), marg.double().numpy(), rtol=1e-5)
            # topology loss: same input probabilities -> same value; our float64 eta -> close
            monai_tp = space.get_topology_entropy(probs).item()
            assert gp.topology_loss(probs, num_depths).item() == pytest.approx(monai_tp, rel=1e-5)
            assert gp.topology_loss(eta64, num_depths).item() == pytest.approx(monai_tp, rel=1e-5)
            # entropies as in the MONAI tutorial / model-zoo search loop
            ent_a = -torch.mean(probs * torch.log(probs + 1e-5))
            assert gp.entropy_loss_patterns(eta64).item() == pytest.approx(ent_a.item(), rel=1e-5)
            a_c = space.log_alpha_c
            ent_c = -torch.mean(torch.softmax(a_c, dim=-1) * torch.log_softmax(a_c, dim=-1))
            assert gp.entropy_loss_ops(a_c).item() == pytest.approx(ent_c.item(), rel=1e-6)
