"""The GPU memory of every default search at nnU-Net's own 3d_fullres plans, as this project's estimator counts it
(the count the search trainer's memory fit uses: :mod:`nnunet_nas.memory_count`, fake CUDA tensors under fp16
autocast, no GPU needed), and what the memory fit chooses on cards of 12, 24, 40 and 80 GiB: per trainer x plan, the
estimate at the configuration's batch and patch and, per card, "fits" or the fitted search batch x patch (x width)
with its estimate, or "no" where nothing down to the fit's floor fits. The card's target is its memory less the CUDA
context and the trainer's reserve (``memory_fit.card_target``).

    python benchmarks/memory_fit_table.py --update-markdown
"""

import argparse
import json
import os
import sys
import time

from gpu_acceptance import PLANS, _config, fit_inputs, load_plan_fixtures, search_plan
from harness import REPO, machine_info, publish_table
from nnunet_nas.io import atomic_write_text
from nnunet_nas.memory_fit import GIB, card_target, fit_search
from nnunet_nas.registry import method_names

import torch

TABLE_PLANS = dict(PLANS, brats_like_3d_fullres=load_plan_fixtures()["brats_like_3d_fullres"])
CARDS_GB = (12, 24, 40, 80)
MARKERS = ("<!-- memory-fit-table:start -->", "<!-- memory-fit-table:end -->")


def row_for(name, plan_name, plan):
    method, cfg = _config(name, tiny=False)
    _, batch, in_ch, classes, _, _ = plan
    planned, patch, _ = search_plan(method, cfg, plan, "plan")
    counter, divisor = fit_inputs(method, cfg, planned, in_ch, classes, torch.device("cuda"))
    cache = {}

    def count(b, p, w=1.0):  # each candidate counted once for all cards
        key = (b, tuple(p), w)
        if key not in cache:
            cache[key] = counter(b, p, w)
        return cache[key]
    t = time.perf_counter()
    row = {"method": name, "plan": plan_name, "batch": batch, "patch": patch,
           "estimate_gib": round(count(batch, patch).peak / GIB, 2), "cards": {}}
    for gb in CARDS_GB:
        try:
            fit = fit_search(count, batch, patch, divisor, card_target(gb), method.search_width_field)
            row["cards"][gb] = {"fits": True, "changed": fit.changed, "batch": fit.batch_size,
                                "patch": list(fit.patch_size), "width_scale": fit.width_scale,
                                "estimate_gib": round(fit.estimate_bytes / GIB, 2)}
        except ValueError:
            row["cards"][gb] = {"fits": False}
    row["seconds"] = round(time.perf_counter() - t, 1)
    return row


def cell(c):
    if not c["fits"]:
        return "no"
    if not c["changed"]:
        return "fits"
    width = "" if c.get("width_scale", 1.0) == 1.0 else f", {c['width_scale']:g}x width"
    return f"{c['batch']} x {'x'.join(map(str, c['patch']))}{width} ({c['estimate_gib']:.1f})"


def markdown(rows, info) -> str:
    date = time.strftime("%Y-%m-%d")
    lines = [f"Machine: {info['cpu']}, torch {info['torch']}, {date} (a count, no GPU used).", "",
             "| plan (batch x patch) | search trainer | estimate GiB | "
             + " | ".join(f"{gb} GiB card" for gb in CARDS_GB) + " |", "|---|---|---|" + "---|" * len(CARDS_GB)]
    for r in rows:
        lines.append(f"| {r['plan']} ({r['batch']} x {'x'.join(map(str, r['patch']))}) | {r['method']} | "
                     f"{r['estimate_gib']:.1f} | " + " | ".join(cell(r["cards"][gb]) for gb in CARDS_GB) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--plans", nargs="+", default=list(TABLE_PLANS))
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "memory_fit_table.json"))
    p.add_argument("--update-markdown", action="store_true")
    args = p.parse_args(argv)
    info = machine_info()
    rows = []
    for plan_name in args.plans:
        for name in args.methods or method_names():
            rows.append(row_for(name, plan_name, TABLE_PLANS[plan_name]))
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_text(args.out, json.dumps({"machine": info, "rows": rows}, indent=1))
    publish_table(markdown(rows, info), MARKERS, args.update_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
