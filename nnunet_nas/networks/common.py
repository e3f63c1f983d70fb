"""What every fixed network shares with nnU-Net: the deep-supervision switch nnU-Net toggles, the outputs it expects
with and without deep supervision, loading a checkpoint trained with deep supervision into a network built without it
(nnU-Net's prediction), and the count of conv outputs nnU-Net's planner sizes networks by."""

from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn


class DecoderSwitch(nn.Module):
    """Holds the flag nnU-Net toggles (``network.decoder.deep_supervision``)."""

    def __init__(self, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision


def drop_head_weights(state_dict, prefix, *args):
    """Load-state-dict pre-hook: a network without deep-supervision heads ignores ``ds_heads.*`` weights."""
    for key in [k for k in state_dict if k.startswith(prefix + "ds_heads.")]:
        del state_dict[key]


def with_deep_supervision(net: nn.Module, main, features):
    """``main`` alone, or (nnU-Net training with deep supervision) ``[main] + [head(features[r]) for r = 1..]``, one
    head per extra output (``net.ds_heads``), highest resolution first."""
    if not net.decoder.deep_supervision:
        return main
    if len(net.ds_heads) != net.num_outputs - 1:
        raise RuntimeError(f"{type(net).__name__} was built without deep supervision (no output heads); build it "
                           f"with deep_supervision=True to train with deep supervision.")
    return [main] + [head(features[r + 1]) for r, head in enumerate(net.ds_heads)]


# what dynamic_network_architectures' compute_conv_feature_map_size counts (conv outputs), and linear outputs
COUNTED_OUTPUTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear)


def module_output_elements(net: nn.Module, input_channels: int, patch_size: Sequence[int],
                           *args) -> List[Tuple[str, int]]:
    """``(module name, elements of its output)`` for every call of a conv or linear module in one forward of ``net``
    (built on the meta device) at batch 1, ``args`` passed after the input (a supernet's architecture weights)."""
    calls = []

    def hook(name):
        return lambda module, inputs, output: calls.append((name, output.numel()))
    hooks = [m.register_forward_hook(hook(n)) for n, m in net.named_modules() if isinstance(m, COUNTED_OUTPUTS)]
    try:
        with torch.no_grad():
            net(torch.zeros((1, input_channels) + tuple(int(p) for p in patch_size), device="meta"), *args)
    finally:
        for h in hooks:
            h.remove()
    return calls


def conv_output_elements(build: Callable[[], nn.Module], input_channels: int, patch_size: Sequence[int]) -> int:
    """Elements of every conv (and linear) output of one forward of ``build()`` (built on the meta device) at batch
    1."""
    with torch.device("meta"):
        net = build()
    return int(sum(n for _, n in module_output_elements(net, input_channels, patch_size)))
