"""Topology-guaranteed discretisation of the DiNTS grid (He et al., CVPR 2021, section 3.3.3, Eq. 3-4).

Picks one connection pattern per block so that the chain is feasible (block b+1 reads exactly the node set
that block b activates) and the total cost ``sum_b -log(eta[b, I(b)] + 1e-5)`` is minimal. MONAI builds a
dense ``(L*M + 2)^2`` graph and runs Dijkstra over it (~20 s and >1 GB at L=12, D=4; infeasible at D=5);
here the same optimum is a dynamic programme over node-activation states (bitmasks, at most 2^D - 1 = 31):

    best[0][j]   = cost[0, j]                                        (block 0 may read any stem subset)
    dist[b][j]   = cost[b, j] + min_{i: out(i) = in(j)} dist[b-1][i]
    answer       = argmin_j dist[L-1][j]                             (the last block may end on any set)

Each step is one vectorised segment-min over the patterns grouped by output state, so a decode is
O(L * M) numpy work: about 0.3 ms at L=12, D=4 and about 1 ms at D=5 on a 2-core CPU (MONAI: ~20 s at
D=4; its dense matrix would need 77 GB at D=5).

Bit-for-bit MONAI compatibility (``TopologySearch.decode``, monai 1.6.1 with scipy's Dijkstra):

* eta is computed exactly as MONAI does it (float32 torch: product over edges of p or 1-p, divided by
  ``1 - prod(1-p)``), and the per-pattern cost exactly as MONAI's adjacency entries:
  ``-np.log(eta + 1e-5) + 0.001`` evaluated **in float32** (numpy keeps the float32 dtype of ``eta``), then
  widened to float64. The constant 0.001 per block does not change the argmin (every path has L blocks) but
  it changes float rounding, so it is kept to reproduce MONAI's near-ties.
* Path costs are accumulated in float64 in the same order as Dijkstra (``dist(prev) + cost``), so the
  distances are identical to scipy's. Dijkstra keeps the first predecessor that reaches a node with the
  smallest distance (strict ``>`` relaxation); since nodes are settled in order of distance, a predecessor
  with a strictly smaller distance always wins, even when ``dist + cost`` rounds to the same value. The DP
  does the same by taking the minimum over the predecessors' distances, not over the rounded sums.
* Exact ties (feasible predecessors, or final patterns, with bitwise-equal float64 distances) are resolved in
  scipy's Dijkstra by the order in which its Fibonacci heap settles equal keys; scipy documents that order
  as unspecified. With scipy 1.17 equal keys come out highest graph index first (e.g. a sink linked from
  k equal-distance nodes gets the last of them as predecessor), and MONAI's graph numbers the patterns of a
  block in ascending order. So the DP gives every exact tie to the **highest pattern index**. This rule
  reproduced MONAI 1.6.1 + scipy 1.17.1 on every tie-heavy case we tried (all-zero logits, integer logits
  in {-2..2}, one constant per block; D = 2, 3, 4) and on all random draws. Exact ties are common only
  for such degenerate logits: eta is rounded to float32 and the cost ``-log(eta + 1e-5) + 0.001`` is
  evaluated in float32, so equal-size patterns of a block with equal logits tie exactly, and every pattern
  with eta below about 4.5e-13 costs exactly ``-log(float32(1e-5)) + 0.001``.
* If MONAI's float32 eta is not finite for a block (all edge logits of the block below about -17, where
  ``1 - prod(1 - p)`` rounds to 0 and MONAI produces inf/NaN), that block's eta is replaced by the exact
  value computed in log space (float64 softmax, rounded to float32); MONAI's own decode is undefined there.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import torch

from nnunet_nas.arch.grid_probs import num_depths_from_edges
from nnunet_nas.spaces.grid_topology import grid_topology

__all__ = ["GridDecoding", "decode", "decode_arrays", "decode_grid_codes", "monai_pattern_probs", "path_costs"]

COST_EPS = 1e-5  # MONAI: -log(eta + 1e-5)
COST_SHIFT = 0.001  # MONAI: + 0.001 per graph edge (keeps all Dijkstra weights positive)


@dataclass(frozen=True)
class _PathTables:
    num_depths: int
    patterns: np.ndarray  # int64 [M, E]
    pattern_in: np.ndarray  # int64 [M] bitmask of source levels
    pattern_out: np.ndarray  # int64 [M] bitmask of target levels
    order_by_out: np.ndarray  # int64 [M]: patterns sorted by output bitmask, ascending index within a state
    segment_starts: np.ndarray  # int64 [2^D - 1]: start of state a (bitmask a = 1..) in order_by_out
    segment_sizes: np.ndarray  # int64 [2^D - 1]
    mask_bits: np.ndarray  # int64 [2^D, D]: bitmask -> 0/1 node vector


@lru_cache(maxsize=None)
def _path_tables(num_depths: int) -> _PathTables:
    topo = grid_topology(num_depths)
    num_states = topo.num_node_patterns
    order = np.argsort(topo.pattern_out_nodes, kind="stable").astype(np.int64)
    sizes = np.bincount(topo.pattern_out_nodes, minlength=num_states + 1)[1:].astype(np.int64)
    # every non-empty node set is the output set of some pattern (each level has a same-resolution edge)
    assert (sizes > 0).all()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    masks = np.arange(2 ** num_depths, dtype=np.int64)
    mask_bits = (masks[:, None] >> np.arange(num_depths, dtype=np.int64)[None, :]) & 1
    tables = _PathTables(
        num_depths=num_depths,
        patterns=topo.patterns.astype(np.int64),
        pattern_in=np.array(topo.pattern_in_nodes, dtype=np.int64),
        pattern_out=np.array(topo.pattern_out_nodes, dtype=np.int64),
        order_by_out=order,
        segment_starts=starts,
        segment_sizes=sizes,
        mask_bits=mask_bits,
    )
    for a in (tables.patterns, tables.pattern_in, tables.pattern_out, order, starts, sizes, mask_bits):
        a.setflags(write=False)
    return tables


@dataclass(frozen=True)
class GridDecoding:
    """Result of :func:`decode` (MONAI layouts and dtypes).

    Attributes:
        node_a: int64 ``[L+1, D]``; row 0 = input nodes of block 0, row b+1 = output nodes of block b.
        arch_code_a: float64 ``[L, E]`` 0/1, the selected edges (C_top).
        arch_code_c: int64 ``[L, E]``, argmax op per edge (all edges, selected or not).
        arch_code_a_max: int64 ``[L, E]`` 0/1, each block's argmax-eta pattern (C_max, may be infeasible).
        patterns: int64 ``[L]``, the selected pattern index per block (MONAI's pattern order).
        cost: float, ``sum_b (-log(eta[b, I(b)] + 1e-5) + 0.001)`` of the selected path (float32 terms as MONAI).
    """

    node_a: np.ndarray
    arch_code_a: np.ndarray
    arch_code_c: np.ndarray
    arch_code_a_max: np.ndarray
    patterns: np.ndarray
    cost: float


# ----------------------------------------------------------------------------------------------- validation


def _to_float32_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device="cpu")
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8)):
            raise ValueError(f"DiNTS decode: {name} must be a real-valued array, got dtype {t.dtype}.")
        return t.to(torch.float32)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, rejected below
            arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"DiNTS decode: {name} could not be converted to a float array ({exc}). Pass a numpy array or "
            f"torch tensor of logits."
        ) from None
    return torch.from_numpy(np.ascontiguousarray(arr))


def _validate(edge_logits, op_logits) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """float32 CPU tensors and D; ``op_logits=None`` validates the edge logits only."""
    edge = _to_float32_tensor(edge_logits, "edge_logits")
    ops = None if op_logits is None else _to_float32_tensor(op_logits, "op_logits")
    if edge.dim() != 2 or edge.shape[0] < 1:
        raise ValueError(
            f"DiNTS decode: edge_logits must have shape [num_blocks, 3*num_depths-2] (MONAI log_alpha_a), got "
            f"{tuple(edge.shape)}. Pass TopologySearch.log_alpha_a (or the equivalent [L, E] tensor)."
        )
    num_depths = num_depths_from_edges(int(edge.shape[1]))
    if ops is not None and (ops.dim() != 3 or tuple(ops.shape[:2]) != tuple(edge.shape) or ops.shape[2] < 1):
        raise ValueError(
            f"DiNTS decode: op_logits must have shape [num_blocks, num_edges, num_ops] = "
            f"[{edge.shape[0]}, {edge.shape[1]}, N] to match edge_logits {tuple(edge.shape)}, got "
            f"{tuple(ops.shape)}. Pass TopologySearch.log_alpha_c (one row of op logits per edge)."
        )
    for name, t in (("edge_logits", edge), ("op_logits", ops)):
        finite = None if t is None else np.isfinite(t.numpy())
        if finite is not None and not finite.all():
            bad = [int(i) for i in np.argwhere(~finite)[0]]
            raise ValueError(
                f"DiNTS decode: {name} contains NaN or infinite values (first at index {bad}; values beyond the "
                f"float32 range count as infinite). The search diverged or the checkpoint is corrupt: decode "
                f"an earlier checkpoint or fix the source of the non-finite logits."
            )
    return edge, ops, num_depths


# ------------------------------------------------------------------------------------------- probabilities


def _monai_eta(edge32: torch.Tensor, tables: _PathTables) -> np.ndarray:
    """eta ``[L, M]`` float32 with MONAI's arithmetic, non-finite rows repaired (see the module docstring).

    MONAI multiplies, per pattern, the E factors ``p_e`` (edge on) or ``1 - p_e`` (edge off) with
    ``torch.prod`` over the last dim, which for these sizes is a left-to-right product (edge 0 first). Since
    pattern ``j`` is the binary code of ``j + 1`` with edge 0 as the most significant bit, all 2^E products
    share prefixes and are built by doubling: after step k the row holds the products over edges 0..k for
    every prefix code. Same float32 multiplications in the same order, hence bit-identical, in O(2^E) work.
    Entry 0 (all edges off) is MONAI's ``prod(1 - p)``, used for the normaliser ``1 - prod(1 - p)``.
    """
    p_t = torch.sigmoid(edge32)
    p = p_t.numpy()
    q = (1 - p_t).numpy()
    prods = np.stack([q[:, 0], p[:, 0]], axis=1)
    for k in range(1, p.shape[1]):
        factors = np.stack([q[:, k], p[:, k]], axis=1)
        prods = (prods[:, :, None] * factors[:, None, :]).reshape(p.shape[0], -1)
    norm = np.float32(1) - prods[:, :1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        eta = prods[:, 1:] / norm
    bad_rows = ~np.isfinite(eta).all(axis=1)
    if bad_rows.any():
        logits = edge32.numpy()[bad_rows].astype(np.float64) @ tables.patterns.T.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exact = np.exp(logits)
        eta[bad_rows] = (exact / exact.sum(axis=1, keepdims=True)).astype(np.float32)
    return eta


def monai_pattern_probs(edge_logits) -> np.ndarray:
    """eta ``[L, M]`` float32, bit-identical to MONAI's ``get_prob_a(child=True)[0]`` where that is finite."""
    edge, _, num_depths = _validate(edge_logits, None)
    return _monai_eta(edge, _path_tables(num_depths))


def _op_argmax(ops32: torch.Tensor) -> np.ndarray:
    """``argmax(softmax(op_logits))`` per edge exactly as MONAI computes it (torch, first index on ties).

    Softmax preserves the order of logits that differ by more than float32 rounding, so rows whose two largest
    logits are more than 1e-4 apart take the plain argmax; only near-tied rows (where rounding inside softmax
    may merge the top values and the first index then wins) go through ``torch.softmax``. Saves torch's
    intra-op thread start-up, which costs several ms per call on a loaded 2-core machine.
    """
    x = ops32.numpy()
    arg = np.argmax(x, axis=-1)
    if x.shape[-1] > 1:
        top2 = np.partition(x, -2, axis=-1)[..., -2:].astype(np.float64)
        close = top2[..., 1] - top2[..., 0] <= 1e-4
        if close.any():
            arg[close] = torch.argmax(torch.softmax(ops32[torch.from_numpy(close)], dim=-1), dim=-1).numpy()
    return arg.astype(np.int64)


def path_costs(eta32: np.ndarray) -> np.ndarray:
    """Per-pattern costs ``-log(eta + 1e-5) + 0.001`` evaluated in float32 like MONAI, returned as float64."""
    eta32 = np.asarray(eta32, dtype=np.float32)
    return (-np.log(eta32 + np.float32(COST_EPS)) + np.float32(COST_SHIFT)).astype(np.float64)


# --------------------------------------------------------------------------------------------------- search


def _last_min_index(values: np.ndarray) -> int:
    """Index of the minimum; the highest index among bitwise-equal minima (MONAI/scipy tie order)."""
    return int(values.shape[0] - 1 - np.argmin(values[::-1]))


def _state_min(dist: np.ndarray, tables: _PathTables) -> Tuple[np.ndarray, np.ndarray]:
    """Per output state a: ``min_{j: out(j) = a} dist[j]`` and the chosen j; both indexed by bitmask (0 unused).

    Exact ties go to the highest pattern index (see the module docstring).
    """
    order, starts = tables.order_by_out, tables.segment_starts
    d_sorted = dist[order]
    mins = np.minimum.reduceat(d_sorted, starts)
    reached = np.repeat(mins, tables.segment_sizes)
    args = np.maximum.reduceat(np.where(d_sorted == reached, order, -1), starts)
    best = np.empty(mins.shape[0] + 1, dtype=np.float64)
    best[0] = np.inf  # bitmask 0 (no active node) is never an input set
    best[1:] = mins
    best_arg = np.empty(mins.shape[0] + 1, dtype=np.int64)
    best_arg[0] = -1
    best_arg[1:] = args
    return best, best_arg


def _shortest_path(cost: np.ndarray, tables: _PathTables) -> Tuple[np.ndarray, float]:
    """Optimal feasible pattern sequence ``[L]`` for float64 costs ``[L, M]`` and its total cost."""
    num_blocks = cost.shape[0]
    pattern_in = tables.pattern_in
    pred = np.zeros(cost.shape, dtype=np.int64)
    dist = cost[0].copy()
    for b in range(1, num_blocks):
        best, best_arg = _state_min(dist, tables)
        dist = best[pattern_in] + cost[b]
        pred[b] = best_arg[pattern_in]
    last = _last_min_index(dist)
    path = np.empty(num_blocks, dtype=np.int64)
    path[-1] = last
    for b in range(num_blocks - 1, 0, -1):
        path[b - 1] = pred[b, path[b]]
    return path, float(dist[last])


def decode(edge_logits, op_logits) -> GridDecoding:
    """Topology-guaranteed discretisation (Eq. 3-4) of MONAI-layout logits; see :class:`GridDecoding`.

    Args:
        edge_logits: ``[L, E]`` (MONAI ``log_alpha_a``), numpy or torch, ``E = 3D - 2`` with D in 2..5.
        op_logits: ``[L, E, N]`` (MONAI ``log_alpha_c``).

    Both are evaluated in float32, as MONAI's parameters are. Raises ValueError on bad shapes or non-finite
    values.
    """
    edge, ops, num_depths = _validate(edge_logits, op_logits)
    tables = _path_tables(num_depths)
    eta = _monai_eta(edge, tables)
    arch_code_a_max = tables.patterns[np.argmax(eta, axis=1)]  # first maximum, as torch.argmax
    arch_code_c = _op_argmax(ops)
    path, cost = _shortest_path(path_costs(eta), tables)
    arch_code_a = tables.patterns[path].astype(np.float64)
    node_masks = np.concatenate([tables.pattern_in[path[:1]], tables.pattern_out[path]])
    node_a = tables.mask_bits[node_masks].astype(np.int64)
    return GridDecoding(node_a, arch_code_a, arch_code_c, arch_code_a_max, path, cost)


def decode_arrays(edge_logits, op_logits) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for MONAI's ``TopologySearch.decode()``: ``(node_a, arch_code_a, arch_code_c, arch_code_a_max)``."""
    d = decode(edge_logits, op_logits)
    return d.node_a, d.arch_code_a, d.arch_code_c, d.arch_code_a_max


def decode_grid_codes(edge_logits, op_logits) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(node_a, arch_code_a, arch_code_c)`` in MONAI layout; the format ``TopologyInstance``/``DiNTS`` take.

    node_a: int64 ``[L+1, D]``; arch_code_a: float64 ``[L, E]`` 0/1; arch_code_c: int64 ``[L, E]``.
    """
    d = decode(edge_logits, op_logits)
    return d.node_a, d.arch_code_a, d.arch_code_c
