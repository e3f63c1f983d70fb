"""GPU acceptance run, first part: the real memory and time of one search iteration of every default search trainer,
beside one training iteration of nnU-Net's own planned network (PlainConvUNet) at the same plan.

For each registered method (IAC and the baseline build nnU-Net's planned network, so they need nnunetv2,
batchgenerators and dynamic-network-architectures; where those are missing they are skipped: carry their wheels) and
each plan below, a few search iterations exactly as the search trainer takes them: an architecture step (weights
frozen, AMP, the method's regularisers in fp32, its own GradScaler) and a weight step (alpha frozen, AMP, nnU-Net's
SGD), on random data of the plan's patch and batch (the search space following the plan's per-axis strides and
kernels, the patch rounded only where the space needs it, as the search trainer does; ``--geometry isotropic`` builds
the space as before 0.2 for comparison). Written per run, appended to the JSON after every step so a
cut-off run still reports: ``torch.cuda.max_memory_allocated``, seconds per iteration (after one warm-up), or the
out-of-memory error, beside the estimate the search trainer's memory fit uses (``estimate_gib``: the count of
:mod:`nnunet_nas.memory_count` on the device's code path). Then the memory fit on smaller cards (``--fit-caps``, GiB):
the fit chooses the search batch and patch for that card's memory (less the trainer's reserve), and a few iterations
run at them with the allocator capped there (``torch.cuda.set_per_process_memory_fraction``). Then compile: every
method's fixed network (a sampled architecture, as its export registers it) compiled as nnU-Net compiles it on CUDA
(``--compile-backend``, default inductor): compile seconds, graphs, graph breaks, recompiles over the iterations, the
compiled output against eager in float32, seconds per AMP training step compiled and eager. Still to come: a found
configuration trained and predicted through nnU-Net. Runs stop being started after ``--budget-s`` seconds.

    PYTHONPATH=. python benchmarks/gpu_acceptance.py --out gpu.json   # on the GPU machine, from a checkout
    python benchmarks/gpu_acceptance.py --device cpu --tiny --out x.json  # the CPU rehearsal (tests run it)
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import torch
from torch.nn import functional as F

from nnunet_nas.memory_count import count_search_iteration
from nnunet_nas.memory_fit import CUDA_RESERVE_GIB, GIB, MemoryTarget, fit_search, narrowed
from nnunet_nas.nnunet.search_memory import count_export_memory, search_divisor
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.patch import round_up_patch
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import get_method, method_names

from harness import REPO, machine_info

# nnU-Net's own 3d_fullres plans behind the memory table (GPU_MEMORY_AUDIT.md) and the CPU rehearsal's tiny plan,
# kept as a test fixture: patch, batch, input channels, classes, per-stage strides and kernels
PLAN_FIXTURES = os.path.join(REPO, "tests", "fixtures", "plans", "memory_plans.json")


def load_plan_fixtures(path: str = PLAN_FIXTURES) -> dict:
    with open(path) as f:
        return {name: (p["patch_size"], p["batch_size"], p["input_channels"], p["num_classes"], p["strides"],
                       p["kernels"]) for name, p in json.load(f).items()}


_FIXTURES = load_plan_fixtures()
PLANS = {k: _FIXTURES[k] for k in ("hippocampus_3d_fullres", "pancreas_like_3d_fullres")}
TINY_PLANS = {"tiny_thick_slices_3d": _FIXTURES["tiny_thick_slices_3d"]}
GEOMETRIES = ("plan", "isotropic")  # the plan's strides and kernels, or every level 2x with 3^3 kernels (before 0.2)
TINY = {"dints": dict(num_blocks=2, num_depths=2, channel_mul=0.125),
        "dast": dict(num_blocks=2, num_depths=2, channel_mul=0.125),
        "scnas": dict(num_nodes=2, channel_mul=0.0625), "iac": dict(num_nodes=2, partial_channels=2)}
UNET_BLOCK = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
              "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def planned_unet(strides, kernels):
    """nnU-Net's PlainConvUNet as its planner lays it out with these per-stage strides and kernels (IAC's host)."""
    n = len(strides)
    kwargs = {"n_stages": n, "features_per_stage": [min(32 * 2 ** i, 320) for i in range(n)],
              "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels, "strides": strides,
              "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
              "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    return dict(UNET_BLOCK, arch_kwargs=kwargs)


def search_plan(method, cfg, plan, geometry: str):
    """``(planned network, search patch, nnU-Net's planned network)`` of a search at ``plan``: with
    ``geometry="plan"`` the space follows the plan's strides and kernels and the patch is nnU-Net's (rounded only
    where the space needs it); with ``"isotropic"`` the space is built as before plan geometries (every level 2x,
    3^3 kernels, the patch rounded up to 2^levels) while IAC's host keeps the plan. The third, the plan's own
    network at the search patch, is what the memory model counts its budget against in either geometry."""
    patch, _, _, _, strides, kernels = plan
    block = planned_unet(strides, kernels)
    reference = PlannedNetwork.from_block(block)
    if geometry == "isotropic" and method.search_downsamplings is not None:
        block["arch_kwargs"] = {k: v for k, v in block["arch_kwargs"].items() if k not in ("strides", "kernel_sizes")}
    planned = PlannedNetwork.from_block(block)
    space, _ = method.search_geometry(cfg, planned, 3)
    patch = patch if space is None else round_up_patch(patch, space.divisor)
    return replace(planned, patch_size=tuple(patch)), patch, replace(reference, patch_size=tuple(patch))


def build(method, cfg, planned, in_ch, classes, device, export_memory=None):
    """The search network, with ``export_memory`` (``count_export_memory``'s) attached as the trainer does."""
    op_set = method.op_set_for(cfg, 3)
    supernet = method.build_supernet(cfg, op_set, in_ch, classes, 3, True, planned=planned)
    net = SearchNetwork(supernet, method.build_arch_params(cfg, supernet, op_set), method.make_weighting(cfg))
    net.export_memory = export_memory
    return net if device.type == "cpu" else net.to(device)  # built on the CPU (fake tensors cannot move)


def seg_loss(outputs, target):
    """Cross-entropy at every deep-supervision output (targets nearest-downsampled), nnU-Net's weights 1/2^k."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = 0.0
    for k, out in enumerate(outputs):
        t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        total = total + F.cross_entropy(out.float(), t) / 2 ** k
    return total


def weight_step(net, opt, scaler, data, target, device):
    """nnU-Net's own training step: AMP forward, deep-supervision loss, SGD."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        loss = seg_loss(net(data), target)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def iteration(method, cfg, net, opt_w, opt_a, scaler_w, scaler_a, data, target, device):
    """The search trainer's iteration: an architecture step, then :func:`weight_step` with alpha frozen."""
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")
    weights = [p for p in net.weight_parameters() if p.requires_grad]
    opt_a.zero_grad(set_to_none=True)
    for p in weights:  # the architecture step needs no weight gradients (the trainer's requires_grad_off)
        p.requires_grad_(False)
    try:
        with amp:
            seg = seg_loss(net(data), target)
        regs = {k: v.float() for k, v in method.regularizers(net, cfg).items()}
        loss = seg + 0.5 * sum(regs.values()) if regs else seg
        scaler_a.scale(loss).backward()
        scaler_a.step(opt_a)
        scaler_a.update()
    finally:
        for p in weights:
            p.requires_grad_(True)
    for p in net.arch_parameters():
        p.grad = None
    net.arch_frozen = True
    try:
        weight_step(net, opt_w, scaler_w, data, target, device)
    finally:
        net.arch_frozen = False


def measured(net, step, iterations: int, device) -> dict:
    """Run ``step`` ``iterations`` times: parameters, mean seconds after the first (warm-up) and, on CUDA, the peak
    of ``torch.cuda.max_memory_allocated`` (reset by the caller before the network was built)."""
    times = []
    for _ in range(iterations):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {"parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
           "seconds_per_iteration": round(sum(times[1:]) / max(1, len(times) - 1), 4)}
    if device.type == "cuda":
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    return out


def run_baseline(plan_name, plan, device, iterations):
    """nnU-Net's planned PlainConvUNet at the plan (the memory the found networks are compared with)."""
    patch, batch, in_ch, classes, strides, kernels = plan
    row = {"method": "nnunet_plainconvunet", "plan": plan_name, "search_patch": patch, "batch": batch}
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError:
        return dict(row, skipped="nnunetv2 is not installed here")
    block = planned_unet(strides, kernels)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_per_process_memory_fraction(1.0)  # no cap left from a fit run
    try:
        net = get_network_from_plans(block["network_class_name"], block["arch_kwargs"], block["_kw_requires_import"],
                                     in_ch, classes, allow_init=True, deep_supervision=True).to(device)
        opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        data = torch.randn(batch, in_ch, *patch, device=device)
        target = torch.randint(0, classes, (batch, *patch), device=device)
        return dict(row, **measured(net, lambda: weight_step(net, opt, scaler, data, target, device), iterations,
                                    device))
    except torch.cuda.OutOfMemoryError as e:
        return dict(row, oom=True, message=str(e).splitlines()[0][:200])


def estimate(method, cfg, planned, in_ch, classes, batch, patch, device):
    """What the search trainer's memory fit counts for this search (its ``estimate_search_memory``)."""
    net = build(method, cfg, replace(planned, patch_size=tuple(patch)), in_ch, classes, torch.device("cpu"))
    if method.trained_host:
        for p in net.supernet.host_parameters():
            p.requires_grad_(False)
    return count_search_iteration(net, batch, patch, in_ch, "cuda", amp=device.type == "cuda")


def fit_inputs(method, cfg, planned, in_ch, classes, device):
    """``(count, divisor)`` for :func:`~nnunet_nas.memory_fit.fit_search`: the search's iteration counted at a
    batch, patch and width scale, and what its patch must divide per axis."""
    def count(b, p, w=1.0):
        return estimate(method, narrowed(cfg, method.search_width_field, w), planned, in_ch, classes, b, list(p),
                        device)
    return count, search_divisor(method.search_geometry(cfg, planned, 3)[0], planned.kwargs, 3)


def _config(name, tiny):
    method = get_method(name)
    cfg = method.config_class()
    return method, replace(cfg, **TINY[name]) if tiny else cfg


def run_one(name, plan_name, plan, device, tiny, iterations, geometry="plan", batch=None, patch=None, cap_gib=None,
            width_scale=1.0):
    """One search's iterations at the plan (or at ``batch`` x ``patch`` x ``width_scale``, under an allocator cap of
    ``cap_gib``)."""
    method, configured = _config(name, tiny)
    cfg = narrowed(configured, method.search_width_field, width_scale)
    _, planned_batch, in_ch, classes, _, _ = plan
    planned, planned_patch, reference = search_plan(method, cfg, plan, geometry)
    batch, patch = batch or planned_batch, list(patch or planned_patch)
    row = {"method": name, "plan": plan_name, "geometry": geometry, "search_patch": patch, "batch": batch}
    if cap_gib is not None:
        row["cap_gib"] = cap_gib
    if method.trained_host:
        try:
            import dynamic_network_architectures  # noqa: F401
            import nnunetv2  # noqa: F401
        except ImportError:
            return dict(row, skipped="IAC builds on nnU-Net's planned network: nnunetv2 is not installed here")
    t = time.perf_counter()
    row["estimate_gib"] = round(estimate(method, cfg, planned, in_ch, classes, batch, patch, device).peak / GIB, 3)
    row["estimate_seconds"] = round(time.perf_counter() - t, 1)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if cap_gib is None else min(1.0, cap_gib * GIB / total))
    try:
        torch.manual_seed(0)
        # the memory model as the trainer counts it when it starts: at the config's width and the plan's search
        # patch (not a fit's narrowing or patch), against nnU-Net's planned network
        export_memory = count_export_memory(method, configured, planned, in_ch, classes, reference=reference)
        net = build(method, cfg, replace(planned, patch_size=tuple(patch)), in_ch, classes, device, export_memory)
        opt_w = torch.optim.SGD(list(net.weight_parameters()), 0.01, momentum=0.99, nesterov=True)
        opt_a = torch.optim.Adam(list(net.arch_parameters()), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas))
        scalers = [torch.amp.GradScaler(device.type, enabled=device.type == "cuda") for _ in range(2)]
        data = torch.randn(batch, in_ch, *patch, device=device)
        target = torch.randint(0, classes, (batch, *patch), device=device)
        row.update(measured(net, lambda: iteration(method, cfg, net, opt_w, opt_a, *scalers, data, target, device),
                            iterations, device))
    except torch.cuda.OutOfMemoryError as e:
        row.update(oom=True, message=str(e).splitlines()[0][:200])
        if device.type == "cuda":
            row["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    if "max_memory_allocated_gib" in row and not row.get("oom"):
        row["estimate_over_measured"] = round(row["estimate_gib"] / row["max_memory_allocated_gib"], 3)
    return row


def run_fit(name, plan_name, plan, device, tiny, iterations, cap_gib):
    """The memory fit for a card of ``cap_gib`` (less the trainer's reserve), then iterations at its choice under
    that cap. On the CPU (the rehearsal) the target leaves 60 % of the planned activations instead."""
    method, cfg = _config(name, tiny)
    _, batch, in_ch, classes, _, _ = plan
    planned, patch, _ = search_plan(method, cfg, plan, "plan")
    count, divisor = fit_inputs(method, cfg, planned, in_ch, classes, device)
    if device.type == "cuda":
        target = MemoryTarget(int((cap_gib - CUDA_RESERVE_GIB) * GIB), f"a {cap_gib} GiB card")
    else:
        target = MemoryTarget(count(batch, patch).peak_at(0.6), "60 % of the planned activations (rehearsal)")
    t = time.perf_counter()
    row = {"method": name, "plan": plan_name, "fit_for_gib": cap_gib}
    try:
        fit = fit_search(count, batch, patch, divisor, target, method.search_width_field)
    except ValueError as e:  # nothing fits: the trainer's one error
        return dict(row, fits=False, message=str(e)[:400], fit_seconds=round(time.perf_counter() - t, 1))
    row.update(fits=True, fit=fit.to_dict(), fit_seconds=round(time.perf_counter() - t, 1))
    run = run_one(name, plan_name, plan, device, tiny, iterations, "plan", fit.batch_size, fit.patch_size,
                  cap_gib if device.type == "cuda" else None, fit.width_scale)
    return dict(row, run=run)


def run_compile(name, plan_name, plan, device, tiny, iterations, backend):
    """A sampled fixed network of ``name`` at the plan, compiled with ``backend`` (see the module's docstring)."""
    method, cfg = _config(name, tiny)
    _, batch, in_ch, classes, _, _ = plan
    planned, patch, _ = search_plan(method, cfg, plan, "plan")
    row = {"method": name, "plan": plan_name, "compile_backend": backend, "patch": patch, "batch": batch}
    try:
        from nnunet_nas.nnunet.export import sampled_fixed_network
        net = sampled_fixed_network(method, cfg, replace(planned, patch_size=tuple(patch)), 3, in_ch,
                                    classes).to(device)
    except ImportError as e:
        return dict(row, skipped=f"needs nnU-Net's packages: {e}")
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    frames = CompileCounterWithBackend(backend)
    compiled = torch.compile(net, backend=frames)
    data = torch.randn(batch, in_ch, *patch, device=device)
    target = torch.randint(0, classes, (batch, *patch), device=device)
    try:
        t = time.perf_counter()
        with torch.no_grad():
            got, want = compiled(data), net(data)  # float32, the same weights
        row["compile_seconds"] = round(time.perf_counter() - t, 1)
        got, want = [torch.cat([o.flatten().float() for o in (x if isinstance(x, (list, tuple)) else [x])])
                     for x in (got, want)]
        row["relative_difference_fp32"] = float((got - want).norm() / want.norm().clamp_min(1e-30))
        steps = {}
        for label, model in (("compiled", compiled), ("eager", net)):
            opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
            scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
            steps[label] = measured(net, lambda m=model: weight_step(m, opt, scaler, data, target, device),
                                    iterations + 1, device)["seconds_per_iteration"]
            if label == "compiled":
                row["frames_after_training"] = frames.frame_count  # the no-grad forward, one training graph
        row.update(graph_breaks=int(sum(counters["graph_break"].values())),
                   seconds_per_iteration_compiled=steps["compiled"], seconds_per_iteration_eager=steps["eager"])
    except torch.cuda.OutOfMemoryError as e:
        row.update(oom=True, message=str(e).splitlines()[0][:200])
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny configs and plan (the CPU rehearsal)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--iterations", type=int, default=None, help="default: 3 (2 with --tiny)")
    p.add_argument("--geometry", nargs="+", choices=GEOMETRIES, default=["plan"],
                   help="the search space's geometry: the plan's strides and kernels, and/or isotropic (as before "
                        "0.2) for comparison")
    p.add_argument("--fit-caps", nargs="*", type=float, default=[12.0, 24.0],
                   help="card sizes (GiB) to fit the searches to")
    p.add_argument("--fit-plans", nargs="*", default=["pancreas_like_3d_fullres"], help="plans of the fit runs")
    p.add_argument("--budget-s", type=float, default=330, help="start no run after this many seconds")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend of the compile runs (default: inductor; aot_eager with --tiny)")
    p.add_argument("--out", required=True, help="JSON written after every run")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = machine_info()
    cuda = device.type == "cuda"
    report = {"machine": dict(info, device=torch.cuda.get_device_name() if cuda else info["platform"],
                              total_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
                              if cuda else None), "runs": []}
    plans = TINY_PLANS if args.tiny else PLANS
    iterations = args.iterations or (2 if args.tiny else 3)
    methods = args.methods or method_names()
    planned_runs = []
    for plan_name, plan in plans.items():
        planned_runs.append([lambda plan_name=plan_name, plan=plan: run_baseline(plan_name, plan, device, iterations)])
        planned_runs[-1] += [lambda n=name, g=g, plan_name=plan_name, plan=plan: run_one(
            n, plan_name, plan, device, args.tiny, iterations, g) for name in methods for g in args.geometry
            if g == "plan" or get_method(name).search_downsamplings is not None]
    fit_plans = list(plans) if args.tiny else args.fit_plans
    fits = [lambda n=name, c=cap, plan_name=plan_name: run_fit(n, plan_name, plans[plan_name], device, args.tiny,
                                                               iterations, c)
            for cap in (args.fit_caps[:1] if args.tiny else args.fit_caps) for plan_name in fit_plans
            for name in methods]
    backend = args.compile_backend or ("aot_eager" if args.tiny else "inductor")
    first_plan = next(iter(plans))
    compiles = [lambda n=name: run_compile(n, first_plan, plans[first_plan], device, args.tiny, iterations, backend)
                for name in methods]
    # the fits and the compile runs right after the first plan's runs: a run cut off by its budget still has them
    jobs = planned_runs[0] + fits + compiles + [job for runs in planned_runs[1:] for job in runs]
    start = time.perf_counter()
    for job in jobs:
        if time.perf_counter() - start > args.budget_s:
            report.setdefault("skipped_after_budget", 0)
            report["skipped_after_budget"] += 1
            continue
        row = job()
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
