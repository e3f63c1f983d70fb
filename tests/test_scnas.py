"""SCNAS: Algorithm 1 on hand-computed cases, the cell, the network, the discretisation and the genotype."""

import itertools

import numpy as np
import pytest
import torch

from nnunet_nas.arch.params import CellArchParams
from nnunet_nas.arch.weighting import GumbelPairWeighting, SampledOpWeights
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.genotypes.schema import GenotypeError, genotype_from_dict
from nnunet_nas.discretize.cell import argmax_cell
from nnunet_nas.methods.scnas import discretize
from nnunet_nas.networks.scnas_net import CELL_TYPES, SCNASNet
from nnunet_nas.ops.catalog import op_names
from nnunet_nas.spaces.cell import Cell, cell_edges

NAMES = list(op_names("scnas_2d"))


def _arch(logits, alive=None):
    arch = CellArchParams(1, len(logits[0]), len(logits[0][0]))
    with torch.no_grad():
        arch.op_logits.copy_(torch.tensor(logits, dtype=torch.float32))
    if alive is not None:
        arch.set_alive_ops(torch.tensor(alive))
    return arch


def test_pair_probabilities_are_the_papers_and_sum_to_one():
    z = torch.tensor([0.5, 0.3, 0.2])
    q = GumbelPairWeighting().pair_probabilities(z, torch.ones(3, dtype=torch.bool))
    pairs = {(a, b): float(q[a, b] + q[b, a]) for a, b in itertools.combinations(range(3), 2)}
    assert pairs == pytest.approx({(0, 1): 0.4, (0, 2): 0.35, (1, 2): 0.25})  # (z_a + z_b) / (|O| - 1)
    assert float(q.sum()) == pytest.approx(1.0)
    alive = torch.tensor([True, False, True, True])
    q = GumbelPairWeighting().pair_probabilities(torch.tensor([0.1, 0.0, 0.6, 0.3]), alive)
    assert float(q.sum()) == pytest.approx(1.0) and float(q[1].sum() + q[:, 1].sum()) == 0.0


def test_sampled_pairs_follow_the_pair_law():
    """The sampler (first op ~ z, second uniform among the others) draws each pair with (z_a + z_b) / (n - 1)."""
    w = GumbelPairWeighting()
    w.seed(0)
    z = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).expand(20000, 4)
    first, second = w.sample_pair(z, torch.ones(20000, 4, dtype=torch.bool))
    assert bool((first != second).all())
    counts = {}
    for a, b in zip(first.tolist(), second.tolist()):
        counts[tuple(sorted((a, b)))] = counts.get(tuple(sorted((a, b))), 0) + 1
    zz = z[0].tolist()
    for (a, b), c in counts.items():
        assert c / 20000 == pytest.approx((zz[a] + zz[b]) / 3, abs=0.012), (a, b)


def test_weights_are_the_renormalised_pair_and_alpha_gets_gradients():
    torch.manual_seed(0)
    arch = _arch([[[0.3, -0.2, 1.0, 0.1]]])
    weighting = GumbelPairWeighting(temperature=2.0)
    weighting.seed(3)
    gen_state = weighting.generator.get_state()
    sampled = weighting(arch)
    assert isinstance(sampled, SampledOpWeights) and sampled.active.sum() == 2
    # recompute z with the same Gumbel draw: the weights are z of the pair, renormalised
    weighting.generator.set_state(gen_state)
    g = weighting.gumbel(arch.op_logits)
    z = torch.softmax((arch.op_logits + g) / 2.0, -1)[0, 0]
    a, b = torch.nonzero(sampled.active[0, 0]).flatten().tolist()
    expected = torch.zeros(4)
    expected[a], expected[b] = z[a] / (z[a] + z[b]), z[b] / (z[a] + z[b])
    torch.testing.assert_close(sampled.weights[0, 0].detach(), expected.detach())
    (sampled.weights[0, 0] * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert arch.op_logits.grad is not None and arch.op_logits.grad.abs().sum() > 0


def test_a_single_alive_op_runs_alone_with_weight_one():
    arch = _arch([[[0.3, -0.2, 1.0]]], alive=[[[False, True, False]]])
    sampled = GumbelPairWeighting()(arch)
    assert sampled.active[0, 0].tolist() == [False, True, False]
    assert float(sampled.weights[0, 0, 1].detach()) == pytest.approx(1.0)


def test_annealing_drives_the_pair_to_one_operation():
    arch = _arch([[[0.0, 0.5, 1.5, 0.2]] * 200])
    hot, cold = GumbelPairWeighting(10.0), GumbelPairWeighting(0.1)
    hot.seed(1), cold.seed(1)
    top_hot = hot(arch).weights.max(-1).values.mean()
    top_cold = cold(arch).weights.max(-1).values.mean()
    assert top_hot < 0.6 and top_cold > 0.95


def test_sampling_is_reproducible_from_the_seed_and_the_saved_state():
    arch = CellArchParams(4, 14, 8)
    a, b = GumbelPairWeighting(), GumbelPairWeighting()
    a.seed(7), b.seed(7)
    for _ in range(3):
        sa, sb = a(arch), b(arch)
        assert torch.equal(sa.active, sb.active) and torch.equal(sa.weights, sb.weights)
    resumed = GumbelPairWeighting(99.0)
    resumed.load_state_dict(a.state_dict())
    assert torch.equal(resumed(arch).active, a(arch).active)


def _count_op_calls(cell):
    calls = {}
    for e, mixed in enumerate(cell.edge_ops):
        for name, op in mixed.ops.items():
            op.register_forward_hook(lambda m, i, o, key=(e, name): calls.__setitem__(key, calls.get(key, 0) + 1))
    return calls


def test_only_the_sampled_operations_run():
    torch.manual_seed(0)
    cell = Cell("scnas_2d", "normal", [4, 4], 4)
    calls = _count_op_calls(cell)
    arch = CellArchParams(1, len(cell.edges), len(NAMES))
    weighting = GumbelPairWeighting(1.0)
    sampled = weighting(arch)
    out = cell(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), sampled.weights[0], sampled.active[0])
    assert out.shape == (1, 4, 8, 8)
    ran = {(e, NAMES[n]) for e, n in zip(*np.nonzero(sampled.active[0].numpy()))}
    assert set(calls) == ran and all(c == 1 for c in calls.values())
    assert len(ran) == 2 * len(cell.edges)


def test_cell_dag_has_fourteen_edges_and_resizing_cells_resize():
    assert len(cell_edges(4)) == 14 and cell_edges(2) == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]
    w = torch.softmax(torch.randn(14, len(NAMES)), -1)
    red = Cell("scnas_2d", "reduction", [4, 8], 8, in_scales=(-1, 0))  # s0 twice as fine, as after a reduction
    assert red(torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), w).shape == (2, 8, 4, 4)
    exp = Cell("scnas_2d", "expansion", [8, 8], 4)
    assert exp(torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4), w).shape == (2, 4, 8, 8)


def _one_hot_sample(genotype, num_nodes=4):
    weights = torch.zeros(len(CELL_TYPES), len(cell_edges(num_nodes)), len(NAMES))
    for t, cell_type in enumerate(CELL_TYPES):
        for e, op in enumerate(genotype.edge_ops(cell_type)):
            weights[t, e, NAMES.index(op or "zero")] = 1.0
    return SampledOpWeights(weights, weights > 0)


def test_supernet_with_one_hot_samples_equals_the_fixed_network():
    rng = np.random.RandomState(0)
    arch = {"op_logits": torch.tensor(rng.normal(0, 1, (4, 14, len(NAMES))), dtype=torch.float32)}
    g = discretize(arch, "scnas_2d")
    torch.manual_seed(0)
    supernet = SCNASNet(1, 3, None, spatial_dims=2, channel_mul=0.125).eval()
    fixed = SCNASNet(1, 3, g, channel_mul=0.125).eval()
    missing, _ = fixed.load_state_dict(supernet.state_dict(), strict=False)
    assert missing == []  # every fixed-network parameter has its namesake in the supernet
    x = torch.randn(2, 1, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, _one_hot_sample(g)), fixed(x), rtol=1e-4, atol=1e-5)


def test_pruning_removes_the_dead_op_modules_of_every_cell_of_the_type():
    rng = np.random.RandomState(2)
    g = discretize({"op_logits": torch.tensor(rng.normal(0, 1, (4, 14, len(NAMES))), dtype=torch.float32)},
                   "scnas_2d")
    torch.manual_seed(0)
    net = SCNASNet(1, 3, None, spatial_dims=2, channel_mul=0.125).eval()
    x = torch.randn(1, 1, 24, 16)
    sample = _one_hot_sample(g)
    with torch.no_grad():
        before = net(x, sample)
    alive = sample.active | torch.tensor([n == "skip" for n in NAMES])  # the sampled op and skip stay
    params = sum(p.numel() for p in net.parameters())
    cells_of = {t: sum(1 for p in net.plan if p[0] == t) for t in CELL_TYPES}  # the inter-cell is encoder-normal
    expected = sum(cells_of[t] * int((~alive[i]).sum()) for i, t in enumerate(CELL_TYPES))
    assert net.remove_ops(alive) == expected
    for (cell_type, *_), cell in zip(net.plan, net.cells):
        for e, op in enumerate(cell.edge_ops):
            assert set(op.ops) == {NAMES[n] for n in torch.nonzero(alive[CELL_TYPES.index(cell_type), e]).flatten()}
    assert sum(p.numel() for p in net.parameters()) < params
    with torch.no_grad():  # the ops that ran are untouched
        torch.testing.assert_close(net(x, sample), before)
    with pytest.raises(ValueError, match="fixed network"):
        SCNASNet(1, 3, g, channel_mul=0.125).remove_ops(alive)


def test_fixed_network_holds_only_used_parameters_and_gives_nnunets_outputs():
    rng = np.random.RandomState(1)
    g = discretize({"op_logits": torch.tensor(rng.normal(0, 1, (4, 14, len(NAMES))))}, "scnas_3d")
    for row in g.cells["encoder_normal"]:  # no edge reads input s0: its preparation must not be built
        row[0], row[1] = None, row[1] or "skip"
    strides = [[1] * 3] + [[2] * 3] * 4
    net = SCNASNet(1, 2, g.to_dict(), channel_mul=0.125, strides=strides, deep_supervision=True)
    outs = net(torch.randn(1, 1, 16, 24, 16))
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 24, 16), (8, 12, 8), (4, 6, 4), (2, 3, 2)]
    sum(o.sum() for o in outs).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    with pytest.raises(ValueError, match=r"divisible by .*\[8, 8, 8\]"):
        net(torch.randn(1, 1, 12, 16, 16))


def test_discretisation_zero_disconnects_and_no_node_is_left_without_input():
    z = NAMES.index("zero")
    probs = np.full((5, len(NAMES)), 0.01)
    probs[:, z] = 0.9  # every edge prefers zero
    probs[3, NAMES.index("skip")] = 0.5  # node 1's best non-zero option is edge 3 (s1 -> node 1): skip
    probs[0, NAMES.index("avg_pool_3")] = 0.3  # node 0's: edge 0 (s0 -> node 0): avg_pool_3
    ops = argmax_cell(probs, NAMES, num_nodes=2)
    assert ops == ["avg_pool_3", None, None, "skip", None]
    probs[4, NAMES.index("conv_3x3")] = 0.95  # edge 4 (node 0 -> node 1) now beats zero
    assert argmax_cell(probs, NAMES, num_nodes=2) == ["avg_pool_3", None, None, None, "conv_3x3"]


def test_genotype_round_trips_and_bad_genotypes_get_one_clear_error(tmp_path):
    rng = np.random.RandomState(2)
    g = discretize({"op_logits": torch.tensor(rng.normal(0, 1, (4, 14, len(NAMES))))}, "scnas_2d",
                   provenance={"method": "scnas"})
    g.save(str(tmp_path / "g.json"))
    back = CellGenotype.load(str(tmp_path / "g.json"))
    assert back == g and back.spatial_dims == 2 and back.cell_types == list(CELL_TYPES)
    d = g.to_dict()
    d["reduction"][0][0] = "conv_7x7"
    with pytest.raises(GenotypeError, match="unknown operation 'conv_7x7'"):
        genotype_from_dict(d)
    d = g.to_dict()
    d["cell_types"] = ["encoder_normal"]
    with pytest.raises(GenotypeError, match="unknown keys .'decoder_normal', 'expansion', 'reduction'."):
        SCNASNet(1, 2, d)  # rows of cell types the genotype does not list
    for t in ("decoder_normal", "expansion", "reduction"):
        d.pop(t)
    with pytest.raises(GenotypeError, match="do not match the network"):
        SCNASNet(1, 2, d)


def test_jaccard_distance_on_a_hand_computed_case():
    from nnunet_nas.config import SCNASSearchConfig
    from nnunet_nas.nnunet.losses import SoftJaccardLoss
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 for both classes everywhere
    target = torch.tensor([[[[1, 1], [0, 0]]]])
    # foreground: I = 0.5 * 2 = 1, U = 4 * 0.5 + 2 - 1 = 3 -> J = 1/3, loss = 2/3
    assert float(SoftJaccardLoss(smooth=0.0)(logits, target)) == pytest.approx(2 / 3)
    perfect = torch.stack([1 - target[:, 0], target[:, 0]], 1).float() * 50
    assert float(SoftJaccardLoss(smooth=0.0)(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert SCNASSearchConfig(loss="jaccard").loss == "jaccard"
    with pytest.raises(ValueError, match="loss='dice' must be one of"):
        SCNASSearchConfig(loss="dice").validate()
