"""``nnunet-nas demo`` as measured: the demo's study (``nnunet-nas run`` on the 24 packaged Hippocampus cases, 2d,
fold 0, DiNTS) run in ``--workdir`` (a finished study there is read, not run again: the study skips finished
steps), and its figures as a table: per step wall-clock and peak resident memory, fold 0's Dice per label of both
configurations, what model selection chose, the paired difference the report gives.

    python benchmarks/demo_study.py --workdir /tmp/nnunet_nas_demo --update-markdown
"""

import argparse
import json
import os
import subprocess
import sys
import time

from harness import machine_info, publish_table

MARKERS = ("<!-- demo-study:start -->", "<!-- demo-study:end -->")


def table(run_dir: str, info: dict, wall_s: float) -> str:
    ledger = json.load(open(os.path.join(run_dir, "ledger.json")))
    study = json.load(open(os.path.join(run_dir, "study.json")))
    selection = json.load(open(os.path.join(run_dir, "selection", "inference_information.json")))
    measured = f"measured end to end: {wall_s:.0f} s" if wall_s else "(figures of the finished study)"
    lines = [f"Machine: {info['cpu']}, torch {info['torch']}, {time.strftime('%Y-%m-%d')}; `nnunet-nas demo` "
             f"{measured}"
             f".", "", "| step | wall-clock | peak RSS (MiB) | fold 0 Dice anterior / posterior / mean |",
             "|---|---|---|---|"]
    for step in study["steps"]:
        r = ledger[step["name"]]
        dice = ""
        if step["kind"] in ("baseline", "train"):
            summary = json.load(open(os.path.join(step["fold_folder"], "validation", "summary.json")))
            m = summary["mean"]
            dice = f"{m['1']['Dice']:.3f} / {m['2']['Dice']:.3f} / {summary['foreground_mean']['Dice']:.3f}"
        lines.append(f"| {step['name']} | {r.get('seconds', 0):.0f} s | {r.get('peak_rss_mib') or '-'} | {dice} |")
    best = selection["best_model_or_ensemble"]
    chosen = " + ".join(m["configuration"] for m in best["selected_model_or_models"])
    lines.append(f"\nModel selection chose {chosen} (cross-validated foreground Dice "
                 f"{best['result_on_crossval_pre_pp']:.4f}; candidates: "
                 + ", ".join(f"{k.split('__')[-1] if not k.startswith('ensemble') else 'ensemble'} {v:.4f}"
                             for k, v in selection["all_results"].items()) + ").")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--update-markdown", action="store_true")
    args = p.parse_args(argv)
    run_dir = os.path.join(os.path.abspath(args.workdir), "study")
    finished = os.path.isfile(os.path.join(run_dir, "selection", "inference_information.json"))
    start = time.time()
    subprocess.run(["nnunet-nas", "demo", "--workdir", args.workdir], check=True)
    wall = 0.0 if finished else time.time() - start
    publish_table(table(run_dir, machine_info(), wall), MARKERS, args.update_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
