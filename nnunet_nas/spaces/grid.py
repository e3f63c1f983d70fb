"""The DiNTS multi-resolution grid: L blocks (super nodes) x D levels (He et al., CVPR 2021, Fig. 2, Eq. 1).

One class serves both the supernet (every edge, every op, driven by weights the caller computes from the
architecture parameters) and the fixed network (the edges and the single op per edge of a genotype), so the
two cannot drift and module names coincide: cell ``cells["b{b}_e{e}"]`` holds ``pre`` (the edge's resolution
change) and ``ops[op_name]``.

Search forward (``weights`` given) uses, per edge, ``sum_n w[b, e, n] * op_n(pre(x))`` where the caller folds
the edge probability into ``w`` ([ours]: equal to MONAI's ``p_e * sum_n softmax_n * op_n`` without storing the
cell output twice). Memory and time are kept low ([ours], figures in BENCHMARKS.md) by the CPU kernel of
:mod:`nnunet_nas.spaces.lean_edge` (one autograd function per edge that keeps only conv outputs and norm statistics;
oneDNN convolutions where PyTorch would fall back to im2col); elsewhere (CUDA, ``torch.compile``, op modules the kernel
does not know) ``recompute_norms`` recomputes the InstanceNorm outputs under ``torch.utils.checkpoint``, and
``recompute_norms=False`` is plain autograd (the reference the tests compare to).
"""

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from nnunet_nas.geometry import space_geometry
from nnunet_nas.ops.catalog import edge_preprocess, op_specs
from nnunet_nas.ops.conv import FactorizedReduce, cpu_fast_paths
from nnunet_nas.spaces.grid_topology import check_num_blocks, grid_topology
from nnunet_nas.spaces.lean_edge import EdgePlan, LeanEdge, is_conv_chain, weighted_norm_sum
from nnunet_nas.spaces.mixed_op import weighted_op_sum


GRID_OP_SETS = {2: "dints_2d", 3: "dints_3d"}


def default_grid_op_set(spatial_dims: int) -> str:
    """The DiNTS op set of the grid in 2-D / 3-D."""
    try:
        return GRID_OP_SETS[spatial_dims]
    except KeyError:
        raise ValueError(f"the grid space is 2-D or 3-D, got spatial_dims={spatial_dims!r}.") from None


class GridCell(nn.Module):
    def __init__(self, in_channels, out_channels, direction, spatial_dims, specs, feature_shape=None, op_options=None,
                 factor=None, planned_kernel=None):
        super().__init__()
        self.pre = edge_preprocess(in_channels, out_channels, direction, spatial_dims, factor=factor)
        self.ops = nn.ModuleDict({s.name: s.make(out_channels, out_channels, spatial_dims, feature_shape=feature_shape,
                                                 options=op_options, planned_kernel=planned_kernel) for s in specs})


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
        feature_shapes: ``[D]`` spatial extents of the levels, for ops that take ``feature_shape`` (DAST's
            transformer fits its token grid to them); ``None``: unknown.
        op_options: options forwarded to the ops that name them (``OpSpec.options``).
        geometry: the network's :class:`~nnunet_nas.geometry.Geometry` of ``D + 1`` stages (stage 0: the input
            resolution; level ``d`` is stage ``d + 1``): an edge between levels ``d`` and ``d + 1`` resamples by
            stage ``d + 2``'s stride, a cell's ops at level ``d`` use stage ``d + 1``'s kernel. ``None``:
            isotropic (2x per axis, 3^dims kernels).
    """

    def __init__(self, num_blocks: int, num_depths: int, channels: Sequence[int], spatial_dims: int = 3,
                 op_set_name: str = "dints_3d", edge_mask=None, op_index=None, recompute_norms: bool = True,
                 feature_shapes: Optional[Sequence[Sequence[int]]] = None, op_options: Optional[dict] = None,
                 geometry=None):
        super().__init__()
        check_num_blocks(num_blocks)
        self.geometry = space_geometry(geometry, spatial_dims, num_depths + 1, "GridSpace geometry")
        self.topology = topo = grid_topology(num_depths)
        self.num_blocks, self.num_depths, self.spatial_dims = num_blocks, num_depths, spatial_dims
        self.channels = [int(c) for c in channels]
        if len(self.channels) != num_depths:
            raise ValueError(f"GridSpace: expected {num_depths} channel counts, got {self.channels}.")
        self.specs = op_specs(op_set_name)
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
                raise ValueError(f"GridSpace: op indices must lie in 0..{len(self.specs) - 1} for op set "
                                 f"{op_set_name}.")
        self.edge_mask = mask
        self.op_index = op_index
        self.recompute_norms = recompute_norms
        self.op_options = dict(op_options or {})
        self.feature_shapes = None if feature_shapes is None else [[int(s) for s in f] for f in feature_shapes]
        self.cells = nn.ModuleDict()
        # per block, the active edges as Python values ``(edge, source level, target level, cell name)``, what forward
        # walks: torch.compile reads numpy values (mask, topology) as tensors and breaks the graph on every branch
        self.block_edges = tuple(tuple((e, int(topo.edge_in[e]), int(topo.edge_out[e]), f"b{b}_e{e}")
                                       for e in range(topo.num_edges) if mask[b, e]) for b in range(num_blocks))
        for b in range(num_blocks):
            for e in range(topo.num_edges):
                if not mask[b, e]:
                    continue
                specs = self.specs if self.is_search else (self.specs[op_index[b, e]],)
                src, out = int(topo.edge_in[e]), int(topo.edge_out[e])
                shape = None if feature_shapes is None else self.feature_shapes[out]
                try:
                    self.cells[f"b{b}_e{e}"] = GridCell(
                        self.channels[src], self.channels[out], int(topo.edge_dir[e]), spatial_dims, specs, shape,
                        self.op_options, factor=self.geometry.strides[max(src, out) + 1],
                        planned_kernel=self.geometry.kernels[out + 1])
                except ValueError as err:  # an op that cannot live at this level: say which level
                    where = f"level {out} ({self.channels[out]} channels" + (
                        "" if shape is None else f", feature map {'x'.join(map(str, shape))}") + ")"
                    raise ValueError(f"GridSpace {where}: {err}") from None
        first = next(iter(self.cells.values()), None)
        # the fast search paths below share one ReLU per node and recompute norms: they run the ops that are
        # ReLU -> convs -> affine InstanceNorm and the (single) skip; any other op (DAST's transformer) is added to
        # their sum by the plain mixed op on the edge's pre-processed input (computed once more for them)
        ops = [] if first is None else list(first.ops.items())
        kinds = [is_conv_chain(op) or isinstance(op, nn.Identity) for _, op in ops]
        self.lean_ops = [n for n, lean in enumerate(kinds) if lean]
        self.other_ops = [n for n, lean in enumerate(kinds) if not lean]
        self.other_op_names = frozenset(ops[n][0] for n in self.other_ops)
        skip = next((i for i, s in enumerate(self.specs) if s.name == "skip"), -1)
        self.conv_chain_ops = skip in self.lean_ops and len(self.lean_ops) > 1
        self.skip_index = self.lean_ops.index(skip) if self.conv_chain_ops else -1  # among lean_ops

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
        for b, edges in enumerate(self.block_edges):
            acts: List[Optional[torch.Tensor]] = [None] * self.num_depths
            lean_acts: List[list] = [[None] for _ in range(self.num_depths)]
            outs: List[Optional[torch.Tensor]] = [None] * self.num_depths
            for e, src, dst, name in edges:
                x = nodes[src]
                if x is None:
                    continue  # an edge from an inactive node carries nothing (cannot happen in a feasible genotype)
                cell = self.cells[name]
                if self.is_search:
                    y = self._mixed(cell, x, src, acts, lean_acts, weights[b, e])
                else:
                    y = next(iter(cell.ops.values()))(cell.pre(x))
                outs[dst] = y if outs[dst] is None else outs[dst] + y
            nodes = outs
        return nodes

    def _mixed(self, cell: GridCell, x, src, acts, lean_acts, w):
        if not self.conv_chain_ops:  # ops of any form: the plain mixed op
            return weighted_op_sum(enumerate(cell.ops.values()), cell.pre(x), w)
        if not self.other_ops:
            return self._mixed_lean(cell, x, src, acts, lean_acts, w)
        others = weighted_op_sum(((n, cell.ops[self.specs[n].name]) for n in self.other_ops), cell.pre(x), w)
        return self._mixed_lean(cell, x, src, acts, lean_acts, w[self.lean_ops]) + others

    def _mixed_lean(self, cell: GridCell, x, src, acts, lean_acts, w):
        """``sum_n w_n op_n(pre(x))`` over ``lean_ops`` (``w`` holds their weights, in their order)."""
        # the kernel computes in its inputs' dtype, not autocast's; under torch.compile it steps aside (dynamo traces
        # the plain path below, which the compiler fuses itself)
        if (self.recompute_norms and torch.is_grad_enabled() and x.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu") and cpu_fast_paths()):
            plan = EdgePlan.build(cell, self.skip_index, self.spatial_dims, self.other_op_names)
            if plan is not None:
                return LeanEdge.apply(plan, lean_acts[src], x, w, *plan.params)
        if acts[src] is None:
            acts[src] = F.relu(x)
        if isinstance(cell.pre, FactorizedReduce):
            p = cell.pre.norm(torch.cat([cell.pre.conv(acts[src]), cell.pre.conv2(cell.pre.shifted(acts[src]))], 1))
            r = F.relu(p)
        elif isinstance(cell.pre, nn.Identity):
            p, r = x, acts[src]
        else:
            p = cell.pre(x)
            r = F.relu(p)
        pre_norm, norms = [], []
        for name, op in cell.ops.items():
            if isinstance(op, nn.Identity) or name in self.other_op_names:
                continue
            z = r
            for m in list(op.children())[1:-1]:  # skip the op's own ReLU (shared) and its norm (recomputed)
                z = m(z)
            pre_norm.append(z)
            norms.append(list(op.children())[-1])
        if self.recompute_norms and torch.is_grad_enabled():
            # the recomputed norms draw no random numbers: no RNG state to stash and restore (stashing it queries
            # the CUDA driver on every call, and fails where tensors are only shapes on a machine without a GPU)
            return checkpoint(weighted_norm_sum, w, self.skip_index, p, norms, *pre_norm, use_reentrant=False,
                              preserve_rng_state=False)
        return weighted_norm_sum(w, self.skip_index, p, norms, *pre_norm)
