#!/usr/bin/env python
"""JSD stability pruning and early stop on a SCNAS search: search-time saving and genotype difference (CPU).

Runs, on the CPU protocol's data (``benchmarks/hippocampus_2d.py``'s work folder: MSD Hippocampus ``2d_bs32``,
fold 0), the SCNAS benchmark search with and without IAC-LTH's JSD rule at its defaults, same budget (20 epochs x
10 iterations) and seed, each with the real ``nnUNetv2_train`` under ``/usr/bin/time -v``; then compares their
wall-clock, the epoch the JSD search stopped at, the ops it pruned, and the two genotypes edge by edge. The full
search is the one ``hippocampus_2d.py --method scnas`` runs (shared step, skipped when done).

    python benchmarks/jsd_saving.py [--work /tmp/hippo] [--update-benchmarks-md]
"""

import argparse
import json
import os
import sys

from harness import RESULTS, Runner, update_markdown
from hippocampus_2d import DATASET, REPO, add_bs32, env_for, fold_dir, machine, search_epoch_info

FULL_TR = "nnUNetTrainerSCNASSearchHippo2D_20x10"
JSD_TR = "nnUNetTrainerSCNASSearchHippo2D_20x10_JSD"
TABLE_START, TABLE_END = "<!-- jsd_saving:table:start -->", "<!-- jsd_saving:table:end -->"


def search_record(fold, step):
    import torch
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    state = ckpt["nnunet_nas_search_state"]
    alive = ckpt["network_weights"].get("arch.alive_ops")
    jsd = next((s for s in state["strategies"] if "stop_epoch" in s), None)
    rec = {"wall_s": step.get("wall_s"), "peak_rss_mib": step.get("peak_rss_mib"),
           "epochs_run": int(ckpt["current_epoch"]), "stopped_early": bool(state.get("stopped_early")),
           "candidate_ops": int(ckpt["network_weights"]["arch.op_logits"].numel()),
           "epoch_times_s": search_epoch_info(fold)["epoch_times_s"]}
    rec["alive_ops"] = int(alive.sum()) if alive is not None else rec["candidate_ops"]
    if jsd is not None:
        rec.update(stop_epoch=jsd["stop_epoch"], prune_events=len(jsd["events"]),
                   max_score_last=max((s for s in jsd["scores"] if s == s), default=None))
    return rec


def genotype_difference(full_fold, jsd_fold):
    from nnunet_nas.registry import get_method
    name = get_method("scnas").output_file("genotype")
    a, b = (json.load(open(os.path.join(fold, name))) for fold in (full_fold, jsd_fold))
    diff, total, same = {}, 0, 0
    for t in a["cell_types"]:
        ea = [op for row in a[t] for op in row]
        eb = [op for row in b[t] for op in row]
        diff[t] = [{"edge": i, "full": x, "jsd": y} for i, (x, y) in enumerate(zip(ea, eb)) if x != y]
        total += len(ea)
        same += len(ea) - len(diff[t])
    return {"edges_same": same, "edges_total": total, "differences": diff}


def render_table(res):
    f, j = res["full"], res["jsd"]
    lines = ["| search | wall-clock | epochs run | mean epoch | alive ops at the end | peak RSS |",
             "|---|---|---|---|---|---|"]
    for label, r in (("SCNAS, full budget", f), ("SCNAS + JSD rule (defaults)", j)):
        mean = sum(r["epoch_times_s"]) / len(r["epoch_times_s"]) if r["epoch_times_s"] else float("nan")
        lines.append(f"| {label} | {r['wall_s']:.0f} s | {r['epochs_run']} | {mean:.1f} s | {r['alive_ops']} of "
                     f"{r['candidate_ops']} | {r['peak_rss_mib'] / 1024:.2f} GiB |")
    g = res["genotype"]
    lines += ["", f"Search-time saving: {f['wall_s'] / j['wall_s']:.2f}x (wall-clock, full / JSD); JSD stop epoch: "
                  f"{j.get('stop_epoch')}; prune events: {j.get('prune_events')}; genotype: {g['edges_same']} of "
                  f"{g['edges_total']} edges with the same op as the full search."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/hippo")
    ap.add_argument("--update-benchmarks-md", action="store_true")
    ap.add_argument("--out", default=os.path.join(RESULTS, "jsd_saving_scnas.json"))
    args = ap.parse_args()
    env = env_for(args.work)
    if not os.path.isfile(os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json")):
        raise SystemExit(f"no plans under {args.work}: run benchmarks/hippocampus_2d.py --method scnas first")
    add_bs32(env)
    r = Runner(args.work, env)
    res = {"machine": machine(), "work": args.work}
    folds, steps = {}, {}
    for key, name, trainer in (("full", "search_scnas", FULL_TR), ("jsd", "search_scnas_jsd", JSD_TR)):
        fold = folds[key] = fold_dir(env, trainer, "2d_bs32")
        cmd = f"nnUNetv2_train 4 2d_bs32 0 -tr {trainer} -device cpu"
        steps[key] = r.step(name, cmd, done=lambda f=fold: os.path.isfile(os.path.join(f, "checkpoint_final.pth")),
                            resume_cmd=cmd + " --c",
                            resumable=lambda f=fold: os.path.isfile(os.path.join(f, "checkpoint_latest.pth")))
        res[key] = search_record(fold, steps[key])
        res[key]["trainer"] = trainer
    res["genotype"] = genotype_difference(folds["full"], folds["jsd"])
    png = os.path.join(folds["jsd"], "jsd_stability.png")
    if os.path.isfile(png) and os.path.getsize(png) < 300 * 1024:
        import shutil
        shutil.copy(png, os.path.join(os.path.dirname(args.out), "jsd_saving_scnas_jsd_stability.png"))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, default=str)
    os.replace(tmp, args.out)
    table = render_table(res)
    print(table)
    if args.update_benchmarks_md:
        update_markdown(os.path.join(REPO, "BENCHMARKS.md"), table, TABLE_START, TABLE_END)


if __name__ == "__main__":
    sys.exit(main())
