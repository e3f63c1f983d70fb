#!/usr/bin/env python
"""Side-by-side benchmark: our DiNTS supernet / decode vs MONAI's ``TopologySearch`` + ``DiNTS`` / ``decode()``.

Configuration: MONAI's tutorial search (``automl/DiNTS/search_dints.py``): channel_mul 0.5, 12 blocks, 4 depths,
``use_downsample=True``, batch 1, 1 input channel, 3 classes, patches 64^3 and 96^3, float32 on the CPU.

One **search iteration** is defined identically for both implementations, as in the tutorial:

* weight step: architecture parameters not trained (MONAI: ``log_alpha_a/c.requires_grad = False``; ours:
  ``SearchNetwork.arch_frozen = True``), forward + backward of the segmentation loss on a weight batch, SGD step
  (lr 0.025, momentum 0.9, weight decay 4e-5, the tutorial's values);
* architecture step: every network weight ``requires_grad = False`` (both), forward on an architecture batch,
  segmentation loss + the architecture regularisers, backward, Adam step (lr 0.008, betas (0.5, 0.999)).
  MONAI: ``get_prob_a(child=True)``, ``ent_a``, ``ent_c``, ``get_topology_entropy``, two
  ``get_ram_cost_usage`` calls, loss ``seg + w (ent_a + ent_c + ram_loss + 0.001 topo)`` (the AMP branch of the
  tutorial), two Adam optimisers. Ours: ``grid_probs.pattern_probs``, ``entropy_loss_ops``,
  ``entropy_loss_patterns``, ``topology_loss``, ``GridMemoryModel.memory_loss`` (what ``NASSearchTrainer``
  computes), one Adam optimiser with the trainer's gradient clipping.

Both use the same loss (cross-entropy + soft Dice over the foreground classes), the same random inputs and
labels and the same number of threads. Every (implementation, case) runs in a fresh subprocess so that the peak
resident memory (``ru_maxrss``) belongs to that case alone; the parent runs them one at a time, prints a table
and the ratios ours / MONAI and can write everything as JSON.

Decode: MONAI's ``TopologySearch.decode()`` against our ``decode_grid_codes`` on the same logits (L=12, D=4), each in
its own subprocess; the decoded codes are compared.

``--device cuda`` runs the search iteration on a GPU with AMP (autocast + GradScaler) for both and reports
``torch.cuda.max_memory_allocated``; without a GPU it says so and skips. Examples::

    python benchmarks/dints_vs_monai.py                       # 64^3 and 96^3, median of 3, decode
    python benchmarks/dints_vs_monai.py --quick               # smoke test: 32^3, 1 timed iteration
    python benchmarks/dints_vs_monai.py --sizes 64 --repeats 5 --json bench.json
"""

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
import tracemalloc

from harness import loadavg, machine_info, package_version, ram_gib, run_child

# tutorial configuration
CHANNEL_MUL, NUM_BLOCKS, NUM_DEPTHS = 0.5, 12, 4
IN_CHANNELS, NUM_CLASSES, BATCH = 1, 3, 1
SGD_KW = dict(lr=0.025, momentum=0.9, weight_decay=4e-5)
ADAM_KW = dict(lr=0.008, betas=(0.5, 0.999), weight_decay=0.0)
SIGMA, TOPO_WEIGHT, RAMP = 0.8, 0.001, 0.5  # memory budget, topology weight, the ramp w = t / t_all
ARCH_GRAD_CLIP = 0.5  # ours (DiNTSSearchConfig.arch_grad_clip)

TARGET_TIME_CPU, TARGET_MEM_CPU, TARGET_TIME_GPU, TARGET_DECODE = 1.0, 0.6, 1 / 1.5, 400.0


# ------------------------------------------------------------------------------------------------ helpers
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024.0 ** 2


class _RssSampler:
    """Largest resident set size seen while the block runs (polled every millisecond by a thread)."""

    def __enter__(self):
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def seg_loss(logits, labels):
    """Cross-entropy + soft Dice over the foreground classes (the tutorial uses DiceCE, include_background=False)."""
    import torch
    import torch.nn.functional as F
    logits = logits.float()
    ce = F.cross_entropy(logits, labels)
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    dims = tuple(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.square().sum(dims) + onehot.sum(dims)  # squared_pred=True as the tutorial
    dice = 1 - (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + dice.mean()


def make_batches(size: int, device):
    import torch
    g = torch.Generator().manual_seed(1234)
    shape = (BATCH, IN_CHANNELS, size, size, size)
    xw, xa = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    yw = torch.randint(0, NUM_CLASSES, (BATCH, size, size, size), generator=g)
    ya = torch.randint(0, NUM_CLASSES, (BATCH, size, size, size), generator=g)
    return [t.to(device) for t in (xw, yw, xa, ya)]


class _Amp:
    def __init__(self, device):
        import torch
        self.enabled = device.type == "cuda"
        self.scalers = {}
        self.torch = torch

    def autocast(self):
        return self.torch.autocast("cuda", enabled=self.enabled)

    def backward_step(self, loss, optimizers, key, clip_params=None, clip=None):
        torch = self.torch
        if not self.enabled:
            loss.backward()
            if clip_params is not None:
                torch.nn.utils.clip_grad_norm_(clip_params, clip)
            for o in optimizers:
                o.step()
            return
        scaler = self.scalers.setdefault(key, torch.amp.GradScaler("cuda"))
        scaler.scale(loss).backward()
        if clip_params is not None:
            for o in optimizers:
                scaler.unscale_(o)
            torch.nn.utils.clip_grad_norm_(clip_params, clip)
        for o in optimizers:
            scaler.step(o)
        scaler.update()


# ------------------------------------------------------------------------------------------------ search cases
def _set_trainable(params, flag: bool):
    for p in params:
        p.requires_grad_(flag)


def build_monai(device):
    import torch
    from monai.networks.nets.dints import DiNTS, TopologySearch
    space = TopologySearch(channel_mul=CHANNEL_MUL, num_blocks=NUM_BLOCKS, num_depths=NUM_DEPTHS, spatial_dims=3,
                           use_downsample=True, device=str(device))
    model = DiNTS(dints_space=space, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, use_downsample=True,
                  spatial_dims=3).to(device)
    arch = [space.log_alpha_a, space.log_alpha_c]
    arch_ids = set(map(id, arch))
    weights = [p for p in model.parameters() if id(p) not in arch_ids]
    sgd = torch.optim.SGD(weights, **SGD_KW)
    adam_a = torch.optim.Adam([space.log_alpha_a], **ADAM_KW)  # the tutorial has one Adam per alpha tensor
    adam_c = torch.optim.Adam([space.log_alpha_c], **ADAM_KW)
    amp = _Amp(device)

    def weight_step(x, y):
        _set_trainable(weights, True)
        _set_trainable(arch, False)
        sgd.zero_grad(set_to_none=True)
        with amp.autocast():
            loss = seg_loss(model(x), y)
        amp.backward_step(loss, [sgd], "w")
        return float(loss.detach())

    def arch_step(x, y):
        _set_trainable(weights, False)
        _set_trainable(arch, True)
        adam_a.zero_grad(set_to_none=True)
        adam_c.zero_grad(set_to_none=True)
        with amp.autocast():
            seg = seg_loss(model(x), y)
        probs_a, _ = space.get_prob_a(child=True)
        ent_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        ent_c = -(torch.softmax(space.log_alpha_c, -1) * torch.log_softmax(space.log_alpha_c, -1)).mean()
        topo = space.get_topology_entropy(probs_a)
        ram_full = space.get_ram_cost_usage(x.shape, full=True)
        ram_usage = space.get_ram_cost_usage(x.shape)
        ram_loss = torch.abs(SIGMA - ram_usage / ram_full)
        loss = seg + RAMP * (ent_a + ent_c + ram_loss + TOPO_WEIGHT * topo)
        amp.backward_step(loss, [adam_a, adam_c], "a")
        return float(loss.detach())

    n_params = sum(p.numel() for p in model.parameters())
    return weight_step, arch_step, n_params, sum(p.numel() for p in arch)


def build_ours(device):
    import torch
    from nnunet_nas.arch import grid_probs
    from nnunet_nas.arch.memory import GridMemoryModel
    from nnunet_nas.arch.params import GridArchParams
    from nnunet_nas.arch.weighting import GridEdgeOpWeighting
    from nnunet_nas.networks.dints_net import DiNTSNet
    from nnunet_nas.nnunet.search_network import SearchNetwork
    supernet = DiNTSNet(IN_CHANNELS, NUM_CLASSES, None, NUM_BLOCKS, NUM_DEPTHS, 3, CHANNEL_MUL)
    net = SearchNetwork(supernet, GridArchParams(NUM_BLOCKS, NUM_DEPTHS, 5), GridEdgeOpWeighting()).to(device)
    weights, arch = list(net.weight_parameters()), list(net.arch_parameters())
    memory = GridMemoryModel.from_network(supernet)
    sgd = torch.optim.SGD(weights, **SGD_KW)
    adam = torch.optim.Adam(arch, **ADAM_KW)
    amp = _Amp(device)

    def weight_step(x, y):
        net.arch_frozen = True
        try:
            sgd.zero_grad(set_to_none=True)
            with amp.autocast():
                loss = seg_loss(net(x), y)
            amp.backward_step(loss, [sgd], "w")
        finally:
            net.arch_frozen = False
        return float(loss.detach())

    def arch_step(x, y):
        a = net.arch
        adam.zero_grad(set_to_none=True)
        _set_trainable(weights, False)
        try:
            with amp.autocast():
                seg = seg_loss(net(x), y)
            eta = grid_probs.pattern_probs(a.edge_logits)
            regs = [grid_probs.entropy_loss_ops(a.op_logits), grid_probs.entropy_loss_patterns(eta),
                    TOPO_WEIGHT * grid_probs.topology_loss(eta, NUM_DEPTHS),
                    memory.memory_loss(grid_probs.edge_marginals(a.edge_logits), torch.softmax(a.op_logits, -1),
                                       SIGMA)]
            loss = seg + RAMP * sum(regs)
            amp.backward_step(loss, [adam], "a", clip_params=arch, clip=ARCH_GRAD_CLIP)
        finally:
            _set_trainable(weights, True)
        return float(loss.detach())

    n_params = sum(p.numel() for p in net.parameters())
    return weight_step, arch_step, n_params, sum(p.numel() for p in arch)


def child_search(impl: str, size: int, repeats: int, warmup: int, device_name: str) -> dict:
    import torch
    device = torch.device(device_name)
    torch.manual_seed(0)
    rss_start = _rss_mb()
    t0 = time.perf_counter()
    weight_step, arch_step, n_params, n_arch = (build_monai if impl == "monai" else build_ours)(device)
    build_s = time.perf_counter() - t0
    xw, yw, xa, ya = make_batches(size, device)
    rss_built = _rss_mb()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    w_times, a_times, it_times, cpu_times, losses = [], [], [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + repeats):
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        lw = weight_step(xw, yw)
        sync()
        t1 = time.perf_counter()
        la = arch_step(xa, ya)
        sync()
        c2, t2 = time.process_time(), time.perf_counter()
        if i >= warmup:
            w_times.append(t1 - t0)
            a_times.append(t2 - t1)
            it_times.append(t2 - t0)
            cpu_times.append(c2 - c0)
            losses.append((lw, la))
    out = dict(impl=impl, size=size, device=device_name, threads=torch.get_num_threads(), params=n_params,
               arch_params=n_arch, build_s=build_s, rss_start_mb=rss_start, rss_built_mb=rss_built,
               peak_rss_mb=_peak_rss_mb(), iter_s=statistics.median(it_times), iter_all_s=it_times,
               weight_step_s=statistics.median(w_times), arch_step_s=statistics.median(a_times),
               iter_cpu_s=statistics.median(cpu_times), iter_cpu_all_s=cpu_times, losses=losses)
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 1024.0 ** 2
    return out


# ------------------------------------------------------------------------------------------------ decode cases
def decode_logits():
    import torch
    g = torch.Generator().manual_seed(4321)
    edge = torch.randn(NUM_BLOCKS, 3 * NUM_DEPTHS - 2, generator=g)
    ops = torch.randn(NUM_BLOCKS, 3 * NUM_DEPTHS - 2, 5, generator=g)
    return edge, ops


def child_decode(impl: str, repeats: int) -> dict:
    import numpy as np
    import torch
    edge, ops = decode_logits()
    if impl == "monai":
        from monai.networks.nets.dints import TopologySearch
        t0 = time.perf_counter()
        space = TopologySearch(channel_mul=CHANNEL_MUL, num_blocks=NUM_BLOCKS, num_depths=NUM_DEPTHS, spatial_dims=3,
                               use_downsample=True)
        build_s = time.perf_counter() - t0
        with torch.no_grad():
            space.log_alpha_a.copy_(edge)
            space.log_alpha_c.copy_(ops)
        fn = lambda: space.decode()[:3]  # noqa: E731
    else:
        from nnunet_nas.discretize.grid_path import decode_grid_codes
        build_s = 0.0
        fn = lambda: decode_grid_codes(edge, ops)  # noqa: E731
    rss_before = _rss_mb()
    times = []
    with _RssSampler() as sampler:
        for _ in range(repeats):
            t0 = time.perf_counter()
            node_a, code_a, code_c = fn()
            times.append(time.perf_counter() - t0)
    tracemalloc.start()  # one more, untimed call: what the decode allocates through Python (numpy included)
    fn()
    py_peak = tracemalloc.get_traced_memory()[1] / 1024.0 ** 2
    tracemalloc.stop()
    return dict(impl=impl, build_s=build_s, rss_before_mb=rss_before, peak_rss_mb=_peak_rss_mb(),
                decode_rss_growth_mb=max(sampler.peak, _rss_mb()) - rss_before, decode_python_peak_mb=py_peak,
                first_s=times[0], median_s=statistics.median(times), all_s=times,
                node_a=np.asarray(node_a).astype(int).tolist(), arch_code_a=np.asarray(code_a).astype(int).tolist(),
                arch_code_c=np.asarray(code_c).astype(int).tolist())


# ------------------------------------------------------------------------------------------------ parent
def _run_child(args, extra) -> dict:
    """One case in a fresh process (this script with ``--child``): its JSON, with the wall-clock and the load."""
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads)] + extra
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    load_before = loadavg()
    t0 = time.perf_counter()
    res = run_child(cmd, env)
    res.update(wall_s=time.perf_counter() - t0, loadavg_before=load_before, loadavg_after=loadavg())
    return res


def machine(threads: int) -> dict:
    """:func:`harness.machine_info` with the memory, MONAI's version, the threads and the load."""
    return machine_info(ram_gb=ram_gib(), monai=package_version("monai"), threads=threads, loadavg=loadavg())


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}"


def parent(args) -> int:
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available; skipping the GPU benchmark (nothing measured).")
        return 0
    gpu = args.device == "cuda"
    sizes = [32] if args.quick and not args.sizes_given else args.sizes
    repeats = 1 if args.quick and not args.repeats_given else args.repeats
    info = machine(args.threads)
    print(f"machine: {info}")
    print(f"config: channel_mul {CHANNEL_MUL}, {NUM_BLOCKS} blocks, {NUM_DEPTHS} depths, batch {BATCH}, "
          f"{IN_CHANNELS} input channel, {NUM_CLASSES} classes, device {args.device}{' (AMP)' if gpu else ''}, "
          f"{args.warmup} warm-up + median of {repeats} iterations", flush=True)
    results = dict(machine=info, args=dict(sizes=sizes, repeats=repeats, warmup=args.warmup, device=args.device,
                                           threads=args.threads), search=[], decode=[])
    for size in sizes:
        for impl in ("monai", "ours"):
            if impl not in args.impls:
                continue
            print(f"  search {impl:5s} {size}^3 ...", end="", flush=True)
            r = _run_child(args, ["--child", "search", "--impl", impl, "--size", str(size), "--repeats",
                                  str(repeats), "--warmup", str(args.warmup), "--device", args.device])
            results["search"].append(r)
            mem = r.get("peak_cuda_mb", r["peak_rss_mb"])
            print(f" {r['iter_s']:.2f} s/iter (weight {r['weight_step_s']:.2f} + arch {r['arch_step_s']:.2f}; "
                  f"process CPU {r['iter_cpu_s']:.2f} s), "
                  f"peak {mem:.0f} MB, load {r['loadavg_before']} -> {r['loadavg_after']}", flush=True)
    if not gpu and not args.no_decode:
        for impl in ("monai", "ours"):
            if impl not in args.impls:
                continue
            n = args.decode_repeats if impl == "monai" else max(args.decode_repeats, 50)
            print(f"  decode {impl:5s} ...", end="", flush=True)
            r = _run_child(args, ["--child", "decode", "--impl", impl, "--repeats", str(n)])
            results["decode"].append(r)
            print(f" first {r['first_s'] * 1e3:.1f} ms, median {r['median_s'] * 1e3:.1f} ms, "
                  f"peak {r['peak_rss_mb']:.0f} MB", flush=True)

    # ---------------------------------------------------------------- table and ratios
    mem_key = "peak_cuda_mb" if gpu else "peak_rss_mb"
    mem_name = "peak CUDA MB" if gpu else "peak RSS MB"
    time_target = TARGET_TIME_GPU if gpu else TARGET_TIME_CPU
    by = {(r["impl"], r["size"]): r for r in results["search"]}
    print()
    print("| size | impl | iteration s (median) | weight step s | arch step s | process CPU s/iteration "
          f"| {mem_name} |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for impl in ("monai", "ours"):
            r = by.get((impl, size))
            if r:
                print(f"| {size}^3 | {impl} | {r['iter_s']:.2f} | {r['weight_step_s']:.2f} | {r['arch_step_s']:.2f} "
                      f"| {r['iter_cpu_s']:.2f} | {r[mem_key]:,.0f} |")
    ratios = []
    print()
    print("| size | time ours/MONAI | speed-up | CPU time ours/MONAI | memory ours/MONAI | time target "
          "| memory target |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        m, o = by.get(("monai", size)), by.get(("ours", size))
        if not (m and o):
            continue
        tr, mr, cr = o["iter_s"] / m["iter_s"], o[mem_key] / m[mem_key], o["iter_cpu_s"] / m["iter_cpu_s"]
        t_ok = tr <= time_target
        m_ok = gpu or mr <= TARGET_MEM_CPU
        ratios.append(dict(size=size, time_ratio=tr, speedup=1 / tr, cpu_time_ratio=cr, memory_ratio=mr,
                           time_target=time_target,
                           time_met=t_ok, memory_target=None if gpu else TARGET_MEM_CPU, memory_met=m_ok))
        print(f"| {size}^3 | {tr:.3f} | {1 / tr:.2f}x | {cr:.3f} | {mr:.3f} "
              f"| <= {time_target:.2f}: {'met' if t_ok else 'NOT met'} "
              f"| {'-' if gpu else ('<= %.1f: ' % TARGET_MEM_CPU) + ('met' if m_ok else 'NOT met')} |")
    results["ratios"] = ratios
    dec = {r["impl"]: r for r in results["decode"]}
    if "monai" in dec and "ours" in dec:
        m, o = dec["monai"], dec["ours"]
        same = all(m[k] == o[k] for k in ("node_a", "arch_code_a", "arch_code_c"))
        sp_med, sp_first = m["median_s"] / o["median_s"], m["median_s"] / o["first_s"]
        results["decode_summary"] = dict(speedup_median=sp_med, speedup_first_call=sp_first, identical_codes=same,
                                         target=TARGET_DECODE, met=min(sp_med, sp_first) >= TARGET_DECODE)
        print()
        print("| decode | first call s | median s | RSS growth during decode MB | Python allocation peak MB "
              "| process peak RSS MB (imports included) |")
        print("|---|---|---|---|---|---|")
        for impl in ("monai", "ours"):
            r = dec[impl]
            print(f"| {impl} | {r['first_s']:.4f} | {r['median_s']:.4f} | {r['decode_rss_growth_mb']:,.1f} "
                  f"| {r['decode_python_peak_mb']:,.2f} | {r['peak_rss_mb']:,.0f} |")
        print(f"decode speed-up MONAI/ours: {sp_med:,.0f}x (median), {sp_first:,.0f}x (our first call, cold tables); "
              f"target >= {TARGET_DECODE:.0f}x: {'met' if results['decode_summary']['met'] else 'NOT met'}; "
              f"identical codes: {same}")
    results["machine"]["loadavg_end"] = loadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="cubic patch sizes (default 64 96)")
    p.add_argument("--repeats", type=int, default=None, help="timed iterations per case (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up iterations per case")
    p.add_argument("--threads", type=int, default=2, help="torch threads (torch.set_num_threads)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: AMP for both; skipped without GPU")
    p.add_argument("--quick", action="store_true", help="smoke test: 32^3 and 1 timed iteration")
    p.add_argument("--decode-repeats", type=int, default=3, help="timed MONAI decodes (ours: at least 50)")
    p.add_argument("--no-decode", action="store_true", help="skip the decode comparison")
    p.add_argument("--impls", nargs="+", choices=("monai", "ours"), default=["monai", "ours"])
    p.add_argument("--json", help="write all measurements to this JSON file")
    p.add_argument("--child", choices=("search", "decode"), help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("monai", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes_given, args.repeats_given = args.sizes is not None, args.repeats is not None
    args.sizes = args.sizes or [64, 96]
    args.repeats = args.repeats or 3

    import torch
    torch.set_num_threads(args.threads)
    if args.child == "search":
        res = child_search(args.impl, args.size, args.repeats, args.warmup, args.device)
    elif args.child == "decode":
        res = child_decode(args.impl, args.repeats)
    else:
        return parent(args)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
