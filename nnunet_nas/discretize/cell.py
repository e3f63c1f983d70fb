"""Cell discretisers (DARTS-style cells: SCNAS's four cell types, IAC's implanted cell): from one cell's op
probabilities ``[E, N]`` (pruned ops at 0) to its ops in edge order (:func:`nnunet_nas.spaces.cell.cell_edges`), an op
name or ``None`` (no edge). Every node keeps at least one incoming edge."""

from typing import List, Optional, Sequence

import numpy as np

from nnunet_nas.ops.catalog import get_op_set
from nnunet_nas.spaces.cell import cell_edges


def without_zero(probs: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``probs`` with the ``zero`` op (no edge) set to -1, so that an argmax picks the best op that computes."""
    out = np.array(probs, dtype=np.float64, copy=True)
    if "zero" in names:
        out[..., list(names).index("zero")] = -1.0
    return out


def _incoming(num_nodes: int, node: int) -> List[int]:
    return [e for e, (_, dst) in enumerate(cell_edges(num_nodes)) if dst == node]


def argmax_cell(probs: np.ndarray, names: Sequence[str], num_nodes: int) -> List[Optional[str]]:
    """SCNAS's rule [ours; the paper: "the final op is chosen per edge", zero disconnects]: each edge takes its most
    probable op; where that is ``zero`` the edge is dropped (``None``). A node left with no incoming edge keeps the
    one incoming edge whose best non-zero op is most probable, with that op, so every node computes something."""
    names = list(names)
    nonzero = without_zero(probs, names)
    ops = [names[int(np.argmax(p))] for p in probs]
    ops = [None if op == "zero" else op for op in ops]
    for node in range(num_nodes):
        incoming = _incoming(num_nodes, node)
        if all(ops[e] is None for e in incoming):
            best = max(incoming, key=lambda e: nonzero[e].max())
            ops[best] = names[int(np.argmax(nonzero[best]))]
    return ops


def edge_scores(probs: np.ndarray, edge_weights: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """PC-DARTS's edge score ``max_{o != zero} softmax(alpha)_o * softmax_node(beta)`` per edge, ``[E]``."""
    return without_zero(probs, names).max(axis=1) * edge_weights


def top_edges_cell(probs: np.ndarray, edge_weights: np.ndarray, op_set: str, num_nodes: int,
                   edges_per_node: int = 2, max_parameter_free_ops: Optional[int] = 2) -> List[Optional[str]]:
    """PC-DARTS's rule (IAC): each node keeps its ``edges_per_node`` incoming edges of highest :func:`edge_scores`,
    each with its most probable op other than ``zero``; the rest are dropped (``None``), and so is an edge pruned down
    to ``zero`` alone (unless its node has nothing else). [ours, P-DARTS's cap] Where more than
    ``max_parameter_free_ops`` kept edges carry a parameter-free op (skip, pooling), the weakest of them (lowest op
    probability) take their most probable op with parameters instead, as far as the pruned set allows."""
    spec = get_op_set(op_set)
    names = [o.name for o in spec.ops]
    free = np.array([o.parameter_free for o in spec.ops])
    scores = edge_scores(probs, edge_weights, names)
    nonzero = without_zero(probs, names)
    best: List[Optional[int]] = [None] * len(probs)
    for node in range(num_nodes):
        incoming = sorted(_incoming(num_nodes, node), key=lambda e: -scores[e])
        # an edge pruned down to "zero" has nothing to offer (score 0); a node keeps one edge in any case
        for e in [e for e in incoming if scores[e] > 0][:edges_per_node] or incoming[:1]:
            best[e] = int(np.argmax(nonzero[e]))
    if max_parameter_free_ops is not None:
        free_edges = sorted((e for e, o in enumerate(best) if o is not None and free[o]),
                            key=lambda e: probs[e, best[e]])
        excess = len(free_edges) - max_parameter_free_ops
        for e in free_edges:
            if excess <= 0:
                break
            with_params = np.where(free | (probs[e] <= 0), -1.0, probs[e])
            if with_params.max() > 0:  # an op with parameters is still alive on this edge
                best[e] = int(np.argmax(with_params))
                excess -= 1
    return [None if o is None else names[o] for o in best]
