"""DAST's transformer operation alone (ops/transformer.py): shapes for odd and even sizes in 2-D and 3-D, gradients
reach the positional map and the learned queries, attention rows sum to one, determinism, clear errors."""

import pytest
import torch

from nnunet_nas.ops.transformer import TransformerOp, coordinate_map


@pytest.mark.parametrize("dims,size,stride", [(2, (9, 12), 1), (2, (16, 16), 2), (3, (5, 6, 7), 1),
                                              (3, (8, 8, 8), 2)])
def test_output_shape_equals_input_shape_and_gradients_reach_positions_and_queries(dims, size, stride):
    torch.manual_seed(0)
    op = TransformerOp(8, 16, dims, stride=stride, token_grid=4)
    x = torch.randn(2, 8, *size, requires_grad=True)
    y = op(x)
    assert list(y.shape) == [2, 16] + [s // stride for s in size]
    y.square().mean().backward()
    for name in ("pos", "queries"):
        g = getattr(op, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_attention_rows_sum_to_one_and_the_fused_path_computes_the_same_output():
    torch.manual_seed(1)
    op = TransformerOp(8, 16, 3, token_grid=2).eval()
    x = torch.randn(1, 8, 6, 6, 6)
    w = op.attention_maps(x)
    assert list(w.shape) == [1, 8, 8, 8]  # batch, heads, queries, memory tokens (2^3)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 8, 8))
    with torch.no_grad():
        fused = op(x)
        explicit = op._transform(x, need_weights=True)[0]
    torch.testing.assert_close(fused, explicit, rtol=1e-3, atol=1e-4)  # float32 summation order


def test_deterministic_with_a_fixed_seed():
    def run():
        torch.manual_seed(3)
        op = TransformerOp(4, 8, 2, token_grid=4)
        return op(torch.randn(2, 4, 10, 11))
    assert torch.equal(run(), run())


def test_positional_map_starts_at_normalised_coordinates():
    m = coordinate_map(4, 3)
    assert list(m.shape) == [3, 4, 4, 4]
    assert torch.allclose(m[0, :, 0, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.allclose(m[2, 0, 0, :], torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="not divisible by 8 attention heads"):
        TransformerOp(8, 12, 3)
    op = TransformerOp(8, 16, 3, token_grid=8)
    with pytest.raises(ValueError, match="larger than the feature map 4x8x8"):
        op(torch.randn(1, 8, 4, 8, 8))


@pytest.mark.parametrize("dims,channels,size", [(3, 32, 16), (3, 64, 8), (3, 32, 32), (2, 32, 64), (2, 64, 32)])
def test_memory_estimate_matches_the_activations_autograd_keeps(dims, channels, size):
    from nnunet_nas.arch.memory import saved_activation_elements
    from nnunet_nas.ops.transformer import transformer_memory_elements
    torch.manual_seed(0)
    op = TransformerOp(channels, channels, dims, token_grid=8)
    x = torch.randn(1, channels, *[size] * dims, requires_grad=True)
    measured = saved_activation_elements(op, x)
    estimate = transformer_memory_elements([channels] + [size] * dims, 8)
    assert abs(estimate / measured - 1) < 0.05, (estimate, measured)
