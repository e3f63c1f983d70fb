"""Tests for nnunet_nas.discretize.grid_path (DiNTS topology-guaranteed discretisation, Eq. 3-4).

Includes a brute-force optimality check, an independent loop-based DP, and oracle tests against MONAI 1.6.1's
Dijkstra ``TopologySearch.decode`` (bit-identical output, exact ties included).
"""

import itertools
import time
from functools import lru_cache

import numpy as np
import pytest
import torch

from nnunet_nas.arch.grid_probs import discretisation_gap
from nnunet_nas.discretize import grid_path as gpath
from nnunet_nas.discretize.grid_path import decode, decode_arrays, decode_grid_codes, monai_pattern_probs, path_costs
from nnunet_nas.spaces.grid_topology import grid_topology


def _random_logits(num_blocks, num_depths, seed, scale=2.0, num_ops=5):
    g = torch.Generator().manual_seed(seed)
    num_edges = 3 * num_depths - 2
    return (
        torch.randn(num_blocks, num_edges, generator=g) * scale,
        torch.randn(num_blocks, num_edges, num_ops, generator=g) * scale,
    )


def _node_sets(num_depths):
    """(in, out) node bitmask per pattern, recomputed from the edge lists (independent of the DP tables)."""
    topo = grid_topology(num_depths)
    pats = topo.patterns.astype(bool)
    in_mask = np.array([sum({1 << int(topo.edge_in[e]) for e in np.nonzero(r)[0]}) for r in pats])
    out_mask = np.array([sum({1 << int(topo.edge_out[e]) for e in np.nonzero(r)[0]}) for r in pats])
    return in_mask, out_mask


def _assert_feasible(result, num_depths):
    topo = grid_topology(num_depths)
    arch_a = result.arch_code_a.astype(bool)
    assert arch_a.any(axis=1).all(), "every block must keep at least one edge"
    for b in range(arch_a.shape[0]):
        reads = np.zeros(num_depths, dtype=np.int64)
        writes = np.zeros(num_depths, dtype=np.int64)
        reads[topo.edge_in[arch_a[b]]] = 1
        writes[topo.edge_out[arch_a[b]]] = 1
        np.testing.assert_array_equal(reads, result.node_a[b], err_msg=f"block {b} reads != previous outputs")
        np.testing.assert_array_equal(writes, result.node_a[b + 1], err_msg=f"block {b} outputs != node_a row")


def _reference_cost(cost, num_depths):
    """Plain-Python DP over node states (no vectorisation), optimal total cost only."""
    in_mask, out_mask = _node_sets(num_depths)
    best = {}
    for j, c in enumerate(cost[0]):
        best[out_mask[j]] = min(best.get(out_mask[j], np.inf), c)
    for b in range(1, cost.shape[0]):
        new = {}
        for j, c in enumerate(cost[b]):
            if in_mask[j] in best:
                v = best[in_mask[j]] + c
                new[out_mask[j]] = min(new.get(out_mask[j], np.inf), v)
        best = new
    return min(best.values())


# ------------------------------------------------------------------------------------------ hand-computed


def test_hand_case_d2_infeasible_argmax_is_repaired():
    # edges (D=2): e0 0->0, e1 1->0, e2 0->1, e3 1->1
    # block 0 clearly wants {e2} (outputs {1}); block 1's argmax {e0, e3} reads {0, 1} -> infeasible.
    # Cheapest repair: keep block 0, let block 1 read only level 1 via {e3} (log-weight 1 vs 3);
    # making block 0 also output level 0 would cost about 6 nats.
    edge = np.array([[-6.0, -6.0, 6.0, -6.0], [2.0, -6.0, -6.0, 1.0]])
    ops = np.zeros((2, 4, 5))
    ops[:, :, 3] = 1.0
    res = decode(edge, ops)
    np.testing.assert_array_equal(res.arch_code_a, [[0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(res.node_a, [[1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(res.arch_code_a_max, [[0, 0, 1, 0], [1, 0, 0, 1]])
    np.testing.assert_array_equal(res.arch_code_c, np.full((2, 4), 3))
    assert discretisation_gap(torch.tensor(edge), res.arch_code_a) == 1


def test_all_zero_logits_take_highest_pattern_on_ties():
    # every pattern of a block has eta = 1/15: all paths tie exactly; MONAI/scipy settle ties on the highest
    # index, i.e. the all-edges pattern 14, in every block
    res = decode(np.zeros((4, 4)), np.zeros((4, 4, 5)))
    np.testing.assert_array_equal(res.patterns, [14, 14, 14, 14])
    np.testing.assert_array_equal(res.node_a, np.ones((5, 2)))
    np.testing.assert_array_equal(res.arch_code_c, np.zeros((4, 4)))  # op ties: first op, as torch.argmax


def test_monai_layout_and_dtypes():
    edge, ops = _random_logits(5, 3, seed=1)
    node_a, arch_a, arch_c = decode_grid_codes(edge, ops)
    assert node_a.shape == (6, 3) and node_a.dtype == np.int64
    assert arch_a.shape == (5, 7) and arch_a.dtype == np.float64 and set(np.unique(arch_a)) <= {0.0, 1.0}
    assert arch_c.shape == (5, 7) and arch_c.dtype == np.int64
    np.testing.assert_array_equal(arch_c, ops.argmax(-1).numpy())
    four = decode_arrays(edge, ops)
    assert len(four) == 4 and four[3].shape == (5, 7) and four[3].dtype == np.int64
    # numpy float64, lists and grad-requiring tensors are accepted and give the same answer
    ref = decode(edge, ops)
    for e, o in [(edge.double().numpy(), ops.double().numpy()), (edge.tolist(), ops.tolist()),
                 (edge.clone().requires_grad_(True), ops.clone().requires_grad_(True))]:
        np.testing.assert_array_equal(decode(e, o).patterns, ref.patterns)


# --------------------------------------------------------------------------------------------- optimality


@pytest.mark.parametrize("num_depths,num_blocks", [(2, 3), (3, 2)])
def test_brute_force_optimal(num_depths, num_blocks):
    in_mask, out_mask = _node_sets(num_depths)
    m = in_mask.shape[0]
    seqs = np.array(list(itertools.product(range(m), repeat=num_blocks)))  # 3375 (D=2) / 16129 (D=3)
    feasible = np.ones(len(seqs), dtype=bool)
    for b in range(num_blocks - 1):
        feasible &= out_mask[seqs[:, b]] == in_mask[seqs[:, b + 1]]
    seqs = seqs[feasible]
    for seed in range(12):
        scale = 3.0 if seed % 2 else 1.0
        edge, ops = _random_logits(num_blocks, num_depths, seed=100 + seed, scale=scale)
        cost = path_costs(monai_pattern_probs(edge))
        totals = cost[np.arange(num_blocks)[None, :], seqs].sum(axis=1)
        res = decode(edge, ops)
        assert res.cost == pytest.approx(totals.min(), abs=1e-9)
        assert cost[np.arange(num_blocks), res.patterns].sum() == pytest.approx(totals.min(), abs=1e-9)
        # brute force by edge sets as well: the decoded chain is one of the feasible sequences
        assert (seqs == res.patterns).all(axis=1).any()


@pytest.mark.parametrize("num_depths,num_blocks", [(2, 1), (2, 7), (3, 12), (4, 12), (5, 12)])
def test_feasible_and_matches_reference_dp(num_depths, num_blocks):
    for seed in range(3 if num_depths < 5 else 1):
        edge, ops = _random_logits(num_blocks, num_depths, seed=seed, scale=(0.5, 2.0, 4.0)[seed])
        res = decode(edge, ops)
        _assert_feasible(res, num_depths)
        assert res.node_a.shape == (num_blocks + 1, num_depths)
        cost = path_costs(monai_pattern_probs(edge))
        assert res.cost == pytest.approx(_reference_cost(cost, num_depths), abs=1e-9)
        # if the per-block argmax chain is feasible, decoding must return it (it is then optimal)
        amax = res.arch_code_a_max.astype(bool)
        topo = grid_topology(num_depths)
        chain_ok = all(
            set(topo.edge_out[amax[b]]) == set(topo.edge_in[amax[b + 1]]) for b in range(num_blocks - 1)
        )
        if chain_ok:
            np.testing.assert_array_equal(res.arch_code_a, res.arch_code_a_max)


def test_d5_fast():
    edge, ops = _random_logits(12, 5, seed=7)
    decode(edge, ops)  # tables built once
    t0 = time.perf_counter()
    res = decode(edge, ops)
    elapsed = time.perf_counter() - t0
    _assert_feasible(res, 5)
    assert elapsed < 1.0, f"D=5, L=12 decode took {elapsed:.3f} s"  # ~1-10 ms; generous for loaded CI


def test_extreme_logits():
    # MONAI yields NaN/inf eta for a block with every edge logit < ~-17; we fall back to the exact value
    edge = np.full((3, 10), 2.0)
    edge[1] = -40.0
    edge[1, 4] = -30.0  # the single most likely pattern of block 1: edge 4 alone
    ops = np.zeros((3, 10, 5))
    eta = monai_pattern_probs(edge)
    assert np.isfinite(eta).all()
    np.testing.assert_allclose(eta.sum(1), 1.0, rtol=1e-5)
    res = decode(edge, ops)
    _assert_feasible(res, 4)
    assert np.isfinite(res.cost)
    res = decode(np.full((2, 7), 60.0), np.zeros((2, 7, 5)))  # saturated sigmoid: all-on everywhere
    np.testing.assert_array_equal(res.arch_code_a, np.ones((2, 7)))


def test_op_argmax_matches_torch_softmax_on_near_ties():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 10, 5, generator=g)
    x[:10, :, 3] = x[:10, :, 1]  # exact ties -> first index
    x[10:20, :, 4] = x[10:20, :, 0] + 1e-7 * x[10:20, :, 0].abs()  # within rounding
    x[20:30, :, 2] = x[20:30, :, 0] - 3e-6
    expected = torch.argmax(torch.softmax(x, dim=-1), dim=-1).numpy()
    np.testing.assert_array_equal(gpath._op_argmax(x), expected)
    np.testing.assert_array_equal(gpath._op_argmax(torch.zeros(2, 4, 1)), np.zeros((2, 4)))


def test_tables_cached():
    assert gpath._path_tables(4) is gpath._path_tables(4)


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "edge,ops,match",
    [
        (np.zeros((3, 5)), np.zeros((3, 5, 5)), "3D-2"),
        (np.zeros((3, 16)), np.zeros((3, 16, 5)), "3D-2"),  # D=6 is not supported
        (np.zeros(10), np.zeros((1, 10, 5)), r"shape \[num_blocks"),
        (np.zeros((0, 10)), np.zeros((0, 10, 5)), r"shape \[num_blocks"),
        (np.zeros((3, 10)), np.zeros((3, 10)), "op_logits must have shape"),
        (np.zeros((3, 10)), np.zeros((2, 10, 5)), "op_logits must have shape"),
        (np.zeros((3, 10)), np.zeros((3, 7, 5)), "op_logits must have shape"),
        (np.array([[0.0, np.nan, 0, 0]]), np.zeros((1, 4, 5)), "edge_logits contains NaN or infinite"),
        (np.array([[0.0, np.inf, 0, 0]]), np.zeros((1, 4, 5)), "edge_logits contains NaN or infinite"),
        (np.array([[0.0, 1e300, 0, 0]]), np.zeros((1, 4, 5)), "float32 range"),
        (np.zeros((1, 4)), np.full((1, 4, 5), np.nan), "op_logits contains NaN"),
        ([["a", "b", "c", "d"]], np.zeros((1, 4, 5)), "could not be converted"),
    ],
)
def test_bad_inputs(edge, ops, match):
    with pytest.raises(ValueError, match=match):
        decode_grid_codes(edge, ops)


# ------------------------------------------------------------------------------------------- MONAI oracle


@lru_cache(maxsize=None)
def _monai_space(num_depths, num_blocks):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.TopologySearch(channel_mul=0.1, num_blocks=num_blocks, num_depths=num_depths, use_downsample=True)


def _check_against_monai(space, edge, ops):
    with torch.no_grad():
        space.log_alpha_a.data = edge.clone()
        space.log_alpha_c.data = ops.clone()
    probs, _ = space.get_prob_a(child=True)
    np.testing.assert_array_equal(monai_pattern_probs(edge), probs.detach().numpy())  # bit-identical eta
    expected = space.decode()
    got = decode_arrays(edge, ops)
    for name, e, g in zip(("node_a", "arch_code_a", "arch_code_c", "arch_code_a_max"), expected, got):
        assert e.shape == g.shape and e.dtype == g.dtype, name
        np.testing.assert_array_equal(g, e, err_msg=name)


@pytest.mark.monai
@pytest.mark.parametrize("num_depths,num_blocks,draws", [(2, 6, 30), (3, 5, 14)])
def test_decode_matches_monai_random(num_depths, num_blocks, draws):
    space = _monai_space(num_depths, num_blocks)
    for seed in range(draws):
        edge, ops = _random_logits(num_blocks, num_depths, seed=1000 * num_depths + seed)
        _check_against_monai(space, edge, ops)


@pytest.mark.monai
@pytest.mark.parametrize("num_depths,num_blocks", [(2, 5), (3, 4)])
@pytest.mark.parametrize("kind", ["zeros", "integers", "constant_per_block"])
def test_decode_matches_monai_on_exact_ties(num_depths, num_blocks, kind):
    space = _monai_space(num_depths, num_blocks)
    num_edges = 3 * num_depths - 2
    g = torch.Generator().manual_seed(7)
    for _ in range(1 if kind == "zeros" else 4):
        if kind == "zeros":
            edge = torch.zeros(num_blocks, num_edges)
        elif kind == "integers":
            edge = torch.randint(-2, 3, (num_blocks, num_edges), generator=g).float()
        else:
            edge = (torch.randn(num_blocks, 1, generator=g) * 2).expand(num_blocks, num_edges).contiguous()
        ops = torch.randint(-1, 2, (num_blocks, num_edges, 5), generator=g).float()  # op ties too
        _check_against_monai(space, edge, ops)


@pytest.mark.monai
def test_decode_matches_monai_d4():
    # MONAI's D=4 decode takes ~20 s (string-keyed loop over 250k pattern pairs): a single draw
    space = _monai_space(4, 3)
    edge, ops = _random_logits(3, 4, seed=4242)
    _check_against_monai(space, edge, ops)
