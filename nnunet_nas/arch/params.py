"""Architecture parameters of the grid (DiNTS / DAST), kept apart from the network weights.

``edge_logits`` [L, E]: p_e = sigmoid (paper Eq. 2), initialised N(0, 0.01) [paper section 4.1].
``op_logits``  [L, E, N]: alpha = softmax over ops, initialised N(1, 0.01) [paper].
"""

import torch
from torch import nn

from nnunet_nas.arch.grid_probs import edge_marginals
from nnunet_nas.spaces.grid_topology import grid_topology


class GridArchParams(nn.Module):
    def __init__(self, num_blocks: int, num_depths: int, num_ops: int):
        super().__init__()
        num_edges = grid_topology(num_depths).num_edges
        self.num_depths = num_depths
        self.edge_logits = nn.Parameter(torch.randn(num_blocks, num_edges) * 0.01)
        self.op_logits = nn.Parameter(1.0 + torch.randn(num_blocks, num_edges, num_ops) * 0.01)

    def op_weights(self) -> torch.Tensor:
        """``[L, E, N]`` supernet weights: P(edge on | block non-empty) * softmax(alpha) (MONAI's forward)."""
        return edge_marginals(self.edge_logits)[..., None] * torch.softmax(self.op_logits, dim=-1)

    def check_finite(self) -> None:
        for name, p in self.named_parameters():
            if not torch.isfinite(p).all():
                raise FloatingPointError(
                    f"Architecture parameter {name} contains NaN/inf after an update; the search diverged. Lower the "
                    f"architecture learning rate (arch_lr) or keep AMP's arch GradScaler on, then resume from the "
                    f"last good checkpoint with --c.")
