"""Searches that follow nnU-Net's plan, before and after, on the CPU: at the Pancreas-like plan (40 x 224 x 224, the
first stage in-plane only) and at a thick-slice plan (nnU-Net's 3d_fullres plan of 12 x 64 x 64 voxels at 5 x 1 x 1
mm), for every default search trainer whose space has its own geometry (DiNTS, DAST, SCNAS; IAC searches inside
nnU-Net's own network and kept the plan already). "Before" is the space of 0.1 (every level 2x, 3^3 kernels, the
patch rounded up to 2^levels), "now" the plan's per-axis strides and kernels with nnU-Net's patch.

* search voxels per patch, at both plans;
* at the plans whose search fits this machine (``--measure``, default the thick-slice one; the Pancreas-like search
  needs 20-140 GB, measured on the GPU by ``gpu_acceptance.py --geometry plan isotropic``), in a child process per
  row: the peak resident memory one search adds (network, optimisers, a batch and one search iteration, fp32, the
  CPU's lean grid path) and the median seconds per search iteration (architecture step, then weight step) after one
  warm-up.

    python benchmarks/plan_geometry.py --update-markdown
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from harness import REPO, machine_info, publish_table, run_child

# patch, batch, input channels, classes, strides, kernels (nnU-Net's plans; the thick-slice one as nnunetv2 2.8
# plans tests/helpers.write_dataset's 12 x 64 x 64 x 5 mm dataset)
PLANS = {
    "pancreas_like_3d_fullres": ([40, 224, 224], 2, 1, 3,
                                 [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                                 [[1, 3, 3]] + [[3, 3, 3]] * 5),
    "thick_slices_3d_fullres": ([12, 64, 64], 2, 1, 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
                                [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]),
}
METHODS = ("dints", "dast", "scnas")
MARKERS = ("<!-- plan-geometry:start -->", "<!-- plan-geometry:end -->")


def _network(name, plan_name, geometry):
    """``(method, default config, planned network, search patch, nnU-Net's planned network)`` of a search at
    ``plan_name``."""
    from gpu_acceptance import search_plan
    from nnunet_nas.registry import get_method
    method = get_method(name)
    cfg = method.config_class()
    planned, patch, reference = search_plan(method, cfg, PLANS[plan_name], geometry)
    return method, cfg, planned, patch, reference


def child_measure(name, plan_name, geometry, iterations) -> dict:
    """One search at the plan on the CPU: the peak resident memory it added (network, optimisers, a batch and one
    iteration's activations) and the median seconds per search iteration after one warm-up."""
    import resource

    import torch

    from gpu_acceptance import build, iteration

    from nnunet_nas.nnunet.search_memory import count_export_memory
    method, cfg, planned, patch, reference = _network(name, plan_name, geometry)
    _, batch, in_ch, classes, _, _ = PLANS[plan_name]
    device = torch.device("cpu")
    before = _rss_kib()
    torch.manual_seed(0)
    net = build(method, cfg, planned, in_ch, classes, device,
                count_export_memory(method, cfg, planned, in_ch, classes, reference=reference))
    opt_w = torch.optim.SGD(list(net.weight_parameters()), 0.01, momentum=0.99, nesterov=True)
    opt_a = torch.optim.Adam(list(net.arch_parameters()), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas))
    scalers = [torch.amp.GradScaler("cpu", enabled=False) for _ in range(2)]
    data = torch.randn(batch, in_ch, *patch)
    target = torch.randint(0, classes, (batch, *patch))
    times = []
    for _ in range(iterations + 1):
        t = time.perf_counter()
        iteration(method, cfg, net, opt_w, opt_a, *scalers, data, target, device)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_added_gib": round((peak - before) / 2 ** 20, 2),
            "seconds_per_iteration": round(statistics.median(times[1:]), 2), "threads": torch.get_num_threads()}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def render(rows) -> str:
    lines = ["| plan | method | search patch before -> now | voxels now / before | CPU peak GiB added before -> now "
             "| CPU s / iteration before -> now |", "|---|---|---|---|---|---|"]
    by = {(r["plan"], r["method"], r["geometry"]): r for r in rows}

    def measured(b, a, key, spec):
        return f"{b[key]:{spec}} -> {a[key]:{spec}}" if key in b and key in a else "not measured"
    for plan in PLANS:
        for name in METHODS:
            b, a = by.get((plan, name, "isotropic")), by.get((plan, name, "plan"))
            if b is None or a is None:
                continue
            lines.append(f"| {plan} | {name} | {'x'.join(map(str, b['search_patch']))} -> "
                         f"{'x'.join(map(str, a['search_patch']))} | {a['voxels'] / b['voxels']:.2f} | "
                         f"{measured(b, a, 'peak_rss_added_gib', '.2f')} | "
                         f"{measured(b, a, 'seconds_per_iteration', '.2f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--measure", nargs="*", default=["thick_slices_3d_fullres"], choices=list(PLANS),
                   help="plans at which the search is run on this machine (the others: voxels only)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "plan_geometry.json"))
    p.add_argument("--update-markdown", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        name, plan, geometry, iterations = args.child
        print(json.dumps(child_measure(name, plan, geometry, int(iterations))), flush=True)
        return 0
    report = {"machine": machine_info(), "rows": []}
    me = os.path.abspath(__file__)
    for plan in PLANS:
        for name in args.methods:
            for geometry in ("isotropic", "plan"):
                patch = _network(name, plan, geometry)[3]
                row = {"plan": plan, "method": name, "geometry": geometry, "search_patch": patch,
                       "voxels": math.prod(patch)}
                if plan in args.measure:
                    row.update(run_child([sys.executable, me, "--child", name, plan, geometry, str(args.iterations)]))
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                with open(args.out + ".tmp", "w") as f:
                    json.dump(report, f, indent=1)
                os.replace(args.out + ".tmp", args.out)
    publish_table(render(report["rows"]), MARKERS, args.update_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
