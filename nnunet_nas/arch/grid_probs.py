"""Probabilities and regularisers of the DiNTS topology parameters (He et al., CVPR 2021, Eq. 2, 5-7).

All functions are pure, differentiable torch code, vectorised with index tensors derived from
``grid_topology(D)`` (no Python loop over connection patterns or node-activation patterns). The layout is
MONAI's (``TopologySearch``): edge logits ``[L, E]`` (``log_alpha_a``), op logits ``[L, E, N]``
(``log_alpha_c``), pattern probabilities ``[L, M]`` with ``M = 2^E - 1`` in MONAI's pattern order.

Relation to MONAI 1.6.1 (``monai.networks.nets.dints.TopologySearch``):

* ``edge_marginals``  == ``get_prob_a()[1]`` (``arch_code_prob_a``),
* ``pattern_probs``   == ``get_prob_a(child=True)[0]`` (``probs_a``, paper Eq. 2),
* ``entropy_loss_ops`` / ``entropy_loss_patterns`` == the tutorial's ``ent_c`` / ``ent_a`` (paper Eq. 5, with
  MONAI's ``+1e-5`` inside the log of ``ent_a``),
* ``topology_loss``   == ``get_topology_entropy(probs_a)`` (paper Eq. 6-7, ``eps = 1e-5`` as MONAI).

Unlike MONAI, ``pattern_probs`` and ``edge_marginals`` stay finite for strongly negative logits (MONAI's
``1 - prod(1 - p)`` underflows to 0 in float32 once every edge logit of a block is below about -17).
"""

from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F

from nnunet_nas.spaces.grid_topology import MAX_DEPTHS, MIN_DEPTHS, grid_topology

EPS = 1e-5  # MONAI's epsilon inside the logs of ent_a and of the topology loss

__all__ = [
    "EPS",
    "num_depths_from_edges",
    "edge_probs",
    "edge_marginals",
    "pattern_logits",
    "pattern_probs",
    "entropy_loss_ops",
    "entropy_loss_patterns",
    "node_pattern_probs",
    "topology_loss",
    "argmax_patterns",
    "discretisation_gap",
]


def num_depths_from_edges(num_edges: int) -> int:
    """``D`` such that ``E = 3D - 2``; ValueError if ``num_edges`` is not a DiNTS edge count for D in 2..5."""
    valid = {3 * d - 2: d for d in range(MIN_DEPTHS, MAX_DEPTHS + 1)}
    if num_edges not in valid:
        raise ValueError(
            f"DiNTS grid: {num_edges} edges per block is not 3D-2 for a supported depth D in "
            f"{MIN_DEPTHS}..{MAX_DEPTHS} (valid edge counts: {sorted(valid)}). Pass edge logits of shape "
            f"[num_blocks, 3*num_depths-2] in MONAI's edge order."
        )
    return valid[num_edges]


@lru_cache(maxsize=None)
def _torch_tables(num_depths: int, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    """Torch copies of the grid tables for one (D, device, dtype), built once.

    Returns ``(patterns [M, E], out_onehot [M, 2^D - 1], in_onehot [M, 2^D - 1], pattern_in [M],
    pattern_out [M])``: ``out_onehot[j, a - 1] = 1`` iff pattern j activates exactly the node set ``a`` (its
    output nodes), ``in_onehot[j, a - 1] = 1`` iff pattern j reads exactly the node set ``a`` (its input nodes).
    """
    topo = grid_topology(num_depths)
    num_node_patterns = topo.num_node_patterns
    # torch.tensor copies (the numpy tables are read-only)
    patterns = torch.tensor(topo.patterns, dtype=dtype, device=device)
    p_in = torch.tensor(topo.pattern_in_nodes, dtype=torch.long, device=device)
    p_out = torch.tensor(topo.pattern_out_nodes, dtype=torch.long, device=device)
    out_onehot = F.one_hot(p_out - 1, num_node_patterns).to(dtype)
    in_onehot = F.one_hot(p_in - 1, num_node_patterns).to(dtype)
    return patterns, out_onehot, in_onehot, p_in, p_out


def _tables_for(edge_logits: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    if edge_logits.dim() != 2:
        raise ValueError(
            f"DiNTS grid: edge logits must have shape [num_blocks, num_edges], got {tuple(edge_logits.shape)}."
        )
    num_depths = num_depths_from_edges(edge_logits.shape[-1])
    dtype = edge_logits.dtype if edge_logits.is_floating_point() else torch.get_default_dtype()
    return _torch_tables(num_depths, edge_logits.device, dtype)


def _tables_for_patterns(eta: torch.Tensor, num_depths: int) -> Tuple[torch.Tensor, ...]:
    tables = _torch_tables(num_depths, eta.device, eta.dtype)
    if eta.dim() != 2 or eta.shape[-1] != tables[0].shape[0]:
        raise ValueError(
            f"DiNTS grid: pattern probabilities for D={num_depths} must have shape [num_blocks, "
            f"{tables[0].shape[0]}] (2^(3D-2)-1 patterns), got {tuple(eta.shape)}."
        )
    return tables


def edge_probs(edge_logits: torch.Tensor) -> torch.Tensor:
    """Edge probabilities ``p = sigmoid(edge_logits)``, ``[L, E]``."""
    return torch.sigmoid(edge_logits)


def edge_marginals(edge_logits: torch.Tensor) -> torch.Tensor:
    """``p / (1 - prod_e(1 - p))`` per block, ``[L, E]`` (MONAI's ``arch_code_prob_a``).

    The probability that an edge is on given that its block's pattern is non-empty, i.e. the marginal of Eq. 2:
    ``sum_j eta_j cp_j(e)``. Used to weight supernet edges. The normaliser is computed as
    ``-expm1(sum_e logsigmoid(-x_e))``, which stays accurate when every edge of a block is nearly off.
    """
    log_all_off = F.logsigmoid(-edge_logits).sum(dim=-1, keepdim=True)
    return torch.sigmoid(edge_logits) / -torch.expm1(log_all_off)


def pattern_logits(edge_logits: torch.Tensor) -> torch.Tensor:
    """Unnormalised log pattern probabilities ``cp_j . x`` (``[L, M]``).

    ``prod_e p_e^c (1-p_e)^(1-c) = exp(cp_j . x) * prod_e (1 - p_e)``: the second factor is common to all
    patterns of a block, so Eq. 2 is ``softmax_j(cp_j . x)`` over the M non-empty patterns.
    """
    patterns = _tables_for(edge_logits)[0]
    return edge_logits @ patterns.transpose(0, 1)


def pattern_probs(edge_logits: torch.Tensor) -> torch.Tensor:
    """Connection-pattern probabilities eta (paper Eq. 2), ``[L, M]``, rows sum to 1.

    Equal to MONAI's ``get_prob_a(child=True)[0]`` (``probs_a``) but computed in log space (one matmul with the
    pattern matrix and a softmax), so it is exact to rounding and never produces 0/0.
    """
    return torch.softmax(pattern_logits(edge_logits), dim=-1)


def entropy_loss_ops(op_logits: torch.Tensor) -> torch.Tensor:
    """L_alpha (Eq. 5): ``-mean_{L,E,N}(softmax(a) * log_softmax(a))`` (the tutorial's ``ent_c``)."""
    log_w = torch.log_softmax(op_logits, dim=-1)
    return -(log_w.exp() * log_w).mean()


def entropy_loss_patterns(eta: torch.Tensor) -> torch.Tensor:
    """L_eta (Eq. 5) as MONAI computes ``ent_a``: ``-mean_{L,M}(eta * log(eta + 1e-5))``."""
    return -(eta * torch.log(eta + EPS)).mean()


def node_pattern_probs(eta: torch.Tensor, num_depths: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-block node-activation probabilities, both ``[L, 2^D - 1]`` (column ``a - 1`` for bitmask ``a``).

    Returns ``(p_out, p_in)``: ``p_out[b, a-1]`` is the probability that block b's pattern activates exactly
    the node set a (sum of eta over F_in(a) in the paper's notation), ``p_in[b, a-1]`` the probability that
    block b's pattern reads exactly the node set a (sum over F_out(a)).
    """
    _, out_onehot, in_onehot, _, _ = _tables_for_patterns(eta, num_depths)
    return eta @ out_onehot, eta @ in_onehot


def topology_loss(eta: torch.Tensor, num_depths: int) -> torch.Tensor:
    """L_tp (paper Eq. 6-7, MONAI's ``get_topology_entropy``), a scalar.

    For consecutive blocks i, i+1 and every node-activation pattern a: ``p_in`` = P(block i outputs exactly a),
    ``p_out`` = P(block i+1 reads exactly a); the loss is the binary cross-entropy
    ``-sum_{i<L-1, a} p_in log(p_out + eps) + (1 - p_in) log(1 - p_out + eps)`` with MONAI's ``eps = 1e-5``.
    Zero for a single block.
    """
    produced, consumed = node_pattern_probs(eta, num_depths)
    p_in, p_out = produced[:-1], consumed[1:]
    bce = p_in * torch.log(p_out + EPS) + (1 - p_in) * torch.log(1 - p_out + EPS)
    return -bce.sum()


def argmax_patterns(edge_logits: torch.Tensor) -> torch.Tensor:
    """C_max: each block's most probable connection pattern as an ``[L, E]`` 0/1 matrix (may be infeasible).

    Since eta is monotone in ``cp_j . x``, this is the argmax of eta (first index on exact ties, as
    ``torch.argmax``).
    """
    patterns = _tables_for(edge_logits)[0]
    return patterns[pattern_logits(edge_logits).argmax(dim=-1)]


def discretisation_gap(edge_logits: torch.Tensor, arch_code_a) -> int:
    """Discretisation gap G (paper section 4.4.2): ``sum_{i,e} |C_max(i, e) - C_top(i, e)|``.

    ``C_max`` is :func:`argmax_patterns`; ``arch_code_a`` is the decoded (feasible) topology ``C_top``, an
    ``[L, E]`` 0/1 array or tensor. Returns a Python int.
    """
    with torch.no_grad():
        c_max = argmax_patterns(edge_logits.detach())
        c_top = torch.as_tensor(arch_code_a, device=c_max.device).to(c_max.dtype)
        if c_top.shape != c_max.shape:
            raise ValueError(
                f"discretisation_gap: arch_code_a has shape {tuple(c_top.shape)}, expected {tuple(c_max.shape)} "
                f"(same [num_blocks, num_edges] as the edge logits)."
            )
        return int(torch.round((c_max - c_top).abs().sum()).item())
