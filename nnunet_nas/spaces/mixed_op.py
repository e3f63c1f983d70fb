"""The mixed operation of differentiable NAS: ``sum_n w_n op_n(x)`` over any candidate operations (DARTS Eq. 2).

Works for every op of :mod:`nnunet_nas.ops.catalog` (convs, pools, zero, skip, strided variants); the DiNTS grid
keeps its own memory-lean CPU path for its conv ops (:mod:`nnunet_nas.spaces.grid`) and falls back to
:func:`weighted_op_sum` for anything else. Ops can be removed for good (operation pruning): the weights keep
their full length ``N`` (the op set's order), removed ops are simply not run.
"""

from typing import Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_nas.ops.catalog import OpSpec
from nnunet_nas.ops.conv import DINTS_STYLE, OpStyle


def weighted_op_sum(indexed_ops: Iterable[Tuple[int, nn.Module]], x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_n w[n] * op_n(x)`` over ``(n, op)`` pairs (``w`` holds one weight per op of the full op set)."""
    out = None
    for n, op in indexed_ops:
        y = op(x) * w[n]
        out = y if out is None else out + y
    if out is None:
        raise RuntimeError("weighted_op_sum: no operation left to run on this edge.")
    return out


class MixedOp(nn.Module):
    """All candidate ops of one edge, ``in_channels -> out_channels`` at ``stride`` (an int or per axis), with
    the kernel nnU-Net planned at the edge's resolution (``planned_kernel``, :meth:`OpSpec.make`).

    ``forward(x, w, active=None)``: ``w`` is ``[N]`` (N = size of the op set); ``active`` restricts the sum to
    some op indices (sampling methods that run only the sampled ops); removed ops never run.
    """

    def __init__(self, specs: Sequence[OpSpec], in_channels: int, out_channels: int, spatial_dims: int,
                 stride=1, style: OpStyle = DINTS_STYLE, planned_kernel: Optional[Sequence[int]] = None):
        super().__init__()
        self.op_names = tuple(s.name for s in specs)
        self.ops = nn.ModuleDict({s.name: s.make(in_channels, out_channels, spatial_dims, stride, style,
                                                 planned_kernel=planned_kernel) for s in specs})

    def alive(self) -> Tuple[int, ...]:
        return tuple(n for n, name in enumerate(self.op_names) if name in self.ops)

    def forward(self, x: torch.Tensor, w: torch.Tensor, active: Optional[Sequence[int]] = None) -> torch.Tensor:
        run = self.alive() if active is None else [n for n in active if self.op_names[n] in self.ops]
        return weighted_op_sum(((n, self.ops[self.op_names[n]]) for n in run), x, w)

    def remove_ops(self, alive: Sequence[bool]) -> int:
        """Delete the modules of ops whose ``alive`` entry is False; returns how many were removed."""
        if len(alive) != len(self.op_names):
            raise ValueError(f"MixedOp.remove_ops: {len(alive)} flags for {len(self.op_names)} ops.")
        if not any(bool(a) and name in self.ops for a, name in zip(alive, self.op_names)):
            raise ValueError("MixedOp.remove_ops: at least one operation must stay alive on every edge.")
        dead = [name for a, name in zip(alive, self.op_names) if not a and name in self.ops]
        for name in dead:
            del self.ops[name]
        return len(dead)
