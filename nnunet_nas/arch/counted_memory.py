"""A grid architecture's memory in nnU-Net's terms: the export's counter, as a differentiable function of the
architecture.

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
"""

import re
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_nas.networks.common import COUNTED_OUTPUTS

_CELL = re.compile(r"^space\.cells\.b(\d+)_e(\d+)\.(pre|ops\.([^.]+))(\.|$)")
_STEM = re.compile(r"^stem_down\.(\d+)(\.|$)")


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
        counts = {}  # module name -> its output's elements (a module run twice is counted once, as in the network)

        def hook(name):
            return lambda module, inputs, output: counts.__setitem__(name, output.numel())
        handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, COUNTED_OUTPUTS)]
        try:
            with torch.no_grad():
                net(torch.zeros((1, input_channels) + tuple(int(p) for p in patch_size), device="meta"),
                    torch.ones((L, E, N), device="meta"))
        finally:
            for h in handles:
                h.remove()
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

    def genotype_ratio(self, genotype) -> float:
        """A discrete grid genotype's count as a share of nnU-Net's."""
        on = torch.as_tensor(np.asarray(genotype.arch_code_a), dtype=torch.float64)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(genotype.op_indices()), self.op.shape[-1])
        return float(self.ratio(on, onehot.to(torch.float64)))
