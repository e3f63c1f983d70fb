"""How the supernet's per-op weights are formed from the architecture parameters (a weighting), one class each.

A weighting is called once per forward pass: ``weights = weighting(arch)``. It may sample (then it draws from its
own ``torch.Generator``, seeded identically on every DDP rank, so every rank runs the same sampled ops) and it
may carry a temperature that a strategy anneals (:mod:`nnunet_nas.strategies.temperature`). Its
``state_dict`` (temperature, generator) goes into the search checkpoint, so a resumed search samples as an
uninterrupted one would.

* :class:`GridEdgeOpWeighting` (DiNTS): ``P(edge on | block non-empty) * softmax(alpha)``, ``[L, E, N]``.
* :class:`SoftmaxWeighting` (DARTS): ``softmax(alpha)`` over the op axis.
* :class:`GumbelSoftmaxWeighting` (GDAS-style relaxation): ``softmax((alpha + g) / tau)``, g ~ Gumbel(0, 1).
"""

from typing import Optional

import torch

from nnunet_nas.arch.grid_probs import edge_marginals


class Weighting:
    """Base: deterministic, no temperature."""
    temperature: Optional[float] = None

    def __call__(self, arch) -> torch.Tensor:
        raise NotImplementedError

    def seed(self, seed: int) -> None:
        """Seed the sampling generator (the same seed on every rank)."""

    def state_dict(self) -> dict:
        return {"temperature": self.temperature}

    def load_state_dict(self, state: dict) -> None:
        self.temperature = state.get("temperature", self.temperature)


class GridEdgeOpWeighting(Weighting):
    """DiNTS (MONAI's forward): ``[L, E, N]`` = edge marginal ``[L, E, 1]`` x op probabilities."""

    def __call__(self, arch) -> torch.Tensor:
        return edge_marginals(arch.edge_logits)[..., None] * arch.op_probs()


class SoftmaxWeighting(Weighting):
    """DARTS: softmax over the alive ops of each edge."""

    def __call__(self, arch) -> torch.Tensor:
        return arch.op_probs()


class GumbelSoftmaxWeighting(Weighting):
    """``softmax((alpha + g) / tau)`` over alive ops with fresh Gumbel noise per call (differentiable in alpha)."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = float(temperature)
        self.generator = torch.Generator()
        self.generator.manual_seed(0)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def gumbel(self, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(like.shape, generator=self.generator, dtype=torch.float64)  # on the CPU: same on every rank
        return (-torch.log(-torch.log(u.clamp_min(1e-20)))).to(device=like.device, dtype=like.dtype)

    def __call__(self, arch) -> torch.Tensor:
        logits = arch.op_logits + self.gumbel(arch.op_logits)
        if arch.alive_ops is not None:
            logits = logits.masked_fill(~arch.alive_ops, float("-inf"))
        return torch.softmax(logits / self.temperature, dim=-1)

    def state_dict(self) -> dict:
        return {"temperature": self.temperature, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
