"""The grid's memory-lean CPU kernel: one search edge ``sum_n w_n op_n(pre(x))`` as one autograd function
(:class:`LeanEdge`) that keeps only what the backward pass cannot cheaply recompute. The code of the package most
likely to need care on a torch upgrade: it calls oneDNN and autograd kernels directly.

* one ReLU per source node is shared by every conv op and the down-sampling edge that read it;
* on the CPU with ``recompute_norms`` (the default), outside ``torch.compile`` (under it the grid runs its plain
  path, which dynamo traces), each edge is one autograd function (:class:`LeanEdge`)
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

from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nnunet_nas.ops.conv import ActConvNorm, FactorizedIncrease, FactorizedReduce, cpu_fast_paths


def weighted_norm_sum(weights: torch.Tensor, skip_index: int, x: torch.Tensor, norms, *pre_norm):
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
    """Stride-1, 'same'-padded, undilated, ungrouped 3-D float32 conv on the CPU with a large enough volume, where
    the package's CPU kernels may run (:func:`~nnunet_nas.ops.conv.cpu_fast_paths`: not under ``torch.compile``)."""
    return (device.type == "cpu" and cpu_fast_paths() and len(shape) == 5 and dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and conv.groups == 1
            and conv.padding_mode == "zeros"
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


class EdgePlan:
    """The modules of one search cell in the order :class:`LeanEdge` reads them (built per call, cheap)."""

    __slots__ = ("pre_kind", "pre", "pre_convs", "pre_norm", "chains", "norms", "skip_index", "params", "spatial_dims")

    def __init__(self, cell, skip_index: int, spatial_dims: int, other_names=frozenset()):
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
    def build(cell, skip_index, spatial_dims, other_names=frozenset()) -> Optional["EdgePlan"]:
        try:
            return EdgePlan(cell, skip_index, spatial_dims, other_names)
        except TypeError:
            return None  # a module this function does not know: the checkpoint path handles it


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


class LeanEdge(torch.autograd.Function):
    """One search edge ``sum_n w_n op_n(pre(x))`` that stores only conv outputs (see the module docstring).

    ``forward(plan, relu_cache, x, w, *plan.params)``; ``relu_cache`` is a one-element list holding ``relu(x)``
    shared with the other edges that read the same node (computed here if empty, never saved for backward).
    The forward values are bitwise those of the plain path; the backward pass applies the same kernels by hand
    (norm statistics are kept, so no norm is recomputed) and the op weight enters the norm gradient after
    rather than before the norm backward (linear, equal up to float rounding).
    """

    @staticmethod
    def forward(ctx, plan: EdgePlan, relu_cache: list, x, w, *params):
        kind = plan.pre_kind
        if kind in ("identity", "reduce", "actconv") and relu_cache[0] is None:
            relu_cache[0] = F.relu(x)
        c = pre_stats = None
        if kind == "identity":
            p, r = x, relu_cache[0]
        else:
            if kind == "reduce":
                rs = relu_cache[0]
                c = torch.cat([plan.pre_convs[0](rs), plan.pre_convs[1](plan.pre.shifted(rs))], 1)
            elif kind == "actconv":
                c = _conv_forward(plan.pre_convs[0], relu_cache[0])
            else:  # increase
                u = F.relu(plan.pre.upsample(x))
                c = _conv_forward(plan.pre_convs[0], u)
                del u
            p, mean, invstd = _norm_forward(plan.pre_norm, c)
            pre_stats = [mean, invstd]
            r = F.relu(p)
        zs, mid_shapes, stats = [], [], []
        out = None
        chains = iter(zip(plan.chains, plan.norms))
        for n in range(w.shape[0]):  # the order of weighted_norm_sum, so the sum is bitwise the same
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
        """Three phases: the ops' pre-processed input recomputed and the skip term, each op chain backwards
        (:func:`_ops_backward`), the edge's pre-processing backwards (:func:`_pre_backward`)."""
        plan: EdgePlan = ctx.plan
        x, w, c, pre_stats, zs, stats = _unpack_saved(ctx)
        need_x, need_w = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        grads = _ParamGrads(plan.params, ctx.needs_input_grad[4:])
        pre_params = [q for m in plan.pre_convs for q in m.parameters(recurse=False)]
        if plan.pre_norm is not None:
            pre_params += list(plan.pre_norm.parameters(recurse=False))
        need_pre = need_x or any(grads.needs(q) for q in pre_params)

        # the pre-processed input p of the ops and r = relu(p), the input of their first convs, recomputed
        p = x if plan.pre_kind == "identity" else _norm_forward(plan.pre_norm, c)[0]
        r = F.relu(p)
        grad_w = torch.zeros_like(w) if need_w else None
        # skip term: d/dp (w_s p) and d/dw_s = <g, p>
        grad_p = grad_out * w[plan.skip_index] if need_pre else None
        if need_w:
            grad_w[plan.skip_index] = torch.vdot(grad_out.reshape(-1), p.reshape(-1))
        del p

        grad_r = _ops_backward(ctx, grad_out, zs, stats, r, w, grads, grad_w, need_pre)
        grad_x = None
        if need_pre:
            # through r = relu(p), plus the skip term's gradient
            grad_p = grad_p if grad_r is None else grad_p.add_(_threshold_backward(grad_r, r, 0))
            del grad_r
            box = [grad_p]  # handed over, not shared: the pre phase frees it as soon as it is used
            del grad_p
            grad_x = _pre_backward(plan, x, c, pre_stats, box, grads, need_x)
        return (None, None, grad_x if need_x else None, grad_w, *grads.grads)


class _ParamGrads:
    """The gradients of an edge plan's parameters, accumulated; ``needs(p)``: autograd asks for ``p``'s."""

    def __init__(self, params, needs_input_grad):
        self.index = {id(p): i for i, p in enumerate(params)}
        self.need = needs_input_grad
        self.grads = [None] * len(params)

    def needs(self, prm) -> bool:
        return prm is not None and self.need[self.index[id(prm)]]

    def put(self, prm, g) -> None:
        if g is not None:
            i = self.index[id(prm)]
            self.grads[i] = g if self.grads[i] is None else self.grads[i] + g

    def put_conv(self, conv: nn.Module, gw, gb) -> None:
        self.put(conv.weight, gw)
        if conv.bias is not None:
            self.put(conv.bias, gb)


def _unpack_saved(ctx):
    """``(x, w, c, [pre mean, pre invstd] or None, conv outputs zs, norm stats)`` of :meth:`LeanEdge.forward`."""
    saved = list(ctx.saved_tensors)
    x, w = saved[0], saved[1]
    pos, c, pre_stats = 2, None, None
    if ctx.has_c:
        c, pre_stats = saved[2], saved[3:5]
        pos = 5
    nz = ctx.num_z
    return x, w, c, pre_stats, saved[pos:pos + nz], saved[pos + nz:pos + 3 * nz]


def _ops_backward(ctx, grad_out, zs, stats, r, w, grads: _ParamGrads, grad_w, need_pre):
    """Each op chain (ReLU, convs, InstanceNorm, times its weight) backwards: its parameters' gradients into
    ``grads``, d/dw_n into ``grad_w``; returns the gradient at ``r`` (the chains' shared input), or None. A conv
    output is dropped from ``zs`` once used."""
    plan: EdgePlan = ctx.plan
    ws = w.tolist()
    grad_r = None
    mid_shapes = iter(ctx.mid_shapes)
    op_ns = [n for n in range(w.shape[0]) if n != plan.skip_index]
    for k, (chain, norm) in enumerate(zip(plan.chains, plan.norms)):
        n = op_ns[k]
        cm = [(next(mid_shapes), None) for _ in chain[1:]]
        need_affine = grads.needs(norm.weight) or grads.needs(norm.bias) or grad_w is not None
        gz, gnw, gnb = _norm_backward(norm, grad_out, zs[k], stats[2 * k], stats[2 * k + 1], need_affine)
        zs[k] = None
        if grad_w is not None:  # <g, w_n * (gamma x_hat + beta)> / w_n summed: sum_c gamma_c A_c + beta_c B_c
            grad_w[n] = (norm.weight * gnw).sum() + (norm.bias * gnb).sum()
        if grads.needs(norm.weight):
            grads.put(norm.weight, gnw * ws[n])
        if grads.needs(norm.bias):
            grads.put(norm.bias, gnb * ws[n])
        g = gz.mul_(ws[n])
        del gz
        if any(inp is None and grads.needs(conv.weight) for (_, inp), conv in zip(cm, chain[1:])):
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
            gi, gw, gb = _conv_grads(conv, g, inp, shape, need_in, grads.needs(conv.weight), grads.needs(conv.bias))
            del inp
            grads.put_conv(conv, gw, gb)
            g = gi
        if g is not None:
            grad_r = g if grad_r is None else grad_r.add_(g)
        del g
    return grad_r


def _pre_backward(plan: EdgePlan, x, c, pre_stats, grad_p_box: list, grads: _ParamGrads, need_x: bool):
    """The edge's pre-processing (identity, ReLU-conv-norm, factorised reduce or increase) backwards from the gradient
    at its output ``p`` (handed over in ``grad_p_box`` and freed here after use); returns the gradient at ``x``."""
    grad_p = grad_p_box.pop()
    if plan.pre_kind == "identity":
        return grad_p
    need_affine = grads.needs(plan.pre_norm.weight) or grads.needs(plan.pre_norm.bias)
    grad_c, gnw, gnb = _norm_backward(plan.pre_norm, grad_p, c, pre_stats[0], pre_stats[1], need_affine)
    del grad_p
    grads.put(plan.pre_norm.weight, gnw)
    grads.put(plan.pre_norm.bias, gnb)
    grad_x = None
    if plan.pre_kind == "increase":
        conv = plan.pre_convs[0]
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(need_x)
            u = F.relu(plan.pre.upsample(x_leaf))
        gu, gw, gb = _conv_grads(conv, grad_c, u.detach(), u.shape, need_x, grads.needs(conv.weight),
                                 grads.needs(conv.bias))
        grads.put_conv(conv, gw, gb)
        if need_x:
            grad_x = torch.autograd.grad(u, x_leaf, gu)[0]
        del u
        return grad_x
    rs = F.relu(x)
    if plan.pre_kind == "reduce":
        conv_a, conv_b = plan.pre_convs
        split = conv_a.out_channels
        pieces = [(conv_a, grad_c[:, :split], rs), (conv_b, grad_c[:, split:], plan.pre.shifted(rs))]
    else:
        pieces = [(plan.pre_convs[0], grad_c, rs)]
    grad_rs = None
    for k, (conv, g, inp) in enumerate(pieces):
        gi, gw, gb = _conv_grads(conv, g, inp, inp.shape, need_x, grads.needs(conv.weight), grads.needs(conv.bias))
        grads.put_conv(conv, gw, gb)
        if gi is None:
            continue
        if k == 0:
            grad_rs = gi
        else:  # the shifted input of the second conv of a FactorizedReduce
            if grad_rs is None:
                grad_rs = torch.zeros_like(rs)
            plan.pre.shifted(grad_rs).add_(gi)
    if need_x and grad_rs is not None:
        grad_x = _threshold_backward(grad_rs, rs, 0)
    return grad_x


def is_conv_chain(op: nn.Module) -> bool:
    children = list(op.children())
    return (len(children) >= 3 and isinstance(children[0], nn.ReLU) and isinstance(children[-1], _NORM_TYPES)
            and all(isinstance(c, _CONV_TYPES) and c.stride == (1,) * len(c.stride) for c in children[1:-1]))
