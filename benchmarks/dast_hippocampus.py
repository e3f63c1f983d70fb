#!/usr/bin/env python
"""Real data, CPU 2-D protocol: DAST against DiNTS and nnU-Net's configuration at equal estimated memory.

Runs ``benchmarks/hippocampus_2d.py`` twice in one ``--work`` folder (plan, preprocessing and the nnU-Net baseline
``2d_bs32`` are shared): the DAST search ``nnUNetTrainerDASTSearchHippo2D_L8D3_20x25`` and the DiNTS search of the
same space and budget ``nnUNetTrainerDiNTSSearchHippo2D_L8D3_20x25_fit`` (L=8, D=3, search width 0.125, 20 epochs x
25 iterations, half warm-up), each exported at the width fitted to nnU-Net's planned memory and retrained with the
baseline's schedule (``nnUNetTrainerNAS_20x50``). Then one table: validation Dice, parameters, estimated memory
against the plan, search cost, training time, inference time per case (the final validation's 40 cases), peak
memory. Results JSON ``benchmarks/results/hippocampus_2d_dast_comparison.json``.

    python benchmarks/dast_hippocampus.py [--work /tmp/hippo] [--update-benchmarks-md] [--only-report]
"""

import argparse
import json
import os
import subprocess
import sys

from harness import REPO, RESULTS, update_markdown
from hippocampus_2d import DATA, fold_timing

RUNS = {  # row label -> (method, search trainer, results JSON)
    "DiNTS": ("dints", "nnUNetTrainerDiNTSSearchHippo2D_L8D3_20x25_fit", "hippocampus_2d_dast_dints.json"),
    "DAST": ("dast", "nnUNetTrainerDASTSearchHippo2D_L8D3_20x25", "hippocampus_2d_dast.json"),
}
VALIDATION_CASES = 40
TABLE_START, TABLE_END = "<!-- hippocampus_2d_dast:table:start -->", "<!-- hippocampus_2d_dast:table:end -->"


def run_method(method, trainer, out, work, data, only_report):
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "hippocampus_2d.py"), "--method", method,
           "--search-trainer", trainer, "--plan-only-2d", "--work", work, "--data", data, "--out", out]
    subprocess.run(cmd + (["--only-report"] if only_report else []), check=True)


def _row(label, res, key, step, search=None):
    row = res["table"][key]
    timing = fold_timing(row["fold_folder"]) if os.path.isdir(row["fold_folder"]) else {}
    val = timing.get("final_validation_s")
    out = {"label": label, "config": row["config"], "dice": row.get("dice"), "params": row["params"],
           "train_wall_s": step.get("wall_s"), "train_peak_rss_mib": step.get("peak_rss_mib"),
           "mean_epoch_s": timing.get("mean_epoch_s"), "final_validation_s": val,
           "inference_per_case_s": val / VALIDATION_CASES if val else None,
           "memory_ratio_to_planned": 1.0, "channel_mul": None, "search_wall_s": None, "search_peak_rss_mib": None}
    if search is not None:  # a searched row: the search's own figures and its export's width
        exported = search["width_memory"]["exported"]
        out.update(memory_ratio_to_planned=exported["elements"] / search["width_memory"]["planned_elements"],
                   channel_mul=exported["channel_mul"], search_wall_s=res["steps"]["search"].get("wall_s"),
                   search_peak_rss_mib=res["steps"]["search"].get("peak_rss_mib"),
                   op_counts=search.get("op_counts"), active_edges=search.get("active_edges"))
    return out


def collect():
    """Rows (baseline, DiNTS, DAST) from the two results JSONs and the fold logs."""
    results = {label: json.load(open(os.path.join(RESULTS, f))) for label, (_, _, f) in RUNS.items()}
    first = results["DAST"]
    base_key = next(k for k, r in first["table"].items() if r["config"] == "2d_bs32")
    rows = [_row("nnU-Net", first, base_key, first["steps"]["baseline"])]
    for label, res in results.items():
        key = next(k for k, r in res["table"].items() if r["config"] != "2d_bs32")
        rows.append(_row(label, res, key, res["steps"]["retrain"], search=res["search"]))
    return {"machine": first["machine"], "rows": rows}


def _fmt(v, spec, unit=""):
    return "?" if v is None else f"{v:{spec}}{unit}"


def _gib(mib):
    return _fmt(mib and mib / 1024, ".2f", " GiB")


def render(comparison):
    lines = ["| run | val Dice anterior / posterior / mean | parameters | est. memory / planned (width) | search "
             "wall-clock / peak RSS | training wall-clock (incl. validation) | mean epoch | inference per case "
             "| training peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        d = r["dice"]
        dtxt = f"{d['anterior']:.4f} / {d['posterior']:.4f} / {d['mean']:.4f}" if d else "pending"
        width = f" ({r['channel_mul']:.4f})" if r["channel_mul"] else " (as planned)"
        search = "-" if r["search_wall_s"] is None else f"{r['search_wall_s']:.0f} s / {_gib(r['search_peak_rss_mib'])}"
        lines.append(f"| {r['label']} `{r['config']}` | {dtxt} | {r['params']:,} | {r['memory_ratio_to_planned']:.2f}x"
                     f"{width} | {search} | {_fmt(r['train_wall_s'], '.0f', ' s')} "
                     f"| {_fmt(r['mean_epoch_s'], '.1f', ' s')} | {_fmt(r['inference_per_case_s'], '.2f', ' s')} "
                     f"| {_gib(r['train_peak_rss_mib'])} |")
    base = comparison["rows"][0]["dice"]
    diffs = [f"{r['label']} {r['dice']['mean'] - base['mean']:+.4f}" for r in comparison["rows"][1:]
             if r["dice"] and base]
    if diffs:
        lines += ["", "Mean Dice minus nnU-Net's: " + ", ".join(diffs) + " (fold 0, one run each)."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/hippo")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--only-report", action="store_true", help="run nothing, collect what is there")
    ap.add_argument("--update-benchmarks-md", action="store_true")
    args = ap.parse_args()
    for label in ("DAST", "DiNTS"):
        method, trainer, out = RUNS[label]
        run_method(method, trainer, os.path.join(RESULTS, out), args.work, args.data, args.only_report)
    comparison = collect()
    out = os.path.join(RESULTS, "hippocampus_2d_dast_comparison.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(comparison, f, indent=2)
    os.replace(tmp, out)
    table = render(comparison)
    print("\n" + table)
    if args.update_benchmarks_md:
        update_markdown(os.path.join(REPO, "BENCHMARKS.md"), table, TABLE_START, TABLE_END)


if __name__ == "__main__":
    sys.exit(main())
