"""The DiNTS multi-resolution grid: L blocks (super nodes) x D levels (He et al., CVPR 2021, Fig. 2, Eq. 1).

One class serves both the supernet (every edge, every op, driven by weights the caller computes from the
architecture parameters) and the fixed network (the edges and the single op per edge of a genotype), so the
two cannot drift and module names coincide: cell ``cells["b{b}_e{e}"]`` holds ``pre`` (the edge's resolution
change) and ``ops[op_name]``.

Search forward (``weights`` given) uses, per edge, ``sum_n w[b, e, n] * op_n(pre(x))`` where the caller folds
the edge probability into ``w`` ([ours]: equal to MONAI's ``p_e * sum_n softmax_n * op_n`` without storing the
cell output twice). Memory is kept low without slowing the step down ([ours], see BENCHMARKS.md):
* one ReLU per source node is shared by every conv op and the down-sampling edge that read it;
* the InstanceNorm outputs of the candidate ops are not stored: the weighted sum of the normalised outputs is
  recomputed from the (stored) conv outputs in the backward pass, which costs only the cheap norms again.
"""

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from nnunet_nas.ops.catalog import edge_preprocess, op_set
from nnunet_nas.ops.conv import FactorizedReduce
from nnunet_nas.spaces.grid_topology import check_num_blocks, grid_topology


class GridCell(nn.Module):
    def __init__(self, in_channels, out_channels, direction, spatial_dims, specs):
        super().__init__()
        self.pre, _ = edge_preprocess(in_channels, out_channels, direction, spatial_dims)
        self.ops = nn.ModuleDict({s.name: s.factory(out_channels, spatial_dims) for s in specs})


def _weighted_norm_sum(weights: torch.Tensor, skip_index: int, x: torch.Tensor, norms, *pre_norm):
    """sum_n w_n * norm_n(z_n) (+ w_skip * x); run under checkpoint so the norm outputs are not stored."""
    out = None
    k = 0
    for n in range(weights.shape[0]):
        if n == skip_index:
            y = x * weights[n]
        else:
            y = norms[k](pre_norm[k]) * weights[n]
            k += 1
        out = y if out is None else out + y
    return out


class GridSpace(nn.Module):
    """L x D grid of cells.

    Args:
        num_blocks: L.
        num_depths: D.
        channels: ``[D]`` channels of the feature nodes per level (finest first).
        spatial_dims: 2 or 3.
        op_set_name: name in :mod:`nnunet_nas.ops.catalog`.
        edge_mask: ``[L, E]`` 0/1, the active edges; ``None`` = all (supernet).
        op_index: ``[L, E]`` op index per edge; ``None`` = all ops on every active edge (supernet).
        recompute_norms: search memory saving (see module docstring).
    """

    def __init__(self, num_blocks: int, num_depths: int, channels: Sequence[int], spatial_dims: int = 3,
                 op_set_name: str = "dints_3d", edge_mask=None, op_index=None, recompute_norms: bool = True):
        super().__init__()
        check_num_blocks(num_blocks)
        self.topology = topo = grid_topology(num_depths)
        self.num_blocks, self.num_depths, self.spatial_dims = num_blocks, num_depths, spatial_dims
        self.channels = [int(c) for c in channels]
        if len(self.channels) != num_depths:
            raise ValueError(f"GridSpace: expected {num_depths} channel counts, got {self.channels}.")
        self.specs = op_set(op_set_name)
        self.op_set_name = op_set_name
        shape = (num_blocks, topo.num_edges)
        mask = np.ones(shape, dtype=bool) if edge_mask is None else np.asarray(edge_mask).astype(bool)
        if mask.shape != shape:
            raise ValueError(f"GridSpace: edge mask has shape {mask.shape}, expected [L, E] = {shape}.")
        self.is_search = op_index is None
        if not self.is_search:
            op_index = np.asarray(op_index, dtype=np.int64)
            if op_index.shape != shape:
                raise ValueError(f"GridSpace: op index array has shape {op_index.shape}, expected [L, E] = {shape}.")
            if op_index.min() < 0 or op_index.max() >= len(self.specs):
                raise ValueError(f"GridSpace: op indices must lie in 0..{len(self.specs) - 1} for op set {op_set_name}.")
        self.edge_mask = mask
        self.op_index = op_index
        self.recompute_norms = recompute_norms
        self.skip_index = next((i for i, s in enumerate(self.specs) if s.name == "skip"), -1)
        self.cells = nn.ModuleDict()
        for b in range(num_blocks):
            for e in range(topo.num_edges):
                if not mask[b, e]:
                    continue
                specs = self.specs if self.is_search else (self.specs[op_index[b, e]],)
                self.cells[f"b{b}_e{e}"] = GridCell(self.channels[topo.edge_in[e]], self.channels[topo.edge_out[e]],
                                                    int(topo.edge_dir[e]), spatial_dims, specs)

    # ------------------------------------------------------------------ forward
    def forward(self, nodes: List[Optional[torch.Tensor]], weights: Optional[torch.Tensor] = None):
        """Run all blocks.

        Args:
            nodes: D tensors (``None`` for an inactive level), level d with ``channels[d]`` channels.
            weights: ``[L, E, N]`` per-op weights with the edge probability folded in (search), or ``None``
                (fixed network).
        Returns:
            D tensors of the last block (``None`` where a level receives no edge).
        """
        if self.is_search and weights is None:
            raise ValueError("GridSpace: the supernet needs op weights [L, E, N]; a fixed network has none.")
        topo = self.topology
        for b in range(self.num_blocks):
            acts: List[Optional[torch.Tensor]] = [None] * self.num_depths
            outs: List[Optional[torch.Tensor]] = [None] * self.num_depths
            for e in range(topo.num_edges):
                if not self.edge_mask[b, e]:
                    continue
                src, dst = int(topo.edge_in[e]), int(topo.edge_out[e])
                x = nodes[src]
                if x is None:
                    continue  # an edge from an inactive node carries nothing (cannot happen in a feasible genotype)
                cell = self.cells[f"b{b}_e{e}"]
                if self.is_search:
                    y = self._mixed(cell, x, src, acts, weights[b, e])
                else:
                    y = next(iter(cell.ops.values()))(cell.pre(x))
                outs[dst] = y if outs[dst] is None else outs[dst] + y
            nodes = outs
        return nodes

    def _mixed(self, cell: GridCell, x, src, acts, w):
        if acts[src] is None:
            acts[src] = F.relu(x)
        if isinstance(cell.pre, FactorizedReduce):
            p = cell.pre.norm(torch.cat([cell.pre.conv(acts[src]),
                                         cell.pre.conv2(acts[src][(Ellipsis,) + (slice(1, None),) * self.spatial_dims])], 1))
            r = F.relu(p)
        elif isinstance(cell.pre, nn.Identity):
            p, r = x, acts[src]
        else:
            p = cell.pre(x)
            r = F.relu(p)
        pre_norm, norms = [], []
        for name, op in cell.ops.items():
            if isinstance(op, nn.Identity):
                continue
            z = r
            for m in list(op.children())[1:-1]:  # skip the op's own ReLU (shared) and its norm (recomputed)
                z = m(z)
            pre_norm.append(z)
            norms.append(list(op.children())[-1])
        if self.recompute_norms and torch.is_grad_enabled():
            return checkpoint(_weighted_norm_sum, w, self.skip_index, p, norms, *pre_norm, use_reentrant=False)
        return _weighted_norm_sum(w, self.skip_index, p, norms, *pre_norm)
