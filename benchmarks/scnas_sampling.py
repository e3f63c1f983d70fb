#!/usr/bin/env python
"""SCNAS: one search step with two-operation sampling (Algorithm 1) against the full 8-operation supernet.

Same network (``SCNASNet`` search space: four cell types of 4 nodes, the 8 SCNAS ops), same widths, same input and
threads; only the weighting differs: ``GumbelPairWeighting`` (two sampled ops per edge run) or the softmax over all
ops (every op runs, DARTS's supernet). Each variant runs in its own process: build, one warm-up step, then
``--steps`` timed steps (forward, nnU-Net-style deep-supervised loss stand-in: sum of squared outputs, backward).
Memory: the activations autograd keeps for one step (every distinct storage saved for backward,
``nnunet_nas.arch.memory.saved_activation_elements``) and the process's peak RSS growth over the step (CPU).
Writes ``benchmarks/results/scnas_sampling.json``.

    python benchmarks/scnas_sampling.py [--dims 3] [--size 64] [--channel-mul 0.5] [--steps 3]
"""

import argparse
import json
import os
import resource
import sys
import time

from harness import RESULTS, machine_info, run_child


def one_variant(variant, dims, size, channel_mul, steps, threads):
    import torch
    from nnunet_nas.arch.memory import saved_activation_elements
    from nnunet_nas.arch.weighting import GumbelPairWeighting, SoftmaxWeighting
    from nnunet_nas.config import SCNASSearchConfig
    from nnunet_nas.methods.scnas import build_arch_params, build_supernet
    from nnunet_nas.nnunet.search_network import SearchNetwork
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = SCNASSearchConfig(channel_mul=channel_mul)
    op_set = f"scnas_{dims}d"
    supernet = build_supernet(cfg, op_set, 1, 3, dims, True)
    weighting = GumbelPairWeighting(1.0) if variant == "pair" else SoftmaxWeighting()
    net = SearchNetwork(supernet, build_arch_params(cfg, supernet, op_set), weighting)
    x = torch.randn(1, 1, *([size] * dims))

    def step():
        outs = net(x)
        loss = sum(o.float().square().mean() for o in outs)
        loss.backward()
        net.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (allocator, oneDNN primitives)
    rss_after_one = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    saved = saved_activation_elements(net, x)
    print(json.dumps({"variant": variant, "step_s": min(times), "step_s_all": times,
                      "saved_activation_MiB": saved * 4 / 2 ** 20,
                      "peak_rss_growth_MiB": (rss_after_one - rss_before) / 1024,
                      "weight_parameters": sum(p.numel() for p in net.weight_parameters())}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channel-mul", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=os.path.join(RESULTS, "scnas_sampling.json"))
    p.add_argument("--variant", choices=["pair", "full"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        return one_variant(a.variant, a.dims, a.size, a.channel_mul, a.steps, a.threads)
    res = {"dims": a.dims, "patch": [a.size] * a.dims, "batch": 1, "stem_channels": int(32 * a.channel_mul),
           "threads": a.threads, "steps": a.steps, "machine": machine_info()}
    for variant in ("pair", "full"):
        res[variant] = run_child([sys.executable, __file__, "--variant", variant, "--dims", str(a.dims), "--size",
                                  str(a.size), "--channel-mul", str(a.channel_mul), "--steps", str(a.steps),
                                  "--threads", str(a.threads)])
        print(json.dumps(res[variant]), flush=True)
    pair, full = res["pair"], res["full"]
    res["full_over_pair"] = {"time": full["step_s"] / pair["step_s"],
                             "saved_activations": full["saved_activation_MiB"] / pair["saved_activation_MiB"],
                             "peak_rss_growth": full["peak_rss_growth_MiB"] / max(pair["peak_rss_growth_MiB"], 1e-9)}
    print(json.dumps(res["full_over_pair"], indent=1))
    from nnunet_nas.io import atomic_write_text
    atomic_write_text(a.out, json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
