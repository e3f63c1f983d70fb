"""A random architecture of a search space: architecture logits drawn i.i.d. N(0, 1) in the shapes of a search's
(``alive_ops`` left out: the space as defined, before any pruning), discretised by the method's own rule, so that the
grid's topology rules and the cells' edges-per-node rule shape it as they shape a found one. Two searches' chance
agreement (:mod:`nnunet_nas.agreement`) and a study's random-architecture control (``nnunet-nas export --random``)
are drawn this way."""

from typing import Dict, Optional

import torch


def random_arch_state(arch_state: Dict[str, torch.Tensor], generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Logits N(0, 1) in the shapes of ``arch_state``, less its pruning mask."""
    return {k: torch.randn(v.shape, generator=generator) for k, v in arch_state.items() if k != "alive_ops"}


def random_genotype(method, arch_state: Dict[str, torch.Tensor], op_set: str, cfg, seed: int,
                    provenance: Optional[dict] = None):
    """The random architecture ``seed`` draws from the space of ``arch_state``, as ``method`` discretises it."""
    state = random_arch_state(arch_state, torch.Generator().manual_seed(int(seed)))
    return method.discretize(state, op_set, provenance, cfg=cfg)
