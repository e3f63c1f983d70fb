"""DAST's transformer operation (Yang et al., MICCAI 2023, Eq. 1-2), on HR-NAS's recipe, in 2-D and 3-D.

``x [B, C_in, *S]`` -> tokens -> encoder-decoder transformer -> segmentation attention -> ``[B, C_out, *S']``
(``S' = S / stride``):

1. **projector** (Eq. 1): the features are resized to a fixed token grid ``g^dims`` (``token_grid``; ``g = 8`` in
   3-D gives the paper's 512 tokens, NAS_METHODS.md section 4), concatenated with a learnable ``dims``-channel
   positional map initialised to normalised coordinates ``(i + 0.5) / g`` (Eq. 2), and projected by a 1x1 conv and
   a norm to ``d_model = C_out`` channels; each grid cell is one token;
2. **transformer**: one post-norm encoder layer (self-attention, FFN of width ``d_model``) over the tokens (the
   memory), one post-norm decoder layer whose inputs are learned query embeddings (self-attention, cross-attention
   to the memory, FFN);
3. **segmentation attention** without residual: multi-head attention with queries from the decoder output and keys
   and values from the memory; its weights are what :meth:`TransformerOp.attention_maps` returns (the paper's
   Fig. 4);
4. **reverse projector**: tokens back to the grid, a 1x1 conv and a norm, resized to ``S'``.

Attention runs through PyTorch's fused ``scaled_dot_product_attention``; only :meth:`attention_maps` forms the
attention weights. ``d_model`` must be divisible by ``num_heads`` (8, the paper's). The token grid may differ per
axis; a feature map smaller than the token grid on any axis is refused (the op would invent tokens).
:func:`resolve_token_grid` gives each level of a space its grid: ``min(8, extent)`` per axis by default, so the op
works at every level and for every patch the planner can produce (a 5 x 3 coarse level gets 15 tokens).
"""

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_nas.errors import ConfigError
from nnunet_nas.geometry import as_axes
from nnunet_nas.ops.conv import DINTS_STYLE, OpStyle, conv_nd, resample

NUM_HEADS = 8  # [paper]
TOKEN_GRID = 8  # [ours, NAS_METHODS.md 4] 8^3 = 512 tokens in 3-D (the paper's 512), 8^2 = 64 in 2-D


TokenGrid = Union[None, int, Sequence[int]]


def resolve_token_grid(token_grid: TokenGrid, spatial_dims: int, feature_shape: Optional[Sequence[int]] = None
                       ) -> Tuple[int, ...]:
    """The token grid per axis of an op reading a feature map of ``feature_shape`` (spatial extents).

    ``None`` ("auto", the default of the spaces): ``min(TOKEN_GRID, extent)`` per axis (``TOKEN_GRID`` per axis when
    the shape is unknown); an int ``g``: ``g`` on every axis; a sequence: one extent per axis. An explicit grid
    larger than the feature map on some axis is one clear error."""
    if token_grid is None:
        if feature_shape is None:
            return (TOKEN_GRID,) * spatial_dims
        return tuple(min(TOKEN_GRID, int(s)) for s in feature_shape)
    grid = (int(token_grid),) * spatial_dims if isinstance(token_grid, int) else tuple(int(g) for g in token_grid)
    if len(grid) != spatial_dims or min(grid) < 1:
        raise ConfigError(f"token grid {token_grid!r}: give one positive extent, or {spatial_dims} of them.")
    if feature_shape is not None and any(g > int(s) for g, s in zip(grid, feature_shape)):
        raise ConfigError(f"the token grid {'x'.join(map(str, grid))} is larger than the feature map "
                         f"{'x'.join(str(int(s)) for s in feature_shape)} it reads; use token_grid=None (auto: "
                         f"min({TOKEN_GRID}, extent) per axis), a smaller token_grid, or a larger patch.")
    return grid


def coordinate_map(grid: Union[int, Sequence[int]], spatial_dims: int) -> torch.Tensor:
    """``[dims, g_1, ..., g_dims]``: channel ``a`` holds ``(i_a + 0.5) / g_a`` along axis ``a`` (Eq. 2's i/h, j/w,
    k/d, at cell centres)."""
    grid = (grid,) * spatial_dims if isinstance(grid, int) else tuple(grid)
    axes = [(torch.arange(g, dtype=torch.float32) + 0.5) / g for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward hands a contiguous gradient on. PyTorch's instance-norm backward on the CPU is
    wrong at batch 1 for a gradient laid out channels-last (float64 too; the token transpose below produces one):
    the package's own CPU norm kernel is right, the plain path ``torch.compile`` traces is not (tests/test_compile.py).
    """

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query / key / value / output projections; fused attention unless the
    weights are asked for."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)  # [B, h, T, c/h]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, k, v = self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        if need_weights:
            weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)  # [B, h, Tq, Tk]
            y = weights @ v
        else:
            weights, y = None, F.scaled_dot_product_attention(q, k, v)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), weights


class _FFN(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class TransformerOp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, stride: int = 1,
                 style: OpStyle = DINTS_STYLE, token_grid: TokenGrid = TOKEN_GRID, num_heads: int = NUM_HEADS):
        super().__init__()
        if out_channels % num_heads:
            raise ConfigError(f"TransformerOp: {out_channels} channels are not divisible by {num_heads} attention "
                             f"heads; use a channel count that is a multiple of {num_heads} (a wider channel_mul) or "
                             f"fewer heads.")
        stride = as_axes(stride, spatial_dims)
        if any(s not in (1, 2) for s in stride):
            raise ValueError(f"TransformerOp: stride {list(stride)} must be 1 or 2 per axis.")
        d = out_channels
        self.spatial_dims, self.stride = spatial_dims, stride
        self.token_grid = resolve_token_grid(token_grid, spatial_dims)
        self.num_tokens = int(math.prod(self.token_grid))
        self.pos = nn.Parameter(coordinate_map(self.token_grid, spatial_dims))
        self.project = nn.Sequential(conv_nd(spatial_dims)(in_channels + spatial_dims, d, 1, bias=False),
                                     style.make_norm(spatial_dims, d))
        self.enc_attn, self.enc_ffn = MultiHeadAttention(d, num_heads), _FFN(d, d)
        self.enc_norm1, self.enc_norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(self.num_tokens, d) * 0.02)
        self.dec_self, self.dec_cross, self.dec_ffn = MultiHeadAttention(d, num_heads), \
            MultiHeadAttention(d, num_heads), _FFN(d, d)
        self.dec_norm1, self.dec_norm2, self.dec_norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.seg_attn = MultiHeadAttention(d, num_heads)
        self.reverse = nn.Sequential(conv_nd(spatial_dims)(d, d, 1, bias=False), style.make_norm(spatial_dims, d))

    def _grid_size(self, shape) -> list:
        size = [int(s) for s in shape]
        if len(size) != self.spatial_dims:
            raise ValueError(f"TransformerOp: a {len(size)}-D feature map for a {self.spatial_dims}-D op.")
        try:
            resolve_token_grid(self.token_grid, self.spatial_dims, size)
        except ValueError as e:
            raise ValueError(f"TransformerOp ({self.num_tokens} tokens): {e}") from None
        return size

    def _transform(self, x: torch.Tensor, need_weights: bool):
        size = self._grid_size(x.shape[2:])
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        grid = F.adaptive_avg_pool2d(x, self.token_grid) if self.spatial_dims == 2 else \
            F.adaptive_avg_pool3d(x, self.token_grid)  # [B, C, *token_grid]
        pos = self.pos.unsqueeze(0).expand(x.shape[0], *self.pos.shape)
        tokens = _ContiguousGrad.apply(self.project(torch.cat((grid, pos.to(grid.dtype)), dim=1)))
        tokens = tokens.flatten(2).transpose(1, 2)  # [B, T, d]
        memory = self.enc_norm1(tokens + self.enc_attn(tokens, tokens, tokens)[0])
        memory = self.enc_norm2(memory + self.enc_ffn(memory))
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1).to(memory.dtype)
        q = self.dec_norm1(q + self.dec_self(q, q, q)[0])
        q = self.dec_norm2(q + self.dec_cross(q, memory, memory)[0])
        q = self.dec_norm3(q + self.dec_ffn(q))
        y, weights = self.seg_attn(q, memory, memory, need_weights=need_weights)  # no residual [paper]
        y = y.transpose(1, 2).reshape(x.shape[0], -1, *self.token_grid)
        out_size = [s // t for s, t in zip(size, self.stride)]
        return resample(self.reverse(y), mode, size=out_size, align_corners=False), weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._transform(x, need_weights=False)[0]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The segmentation attention's weights ``[B, heads, tokens (queries), tokens (memory)]``; each row sums to
        one. Memory token ``t`` is the token-grid cell ``unravel(t, token_grid)`` of the input."""
        return self._transform(x, need_weights=True)[1]


def transformer_memory_elements(out_shape, token_grid: TokenGrid = None, num_heads: int = NUM_HEADS,
                                token_tensors: int = 33) -> float:
    """Activation elements training keeps for one sample of the op with output ``(C, *S)``: DAST's Eq. 3,
    ``N x C x l'^3`` (``l'^3`` the tokens), plus what the paper leaves out. Counted, not guessed (CPU, autograd's saved
    tensors, ``tests/test_transformer_op.py``): ``N = 33`` token-sized tensors of ``C`` channels (the paper's N of
    about 15 counts operations; the attention layers, norms and FFNs keep two to three tensors each), one tensor of
    the feature map's size (the input the pooling and the interpolation need), and ``6 x heads`` token-length
    vectors (the fused attention's row statistics). The ``heads x tokens^2`` attention matrix is not kept: the fused
    kernel recomputes it in the backward pass. ``token_grid`` as in :func:`resolve_token_grid` (None: auto for the
    output's extents)."""
    c, spatial = int(out_shape[0]), [int(s) for s in out_shape[1:]]
    tokens = math.prod(resolve_token_grid(token_grid, len(spatial), spatial))
    voxels = 1.0
    for s in spatial:
        voxels *= s
    return float(token_tensors * c * tokens + 6 * num_heads * tokens + c * voxels)
