"""The DARTS cell: a DAG of intermediate nodes over two inputs, one (mixed) operation per edge.

Shared by every cell-based method (SCNAS's four cell types; IAC's implanted cells). Node ``j`` (0-based, of
``num_nodes``) is the sum of one edge from each earlier state: the two inputs ``s0``, ``s1`` (states 0 and 1) and
the intermediate nodes before it (states 2 .. j+1), so a cell of 4 nodes has 2 + 3 + 4 + 5 = 14 edges, numbered
node by node and, within a node, by source state (:func:`cell_edges`). The cell's output is the channel concatenation
of its intermediate nodes, projected back to the cell's width by a 1x1 nonlinearity-conv-norm block.

The inputs are first brought to the cell's width (and, for an expansion cell, to its output resolution) by
:func:`~nnunet_nas.ops.catalog.edge_preprocess` (identity, 1x1 conv, factorized reduce or up-sampling + 1x1
conv, by the plan's stride between the levels). A reduction cell runs the edges leaving its inputs at its stride
(2 per axis in DARTS); an expansion cell up-samples its inputs first (SCNAS). The cell is a search cell (every op
of the op set on every edge, ``forward(s0, s1, weights, active)``) or a fixed one (``ops``: per edge an op name or
``None`` for no edge); both keep an edge's ops under ``edge_ops.<e>.ops.<name>``, so a fixed cell loads a supernet's
weights.

Two PC-DARTS options of a search cell (IAC's): ``partial_channels=K`` runs an edge's mixed op on the first 1/K of
its input channels only, passes the rest through, concatenates both and shuffles the channels in K groups (normal
cells; the fixed cell runs its op on all channels); edge normalisation multiplies every edge's output by a weight
the caller passes (``edge_weights`` ``[E]``, a softmax over each node's incoming edges, :func:`node_softmax`).
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_nas.geometry import as_axes
from nnunet_nas.ops.catalog import edge_preprocess, get_op_set
from nnunet_nas.ops.conv import ActConvNorm
from nnunet_nas.spaces.mixed_op import MixedOp

CELL_KINDS = ("normal", "reduction", "expansion")


def node_softmax(edge_logits: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Edge normalisation (PC-DARTS): a softmax over the incoming edges of each node, ``[..., E]`` -> ``[..., E]``."""
    out, start = [], 0
    for node in range(num_nodes):
        out.append(torch.softmax(edge_logits[..., start:start + node + 2], dim=-1))
        start += node + 2
    if start != edge_logits.shape[-1]:
        raise ValueError(f"node_softmax: {edge_logits.shape[-1]} edge logits for a cell of {num_nodes} nodes "
                         f"({start} edges).")
    return torch.cat(out, dim=-1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (ShuffleNet; PC-DARTS after its partial-channel concat)."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def cell_edges(num_nodes: int) -> List[Tuple[int, int]]:
    """``(source state, node)`` per edge, in edge order: states 0, 1 are the inputs, state ``j + 2`` is node ``j``."""
    return [(src, node) for node in range(num_nodes) for src in range(node + 2)]


def cell_num_nodes(num_edges: int) -> int:
    """The number of intermediate nodes of a cell with ``num_edges`` edges (2 + 3 + ... + (n + 1))."""
    for n in range(1, 64):
        if len(cell_edges(n)) == num_edges:
            return n
    raise ValueError(f"{num_edges} edges per cell is no DARTS cell (2 + 3 + ... edges).")


class Cell(nn.Module):
    """One cell. ``in_channels``: channels of ``(s0, s1)``; ``in_scales``: their resolution relative to the
    cell's input resolution (0: the same, -1: one level finer, +1: one level coarser), e.g. DARTS's
    "previous-previous cell was a reduction cell" is ``in_scales=(-1, 0)``.

    Geometry (nnU-Net's plan, :mod:`nnunet_nas.geometry`; defaults: isotropic): ``stride`` is a reduction cell's
    down-sampling and an expansion cell's up-sampling per axis (2); ``in_factors`` the per-axis factor between
    each input's level and the resolution its preprocessing brings it to (2); ``planned_kernel`` the kernel nnU-Net
    planned at the cell's output resolution, which its ops follow (:func:`~nnunet_nas.geometry.fit_kernel`)."""

    def __init__(self, op_set: str, kind: str, in_channels: Sequence[int], channels: int, num_nodes: int = 4,
                 in_scales: Sequence[int] = (0, 0), ops: Optional[Sequence[Optional[str]]] = None,
                 partial_channels: int = 1, stride=2, in_factors: Optional[Sequence] = None,
                 planned_kernel: Optional[Sequence[int]] = None):
        super().__init__()
        if kind not in CELL_KINDS:
            raise ValueError(f"Cell: kind {kind!r} is not one of {CELL_KINDS}.")
        if partial_channels < 1 or channels % partial_channels or (partial_channels > 1 and kind != "normal"):
            raise ValueError(f"Cell: partial_channels={partial_channels} needs a normal cell whose width ({channels}) "
                             f"it divides.")
        spec = get_op_set(op_set)
        dims, style = spec.spatial_dims, spec.style
        self.kind, self.num_nodes, self.channels, self.op_set = kind, num_nodes, channels, op_set
        self.edges = cell_edges(num_nodes)
        if ops is not None and len(ops) != len(self.edges):
            raise ValueError(f"Cell: {len(ops)} edge operations for a cell of {num_nodes} nodes ({len(self.edges)} "
                             f"edges).")
        self.is_search = ops is None
        self.partial_channels = partial_channels if self.is_search else 1
        op_channels = channels // self.partial_channels
        # inputs -> the cell's width, at its input resolution (at its output resolution for an expansion cell); a
        # fixed cell prepares only the inputs its edges read (no unused parameter: nnU-Net's DDP needs that)
        extra = 1 if kind == "expansion" else 0
        read = {src for e, (src, _) in enumerate(self.edges) if src < 2 and (ops is None or ops[e] is not None)}
        stride = as_axes(stride, dims)
        factors = [stride if kind == "expansion" else (2,) * dims] * 2 if in_factors is None else in_factors
        self.preprocess = nn.ModuleDict({
            str(i): edge_preprocess(c, channels, scale + extra, dims, style, factor=factors[i])
            if scale + extra in (-1, 0, 1) else _bad_scale(scale)
            for i, (c, scale) in enumerate(zip(in_channels, in_scales)) if i in read})
        self.edge_ops = nn.ModuleList()
        self.op_names = tuple(o.name for o in spec.ops)
        for e, (src, _) in enumerate(self.edges):
            edge_stride = stride if kind == "reduction" and src < 2 else 1
            if self.is_search:
                self.edge_ops.append(MixedOp(spec.ops, op_channels, op_channels, dims, edge_stride, style,
                                             planned_kernel))
            else:  # the chosen op alone, under the supernet's module names (a fixed cell loads supernet weights)
                chosen = [] if ops[e] is None else [spec.ops[spec.index(ops[e])]]
                self.edge_ops.append(MixedOp(chosen, channels, channels, dims, edge_stride, style, planned_kernel))
        self.project = ActConvNorm(num_nodes * channels, channels, 1, dims, style=style)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Optional[torch.Tensor] = None,
                active: Optional[torch.Tensor] = None, edge_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``weights`` ``[E, N]`` (search cell); ``active`` ``[E, N]`` bool (a tensor on the CPU or nested lists):
        the ops to run (all alive ones if None); ``edge_weights`` ``[E]``: edge normalisation (search cell,
        optional)."""
        if self.is_search and weights is None:
            raise ValueError("Cell: a search cell needs op weights [E, N].")
        states = [self.preprocess[str(i)](s) if str(i) in self.preprocess else None for i, s in enumerate((s0, s1))]
        rows = active.tolist() if torch.is_tensor(active) else active  # read once, without a sync per edge
        runs = None if rows is None else [[n for n, a in enumerate(row) if a] for row in rows]
        e = 0
        for node in range(self.num_nodes):
            total = None
            for src in range(node + 2):
                op = self.edge_ops[e]
                if self.is_search:
                    y = self._search_edge(op, states[src], weights[e], None if runs is None else runs[e])
                    if edge_weights is not None:
                        y = y * edge_weights[e]
                else:
                    y = next((m(states[src]) for m in op.ops.values()), None)
                if y is not None:
                    total = y if total is None else total + y
                e += 1
            if total is None:  # a fixed node without inputs (the discretisation never produces one)
                raise RuntimeError(f"Cell: node {node} has no incoming edge.")
            states.append(total)
        return self.project(torch.cat(states[2:], dim=1))


    def remove_ops(self, alive) -> int:
        """Operation pruning of a search cell: delete the op modules that ``alive`` ``[E, N]`` marks dead; returns how
        many were removed."""
        return sum(op.remove_ops([bool(a) for a in alive[e]]) for e, op in enumerate(self.edge_ops))

    def _search_edge(self, op: MixedOp, x: torch.Tensor, w: torch.Tensor, run) -> torch.Tensor:
        k = self.partial_channels
        if k == 1:
            return op(x, w, run)
        part = x.shape[1] // k
        return channel_shuffle(torch.cat((op(x[:, :part], w, run), x[:, part:]), dim=1), k)


def _bad_scale(scale):
    raise ValueError(f"Cell: input scale {scale} is not supported (the inputs must be within one level).")
