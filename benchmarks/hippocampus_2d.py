#!/usr/bin/env python
"""Real-data CPU benchmark: MSD Hippocampus (Dataset004), nnU-Net 2d at batch 32, baseline vs a searched method.

Runs the CPU protocol of ``../shared/BENCHMARK_PROTOCOL.md`` end to end with the real commands
(``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``), each step under ``/usr/bin/time -v`` for wall-clock and
peak resident memory, and writes a JSON of results (default ``benchmarks/results/hippocampus_2d.json``):

1. plan and preprocess (2d + 3d_fullres; ``--plan-only-2d`` for 2d only)
2. add configuration ``2d_bs32`` (inherits ``2d``, batch_size 32) to ``nnUNetPlans.json`` (atomic write)
3. baseline: ``nnUNetv2_train 4 2d_bs32 0 -tr nnUNetTrainerNAS_20x50 -device cpu``
4. search:   ``nnUNetv2_train 4 2d_bs32 0 -tr <search trainer> -device cpu`` (exports ``2d_bs32_<method>``)
5. retrain:  ``nnUNetv2_train 4 2d_bs32_<method> 0 -tr nnUNetTrainerNAS_20x50 -device cpu``

``--method`` picks the searched method (``dints``, ``scnas``) and with it the search trainer, the results JSON
(``hippocampus_2d.json`` for DiNTS, ``hippocampus_2d_<method>.json`` otherwise) and the BENCHMARKS.md table; the
plan and the baseline are shared by every method run in the same ``--work`` folder.

Resumable: a finished step is skipped (its timing is read back from its ``.time`` file); an interrupted training
step is continued with nnU-Net's ``--c``. The data are copied into a scratch ``nnUNet_raw`` (default
``/tmp/hippo``), never into the repository. The search trainer lives in ``benchmarks/trainers/``.

    python benchmarks/hippocampus_2d.py [--method scnas] [--work /tmp/hippo] [--search-trainer NAME] [--only-report]
"""

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import statistics
import sys

from harness import REPO, Runner, machine_info, package_version, ram_gib, update_markdown, uptime

DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "Dataset004_Hippocampus")
DATASET = "Dataset004_Hippocampus"
TRAIN_TR = "nnUNetTrainerNAS_20x50"
SEARCH_TRAINERS = {"dints": "nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25",
                   "scnas": "nnUNetTrainerSCNASSearchHippo2D_20x10",
                   "dast": "nnUNetTrainerDASTSearchHippo2D_L8D3_20x25"}
LABELS = {"1": "anterior", "2": "posterior"}


def env_for(work):
    from nnunet_nas.nnunet.environment import nnunet_env
    return nnunet_env(work, [os.path.join(REPO, "benchmarks", "trainers")])


def prepare_work(work, data=DATA):
    """nnU-Net's environment for the scratch folder ``work``, its folders, and the raw dataset copied into it once."""
    env = env_for(work)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    raw = os.path.join(env["nnUNet_raw"], DATASET)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        shutil.copytree(data, raw, dirs_exist_ok=True)
    return env


def plans_path(env):
    return os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json")


def add_bs32(env):
    p = plans_path(env)
    plans = json.load(open(p))
    if "2d_bs32" in plans["configurations"]:
        return False
    plans["configurations"]["2d_bs32"] = {"inherits_from": "2d", "batch_size": 32}
    tmp = p + ".tmp"
    with open(tmp, "w") as f:
        json.dump(plans, f, indent=4)
    os.replace(tmp, p)
    return True


def fold_dir(env, trainer, config):
    return os.path.join(env["nnUNet_results"], DATASET, f"{trainer}__nnUNetPlans__{config}", "fold_0")


def dice(fold):
    s = json.load(open(os.path.join(fold, "validation", "summary.json")))
    per = {LABELS.get(k, k): round(v["Dice"], 4) for k, v in s["mean"].items()}
    per["mean"] = round(s["foreground_mean"]["Dice"], 4)
    return per


def count_params(env, config, fold):
    """Parameters of the network nnU-Net builds for ``config`` (with deep supervision heads, as trained), through
    nnU-Net's plans; cross-checked against the checkpoint's ``network_weights``."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = {}
    pm = PlansManager(plans_path(env))
    cm = pm.get_configuration(config)
    ds = json.load(open(os.path.join(env["nnUNet_preprocessed"], DATASET, "dataset.json")))
    lm = pm.get_label_manager(ds)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(ds["channel_names"]),
                                 lm.num_segmentation_heads, allow_init=True, deep_supervision=True)
    out["params"] = int(sum(p.numel() for p in net.parameters()))
    out["network_class"] = cm.network_arch_class_name
    ck = os.path.join(fold, "checkpoint_final.pth")
    if os.path.isfile(ck):
        sd = torch.load(ck, map_location="cpu", weights_only=False)["network_weights"]
        names = {n for n, _ in net.named_parameters()}
        out["params_checkpoint"] = int(sum(v.numel() for k, v in sd.items()
                                           if k.replace("_orig_mod.", "") in names))
    return out


def _op_counts(ops):
    counts = {}
    for o in ops:
        if o is not None:
            counts[o] = counts.get(o, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def genotype_summary(method, search_fold):
    """What the search found, from its ``<method>_genotype.json``: edges kept and op counts."""
    from nnunet_nas.registry import get_method
    g = json.load(open(os.path.join(search_fold, get_method(method).output_file("genotype"))))
    if method == "scnas":
        cells = {t: [op for row in g[t] for op in row] for t in g["cell_types"]}
        return {"op_set": g["op_set"], "num_nodes": g["num_nodes"],
                "edges_kept": {t: sum(o is not None for o in ops) for t, ops in cells.items()},
                "edges_per_cell": len(next(iter(cells.values()))),
                "op_counts": {t: _op_counts(ops) for t, ops in cells.items()}}
    from nnunet_nas.spaces.grid_topology import grid_topology
    edges = g["edges"]
    target = grid_topology(g["num_depths"]).edge_out
    per_level = {f"level {d}": _op_counts(o for row in g["ops"] for e, o in enumerate(row) if int(target[e]) == d)
                 for d in range(g["num_depths"])}
    return {"num_blocks": g.get("num_blocks"), "num_depths": g.get("num_depths"), "op_set": g.get("op_set"),
            "active_edges": int(sum(sum(r) for r in edges)), "total_edges": int(sum(len(r) for r in edges)),
            "op_counts": _op_counts(o for row in g["ops"] for o in row), "op_counts_per_level": per_level,
            "active_edges_per_block": [int(sum(r)) for r in edges],
            "node_a": g.get("node_a")}


def _fold_log(fold):
    """(timestamp, message) of every stamped line of the fold's nnU-Net training logs, oldest log first."""
    for log in sorted(glob.glob(os.path.join(fold, "training_log_*.txt"))):
        for line in open(log):
            m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): (.*)$", line)
            if m:
                yield datetime.datetime.fromisoformat(m.group(1)), m.group(2)


def _epoch_time(message):
    m = re.match(r"Epoch time: ([\d.]+) s", message)
    return float(m.group(1)) if m else None


def fold_timing(fold):
    """Mean training-epoch time and the final validation's duration, from the fold's nnU-Net training logs."""
    epochs, first_pred, last = [], None, None
    for t, message in _fold_log(fold):
        if _epoch_time(message) is not None:
            epochs.append(_epoch_time(message))
        if first_pred is None and message.startswith("predicting "):
            first_pred = t
        last = t
    return {"mean_epoch_s": statistics.mean(epochs) if epochs else None,
            "final_validation_s": (last - first_pred).total_seconds() if first_pred else None}


def search_epoch_info(fold):
    """Per-epoch times and the number of warm-up epochs of a search, from its fold's training logs."""
    times, warmup = [], None
    for _, message in _fold_log(fold):
        if _epoch_time(message) is not None:
            times.append(_epoch_time(message))
        m = re.search(r"search: (\d+) warm-up epochs", message)
        if m:
            warmup = int(m.group(1))
    return {"epoch_times_s": times, "warmup_epochs": warmup}


def machine():
    """The machine of the real-data protocols: :func:`harness.machine_info` with the memory, nnU-Net's and our
    version and the load when the report was written."""
    ram = ram_gib()
    return machine_info(ram=f"{ram:.1f} GiB" if ram is not None else "", nnunetv2=package_version("nnunetv2"),
                        nnunet_nas=package_version("nnunet_nas") or "editable", uptime_at_report=uptime())


METHOD_LABELS = {"dints": "DiNTS", "scnas": "SCNAS", "dast": "DAST"}
# widths whose memory the report compares with nnU-Net's planned network, besides the exported one
PAPER_WIDTHS = {"scnas": {"paper search width (stem 48)": 1.5, "paper retraining width (stem 68)": 2.125}}


def width_memory(env, method, genotype_file, exported_mul):
    """Conv feature-map elements (the export's estimator, batch 1) of the found network at the exported width and
    at the paper's widths, against nnU-Net's planned network for ``2d_bs32``."""
    from nnunet_nas.genotypes.schema import load_genotype
    from nnunet_nas.nnunet.width import conv_output_elements, planned_network_elements
    from nnunet_nas.patch import round_up_patch
    from nnunet_nas.planned_network import PlannedNetwork
    from nnunet_nas.registry import get_method
    m, g = get_method(method), load_genotype(genotype_file)
    planned = planned_network_elements(plans_path(env), "2d_bs32", 1, 3)
    base = json.load(open(plans_path(env)))["configurations"]["2d"]
    patch = round_up_patch(base["patch_size"], m.genotype_patch_divisor(g))
    network = PlannedNetwork.from_block(base["architecture"], patch_size=patch)
    out = {"planned_elements": planned, "patch": patch}
    for label, mul in {"exported": exported_mul, **PAPER_WIDTHS.get(method, {})}.items():
        e = conv_output_elements(lambda: m.network_class(1, 3, deep_supervision=True,
                                                         **m.fixed_network_kwargs(g, mul, planned=network)), 1, patch)
        out[label] = {"channel_mul": mul, "elements": e, "ratio_to_planned": round(e / planned, 2)}
    return out


def table_markers(method):
    """The BENCHMARKS.md markers around a method's table (DiNTS keeps the section's original ones)."""
    tag = "hippocampus_2d" if method == "dints" else f"hippocampus_2d_{method}"
    return f"<!-- {tag}:table:start -->", f"<!-- {tag}:table:end -->"


def render_table(res, method="dints"):
    """The section's results table (markdown), from the results JSON."""
    lines = ["| run | fold-0 val Dice anterior / posterior / mean | parameters (with DS heads) | training wall-clock "
             "(incl. final validation) | mean epoch (50 iterations) | final validation (40 cases) | peak RSS "
             "| load (1-min avg) at start / end |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in res["table"].items():
        step = res["steps"]["baseline" if row["config"] == "2d_bs32" else "retrain"]
        d = row.get("dice")
        dtxt = f"{d['anterior']:.4f} / {d['posterior']:.4f} / {d['mean']:.4f}" if d else "pending (not finished)"
        wall = f"{step['wall_s']:.0f} s" if step.get("wall_s") is not None else "pending"
        rss = f"{step['peak_rss_mib'] / 1024:.2f} GiB" if step.get("peak_rss_mib") is not None else "pending"
        loads = " / ".join(re.search(r"load average: ([\d.]+)", step[k]).group(1) if k in step else "?"
                           for k in ("uptime_start", "uptime_end"))
        ft = fold_timing(row["fold_folder"])
        ep = f"{ft['mean_epoch_s']:.1f} s" if ft["mean_epoch_s"] else "?"
        val = f"{ft['final_validation_s']:.0f} s" if ft["final_validation_s"] else "?"
        lines.append(f"| {key} (`{row['config']}`) | {dtxt} | {row['params']:,} | {wall} | {ep} | {val} | {rss} "
                     f"| {loads} |")
    rows = list(res["table"].values())
    if len(rows) == 2 and rows[0].get("dice") and rows[1].get("dice"):
        b, n = rows[0], rows[1]
        diff = {k: n["dice"][k] - b["dice"][k] for k in ("anterior", "posterior", "mean")}
        verdict = "above" if diff["mean"] > 0 else ("below" if diff["mean"] < 0 else "equal to")
        lines.append("")
        label = METHOD_LABELS[method]
        lines.append(f"{label} minus baseline Dice: anterior {diff['anterior']:+.4f}, "
                     f"posterior {diff['posterior']:+.4f}, mean {diff['mean']:+.4f} ({label} is {verdict} the baseline "
                     f"on this fold and schedule).")
        bw, nw = res["steps"]["baseline"].get("wall_s"), res["steps"]["retrain"].get("wall_s")
        if bw and nw:
            lines.append(f"Retrain wall-clock / baseline wall-clock: {nw / bw:.2f}x "
                         "(same machine; loads in the table).")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/hippo")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--method", default="dints", choices=sorted(SEARCH_TRAINERS))
    ap.add_argument("--search-trainer", default=None, help="default: the method's trainer in benchmarks/trainers")
    ap.add_argument("--plan-only-2d", action="store_true")
    ap.add_argument("--only-report", action="store_true", help="run nothing, collect what is there")
    ap.add_argument("--update-benchmarks-md", action="store_true",
                    help="write the table between the hippocampus_2d markers of BENCHMARKS.md")
    ap.add_argument("--out", default=None,
                    help="results JSON (default: benchmarks/results/hippocampus_2d[_<method>].json); the search's "
                         "genotype and pictures are copied beside it, named after it")
    args = ap.parse_args()
    method = args.method
    args.search_trainer = args.search_trainer or SEARCH_TRAINERS[method]
    stem = "hippocampus_2d" if method == "dints" else f"hippocampus_2d_{method}"
    default_out = os.path.join(REPO, "benchmarks", "results", f"{stem}.json")
    args.out = os.path.abspath(args.out or default_out)
    # copies of the search's outputs beside the results JSON: hippocampus_2d_<file>, or <stem of --out>_<file>
    copy_prefix = "hippocampus_2d" if args.out == default_out else os.path.splitext(os.path.basename(args.out))[0]
    found_config = f"2d_bs32_{method}"

    env = prepare_work(args.work, args.data)
    r = Runner(args.work, env, only_report=args.only_report)
    res = {"machine": machine(), "work": args.work, "method": method, "search_trainer": args.search_trainer,
           "steps": {}}

    cfgs = "2d" if args.plan_only_2d else "2d 3d_fullres"
    pre = os.path.join(env["nnUNet_preprocessed"], DATASET)
    res["steps"]["plan_preprocess"] = r.step(
        "plan_preprocess",
        f"nnUNetv2_plan_and_preprocess -d 4 -c {cfgs} --verify_dataset_integrity "
        f"-np {' '.join(['1'] * len(cfgs.split()))} -npfp 1",
        done=lambda: os.path.isfile(os.path.join(pre, "nnUNetPlans.json")) and all(
            len(glob.glob(os.path.join(pre, f"nnUNetPlans_{c}", "*"))) >= 200 for c in cfgs.split()))
    if not args.only_report:
        print("[add_config] 2d_bs32 " + ("added" if add_bs32(env) else "already present"), flush=True)

    def train(name, config, trainer):
        fold = fold_dir(env, trainer, config)
        cmd = f"nnUNetv2_train 4 {config} 0 -tr {trainer} -device cpu"
        return fold, r.step(name, cmd,
                            done=lambda: os.path.isfile(os.path.join(fold, "validation", "summary.json"))
                            or (trainer == args.search_trainer
                                and os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))),
                            resume_cmd=cmd + " --c",
                            resumable=lambda: os.path.isfile(os.path.join(fold, "checkpoint_latest.pth")))

    base_fold, res["steps"]["baseline"] = train("baseline", "2d_bs32", TRAIN_TR)
    step_suffix = "" if method == "dints" else f"_{method}"  # log names under <work>/logs; DiNTS keeps its old ones
    search_fold, res["steps"]["search"] = train("search" + step_suffix, "2d_bs32", args.search_trainer)
    res["steps"]["search"].update(search_epoch_info(search_fold))
    if found_config not in json.load(open(plans_path(env)))["configurations"]:
        raise SystemExit(f"the search did not register {found_config}; see its log")
    found_fold, res["steps"]["retrain"] = train("retrain" + step_suffix, found_config, TRAIN_TR)

    rows = {}
    for key, config, fold in (("baseline nnU-Net 2d_bs32", "2d_bs32", base_fold),
                              (f"{METHOD_LABELS[method]} {found_config}", found_config, found_fold)):
        step = res["steps"]["baseline" if config == "2d_bs32" else "retrain"]
        row = {"config": config, "fold_folder": fold, "train_wall_s": step.get("wall_s"),
               "peak_rss_mib": step.get("peak_rss_mib")}
        try:
            row["dice"] = dice(fold)
        except FileNotFoundError:
            row["dice"] = None
        row.update(count_params(env, config, fold))
        rows[key] = row
    res["table"] = rows
    from nnunet_nas.registry import OUTPUT_FILES, get_method
    outputs = {kind: get_method(method).output_file(kind) for kind in OUTPUT_FILES}
    try:
        res["search"] = genotype_summary(method, search_fold)
        res["search"].update({f"{kind}_file": os.path.join(search_fold, f) for kind, f in outputs.items()})
        res["search"]["found_config"] = json.load(open(plans_path(env)))["configurations"][found_config]
        res["search"]["width_memory"] = width_memory(
            env, method, os.path.join(search_fold, outputs["genotype"]),
            res["search"]["found_config"]["architecture"]["arch_kwargs"]["channel_mul"])
    except FileNotFoundError as e:
        res["search"] = {"error": str(e)}

    resdir = os.path.dirname(args.out)
    os.makedirs(resdir, exist_ok=True)
    for f in outputs.values():  # copies beside the results JSON (pictures only when small)
        src = os.path.join(search_fold, f)
        if os.path.isfile(src) and (f.endswith(".json") or os.path.getsize(src) < 300 * 1024):
            shutil.copy(src, os.path.join(resdir, f"{copy_prefix}_{f}"))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, default=str)
    os.replace(tmp, args.out)
    print(json.dumps(res, indent=2, default=str))
    table = render_table(res, method)
    print("\n" + table)
    if args.update_benchmarks_md:
        update_markdown(os.path.join(REPO, "BENCHMARKS.md"), table, *table_markers(method))


if __name__ == "__main__":
    sys.exit(main())
