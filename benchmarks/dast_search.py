#!/usr/bin/env python
"""DAST benchmarks that need no dataset: the cost of a search step, and where the memory budget puts transformers.

``step``: one search iteration of the DAST space (skip, conv, transformer) against the DiNTS space (skip, conv, three
P3D ops) at the same grid, width and patch, built through the registry exactly as the search trainer builds them:
weight step (architecture frozen, Dice + CE, SGD) and architecture step (weights frozen, Dice + CE + the method's
regularisers ramped at 0.5, Adam, the trainer's clipping). Each space runs in its own subprocess; reported: median
iteration time, peak resident memory of the process, and the activations autograd keeps for one training forward of
the supernet (``saved_activation_elements``, fp32). Default: the paper's grid L=12, D=4, MONAI's search width
channel_mul 0.5, patch 64^3, batch 1, 3-D, CPU (``--device cuda`` adds AMP and ``max_memory_allocated``).

``trend``: short seeded DAST searches on a small 2-D grid (L=4, D=3, channel_mul 0.25, patch 64^2, batch 4) at
budgets sigma 0.2 and 0.8, three seeds each, on synthetic data (smoothed noise, label = smoothed noise above 0.5,
the same batches for every run): 10 warm-up weight steps, then 40 bi-level iterations as in the trainer. The seed
sets the supernet's weights and architecture parameters. The decoded genotypes are counted per level (transformer,
conv and skip cells) with the mean level of the transformer cells (0 = finest). The DAST paper reports transformers
moving to lower resolutions as the budget tightens. ``--dims 3`` runs it in 3-D (about 10x slower on the CPU).

    python benchmarks/dast_search.py step [--repeats 3] [--json benchmarks/results/dast_search_step.json]
    python benchmarks/dast_search.py trend [--json benchmarks/results/dast_budget_trend.json]
"""

import argparse
import json
import os
import statistics
import sys
import time

from dints_vs_monai import _peak_rss_mb, machine
from harness import REPO, run_child

SGD_KW = dict(lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)  # nnU-Net's


def _smooth_batch(generator, batch, size, dims=3):
    import torch
    import torch.nn.functional as F
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    x = torch.randn(batch, 1, *[size] * dims, generator=generator)
    for _ in range(2):
        x = pool(x, 5, stride=1, padding=2)
    x = x / x.std()
    y = (pool(x, 3, stride=1, padding=1)[:, 0] > 0.5).long()
    return x, y


def _loss(outputs, y):
    import torch
    import torch.nn.functional as F
    logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    logits = logits.float()
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(y, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = tuple(range(2, logits.dim()))
    dice = 1 - (2 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return F.cross_entropy(logits, y) + dice.mean()


def build(method_name, cfg, patch, device, classes=2):
    """(search network, weight step, arch step) as the trainer builds and steps them."""
    import torch
    from nnunet_nas.nnunet.search_network import SearchNetwork
    from nnunet_nas.nnunet.search_trainer import make_arch_optimizer
    from nnunet_nas.planned_network import PlannedNetwork
    from nnunet_nas.registry import get_method
    m = get_method(method_name)
    op_set = m.op_set_for(cfg, len(patch))
    supernet = m.build_supernet(cfg, op_set, 1, classes, len(patch), False,
                                planned=PlannedNetwork("none", patch_size=tuple(patch)))
    net = SearchNetwork(supernet, m.build_arch_params(cfg, supernet, op_set), m.make_weighting(cfg)).to(device)
    weights, arch = list(net.weight_parameters()), list(net.arch_parameters())
    sgd = torch.optim.SGD(weights, **SGD_KW)
    adam = make_arch_optimizer(arch, cfg)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def backward(loss, opt, params, clip=None):
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        (scaler.step(opt) if scaler else opt.step())
        if scaler:
            scaler.update()

    def weight_step(x, y):
        net.arch_frozen = True
        try:
            sgd.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                loss = _loss(net(x), y)
            backward(loss, sgd, weights, 12.0)
        finally:
            net.arch_frozen = False
        return float(loss.detach())

    def arch_step(x, y, ramp):
        adam.zero_grad(set_to_none=True)
        for p in weights:
            p.requires_grad_(False)
        try:
            with torch.autocast(device.type, enabled=amp):
                seg = _loss(net(x), y)
            loss = seg + ramp * sum(v.float() for v in m.regularizers(net, cfg).values())
            backward(loss, adam, arch, cfg.arch_grad_clip)
        finally:
            for p in weights:
                p.requires_grad_(True)
        return float(loss.detach())

    return m, net, weight_step, arch_step


# ------------------------------------------------------------------------------------------------ step
def child_step(method_name, blocks, depths, mul, size, repeats, device_name):
    import torch
    from nnunet_nas.arch.memory import saved_activation_elements
    from nnunet_nas.config import DASTSearchConfig, DiNTSSearchConfig
    device = torch.device(device_name)
    torch.manual_seed(0)
    cfg = (DASTSearchConfig if method_name == "dast" else DiNTSSearchConfig)(num_blocks=blocks, num_depths=depths,
                                                                            channel_mul=mul)
    m, net, weight_step, arch_step = build(method_name, cfg, [size] * 3, device)
    g = torch.Generator().manual_seed(1)
    (xw, yw), (xa, ya) = (_smooth_batch(g, 1, size) for _ in range(2))
    xw, yw, xa, ya = (t.to(device) for t in (xw, yw, xa, ya))
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        weight_step(xw, yw)
        arch_step(xa, ya, 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first iteration warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    out = dict(method=method_name, op_set=m.op_set_for(cfg, 3), device=device_name, threads=torch.get_num_threads(),
               grid=f"L={blocks} D={depths}", channel_mul=mul, patch=[size] * 3,
               parameters=sum(p.numel() for p in net.weight_parameters()), iter_s=statistics.median(times),
               iter_all_s=times, peak_rss_mb=_peak_rss_mb())
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        net.arch_frozen = True
        out["saved_activations_mib"] = saved_activation_elements(net, xw) * 4 / 2 ** 20
    return out


def step(args):
    rows = []
    for method_name in ("dints", "dast"):
        cmd = [sys.executable, os.path.abspath(__file__), "_child_step", method_name, str(args.blocks),
               str(args.depths), str(args.channel_mul), str(args.size), str(args.repeats), args.device]
        rows.append(run_child(cmd))
        print(json.dumps(rows[-1]), flush=True)
    out = {"machine": machine(rows[0]["threads"]), "rows": rows,
           "dast_over_dints": {k: rows[1][k] / rows[0][k] for k in ("iter_s", "peak_rss_mb", "saved_activations_mib",
                                                                   "peak_cuda_mb") if k in rows[0]}}
    print(json.dumps(out["dast_over_dints"]))
    _write(args.json, out)


# ------------------------------------------------------------------------------------------------ trend
def one_search(sigma, seed, args):
    import numpy as np
    import torch
    from nnunet_nas.config import DASTSearchConfig
    from nnunet_nas.ops.catalog import op_names
    from nnunet_nas.spaces.grid_topology import grid_topology
    torch.manual_seed(seed)
    cfg = DASTSearchConfig(num_blocks=args.blocks, num_depths=args.depths, channel_mul=args.channel_mul,
                           memory_budget=sigma, memory_reference="max_discrete", arch_lr=args.arch_lr)
    patch = [args.size] * args.dims
    m, net, weight_step, arch_step = build("dast", cfg, patch, torch.device("cpu"))
    g = torch.Generator().manual_seed(1234)  # the same data for every run
    batches = [_smooth_batch(g, args.batch, args.size, args.dims) for _ in range(8)]
    t0 = time.perf_counter()
    for it in range(args.warmup):
        weight_step(*batches[it % 8])
    for it in range(args.iterations):
        arch_step(*batches[(2 * it + 1) % 8], it / args.iterations)
        weight_step(*batches[(2 * it) % 8])
    state = {k: v.detach() for k, v in net.arch.state_dict().items()}
    genotype = m.discretize(state, m.op_set_for(cfg, args.dims), {"search_config": cfg.to_dict()}, cfg=cfg)
    target = grid_topology(args.depths).edge_out
    per_level = {d: {op: 0 for op in op_names(genotype.op_set)} for d in range(args.depths)}
    levels = []
    for b, row in enumerate(genotype.ops):
        for e, op in enumerate(row):
            if op is not None and genotype.arch_code_a[b, e]:
                per_level[int(target[e])][op] += 1
                if op == "transformer":
                    levels.append(int(target[e]))
    model = net.supernet.memory_model
    ratio = model.genotype_elements(genotype, patch) / model.full(patch) / model.max_ratio("max_discrete")
    return {"sigma": sigma, "seed": seed, "seconds": time.perf_counter() - t0,
            "cells_per_level": {f"level {d}": c for d, c in per_level.items()},
            "transformers": len(levels), "mean_transformer_level": float(np.mean(levels)) if levels else None,
            "active_edges": int(genotype.arch_code_a.sum()), "discrete_memory_ratio": ratio,
            "genotype": genotype.to_dict()}


def trend(args):
    from nnunet_nas.arch.memory import GridMemoryModel
    from nnunet_nas.methods.dast import DAST_OP_SETS
    runs = []
    for sigma in args.sigmas:
        for seed in range(args.seeds):
            r = one_search(sigma, seed, args)
            runs.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "genotype"}), flush=True)
    channels = [int(32 * 2 ** i * args.channel_mul) // 8 * 8 for i in range(1, args.depths + 1)]
    model = GridMemoryModel(args.blocks, args.depths, channels, args.dims, DAST_OP_SETS[args.dims],
                            [args.size] * args.dims)
    summary = {}
    for sigma in args.sigmas:
        rs = [r for r in runs if r["sigma"] == sigma]
        levels = [r["mean_transformer_level"] for r in rs if r["mean_transformer_level"] is not None]
        summary[str(sigma)] = {
            "transformers_per_level": {lv: sum(r["cells_per_level"][lv]["transformer"] for r in rs)
                                       for lv in rs[0]["cells_per_level"]},
            "convs_per_level": {lv: sum(n for r in rs for op, n in r["cells_per_level"][lv].items()
                                        if op.startswith("conv")) for lv in rs[0]["cells_per_level"]},
            "mean_transformer_level": statistics.mean(levels) if levels else None,
            "transformers": sum(r["transformers"] for r in rs), "active_edges": sum(r["active_edges"] for r in rs),
            "discrete_memory_ratio": statistics.mean(r["discrete_memory_ratio"] for r in rs)}
    out = {"machine": machine(1), "settings": {k: v for k, v in vars(args).items() if k != "func"},
           "op_cost_per_output_element": {"edges_into_level": [int(t) for t in model._topo.edge_out],
                                          "ops": list(model.op_names), "table": model.op_cost.tolist()},
           "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    _write(args.json, out)


def _write(path, obj):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)
        os.replace(tmp, path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child_step":
        print(json.dumps(child_step(argv[1], int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5]),
                                    int(argv[6]), argv[7])))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--blocks", type=int, default=12)
    s.add_argument("--depths", type=int, default=4)
    s.add_argument("--channel-mul", type=float, default=0.5)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "dast_search_step.json"))
    s.set_defaults(func=step)
    t = sub.add_parser("trend")
    t.add_argument("--blocks", type=int, default=4)
    t.add_argument("--depths", type=int, default=3)
    t.add_argument("--channel-mul", type=float, default=0.25)
    t.add_argument("--dims", type=int, default=2, choices=(2, 3))
    t.add_argument("--size", type=int, default=64)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--sigmas", type=float, nargs="+", default=[0.2, 0.8])
    t.add_argument("--seeds", type=int, default=3)
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--iterations", type=int, default=40)
    t.add_argument("--arch-lr", type=float, default=0.03)
    t.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "dast_budget_trend.json"))
    t.set_defaults(func=trend)
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
