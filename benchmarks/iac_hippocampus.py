#!/usr/bin/env python
"""Real-data CPU benchmark of IAC and IAC-LTH: MSD Hippocampus (Dataset004), nnU-Net 2d at batch 32.

The CPU protocol of ``../shared/BENCHMARK_PROTOCOL.md`` with the real commands, each step under ``/usr/bin/time -v``
(wall-clock, peak RSS), resumable like ``hippocampus_2d.py`` (whose helpers it uses):

1. plan and preprocess 2d; add ``2d_bs32`` (``2d`` at batch 32)
2. baseline = the host: ``nnUNetv2_train 4 2d_bs32 0 -tr nnUNetTrainerNAS_20x50``
3. IAC (full length): ``-tr nnUNetTrainerIACSearchHippo2D_40x5`` on the trained baseline (exports ``2d_bs32_iac``)
4. IAC-LTH: ``-tr nnUNetTrainerIACLTHSearchHippo2D_40x5`` (JSD pruning and early stop; exports another
   ``2d_bs32_iac*`` configuration)
5. control: the baseline's network fine-tuned from the baseline's weights, ``-tr nnUNetTrainerNAS_10x50_FromModel``
6. fine-tune both found configurations with the same budget, ``-tr nnUNetTrainerNAS_10x50`` (they start from the
   baseline's weights through IACUNet's loader)

Results: ``benchmarks/results/iac_hippocampus.json``; ``--update-benchmarks-md`` writes the table between the
``iac_hippocampus`` markers of BENCHMARKS.md.

    python benchmarks/iac_hippocampus.py [--work /tmp/iac_hippo] [--only-report] [--update-benchmarks-md]
"""

import argparse
import glob
import json
import os
import shutil
import sys

import hippocampus_2d as h
from harness import REPO, RESULTS, Runner, update_markdown

BASE_TR = "nnUNetTrainerNAS_20x50"
IAC_TR = "nnUNetTrainerIACSearchHippo2D_40x5"
LTH_TR = "nnUNetTrainerIACLTHSearchHippo2D_40x5"
FT_TR = "nnUNetTrainerNAS_10x50"
CONTROL_TR = "nnUNetTrainerNAS_10x50_FromModel"
MARKERS = ("<!-- iac_hippocampus:table:start -->", "<!-- iac_hippocampus:table:end -->")


def found_configuration(env, search_trainer):
    """The configuration a search registered (its genotype's provenance names the search trainer)."""
    for name, c in json.load(open(h.plans_path(env)))["configurations"].items():
        g = c.get("architecture", {}).get("arch_kwargs", {}).get("genotype") or {}
        if g.get("provenance", {}).get("trainer") == search_trainer:
            return name
    raise SystemExit(f"no configuration was registered by {search_trainer}; see its log")


def search_record(env, trainer):
    """Epochs run, stop, pruning events and per-epoch times of a search, from its checkpoint and logs."""
    import torch
    fold = h.fold_dir(env, trainer, "2d_bs32")
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    state = ckpt["nnunet_nas_search_state"]
    out = {"epochs_run": int(ckpt["current_epoch"]), "stopped_early": bool(state.get("stopped_early")),
           "arch_steps": int(state["arch_steps_done"])}
    out.update(h.search_epoch_info(fold))
    alive = ckpt["network_weights"].get("arch.alive_ops")
    out["alive_ops"] = None if alive is None else int(alive.sum())
    out["candidate_ops"] = int(ckpt["network_weights"]["arch.op_logits"].numel())
    for s in state.get("strategies", []):
        if isinstance(s, dict) and "events" in s:  # the JSD rule: its decisions and the scores behind them
            scores = sorted(x for row in s["trajectory"]["score"] for x in row if x == x)
            out["jsd"] = {"stop_epoch": s["stop_epoch"], "pruning_events": s["events"],
                          "recorded_epochs": len(s["trajectory"]["epoch"]),
                          "edge_epochs_at_or_below_1e-3": round(sum(x <= 1e-3 for x in scores) / len(scores), 3)
                          if scores else None,
                          "median_score": scores[len(scores) // 2] if scores else None,
                          "max_score": scores[-1] if scores else None}
    out["genotype"] = json.load(open(os.path.join(fold, "iac_genotype.json")))
    return out


def genotype_agreement(a: dict, b: dict) -> dict:
    """Edges of the shared cell that both genotypes keep with the same op, and kept-edge overlap."""
    ea = [op for row in a[a["cell_types"][0]] for op in row]
    eb = [op for row in b[b["cell_types"][0]] for op in row]
    return {"edges": len(ea), "same_op_or_both_dropped": sum(x == y for x, y in zip(ea, eb)),
            "kept_by_both": sum(x is not None and y is not None for x, y in zip(ea, eb)),
            "kept": [sum(x is not None for x in ea), sum(y is not None for y in eb)]}


def render_table(res) -> str:
    rows = res["table"]
    lines = ["| run | search | search wall-clock | training wall-clock (incl. final validation) | mean epoch | "
             "parameters | Dice anterior / posterior / mean |", "|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        d = r.get("dice") or {}
        dice = " / ".join(f"{d[k]:.4f}" for k in ("anterior", "posterior", "mean")) if d else "n/a"
        search = r.get("search_text", "-")
        sw = f"{r['search_wall_s']:.0f} s" if r.get("search_wall_s") else "-"
        fw = f"{r['train_wall_s']:.0f} s" if r.get("train_wall_s") else "-"
        ep = f"{r['mean_epoch_s']:.0f} s" if r.get("mean_epoch_s") else "-"
        lines.append(f"| {key} | {search} | {sw} | {fw} | {ep} | {r.get('params', 0):,} | {dice} |")
    lth = res["search"]["iac_lth"].get("jsd", {})
    g = res["genotype_agreement"]
    lines += ["", f"IAC-LTH against IAC: search-time saving {res['speedup']['wall_clock']}x (wall-clock), "
              f"{res['speedup']['epochs']}x (epochs); stop epoch {lth.get('stop_epoch')}; pruning events "
              f"{len(lth.get('pruning_events', []))}; edge-epochs with S_e <= 1e-3: "
              f"{lth.get('edge_epochs_at_or_below_1e-3')}; genotype: {g['same_op_or_both_dropped']} of {g['edges']} "
              f"edges the same (kept with the same op or dropped by both)."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/iac_hippo")
    ap.add_argument("--data", default=h.DATA)
    ap.add_argument("--only-report", action="store_true", help="run nothing, collect what is there")
    ap.add_argument("--update-benchmarks-md", action="store_true")
    ap.add_argument("--out", default=os.path.join(RESULTS, "iac_hippocampus.json"))
    args = ap.parse_args()

    env = h.prepare_work(args.work, args.data)
    r = Runner(args.work, env, only_report=args.only_report)
    res = {"machine": h.machine(), "work": args.work, "steps": {}}
    pre = os.path.join(env["nnUNet_preprocessed"], h.DATASET)
    res["steps"]["plan_preprocess"] = r.step(
        "plan_preprocess", "nnUNetv2_plan_and_preprocess -d 4 -c 2d --verify_dataset_integrity -np 1 -npfp 1",
        done=lambda: os.path.isfile(os.path.join(pre, "nnUNetPlans.json"))
        and len(glob.glob(os.path.join(pre, "nnUNetPlans_2d", "*"))) >= 200)
    if not args.only_report:
        h.add_bs32(env)

    def train(name, config, trainer, runner=r, search=False):
        fold = h.fold_dir(env, trainer, config)
        cmd = f"nnUNetv2_train 4 {config} 0 -tr {trainer} -device cpu"
        done = (lambda: os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))) if search else \
            (lambda: os.path.isfile(os.path.join(fold, "validation", "summary.json")))
        return fold, runner.step(name, cmd, done=done, resume_cmd=cmd + " --c",
                                 resumable=lambda: os.path.isfile(os.path.join(fold, "checkpoint_latest.pth")))

    base_fold, res["steps"]["baseline"] = train("baseline", "2d_bs32", BASE_TR)
    _, res["steps"]["search_iac"] = train("search_iac", "2d_bs32", IAC_TR, search=True)
    _, res["steps"]["search_iac_lth"] = train("search_iac_lth", "2d_bs32", LTH_TR, search=True)
    host_checkpoint = os.path.join(base_fold, "checkpoint_final.pth")
    control_runner = Runner(args.work, dict(env, NNUNET_NAS_BENCH_INIT=host_checkpoint), only_report=args.only_report)
    control_fold, res["steps"]["control"] = train("finetune_control", "2d_bs32", CONTROL_TR, control_runner)
    iac_config, lth_config = found_configuration(env, IAC_TR), found_configuration(env, LTH_TR)
    iac_fold, res["steps"]["finetune_iac"] = train("finetune_iac", iac_config, FT_TR)
    lth_fold, res["steps"]["finetune_iac_lth"] = train("finetune_iac_lth", lth_config, FT_TR)

    res["search"] = {"iac": search_record(env, IAC_TR), "iac_lth": search_record(env, LTH_TR)}
    s_iac, s_lth = res["steps"]["search_iac"], res["steps"]["search_iac_lth"]
    res["speedup"] = {"wall_clock": round(s_iac["wall_s"] / s_lth["wall_s"], 2),
                      "epochs": round(res["search"]["iac"]["epochs_run"] / res["search"]["iac_lth"]["epochs_run"], 2),
                      "architecture_steps": round(res["search"]["iac"]["arch_steps"]
                                                  / max(1, res["search"]["iac_lth"]["arch_steps"]), 2)}
    res["genotype_agreement"] = genotype_agreement(res["search"]["iac"]["genotype"],
                                                   res["search"]["iac_lth"]["genotype"])
    rows = {}
    for key, config, fold, step, search in (
            ("nnU-Net 2d_bs32 (the host; 20 x 50)", "2d_bs32", base_fold, "baseline", None),
            ("control: host + 10 x 50 without cells", "2d_bs32", control_fold, "control", None),
            (f"IAC {iac_config}: host + cells, 10 x 50", iac_config, iac_fold, "finetune_iac", "iac"),
            (f"IAC-LTH {lth_config}: host + cells, 10 x 50", lth_config, lth_fold, "finetune_iac_lth", "iac_lth")):
        row = {"config": config, "fold_folder": fold, "train_wall_s": res["steps"][step].get("wall_s"),
               "peak_rss_mib": res["steps"][step].get("peak_rss_mib")}
        row.update(h.fold_timing(fold))
        try:
            row["dice"] = h.dice(fold)
        except FileNotFoundError:
            row["dice"] = None
        row.update(h.count_params(env, config, fold))
        if search is not None:
            rec = res["search"][search]
            row["search_wall_s"] = res["steps"]["search_" + search].get("wall_s")
            row["search_text"] = (f"{rec['epochs_run']} of 40 epochs"
                                  + (" (stopped early)" if rec["stopped_early"] else ""))
        rows[key] = row
    res["table"] = rows

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    for trainer, tag in ((IAC_TR, "iac"), (LTH_TR, "iac_lth")):
        fold = h.fold_dir(env, trainer, "2d_bs32")
        for f in ("iac_genotype.json", "iac_architecture.png", "iac_network.png", "jsd_stability.png"):
            src = os.path.join(fold, f)
            if os.path.isfile(src) and os.path.getsize(src) < 300 * 1024:
                shutil.copy(src, os.path.join(os.path.dirname(args.out), f"iac_hippocampus_{tag}_{f}"))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, default=str)
    os.replace(tmp, args.out)
    table = render_table(res)
    print(json.dumps({k: res[k] for k in ("speedup", "genotype_agreement")}, indent=2))
    print("\n" + table)
    if args.update_benchmarks_md:
        update_markdown(os.path.join(REPO, "BENCHMARKS.md"), table, *MARKERS)


if __name__ == "__main__":
    sys.exit(main())
