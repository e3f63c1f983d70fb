"""What one search iteration (or one training step) keeps in memory, counted without running it: a shape-only dry
run on PyTorch's fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes and dtypes, no data, no
device), on the code path of the device it names and with nnU-Net's fp16 autocast switched on for CUDA by hand (on a
machine without a GPU, ``torch.autocast("cuda")`` would switch itself off).

The count adds up the bytes of every tensor storage still alive at the end of a step's forward pass (activations
kept for the backward, autocast's fp16 weight copies, the loss's inputs); parameters, their gradients and optimiser
states are counted from the parameters. One search iteration is an architecture step (weights without gradient,
alpha with) and a weight step (alpha detached), as :class:`~nnunet_nas.nnunet.search_trainer.NASSearchTrainer`
takes them.

Checked against what PyTorch really allocates on the CPU (``tests/test_memory_count.py``); on CUDA the
GPU acceptance run (``benchmarks/gpu_acceptance.py``) compares it with ``torch.cuda.max_memory_allocated``.
"""

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# The backward pass peaks at 1.00-1.03x what the forward pass leaves alive (measured on the CPU, all four methods;
# ../shared/methods/GPU_MEMORY_AUDIT.md): the gradients of the activations replace the activations as they are freed.
BACKWARD_PEAK_FACTOR = 1.03


class _LiveStorages(TorchDispatchMode):
    """Records every storage an op creates (weakly); :meth:`alive_bytes` adds up those still alive."""

    def __init__(self, exclude=()):
        super().__init__()
        self.exclude = {s._cdata for s in exclude}
        self.storages = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                if s._cdata not in self.exclude:
                    self.storages[s._cdata] = (StorageWeakRef(s), s.nbytes())
        return out

    def alive_bytes(self) -> int:
        return sum(n for ref, n in self.storages.values() if not ref.expired())


def _fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """The fused attention CUDA runs (flash for half precision since Ampere, memory-efficient for float32): it keeps
    the row statistics, not the ``tokens^2`` matrix. Fake tensors would take the math kernel, which keeps that
    matrix in float32."""
    if attn_mask is None and not kwargs and q.dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
    if attn_mask is None and not kwargs:
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, dropout_p, is_causal,
                                                                      scale=scale)[0]
    return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)


_SDPA = F.scaled_dot_product_attention


@contextlib.contextmanager
def fake_device(device_type: str, amp: bool):
    """Fake tensors, with CUDA's fp16 autocast switched on by hand where ``amp`` and ``device_type == "cuda"`` and
    CUDA's fused attention."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    cuda = device_type == "cuda"
    was = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    with FakeTensorMode(allow_non_fake_inputs=True):
        if cuda and amp:
            torch.set_autocast_enabled("cuda", True)
            torch.set_autocast_dtype("cuda", torch.float16)
        if cuda:
            F.scaled_dot_product_attention = _fused_attention
        try:
            yield
        finally:
            F.scaled_dot_product_attention = _SDPA
            torch.set_autocast_enabled("cuda", was[0])
            torch.set_autocast_dtype("cuda", was[1])
            torch.clear_autocast_cache()  # autocast's cached fp16 copies of the fake weights


def _to_fake(module: torch.nn.Module, device: torch.device) -> None:
    """Replace ``module``'s parameters and buffers by fake tensors on ``device`` (inside :func:`fake_device`),
    shared ones shared still."""
    done = {}
    for m in module.modules():
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is None:
                    continue
                if id(t) not in done:
                    fake = torch.empty(t.shape, dtype=t.dtype, device=device)
                    done[id(t)] = torch.nn.Parameter(fake, t.requires_grad) if isinstance(t, torch.nn.Parameter) \
                        else fake
                store[name] = done[id(t)]


def deep_supervision_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    """A stand-in for nnU-Net's Dice + CE with deep supervision: cross-entropy at every output, in fp32 (what the
    loss keeps is small beside the network's activations)."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = 0.0
    for k, out in enumerate(outputs):
        t = target if tuple(out.shape[2:]) == tuple(target.shape[1:]) else \
            F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        total = total + F.cross_entropy(out.float(), t) / 2 ** k
    return total


@dataclass(frozen=True)
class IterationMemory:
    """Bytes of one search iteration (or, with ``arch_step_activations == 0``, one training step)."""
    arch_step_activations: int  # alive at the end of the architecture step's forward pass
    weight_step_activations: int  # alive at the end of the weight step's forward pass
    parameters: int  # every parameter, fp32
    trained_weights: int  # the weights the weight step trains (gradient and optimiser state each)
    weight_optimizer_states: int  # per trained weight: 1 (SGD's momentum), 2 (Adam)
    arch_parameters: int  # alpha and the like (gradient and two Adam states each)
    gradient_buckets: int = 0  # DDP's copy of the trained weights' gradients (its reducer's buckets)

    @property
    def activations(self) -> int:
        return max(self.arch_step_activations, self.weight_step_activations)

    @property
    def peak(self) -> int:
        """Parameters, the weights' gradients and optimiser states (the weight step's gradients are still held
        during the next architecture step), alpha's gradient and Adam states, and the larger step's activations
        at their backward peak."""
        return self.peak_at(1.0)

    def peak_at(self, scale: float) -> int:
        """:attr:`peak` with the activations times ``scale`` (activations are about linear in batch x voxels)."""
        persistent = self.parameters + self.trained_weights * (1 + self.weight_optimizer_states) \
            + 3 * self.arch_parameters + self.gradient_buckets
        return int(persistent + BACKWARD_PEAK_FACTOR * self.activations * scale)

    def to_dict(self) -> dict:
        return {"arch_step_activations": self.arch_step_activations,
                "weight_step_activations": self.weight_step_activations, "parameters": self.parameters,
                "trained_weights": self.trained_weights, "weight_optimizer_states": self.weight_optimizer_states,
                "arch_parameters": self.arch_parameters, "gradient_buckets": self.gradient_buckets, "peak": self.peak}


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _forward_alive(net, data, target, exclude) -> int:
    with _LiveStorages(exclude) as live:
        loss = deep_supervision_loss(net(data), target)
        alive = live.alive_bytes()
    del loss
    return alive


class _OutsideFake:
    """A weighting evaluated on real tensors: alpha stays real (the search's sampling draws from data, which fake
    tensors do not hold); the supernet reads the result under fake tensors as it reads alpha's weights in a run."""

    def __init__(self, weighting):
        self.weighting = weighting

    def __call__(self, arch):
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        with unset_fake_temporarily():
            return self.weighting(arch)


def count_search_iteration(net, batch: int, patch: Sequence[int], input_channels: int, device_type: str = "cuda",
                           amp: bool = True, weight_optimizer_states: int = 1, fake: bool = True,
                           ddp: bool = False) -> IterationMemory:
    """Count one search iteration of ``net``, a :class:`~nnunet_nas.nnunet.search_network.SearchNetwork` built on
    the CPU for the count (its supernet's parameters become fake tensors: pass a network built for this), at
    ``batch`` x ``patch`` on ``device_type``'s code path, with the weights that are frozen already frozen.
    ``fake=False`` runs the same steps for real on the CPU (``device_type="cpu"``, no autocast): the measurement
    the fake count is tested against. ``ddp``: as the trainer runs under DDP, whose reducer keeps a second copy of
    the trained weights' gradients and whose parameters keep ``requires_grad`` in the architecture step too."""
    device = torch.device(device_type)
    if fake:
        net.weighting = _OutsideFake(net.weighting)
    arch_bytes = _bytes(net.arch_parameters())
    with fake_device(device_type, amp) if fake else contextlib.nullcontext(), torch.random.fork_rng(devices=[]):
        if fake:
            _to_fake(net.supernet, device)
        params = list(net.supernet.parameters())
        exclude = [p.untyped_storage() for p in params]
        data = torch.zeros(batch, input_channels, *patch, device=device)
        target = torch.zeros(batch, *patch, dtype=torch.long, device=device)
        weights = list(net.weight_parameters())
        for p in weights if not ddp else ():  # the architecture step computes no weight gradients (outside DDP)
            p.requires_grad_(False)
        try:
            arch = _forward_alive(net, data, target, exclude)
        finally:
            for p in weights:
                p.requires_grad_(True)
        net.arch_frozen = True
        weight = _forward_alive(net, data, target, exclude)
        return IterationMemory(arch, weight, _bytes(params) + arch_bytes, _bytes(weights), weight_optimizer_states,
                               arch_bytes, _bytes(weights) if ddp else 0)


def count_training_step(net: torch.nn.Module, batch: int, patch: Sequence[int], input_channels: int,
                        device_type: str = "cuda", amp: bool = True) -> IterationMemory:
    """One training step of a fixed network built on the CPU for the count (nnU-Net's SGD: one momentum state per
    weight)."""
    device = torch.device(device_type)
    with fake_device(device_type, amp), torch.random.fork_rng(devices=[]):
        _to_fake(net, device)
        params = list(net.parameters())
        data = torch.empty(batch, input_channels, *patch, device=device)
        target = torch.zeros(batch, *patch, dtype=torch.long, device=device)
        alive = _forward_alive(net, data, target, [p.untyped_storage() for p in params])
        trained = [p for p in params if p.requires_grad]
        return IterationMemory(0, alive, _bytes(params), _bytes(trained), 1, 0)
