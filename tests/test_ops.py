"""The CPU fast paths of the building blocks compute the same function as the PyTorch modules they extend."""

import pytest
import torch
from torch import nn

from nnunet_nas.ops.conv import Conv2d, Conv3d, InstanceNorm2d, InstanceNorm3d


def _forward_and_grads(module, x):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad, [p.grad.clone() for p in module.parameters()]


def _assert_same(ours, reference, x):
    reference.load_state_dict(ours.state_dict())
    for a, b in zip(_forward_and_grads(ours, x), _forward_and_grads(reference, x)):
        if isinstance(a, list):
            assert len(a) == len(b)
            for ga, gb in zip(a, b):
                torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims,affine,batch", [(2, True, 1), (2, False, 3), (3, True, 2)])
def test_instance_norm_by_group_kernel_equals_instance_norm(dims, affine, batch):
    torch.manual_seed(0)
    ours = (InstanceNorm2d, InstanceNorm3d)[dims - 2](5, affine=affine)
    reference = (nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 2](5, affine=affine)
    if affine:
        with torch.no_grad():
            ours.weight.normal_()
            ours.bias.normal_()
    assert isinstance(ours, type(reference)) and ours.state_dict().keys() == reference.state_dict().keys()
    _assert_same(ours, reference, 3 * torch.randn(batch, 5, *([6] * dims)) + 1)


@pytest.mark.parametrize("dims,kwargs,batch", [
    (2, dict(kernel_size=1, bias=False), 1),
    (2, dict(kernel_size=1, bias=True), 3),
    (3, dict(kernel_size=1, bias=True), 2),
    (2, dict(kernel_size=1, stride=2, bias=False), 2),  # not pointwise stride-1: the conv itself
    (3, dict(kernel_size=3, padding=1, bias=False), 1),
])
def test_pointwise_conv_by_matmul_equals_conv(dims, kwargs, batch):
    torch.manual_seed(0)
    ours = (Conv2d, Conv3d)[dims - 2](6, 4, **kwargs)
    reference = (nn.Conv2d, nn.Conv3d)[dims - 2](6, 4, **kwargs)
    assert isinstance(ours, type(reference))
    _assert_same(ours, reference, torch.randn(batch, 6, *([8] * dims)))
    # channels-last input (a strided layout) gives the same result
    x = torch.randn(batch, 6, *([8] * dims))
    layout = (torch.channels_last, torch.channels_last_3d)[dims - 2]
    torch.testing.assert_close(ours(x.contiguous(memory_format=layout)), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,dims,stride", [("max", 2, 1), ("avg", 2, 2), ("max", 3, 2), ("avg", 3, 1)])
def test_pooling_of_inputs_smaller_than_the_kernel_is_the_padded_pooling(kind, dims, stride):
    from nnunet_nas.ops.pooling import Pool
    pool = Pool(kind, 3, 3, 3, dims, stride)
    x = torch.randn(2, 3, *([5] * dims))
    torch.testing.assert_close(pool._pool_small(x), pool.pool(x))  # the fallback computes PyTorch's pooling
    small = torch.randn(1, 3, *([2] * dims))  # PyTorch's pooling refuses it
    assert pool._pool_small(small).shape[2:] == (1 if stride == 2 else 2,) * dims
    if stride == 1:
        assert pool(small).shape == small.shape
