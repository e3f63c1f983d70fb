"""Do two searches agree? The share of edges two found architectures decide alike, against the share two random
architectures of the same space agree on.

A genotype's decisions are, per edge of its search space (the order of the search's ``op_logits``), the op it keeps
or None for an edge it drops (:meth:`~nnunet_nas.genotypes.schema.Genotype.edge_decisions`). Two genotypes agree
on an edge's *op* when both keep it with the same op or both drop it, and on the *edge* when both keep it or both
drop it. Chance is not 1/N: the grid's topology rules and the cells' edges-per-node rule shape what a random
architecture looks like, so chance is measured by Monte Carlo over random architectures of the searches' space
(:mod:`nnunet_nas.random_architecture`).
"""

from typing import Dict

import numpy as np
import torch

from nnunet_nas.errors import UserError
from nnunet_nas.random_architecture import random_arch_state


def decisions_agreement(a, b) -> Dict[str, float]:
    """``{"ops": share, "edges": share}`` of two equally long decision lists (op name or None per edge)."""
    if len(a) != len(b):
        raise UserError(f"the two architectures have {len(a)} and {len(b)} edges: they come from different search "
                        f"spaces and cannot be compared.")
    a, b = list(a), list(b)
    return {"ops": float(np.mean([x == y for x, y in zip(a, b)])),
            "edges": float(np.mean([(x is None) == (y is None) for x, y in zip(a, b)]))}


def chance_agreement(method, arch_state: Dict[str, torch.Tensor], op_set: str, cfg, samples: int = 500,
                     seed: int = 0) -> Dict[str, float]:
    """The mean :func:`decisions_agreement` of ``samples`` pairs of random architectures of the space of
    ``arch_state`` (:func:`~nnunet_nas.random_architecture.random_arch_state`), each discretised by ``method``'s
    rule."""
    gen = torch.Generator().manual_seed(seed)

    def draw():
        return method.discretize(random_arch_state(arch_state, gen), op_set, cfg=cfg).edge_decisions()
    pairs = [decisions_agreement(draw(), draw()) for _ in range(samples)]
    return {k: float(np.mean([p[k] for p in pairs])) for k in ("ops", "edges")}


def search_agreement(checkpoint_a: str, checkpoint_b: str, samples: int = 500, seed: int = 0) -> dict:
    """How far the architectures of two search checkpoints agree, and how far two random ones of their space do."""
    from nnunet_nas.nnunet.export import read_searched_architecture
    a, b = read_searched_architecture(checkpoint_a), read_searched_architecture(checkpoint_b)

    def space(s):
        return s.method.name, s.op_set, {k: tuple(v.shape) for k, v in s.arch_state.items() if k != "alive_ops"}
    if space(a) != space(b):
        raise UserError(f"{checkpoint_a} ({a.method.name}, {a.op_set}) and {checkpoint_b} ({b.method.name}, "
                        f"{b.op_set}) searched different spaces; compare two searches of the same method, op set and "
                        f"size.")
    found = [s.method.discretize(s.arch_state, s.op_set, cfg=s.config).edge_decisions() for s in (a, b)]
    method, op_set = a.method, a.op_set
    return {"method": method.name, "op_set": op_set, "edges_total": len(found[0]),
            "agreement": decisions_agreement(*found),
            "chance": chance_agreement(method, a.arch_state, op_set, a.config, samples, seed),
            "samples": samples}


def agreement_lines(result: dict) -> list:
    a, c = result["agreement"], result["chance"]
    n = result["edges_total"]
    return [f"{result['method']} ({result['op_set']}, {n} edges): the two searches agree on the op of "
            f"{a['ops']:.0%} of the edges ({round(a['ops'] * n)} of {n}; random architectures of this space: "
            f"{c['ops']:.0%}) and keep or drop the same edges on {a['edges']:.0%} (random: {c['edges']:.0%}); "
            f"chance by Monte Carlo over {result['samples']} pairs through the method's discretiser.",
            verdict(a["ops"], c["ops"])]


def verdict(agree: float, chance: float, margin: float = 0.1) -> str:
    if agree >= chance + margin:
        return "The searches agree more than chance: they found something about this data."
    return (f"The searches agree no more than chance (within {margin:.0%}): their architectures are not reproducible "
            "at this budget.")
