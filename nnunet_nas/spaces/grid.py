"""The DiNTS multi-resolution grid: L blocks (super nodes) x D levels (He et al., CVPR 2021, Fig. 2, Eq. 1).

One class serves both the supernet (every edge, every op, driven by weights the caller computes from the
architecture parameters) and the fixed network (the edges and the single op per edge of a genotype), so the
two cannot drift and module names coincide: cell ``cells["b{b}_e{e}"]`` holds ``pre`` (the edge's resolution
change) and ``ops[op_name]``.

Search forward (``weights`` given) uses, per edge, ``sum_n w[b, e, n] * op_n(pre(x))`` where the caller folds
the edge probability into ``w`` ([ours]: equal to MONAI's ``p_e * sum_n softmax_n * op_n`` without storing the
cell output twice). Memory and time are kept low ([ours], figures in BENCHMARKS.md):

* one ReLU per source node is shared by every conv op and the down-sampling edge that read it;
* on the CPU with ``recompute_norms`` (the default) each edge is one autograd function (:class:`_LeanEdge`)
  that keeps only the conv outputs (the inputs of the InstanceNorms) and the norm statistics. ReLU outputs,
  norm outputs, the up-sampled/ReLU'd input of an up edge, the edge's own pre-processed input and, when their
  weight gradients need them, the inputs of the second convs of the P3D ops are recomputed in backward from
  those and from the source node. With frozen weights (the architecture step) no weight gradient is computed;
* the stride-1 convolutions of the cells run on oneDNN (``torch.mkldnn_convolution``) also where PyTorch's
  heuristic falls back to its slow im2col kernel (small 3-D volumes with batch 1, i.e. the coarse levels);
  their input gradients are the same oneDNN convolution with the flipped, transposed kernel. Results agree with
  the plain path to float rounding (about 1e-6 relative). Weight gradients use PyTorch's own backward kernel; at
  batch 1 on small volumes it is fed the two depth halves as a batch of two, which makes it pick oneDNN;
* with ``recompute_norms`` elsewhere (CUDA, op modules it does not know) the InstanceNorm outputs are recomputed
  under ``torch.utils.checkpoint``; ``recompute_norms=False`` is plain autograd (the reference the tests compare to).
"""

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from nnunet_nas.ops.catalog import edge_preprocess, op_set
from nnunet_nas.ops.conv import ActConvNorm, FactorizedIncrease, FactorizedReduce
from nnunet_nas.spaces.grid_topology import check_num_blocks, grid_topology
from nnunet_nas.spaces.mixed_op import weighted_op_sum


GRID_OP_SETS = {2: "dints_2d", 3: "dints_3d"}


def default_grid_op_set(spatial_dims: int) -> str:
    """The DiNTS op set of the grid in 2-D / 3-D."""
    try:
        return GRID_OP_SETS[spatial_dims]
    except KeyError:
        raise ValueError(f"the grid space is 2-D or 3-D, got spatial_dims={spatial_dims!r}.") from None


class GridCell(nn.Module):
    def __init__(self, in_channels, out_channels, direction, spatial_dims, specs, feature_shape=None, op_options=None):
        super().__init__()
        self.pre = edge_preprocess(in_channels, out_channels, direction, spatial_dims)
        self.ops = nn.ModuleDict({s.name: s.make(out_channels, out_channels, spatial_dims, feature_shape=feature_shape,
                                                 options=op_options) for s in specs})


def _weighted_norm_sum(weights: torch.Tensor, skip_index: int, x: torch.Tensor, norms, *pre_norm):
    """sum_n w_n * norm_n(z_n) (+ w_skip * x); run under checkpoint so the norm outputs are not stored."""
    out = None
    k = 0
    for n in range(weights.shape[0]):
        if n == skip_index:
            y = x * weights[n]
        else:
            y = norms[k](pre_norm[k]) * weights[n]
            k += 1
        out = y if out is None else out + y
    return out


# ---------------------------------------------------------------------------------------------- lean edge
_CONV_TYPES = (nn.Conv2d, nn.Conv3d)
_NORM_TYPES = (nn.InstanceNorm2d, nn.InstanceNorm3d)
_ONEDNN_MIN_VOXELS = 216  # below ~6^3 voxels PyTorch's own kernel is as fast (measured during development)
_conv_backward = torch.ops.aten.convolution_backward


def _onednn_ok(conv: nn.Module, shape, dtype, device) -> bool:
    """Stride-1, 'same'-padded, undilated, ungrouped 3-D float32 conv on the CPU with a large enough volume."""
    return (device.type == "cpu" and len(shape) == 5 and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and all(s == 1 for s in conv.stride) and all(d == 1 for d in conv.dilation)
            and all(k % 2 == 1 and p == k // 2 for k, p in zip(conv.kernel_size, conv.padding))
            and int(np.prod(shape[2:])) >= _ONEDNN_MIN_VOXELS)


def _conv_forward(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _onednn_ok(conv, x.shape, x.dtype, x.device):
        return torch.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, conv.padding, conv.stride,
                                        conv.dilation, conv.groups)
    return conv(x)


def _conv_grads(conv: nn.Module, grad: torch.Tensor, x: Optional[torch.Tensor], x_shape, need_input: bool,
                need_weight: bool, need_bias: bool):
    """(grad_input, grad_weight, grad_bias) of ``conv`` at input ``x`` (``x`` may be None if no weight grad)."""
    grad_input = None
    dims = len(x_shape) - 2
    if need_input and _onednn_ok(conv, x_shape, grad.dtype, grad.device):
        # input gradient of a stride-1 'same' conv = the same conv with the kernel flipped and in/out swapped
        flipped = conv.weight.transpose(0, 1).flip(tuple(range(2, 2 + dims)))
        grad_input = torch.mkldnn_convolution(grad.contiguous(), flipped, None, conv.padding, conv.stride,
                                              conv.dilation, conv.groups)
        need_input = False
    grad_weight = grad_bias = None
    if need_weight and not need_input and not need_bias and x is not None and _split_weight_grad_ok(conv, x):
        grad_weight = _split_weight_grad(conv, grad, x)
        need_weight = False
    if need_input or need_weight or need_bias:
        if x is None:  # only the input gradient is asked for: the kernel reads the input's shape, not its values
            x = grad.new_zeros(()).expand(x_shape)
        gi, gw, gb = _conv_backward(grad, x, conv.weight, [conv.out_channels] if conv.bias is not None else None,
                                    list(conv.stride), list(conv.padding), list(conv.dilation), False, [0] * dims,
                                    conv.groups, [need_input, need_weight, need_bias])
        grad_input = gi if need_input else grad_input
        grad_weight, grad_bias = (gw if need_weight else None), (gb if need_bias else None)
    return grad_input, grad_weight, grad_bias


def _split_weight_grad_ok(conv: nn.Module, x: torch.Tensor) -> bool:
    """True where PyTorch would compute this weight gradient with its slow kernel (batch 1, small volume, see
    ``ConvParams::use_mkldnn``) and splitting the depth axis into a batch of two halves makes it use oneDNN."""
    n, c, d, h = x.shape[:4]
    return (n == 1 and c * d * h <= 20480 and d % 2 == 0 and d >= 2 * conv.kernel_size[0]
            and _onednn_ok(conv, x.shape, x.dtype, x.device))


def _split_weight_grad(conv: nn.Module, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Weight gradient of a stride-1 'same' conv at batch 1 from the two depth halves of ``x`` (each with its
    zero-padded halo) stacked as a batch of two: the gradient is the sum over the batch, i.e. the same sum."""
    pd = conv.padding[0]
    half = x.shape[2] // 2
    xp = F.pad(x, (0, 0, 0, 0, pd, pd))
    x2 = torch.cat([xp[:, :, :half + 2 * pd], xp[:, :, half:]], 0)
    g2 = torch.cat([grad[:, :, :half], grad[:, :, half:]], 0)
    return _conv_backward(g2, x2, conv.weight, None, [1, 1, 1], [0] + list(conv.padding[1:]), [1, 1, 1], False,
                          [0, 0, 0], 1, [False, True, False])[1]


class _EdgePlan:
    """The modules of one search cell in the order :class:`_LeanEdge` reads them (built per call, cheap)."""

    __slots__ = ("pre_kind", "pre", "pre_convs", "pre_norm", "chains", "norms", "skip_index", "params", "spatial_dims")

    def __init__(self, cell: GridCell, skip_index: int, spatial_dims: int, other_names=frozenset()):
        pre = cell.pre
        self.pre, self.skip_index, self.spatial_dims = pre, skip_index, spatial_dims
        if isinstance(pre, nn.Identity):
            self.pre_kind, self.pre_convs, self.pre_norm = "identity", [], None
        elif isinstance(pre, FactorizedReduce):
            self.pre_kind, self.pre_convs, self.pre_norm = "reduce", [pre.conv, pre.conv2], pre.norm
        elif isinstance(pre, FactorizedIncrease):
            self.pre_kind, self.pre_convs, self.pre_norm = "increase", [pre.conv], pre.norm
        elif isinstance(pre, ActConvNorm):
            self.pre_kind, self.pre_convs, self.pre_norm = "actconv", [pre.conv], pre.norm
        else:
            raise TypeError(type(pre).__name__)
        self.chains, self.norms = [], []
        lean = [op for name, op in cell.ops.items() if name not in other_names]
        for op in lean:
            if isinstance(op, nn.Identity):
                continue
            children = list(op.children())
            convs = children[1:-1]
            if not (isinstance(children[0], nn.ReLU) and convs and all(isinstance(c, _CONV_TYPES) for c in convs)):
                raise TypeError(type(op).__name__)
            self.chains.append(convs)
            self.norms.append(children[-1])
        norms = self.norms + ([self.pre_norm] if self.pre_norm is not None else [])
        if not all(isinstance(m, _NORM_TYPES) and m.affine and not m.track_running_stats for m in norms):
            raise TypeError("norm")
        n_ops = len(lean)
        if not 0 <= skip_index < n_ops or not isinstance(lean[skip_index], nn.Identity) \
                or len(self.chains) != n_ops - 1:
            raise TypeError("skip")
        mods = list(self.pre_convs) + ([self.pre_norm] if self.pre_norm is not None else [])
        mods += [c for chain in self.chains for c in chain] + self.norms
        self.params = [p for m in mods for p in m.parameters(recurse=False)]

    @staticmethod
    def build(cell, skip_index, spatial_dims, other_names=frozenset()) -> Optional["_EdgePlan"]:
        try:
            return _EdgePlan(cell, skip_index, spatial_dims, other_names)
        except TypeError:
            return None  # a module this function does not know: the checkpoint path handles it


def _shifted(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x[(Ellipsis,) + (slice(1, None),) * dims]


def _norm_forward(norm: nn.Module, z: torch.Tensor):
    """InstanceNorm (affine, no running stats) as ``F.instance_norm`` computes it, plus its saved statistics."""
    b, c = z.shape[:2]
    zr = z.reshape((1, b * c) + tuple(z.shape[2:]))
    weight, bias = (norm.weight, norm.bias) if b == 1 else (norm.weight.repeat(b), norm.bias.repeat(b))
    y, mean, invstd = torch.native_batch_norm(zr, weight, bias, None, None, True, 0.0, norm.eps)
    return y.view(z.shape), mean, invstd


def _norm_backward(norm: nn.Module, grad: torch.Tensor, z: torch.Tensor, mean, invstd, need_affine: bool):
    """(grad_z, grad_weight, grad_bias) of :func:`_norm_forward` (the affine grads summed over the batch)."""
    b, c = z.shape[:2]
    shape = (1, b * c) + tuple(z.shape[2:])
    weight = norm.weight if b == 1 else norm.weight.repeat(b)
    gz, gw, gb = _bn_backward(grad.reshape(shape), z.reshape(shape), weight, None, None, mean, invstd, True, norm.eps,
                              [True, need_affine, need_affine])
    if need_affine and b > 1:
        gw, gb = gw.view(b, c).sum(0), gb.view(b, c).sum(0)
    return gz.view(z.shape), gw, gb


_bn_backward = torch.ops.aten.native_batch_norm_backward
_threshold_backward = torch.ops.aten.threshold_backward


class _LeanEdge(torch.autograd.Function):
    """One search edge ``sum_n w_n op_n(pre(x))`` that stores only conv outputs (see the module docstring).

    ``forward(plan, relu_cache, x, w, *plan.params)``; ``relu_cache`` is a one-element list holding ``relu(x)``
    shared with the other edges that read the same node (computed here if empty, never saved for backward).
    The forward values are bitwise those of the plain path; the backward pass applies the same kernels by hand
    (norm statistics are kept, so no norm is recomputed) and the op weight enters the norm gradient after
    rather than before the norm backward (linear, equal up to float rounding).
    """

    @staticmethod
    def forward(ctx, plan: _EdgePlan, relu_cache: list, x, w, *params):
        dims = plan.spatial_dims
        kind = plan.pre_kind
        if kind in ("identity", "reduce", "actconv") and relu_cache[0] is None:
            relu_cache[0] = F.relu(x)
        c = pre_stats = None
        if kind == "identity":
            p, r = x, relu_cache[0]
        else:
            if kind == "reduce":
                rs = relu_cache[0]
                c = torch.cat([plan.pre_convs[0](rs), plan.pre_convs[1](_shifted(rs, dims))], 1)
            elif kind == "actconv":
                c = _conv_forward(plan.pre_convs[0], relu_cache[0])
            else:  # increase
                u = F.relu(F.interpolate(x, scale_factor=2, mode=plan.pre.mode, align_corners=True))
                c = _conv_forward(plan.pre_convs[0], u)
                del u
            p, mean, invstd = _norm_forward(plan.pre_norm, c)
            pre_stats = [mean, invstd]
            r = F.relu(p)
        zs, mid_shapes, stats = [], [], []
        out = None
        chains = iter(zip(plan.chains, plan.norms))
        for n in range(w.shape[0]):  # the order of _weighted_norm_sum, so the sum is bitwise the same
            if n == plan.skip_index:
                y = p * w[n]
            else:
                chain, norm = next(chains)
                h = r
                for i, conv in enumerate(chain):
                    if i > 0:  # the input of a P3D op's second conv: recomputed in backward if needed
                        mid_shapes.append(h.shape)
                    h = _conv_forward(conv, h)
                zs.append(h)
                y, mean, invstd = _norm_forward(norm, h)
                stats += [mean, invstd]
                y.mul_(w[n])
            out = y if out is None else out.add_(y)
        ctx.plan = plan
        ctx.num_z = len(zs)
        ctx.has_c = c is not None
        ctx.mid_shapes = mid_shapes
        ctx.r_shape = r.shape
        ctx.save_for_backward(x, w, *([c] + pre_stats if c is not None else []), *zs, *stats)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        plan: _EdgePlan = ctx.plan
        dims = plan.spatial_dims
        kind = plan.pre_kind
        saved = list(ctx.saved_tensors)
        x, w = saved[0], saved[1]
        pos = 2
        c = pre_mean = pre_invstd = None
        if ctx.has_c:
            c, pre_mean, pre_invstd = saved[2:5]
            pos = 5
        nz = ctx.num_z
        zs = saved[pos:pos + nz]
        stats = saved[pos + nz:pos + 3 * nz]
        del saved
        need_x, need_w = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        param_index = {id(p): i for i, p in enumerate(plan.params)}
        need_param = ctx.needs_input_grad[4:]
        param_grads = [None] * len(plan.params)

        def needs(prm):
            return prm is not None and need_param[param_index[id(prm)]]

        def put(prm, g):
            if g is not None:
                i = param_index[id(prm)]
                param_grads[i] = g if param_grads[i] is None else param_grads[i] + g

        pre_params = [q for m in plan.pre_convs for q in m.parameters(recurse=False)]
        if plan.pre_norm is not None:
            pre_params += list(plan.pre_norm.parameters(recurse=False))
        need_pre = need_x or any(needs(q) for q in pre_params)

        # the pre-processed input p of the ops and r = relu(p), the input of their first convs, recomputed
        if kind == "identity":
            p = x
            r = F.relu(x)
        else:
            p = _norm_forward(plan.pre_norm, c)[0]
            r = F.relu(p)
        grad_w = torch.zeros_like(w) if need_w else None
        ws = w.tolist()
        # skip term: d/dp (w_s p) and d/dw_s = <g, p>
        grad_p = grad_out * w[plan.skip_index] if need_pre else None
        if need_w:
            grad_w[plan.skip_index] = torch.vdot(grad_out.reshape(-1), p.reshape(-1))
        if kind != "identity":
            del p

        grad_r = None
        mid_shapes = iter(ctx.mid_shapes)
        op_ns = [n for n in range(w.shape[0]) if n != plan.skip_index]
        for k, (chain, norm) in enumerate(zip(plan.chains, plan.norms)):
            n = op_ns[k]
            cm = [(next(mid_shapes), None) for _ in chain[1:]]
            need_affine = needs(norm.weight) or needs(norm.bias) or need_w
            gz, gnw, gnb = _norm_backward(norm, grad_out, zs[k], stats[2 * k], stats[2 * k + 1], need_affine)
            zs[k] = None
            if need_w:  # <g, w_n * (gamma x_hat + beta)> / w_n summed: sum_c gamma_c A_c + beta_c B_c
                grad_w[n] = (norm.weight * gnw).sum() + (norm.bias * gnb).sum()
            if needs(norm.weight):
                put(norm.weight, gnw * ws[n])
            if needs(norm.bias):
                put(norm.bias, gnb * ws[n])
            g = gz.mul_(ws[n])
            del gz
            if any(inp is None and needs(conv.weight) for (_, inp), conv in zip(cm, chain[1:])):
                h, cm = r, []  # recompute the inputs of the inner convs (only their weight gradients need them)
                for conv in chain[:-1]:
                    h = _conv_forward(conv, h)
                    cm.append((h.shape, h))
                del h
            for i in range(len(chain) - 1, -1, -1):
                conv = chain[i]
                if i > 0:
                    shape, inp = cm[i - 1]
                    cm[i - 1] = (shape, None)
                else:
                    shape, inp = ctx.r_shape, r
                need_in = i > 0 or need_pre
                gi, gw, gb = _conv_grads(conv, g, inp, shape, need_in, needs(conv.weight), needs(conv.bias))
                del inp
                put(conv.weight, gw)
                if conv.bias is not None:
                    put(conv.bias, gb)
                g = gi
            if g is not None:
                grad_r = g if grad_r is None else grad_r.add_(g)
            del g

        grad_x = None
        if need_pre:
            # through r = relu(p), plus the skip term's gradient
            grad_p = grad_p if grad_r is None else grad_p.add_(_threshold_backward(grad_r, r, 0))
            del grad_r
            if kind == "identity":
                grad_x = grad_p
            else:
                need_affine = needs(plan.pre_norm.weight) or needs(plan.pre_norm.bias)
                grad_c, gnw, gnb = _norm_backward(plan.pre_norm, grad_p, c, pre_mean, pre_invstd, need_affine)
                del grad_p
                put(plan.pre_norm.weight, gnw)
                put(plan.pre_norm.bias, gnb)
                if kind == "increase":
                    conv = plan.pre_convs[0]
                    with torch.enable_grad():
                        x_leaf = x.detach().requires_grad_(need_x)
                        u = F.relu(F.interpolate(x_leaf, scale_factor=2, mode=plan.pre.mode, align_corners=True))
                    gu, gw, gb = _conv_grads(conv, grad_c, u.detach(), u.shape, need_x, needs(conv.weight),
                                             needs(conv.bias))
                    put(conv.weight, gw)
                    if conv.bias is not None:
                        put(conv.bias, gb)
                    if need_x:
                        grad_x = torch.autograd.grad(u, x_leaf, gu)[0]
                    del u
                else:
                    rs = F.relu(x)
                    if kind == "reduce":
                        conv_a, conv_b = plan.pre_convs
                        split = conv_a.out_channels
                        pieces = [(conv_a, grad_c[:, :split], rs), (conv_b, grad_c[:, split:], _shifted(rs, dims))]
                    else:
                        pieces = [(plan.pre_convs[0], grad_c, rs)]
                    grad_rs = None
                    for k, (conv, g, inp) in enumerate(pieces):
                        gi, gw, gb = _conv_grads(conv, g, inp, inp.shape, need_x, needs(conv.weight),
                                                 needs(conv.bias))
                        put(conv.weight, gw)
                        if conv.bias is not None:
                            put(conv.bias, gb)
                        if gi is None:
                            continue
                        if k == 0:
                            grad_rs = gi
                        else:  # the shifted input of the second conv of a FactorizedReduce
                            if grad_rs is None:
                                grad_rs = torch.zeros_like(rs)
                            _shifted(grad_rs, dims).add_(gi)
                    if need_x and grad_rs is not None:
                        grad_x = _threshold_backward(grad_rs, rs, 0)
        return (None, None, grad_x if need_x else None, grad_w, *param_grads)


def _is_conv_chain(op: nn.Module) -> bool:
    children = list(op.children())
    return (len(children) >= 3 and isinstance(children[0], nn.ReLU) and isinstance(children[-1], _NORM_TYPES)
            and all(isinstance(c, _CONV_TYPES) and c.stride == (1,) * len(c.stride) for c in children[1:-1]))


class GridSpace(nn.Module):
    """L x D grid of cells.

    Args:
        num_blocks: L.
        num_depths: D.
        channels: ``[D]`` channels of the feature nodes per level (finest first).
        spatial_dims: 2 or 3.
        op_set_name: name in :mod:`nnunet_nas.ops.catalog`.
        edge_mask: ``[L, E]`` 0/1, the active edges; ``None`` = all (supernet).
        op_index: ``[L, E]`` op index per edge; ``None`` = all ops on every active edge (supernet).
        recompute_norms: search memory saving (see module docstring).
        feature_shapes: ``[D]`` spatial extents of the levels, for ops that take ``feature_shape`` (DAST's
            transformer fits its token grid to them); ``None``: unknown.
        op_options: options forwarded to the ops that name them (``OpSpec.options``).
    """

    def __init__(self, num_blocks: int, num_depths: int, channels: Sequence[int], spatial_dims: int = 3,
                 op_set_name: str = "dints_3d", edge_mask=None, op_index=None, recompute_norms: bool = True,
                 feature_shapes: Optional[Sequence[Sequence[int]]] = None, op_options: Optional[dict] = None):
        super().__init__()
        check_num_blocks(num_blocks)
        self.topology = topo = grid_topology(num_depths)
        self.num_blocks, self.num_depths, self.spatial_dims = num_blocks, num_depths, spatial_dims
        self.channels = [int(c) for c in channels]
        if len(self.channels) != num_depths:
            raise ValueError(f"GridSpace: expected {num_depths} channel counts, got {self.channels}.")
        self.specs = op_set(op_set_name)
        self.op_set_name = op_set_name
        shape = (num_blocks, topo.num_edges)
        mask = np.ones(shape, dtype=bool) if edge_mask is None else np.asarray(edge_mask).astype(bool)
        if mask.shape != shape:
            raise ValueError(f"GridSpace: edge mask has shape {mask.shape}, expected [L, E] = {shape}.")
        self.is_search = op_index is None
        if not self.is_search:
            op_index = np.asarray(op_index, dtype=np.int64)
            if op_index.shape != shape:
                raise ValueError(f"GridSpace: op index array has shape {op_index.shape}, expected [L, E] = {shape}.")
            if op_index.min() < 0 or op_index.max() >= len(self.specs):
                raise ValueError(f"GridSpace: op indices must lie in 0..{len(self.specs) - 1} for op set {op_set_name}.")
        self.edge_mask = mask
        self.op_index = op_index
        self.recompute_norms = recompute_norms
        self.op_options = dict(op_options or {})
        self.feature_shapes = None if feature_shapes is None else [[int(s) for s in f] for f in feature_shapes]
        self.cells = nn.ModuleDict()
        for b in range(num_blocks):
            for e in range(topo.num_edges):
                if not mask[b, e]:
                    continue
                specs = self.specs if self.is_search else (self.specs[op_index[b, e]],)
                out = int(topo.edge_out[e])
                shape = None if feature_shapes is None else self.feature_shapes[out]
                try:
                    self.cells[f"b{b}_e{e}"] = GridCell(self.channels[topo.edge_in[e]], self.channels[out],
                                                        int(topo.edge_dir[e]), spatial_dims, specs, shape,
                                                        self.op_options)
                except ValueError as err:  # an op that cannot live at this level: say which level
                    where = f"level {out} ({self.channels[out]} channels" + (
                        "" if shape is None else f", feature map {'x'.join(map(str, shape))}") + ")"
                    raise ValueError(f"GridSpace {where}: {err}") from None
        first = next(iter(self.cells.values()), None)
        # the fast search paths below share one ReLU per node and recompute norms: they run the ops that are
        # ReLU -> convs -> affine InstanceNorm and the (single) skip; any other op (DAST's transformer) is added to
        # their sum by the plain mixed op on the edge's pre-processed input (computed once more for them)
        ops = [] if first is None else list(first.ops.items())
        kinds = [_is_conv_chain(op) or isinstance(op, nn.Identity) for _, op in ops]
        self.lean_ops = [n for n, lean in enumerate(kinds) if lean]
        self.other_ops = [n for n, lean in enumerate(kinds) if not lean]
        self.other_op_names = frozenset(ops[n][0] for n in self.other_ops)
        skip = next((i for i, s in enumerate(self.specs) if s.name == "skip"), -1)
        self.conv_chain_ops = skip in self.lean_ops and len(self.lean_ops) > 1
        self.skip_index = self.lean_ops.index(skip) if self.conv_chain_ops else -1  # among lean_ops

    # ------------------------------------------------------------------ forward
    def forward(self, nodes: List[Optional[torch.Tensor]], weights: Optional[torch.Tensor] = None):
        """Run all blocks.

        Args:
            nodes: D tensors (``None`` for an inactive level), level d with ``channels[d]`` channels.
            weights: ``[L, E, N]`` per-op weights with the edge probability folded in (search), or ``None``
                (fixed network).
        Returns:
            D tensors of the last block (``None`` where a level receives no edge).
        """
        if self.is_search and weights is None:
            raise ValueError("GridSpace: the supernet needs op weights [L, E, N]; a fixed network has none.")
        topo = self.topology
        for b in range(self.num_blocks):
            acts: List[Optional[torch.Tensor]] = [None] * self.num_depths
            lean_acts: List[list] = [[None] for _ in range(self.num_depths)]
            outs: List[Optional[torch.Tensor]] = [None] * self.num_depths
            for e in range(topo.num_edges):
                if not self.edge_mask[b, e]:
                    continue
                src, dst = int(topo.edge_in[e]), int(topo.edge_out[e])
                x = nodes[src]
                if x is None:
                    continue  # an edge from an inactive node carries nothing (cannot happen in a feasible genotype)
                cell = self.cells[f"b{b}_e{e}"]
                if self.is_search:
                    y = self._mixed(cell, x, src, acts, lean_acts, weights[b, e])
                else:
                    y = next(iter(cell.ops.values()))(cell.pre(x))
                outs[dst] = y if outs[dst] is None else outs[dst] + y
            nodes = outs
        return nodes

    def _mixed(self, cell: GridCell, x, src, acts, lean_acts, w):
        if not self.conv_chain_ops:  # ops of any form: the plain mixed op
            return weighted_op_sum(enumerate(cell.ops.values()), cell.pre(x), w)
        if not self.other_ops:
            return self._mixed_lean(cell, x, src, acts, lean_acts, w)
        others = weighted_op_sum(((n, cell.ops[self.specs[n].name]) for n in self.other_ops), cell.pre(x), w)
        return self._mixed_lean(cell, x, src, acts, lean_acts, w[self.lean_ops]) + others

    def _mixed_lean(self, cell: GridCell, x, src, acts, lean_acts, w):
        """``sum_n w_n op_n(pre(x))`` over ``lean_ops`` (``w`` holds their weights, in their order)."""
        if self.recompute_norms and torch.is_grad_enabled() and x.device.type == "cpu":
            plan = _EdgePlan.build(cell, self.skip_index, self.spatial_dims, self.other_op_names)
            if plan is not None:
                return _LeanEdge.apply(plan, lean_acts[src], x, w, *plan.params)
        if acts[src] is None:
            acts[src] = F.relu(x)
        if isinstance(cell.pre, FactorizedReduce):
            p = cell.pre.norm(torch.cat([cell.pre.conv(acts[src]),
                                         cell.pre.conv2(acts[src][(Ellipsis,) + (slice(1, None),) * self.spatial_dims])], 1))
            r = F.relu(p)
        elif isinstance(cell.pre, nn.Identity):
            p, r = x, acts[src]
        else:
            p = cell.pre(x)
            r = F.relu(p)
        pre_norm, norms = [], []
        for name, op in cell.ops.items():
            if isinstance(op, nn.Identity) or name in self.other_op_names:
                continue
            z = r
            for m in list(op.children())[1:-1]:  # skip the op's own ReLU (shared) and its norm (recomputed)
                z = m(z)
            pre_norm.append(z)
            norms.append(list(op.children())[-1])
        if self.recompute_norms and torch.is_grad_enabled():
            return checkpoint(_weighted_norm_sum, w, self.skip_index, p, norms, *pre_norm, use_reentrant=False)
        return _weighted_norm_sum(w, self.skip_index, p, norms, *pre_norm)
