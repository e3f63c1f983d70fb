"""An architecture's memory in nnU-Net's terms: the export's counter, as a differentiable function of the
architecture (a DiNTS / DAST grid, an SCNAS cell U-Net).

nnU-Net plans each configuration to a GPU-memory target by the conv outputs of one forward pass
(:func:`~nnunet_nas.networks.common.conv_output_elements`, dynamic_network_architectures' convention); the export fits
a found network's width by the same counter. :class:`CountedGridMemory` runs that counter once over a DiNTS supernet
built at the export's width and the configuration's patch (on the meta device: shapes only) and attributes every conv
and linear output to what makes it: an edge's resampling (``pre``), one op of an edge, the down-sampling stem of an
input level, or the rest (tail, final block, heads). A discrete architecture's count is then

    fixed + sum_d stem_d [level d read in block 0] + sum_{b,e} on[b,e] * (pre[b,e] + op[b,e,n(b,e)])

which equals the counter on the exported network up to its deep-supervision heads (the supernet has one per level;
the found network one per level down to its deepest node: a head is a 1x1 conv to the classes). In the search,
``on`` are the edge marginals, the op choice is ``softmax(alpha)`` and a level is read with probability
``1 - prod(1 - m)`` over the edges leaving it in block 0: a smooth function that equals the count at every discrete
point. Divided by the count of the network nnU-Net planned for the configuration, it is the search's memory ratio
under ``memory_reference="nnunet"``: 1.0 is "the found network at its export width takes nnU-Net's memory".

:class:`CountedCellMemory` does the same for SCNAS's cells, whose discretiser keeps every edge with its most probable
op (``zero`` drops it): ``fixed + sum_{t,e,n} [op n chosen on edge e of cell type t] * op[t, e, n]``, ``op`` summed
over the cells of each type, ``softmax(alpha)`` as the weights in the search (an edge's input projections count as
fixed: they are dropped only where every edge from that input is).
"""

import re
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_nas.errors import ConfigError
from nnunet_nas.networks.common import module_output_elements

_CELL = re.compile(r"^space\.cells\.b(\d+)_e(\d+)\.(pre|ops\.([^.]+))(\.|$)")
_STEM = re.compile(r"^stem_down\.(\d+)(\.|$)")
_CELL_OP = re.compile(r"^cells\.(\d+)\.edge_ops\.(\d+)\.ops\.([^.]+)(\.|$)")


def counted_outputs(net: nn.Module, input_channels: int, patch_size: Sequence[int], weights: torch.Tensor) -> dict:
    """``{module name: elements of its output}`` for every conv and linear module of one forward of ``net`` (on the
    meta device) at batch 1 with architecture ``weights``; a module run twice is counted once, as it is one tensor in
    the network the export builds."""
    return dict(module_output_elements(net, input_channels, patch_size, weights))


def attached_counted_memory(net):
    """The search network's memory model in nnU-Net's terms (``net.export_memory``), which the search trainer counts
    when it starts."""
    counted = getattr(net, "export_memory", None)
    if counted is None:
        raise RuntimeError("a memory budget in nnU-Net's terms needs the search's memory counted against nnU-Net's "
                           "planned network; the search trainer counts it when it starts (NASSearchTrainer.initialize)."
                           " Build the search through the trainer, or choose another memory_reference.")
    return counted


class CountedGridMemory:
    """Conv-output elements of a grid network at one width and patch, per part (float64 tables, batch 1).

    Attributes:
        fixed: elements of what every architecture has (tail, final block, heads).
        stem: ``[D]`` elements of level d's down-sampling stem (built only where block 0 reads level d).
        pre: ``[L, E]`` elements of edge e's resampling in block b.
        op: ``[L, E, N]`` elements of op n on edge e in block b.
        reference: elements of nnU-Net's planned network at the configuration's patch (the ratio's denominator).
        edges_from: per level d, the edges of a block that leave it (``edge_in == d``).
    """

    def __init__(self, fixed: float, stem, pre, op, reference: float, edges_from: Sequence[Sequence[int]]):
        f64 = torch.float64
        self.fixed, self.reference = float(fixed), float(reference)
        self.stem = torch.as_tensor(stem, dtype=f64)
        self.pre = torch.as_tensor(pre, dtype=f64)
        self.op = torch.as_tensor(op, dtype=f64)
        self.edges_from = [list(map(int, e)) for e in edges_from]
        if not self.reference > 0:
            raise ValueError(f"CountedGridMemory: the planned network's count must be positive, got {reference}.")

    @classmethod
    def of_supernet(cls, build: Callable[[], nn.Module], input_channels: int, patch_size: Sequence[int],
                    reference: float) -> "CountedGridMemory":
        """Count the supernet ``build()`` makes (a :class:`~nnunet_nas.networks.dints_net.DiNTSNet` without genotype,
        built here on the meta device) at ``patch_size``, every op weight one."""
        with torch.device("meta"):
            net = build()
        space = net.space
        L, E, N, D = space.num_blocks, space.topology.num_edges, len(space.specs), space.num_depths
        op_index = {s.name: n for n, s in enumerate(space.specs)}
        counts = counted_outputs(net, input_channels, patch_size, torch.ones((L, E, N), device="meta"))
        fixed, stem, pre, op = 0.0, np.zeros(D), np.zeros((L, E)), np.zeros((L, E, N))
        for name, n in counts.items():
            cell, root = _CELL.match(name), _STEM.match(name)
            if cell is not None:
                b, e = int(cell.group(1)), int(cell.group(2))
                if cell.group(4) is None:
                    pre[b, e] += n
                else:
                    op[b, e, op_index[cell.group(4)]] += n
            elif root is not None:
                stem[int(root.group(1))] += n
            else:
                fixed += n
        edges_from = [np.flatnonzero(space.topology.edge_in == d).tolist() for d in range(D)]
        return cls(fixed, stem, pre, op, reference, edges_from)

    def elements(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor) -> torch.Tensor:
        """The expected count (a differentiable scalar) for ``[L, E]`` edge marginals and ``[L, E, N]`` op weights;
        the exact count of a discrete architecture (0/1 edges, one-hot ops)."""
        like = dict(device=edge_marginals.device, dtype=edge_marginals.dtype)
        if tuple(op_probs.shape) != tuple(self.op.shape) or tuple(edge_marginals.shape) != tuple(self.pre.shape):
            raise ValueError(f"CountedGridMemory: architecture of shape {list(edge_marginals.shape)} / "
                             f"{list(op_probs.shape)}, expected {list(self.pre.shape)} / {list(self.op.shape)}.")
        pre, op, stem = self.pre.to(**like), self.op.to(**like), self.stem.to(**like)
        grid = (edge_marginals * (pre + (op_probs * op).sum(-1))).sum()
        read = torch.stack([1 - torch.prod(1 - edge_marginals[0, e]) for e in self.edges_from])
        return self.fixed + (stem * read).sum() + grid

    def ratio(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor) -> torch.Tensor:
        """The count as a share of nnU-Net's planned network's."""
        return self.elements(edge_marginals, op_probs) / self.reference

    def max_ratio(self) -> float:
        """The largest architecture of the space (every edge on, its costliest op) as a share of nnU-Net's."""
        return float(self.fixed + self.stem.sum() + (self.pre + self.op.max(-1).values).sum()) / self.reference

    def min_ratio(self) -> float:
        """A floor no architecture of the space goes below, as a share of nnU-Net's: what every architecture has,
        the cheapest stem, and per block its cheapest edge with its cheapest op (every block keeps an edge)."""
        per_block = (self.pre + self.op.min(-1).values).min(-1).values.sum()
        return float(self.fixed + self.stem.min() + per_block) / self.reference

    def genotype_ratio(self, genotype) -> float:
        """A discrete grid genotype's count as a share of nnU-Net's."""
        on = torch.as_tensor(np.asarray(genotype.arch_code_a), dtype=torch.float64)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(genotype.op_indices()), self.op.shape[-1])
        return float(self.ratio(on, onehot.to(torch.float64)))


class CountedCellMemory:
    """Conv-output elements of an SCNAS cell U-Net at one width and patch (float64 tables, batch 1).

    Attributes:
        fixed: elements of what every architecture has (stem, input projections of the cells, output block, heads).
        op: ``[T, E, N]`` elements of op n on edge e, summed over the cells of type t.
        reference: elements of nnU-Net's planned network at the configuration's patch.
    """

    def __init__(self, fixed: float, op, reference: float):
        self.fixed, self.reference = float(fixed), float(reference)
        self.op = torch.as_tensor(op, dtype=torch.float64)
        if not self.reference > 0:
            raise ValueError(f"CountedCellMemory: the planned network's count must be positive, got {reference}.")

    @classmethod
    def of_supernet(cls, build: Callable[[], nn.Module], input_channels: int, patch_size: Sequence[int],
                    reference: float, cell_types: Sequence[str]) -> "CountedCellMemory":
        """Count the supernet ``build()`` makes (an :class:`~nnunet_nas.networks.scnas_net.SCNASNet` without genotype,
        built here on the meta device) at ``patch_size``, every op of every edge run."""
        with torch.device("meta"):
            net = build()
        names = list(net.cells[0].edge_ops[0].op_names)
        T, E, N = len(cell_types), len(net.cells[0].edge_ops), len(names)
        counts = counted_outputs(net, input_channels, patch_size, torch.ones((T, E, N), device="meta"))
        type_of = [cell_types.index(plan[0]) for plan in net.plan]
        fixed, op = 0.0, np.zeros((T, E, N))
        for name, n in counts.items():
            match = _CELL_OP.match(name)
            if match is None:
                fixed += n
            else:
                op[type_of[int(match.group(1))], int(match.group(2)), names.index(match.group(3))] += n
        return cls(fixed, op, reference)

    def ratio(self, op_probs: torch.Tensor) -> torch.Tensor:
        """The expected count for ``[T, E, N]`` op weights as a share of nnU-Net's planned network's (exact at one-hot
        weights)."""
        if tuple(op_probs.shape) != tuple(self.op.shape):
            raise ValueError(f"CountedCellMemory: op weights of shape {list(op_probs.shape)}, expected "
                             f"{list(self.op.shape)}.")
        op = self.op.to(device=op_probs.device, dtype=op_probs.dtype)
        return (self.fixed + (op_probs * op).sum()) / self.reference

    def max_ratio(self) -> float:
        """The largest architecture of the space (the costliest op on every edge) as a share of nnU-Net's."""
        return float(self.fixed + self.op.max(-1).values.sum()) / self.reference

    def min_ratio(self) -> float:
        """The smallest count the search's op weights can reach (the cheapest op on every edge), as a share of
        nnU-Net's."""
        return float(self.fixed + self.op.min(-1).values.sum()) / self.reference

    def genotype_ratio(self, genotype, cell_types: Sequence[str], op_names: Sequence[str]) -> float:
        """A discrete cell genotype's count as a share of nnU-Net's (a dropped edge counts nothing)."""
        chosen = torch.zeros_like(self.op)
        for t, cell_type in enumerate(cell_types):
            for e, op in enumerate(genotype.edge_ops(cell_type)):
                if op is not None:
                    chosen[t, e, list(op_names).index(op)] = 1.0
        return float(self.ratio(chosen))


def check_budget_reachable(counted, budget: float, cfg, narrowest: float) -> None:
    """Raise :class:`~nnunet_nas.errors.ConfigError` when ``budget`` (a share of nnU-Net's planned network) is below
    ``counted.min_ratio()``, the least any architecture of the space counts at the width ``cfg`` counts at (its
    ``export_channel_mul``, else its search width ``channel_mul`` times the method's rule): no choice of ops meets
    it, so the memory term would push every edge to its cheapest op whatever the data say. The fix names that
    field's value at which the floor takes three quarters of the budget (conv outputs scale about linearly with the
    width), leaving the ops the rest; where that is below ``narrowest``, the narrowest value of the field the network
    builds at, it names the budget that width would need instead."""
    floor = counted.min_ratio()
    if budget >= floor:
        return
    field = "channel_mul" if cfg.export_channel_mul is None else "export_channel_mul"
    width = getattr(cfg, field)
    narrower = width * 0.75 * budget / floor
    fix = (f"Search narrower ({field}={narrower:.3g} leaves the ops a quarter of the budget) or raise memory_budget "
           f"above {floor:.2f}." if narrower >= narrowest else
           f"Even the narrowest width the network builds at ({field}={narrowest:g}) counts about "
           f"{floor * narrowest / width:.2f}x before any op: raise memory_budget above that, at that width, or above "
           f"{floor:.2f} at this one.")
    raise ConfigError(f"{type(cfg).__name__}: memory_budget={budget:g} of nnU-Net's planned memory is below the "
                      f"smallest architecture of this space at {field}={width:.4g}: {floor:.2f}x nnU-Net's planned "
                      f"memory at the width the search counts, before any op is chosen. No architecture meets it, so "
                      f"the memory term would only push every edge to its cheapest op. {fix}")
