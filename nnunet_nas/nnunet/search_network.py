"""The module nnU-Net sees during a search: a supernet, its architecture parameters and their weighting.

Holding supernet and alpha in one module means nnU-Net's checkpoint (``network_weights``) carries alpha, so
``nnUNetv2_predict -tr <SearchTrainer>`` restores the supernet exactly, and DDP broadcasts alpha from rank 0
at wrap time and averages its gradient: it stays identical on every rank. ``weight_parameters()`` and
``arch_parameters()`` are disjoint by construction; the weight optimiser only ever sees the former. A supernet
may hold a frozen part (a trained backbone with ``requires_grad`` off, as IAC's): it reaches no optimiser.
"""

from typing import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_nas.arch.weighting import Weighting
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import SearchMethod


class SearchNetwork(nn.Module):
    def __init__(self, supernet: nn.Module, arch: nn.Module, weighting: Weighting):
        super().__init__()
        self.supernet = supernet
        self.arch = arch
        self.weighting = weighting  # not a module: it holds no parameter
        self.arch_frozen = False  # True during the weight step: alpha is read without gradient
        # the search's memory in nnU-Net's terms (SearchMethod.count_export_memory), set by the search trainer
        self.export_memory = None

    @property
    def decoder(self):  # nnU-Net toggles network.decoder.deep_supervision
        return self.supernet.decoder

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.supernet.parameters() if p.requires_grad)

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        return self.arch.parameters()

    def forward(self, x: torch.Tensor):
        weights = self.weighting(self.arch)
        if self.arch_frozen:
            weights = weights.detach()
        return self.supernet(x, weights)


def unwrap_network(net: nn.Module) -> nn.Module:
    """The module inside nnU-Net's DDP and ``torch.compile`` wrappers."""
    if isinstance(net, DDP):
        net = net.module
    return getattr(net, "_orig_mod", net)


def build_search_network(method: SearchMethod, cfg, configuration_manager, num_input_channels: int,
                         num_output_channels: int, enable_deep_supervision: bool = True) -> SearchNetwork:
    """``method``'s search network for ``cfg`` at an nnU-Net configuration (its ``ConfigurationManager``):
    supernet, architecture parameters and their weighting."""
    dims = len(configuration_manager.patch_size)
    op_set = method.op_set_for(cfg, dims)
    supernet = method.build_supernet(cfg, op_set, num_input_channels, num_output_channels, dims,
                                     enable_deep_supervision,
                                     planned=PlannedNetwork.from_configuration_manager(configuration_manager))
    return SearchNetwork(supernet, method.build_arch_params(cfg, supernet, op_set), method.make_weighting(cfg))
