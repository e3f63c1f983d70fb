"""Operation pruning, applied the same way for every method: the alive-op mask of the architecture parameters,
removal of the pruned op modules from the supernet (where it supports it), and optimisers rebuilt over the
remaining parameters with their state (momentum, Adam moments) kept for every parameter that survives."""

from typing import Iterable

import torch


def prune_search_network(net, alive: torch.Tensor) -> int:
    """Apply an alive-op mask to a :class:`~nnunet_nas.nnunet.search_network.SearchNetwork`; returns the number
    of op modules removed (0 for a supernet that keeps its modules and only masks their weights)."""
    net.arch.set_alive_ops(alive)
    remove = getattr(net.supernet, "remove_ops", None)
    return int(remove(net.arch.alive_ops.cpu())) if remove is not None else 0


def rebuild_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The same optimiser class and settings over ``params``; per-parameter state carried over where the
    parameter is still there (identity), fresh for new ones, dropped for removed ones."""
    params = list(params)
    old = optimizer.param_groups[0]
    new = type(optimizer)(params, **{k: old[k] for k in optimizer.defaults if k in old})
    for k, v in old.items():  # what schedulers added (initial_lr) and the current lr
        if k != "params":
            new.param_groups[0][k] = v
    for p in params:
        if p in optimizer.state:
            new.state[p] = optimizer.state[p]
    return new
