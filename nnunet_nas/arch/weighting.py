"""How the supernet's per-op weights are formed from the architecture parameters (a weighting), one class each.

A weighting is called once per forward pass: ``weights = weighting(arch)``. It may sample (then it draws from its
own ``torch.Generator``, seeded identically on every DDP rank, so every rank runs the same sampled ops) and it
may carry a temperature that a strategy anneals (:mod:`nnunet_nas.strategies.temperature`). Its
``state_dict`` (temperature, generator) goes into the search checkpoint, so a resumed search samples as an
uninterrupted one would.

* :class:`GridEdgeOpWeighting` (DiNTS): ``P(edge on | block non-empty) * softmax(alpha)``, ``[L, E, N]``.
* :class:`SoftmaxWeighting` (DARTS): ``softmax(alpha)`` over the op axis.
* :class:`GumbelSoftmaxWeighting` (GDAS-style relaxation): ``softmax((alpha + g) / tau)``, g ~ Gumbel(0, 1).
* :class:`GumbelPairWeighting` (SCNAS Algorithm 1): one sampled pair of ops per edge with renormalised
  Gumbel-softmax weights, returned as :class:`SampledOpWeights` (weights plus which ops run).
* :class:`EdgeNormalisedWeighting` (PC-DARTS, IAC): ``softmax(alpha)`` per edge and a softmax of ``beta`` over each
  node's incoming edges, returned as :class:`EdgeNormalisedWeights`.
"""

from typing import NamedTuple, Optional

import torch

from nnunet_nas.arch.grid_probs import edge_marginals
from nnunet_nas.spaces.cell import cell_num_nodes, node_softmax


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU from pinned memory without waiting for the copy (a plain copy from pageable
    memory waits: a host sync per forward pass)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
        return to_device((-torch.log(-torch.log(u.clamp_min(1e-20)))).to(like.dtype), like.device)

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


class SampledOpWeights(NamedTuple):
    """Per-op weights ``[..., N]`` and the ops that run ``active`` (bool, same shape, on the CPU): a sampling
    weighting runs only some ops, and which ones is not a property of the weights' values (a relaxed weight may
    underflow to zero)."""
    weights: torch.Tensor
    active: torch.Tensor

    def detach(self) -> "SampledOpWeights":
        return SampledOpWeights(self.weights.detach(), self.active)


class GumbelPairWeighting(GumbelSoftmaxWeighting):
    """SCNAS's stochastic two-operation sampling (Kim et al., MICCAI 2019, Algorithm 1), per edge:

    1. ``z = softmax((alpha + g) / tau)`` over the alive ops (g ~ Gumbel(0, 1));
    2. every unordered pair {a, b} of alive ops has probability ``(z_a + z_b) / (n - 1)`` (n alive ops; each op is
       in n - 1 pairs, so these sum to one); one pair is drawn;
    3. the pair runs with weights ``z_a / (z_a + z_b)`` and ``z_b / (z_a + z_b)``; every other op has weight 0 and
       does not run. Gradients reach alpha through ``z``.

    The pair is drawn exactly with that law as: first op ``a ~ Categorical(z)``, second op uniform among the other
    alive ops (``P({a, b}) = z_a / (n-1) + z_b / (n-1)``). Both draws use this weighting's own generator on the CPU,
    so every DDP rank samples the same pairs. An edge with a single alive op (after pruning) runs it with weight 1.
    """

    def pair_probabilities(self, z: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """``[..., N, N]``: probability of each unordered pair {a, b} (a != b, both alive), stored at [a, b] and
        [b, a] alike (each half of it); for documentation and tests, the sampler does not need it."""
        n = alive.sum(-1, keepdim=True).unsqueeze(-1).to(z.dtype)
        both = alive.unsqueeze(-1) & alive.unsqueeze(-2)
        both = both & ~torch.eye(z.shape[-1], dtype=torch.bool, device=z.device)
        q = (z.unsqueeze(-1) + z.unsqueeze(-2)) / (n - 1).clamp_min(1)
        return torch.where(both, q / 2, torch.zeros_like(q))

    def __call__(self, arch) -> SampledOpWeights:
        logits = arch.op_logits
        alive = arch.alive_ops if arch.alive_ops is not None else torch.ones_like(logits, dtype=torch.bool)
        noisy = (logits + self.gumbel(logits)).masked_fill(~alive, float("-inf"))
        z = torch.softmax(noisy / self.temperature, dim=-1)
        first, second = self.sample_pair(z.detach(), alive)
        active = torch.zeros(alive.shape, dtype=torch.bool)  # on the CPU: the network reads it without a sync
        active.scatter_(-1, first.unsqueeze(-1), True)
        active.scatter_(-1, second.unsqueeze(-1), True)
        zp = z * to_device(active, z.device)
        weights = zp / zp.sum(-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        return SampledOpWeights(weights, active)

    def sample_pair(self, z: torch.Tensor, alive: torch.Tensor):
        """CPU indices ``[...]`` of the first (``~ z``) and second (uniform among the other alive ops) op per edge;
        the two coincide where only one op is alive."""
        n = z.shape[-1]  # z and the mask read from the device in one copy (one host sync per draw, not two)
        both = torch.cat([z.reshape(-1, n).double(), alive.reshape(-1, n).double()], -1).cpu()
        flat_z, flat_alive = both[:, :n], both[:, n:].bool()
        first = torch.multinomial(flat_z * flat_alive, 1, generator=self.generator).squeeze(-1)
        others = flat_alive.clone()
        others[torch.arange(len(first)), first] = False
        single = ~others.any(-1)
        others[single, first[single]] = True  # one alive op: the pair is that op twice
        second = torch.multinomial(others.double(), 1, generator=self.generator).squeeze(-1)
        shape = z.shape[:-1]
        return first.view(shape), second.view(shape)


class EdgeNormalisedWeights(NamedTuple):
    """Per-op weights ``[..., E, N]`` and per-edge weights ``[..., E]`` (PC-DARTS edge normalisation: an edge's
    whole output, bypassed channels included, is multiplied by its edge weight)."""
    ops: torch.Tensor
    edges: torch.Tensor

    def detach(self) -> "EdgeNormalisedWeights":
        return EdgeNormalisedWeights(self.ops.detach(), self.edges.detach())


class EdgeNormalisedWeighting(Weighting):
    """PC-DARTS: ``softmax(alpha)`` over the alive ops of each edge, and ``softmax(beta)`` over the incoming edges
    of each cell node (:func:`~nnunet_nas.spaces.cell.node_softmax`)."""

    def __call__(self, arch) -> EdgeNormalisedWeights:
        num_nodes = cell_num_nodes(arch.edge_norm_logits.shape[-1])
        return EdgeNormalisedWeights(arch.op_probs(), node_softmax(arch.edge_norm_logits, num_nodes))
