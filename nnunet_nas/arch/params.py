"""Architecture parameters, kept apart from the network weights (``arch.parameters()`` and the supernet's are
disjoint by construction).

:class:`ArchParams` holds a method's named logits and the alive-op mask of operation pruning: ``op_logits`` is
``[..., N]`` over the op set; ``alive_ops`` (same shape, bool) exists only once something was pruned, so an
unpruned search's state dict holds the logits alone. Pruned ops get probability 0 in :meth:`op_probs`.

:class:`CellArchParams` (SCNAS): ``op_logits`` [T, E, N] per cell type and edge.

:class:`CellEdgeArchParams` (IAC, PC-DARTS): ``op_logits`` [T, E, N] and ``edge_norm_logits`` [T, E] (beta of
edge normalisation), both initialised 1e-3 * N(0, 1) [PC-DARTS]. Before 0.2 beta was called ``edge_logits``
like the grid's edge gates: checkpoints with that name still load.

:class:`GridArchParams` (DiNTS / DAST):
``edge_logits`` [L, E]: p_e = sigmoid (paper Eq. 2), initialised N(0, 0.01) [paper section 4.1].
``op_logits``  [L, E, N]: alpha = softmax over ops, initialised N(1, 0.01) [paper].
"""

import warnings
from typing import Dict, Optional

import torch
from torch import nn

from nnunet_nas.spaces.grid_topology import grid_topology


def masked_op_probs(op_logits: torch.Tensor, alive=None) -> torch.Tensor:
    """softmax of ``op_logits`` over the last axis, over the ``alive`` ops only (all if None)."""
    if alive is None:
        return torch.softmax(op_logits, dim=-1)
    return torch.softmax(op_logits.masked_fill(~alive.bool().to(op_logits.device), float("-inf")), dim=-1)


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over the leading axes of the entropy of ``probs`` along the last axis (0 log 0 = 0)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


class ArchParams(nn.Module):
    """Base: ``op_logits`` ``[..., N]`` (set by the subclass) and the optional alive-op mask."""
    op_logits: nn.Parameter

    def __init__(self):
        super().__init__()
        self.register_buffer("alive_ops", None)  # in the state dict only once set

    def op_probs(self) -> torch.Tensor:
        """softmax of ``op_logits`` over the last axis, over alive ops only."""
        return masked_op_probs(self.op_logits, self.alive_ops)

    def set_alive_ops(self, alive: torch.Tensor) -> None:
        """Prune: ``alive`` (bool, ``op_logits``' shape) marks the ops that stay; ops once pruned stay pruned."""
        alive = torch.as_tensor(alive, dtype=torch.bool, device=self.op_logits.device)
        if alive.shape != self.op_logits.shape:
            raise ValueError(f"alive-op mask has shape {list(alive.shape)}, expected {list(self.op_logits.shape)}.")
        if self.alive_ops is not None:
            alive = alive & self.alive_ops
        if not alive.any(dim=-1).all():
            raise ValueError("operation pruning would leave an edge without any operation; keep at least one.")
        self.alive_ops = alive

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "alive_ops"
        if key in state_dict and self.alive_ops is None:  # a pruned search's checkpoint
            self.alive_ops = torch.ones_like(state_dict[key], dtype=torch.bool, device=self.op_logits.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def finite_flags(self) -> Dict[str, torch.Tensor]:
        """Whether each parameter is finite, as a bool tensor on its device (reading it is what costs a host sync)."""
        return {name: torch.isfinite(p).all() for name, p in self.named_parameters()}

    def check_finite(self, flags: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Raise when a parameter holds NaN/inf; ``flags``: :meth:`finite_flags` taken earlier (and-ed over steps)
        instead of now."""
        for name, finite in (self.finite_flags() if flags is None else flags).items():
            if not finite:
                raise FloatingPointError(
                    f"Architecture parameter {name} contains NaN/inf after an update; the search diverged. Lower the "
                    f"architecture learning rate (arch_lr) or keep AMP's arch GradScaler on, then resume from the "
                    f"last good checkpoint with --c.")


class GridArchParams(ArchParams):
    def __init__(self, num_blocks: int, num_depths: int, num_ops: int):
        super().__init__()
        num_edges = grid_topology(num_depths).num_edges
        self.num_depths = num_depths
        self.edge_logits = nn.Parameter(torch.randn(num_blocks, num_edges) * 0.01)
        self.op_logits = nn.Parameter(1.0 + torch.randn(num_blocks, num_edges, num_ops) * 0.01)


class CellArchParams(ArchParams):
    """DARTS-style cells: ``op_logits`` ``[T, E, N]`` (cell types, edges per cell, ops), initialised
    ``1e-3 * N(0, 1)`` (DARTS's public code; the SCNAS paper gives no initialisation)."""

    def __init__(self, num_cell_types: int, num_edges: int, num_ops: int):
        super().__init__()
        self.op_logits = nn.Parameter(torch.randn(num_cell_types, num_edges, num_ops) * 1e-3)


class CellEdgeArchParams(CellArchParams):
    """PC-DARTS cells: ``op_logits`` ``[T, E, N]`` and the edge-normalisation logits ``edge_norm_logits``
    ``[T, E]``."""
    RENAMED = {"edge_logits": "edge_norm_logits"}  # old state-dict name -> new

    def __init__(self, num_cell_types: int, num_edges: int, num_ops: int):
        super().__init__(num_cell_types, num_edges, num_ops)
        self.edge_norm_logits = nn.Parameter(torch.randn(num_cell_types, num_edges) * 1e-3)

    @property
    def edge_logits(self) -> nn.Parameter:
        """Deprecated name of :attr:`edge_norm_logits`."""
        warnings.warn("CellEdgeArchParams.edge_logits is now edge_norm_logits", DeprecationWarning, stacklevel=2)
        return self.edge_norm_logits

    @classmethod
    def upgrade_state(cls, state: dict, prefix: str = "") -> dict:
        """``state`` (a state dict, or its entries under ``prefix``) with names saved before a rename made current,
        in place; returns it."""
        for old, new in cls.RENAMED.items():
            if prefix + old in state and prefix + new not in state:
                state[prefix + new] = state.pop(prefix + old)
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.upgrade_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
