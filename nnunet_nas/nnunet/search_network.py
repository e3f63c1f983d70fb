"""The module nnU-Net sees during a search: a supernet plus its architecture parameters.

Holding both in one module means nnU-Net's checkpoint (``network_weights``) carries alpha, so
``nnUNetv2_predict -tr <SearchTrainer>`` restores the supernet exactly, and DDP broadcasts alpha from rank 0
at wrap time and averages its gradient: it stays identical on every rank. ``weight_parameters()`` and
``arch_parameters()`` are disjoint by construction; the weight optimiser only ever sees the former.
"""

from typing import Iterator

import torch
from torch import nn


class SearchNetwork(nn.Module):
    def __init__(self, supernet: nn.Module, arch: nn.Module):
        super().__init__()
        self.supernet = supernet
        self.arch = arch
        self.arch_frozen = False  # True during the weight step: alpha is read without gradient

    @property
    def decoder(self):  # nnU-Net toggles network.decoder.deep_supervision
        return self.supernet.decoder

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return self.supernet.parameters()

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        return self.arch.parameters()

    def forward(self, x: torch.Tensor):
        weights = self.arch.op_weights()
        if self.arch_frozen:
            weights = weights.detach()
        return self.supernet(x, weights)
