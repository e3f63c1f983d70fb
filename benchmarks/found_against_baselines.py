"""Issue 23's benchmark rows: found configurations (and their controls) against every baseline run on one fold, read
against the baseline's own run-to-run noise.

    python benchmarks/found_against_baselines.py --fold 0 \
        --baseline RESULTS/.../TRAINER__PLANS__2d_bs32 RESULTS/.../TRAINER__PLANS__2d_bs32_repeat2 \
        --row "DiNTS, nnU-Net budget" MODEL_FOLDER SEARCH_FOLD_FOLDER \
        --row "DiNTS, random architecture" MODEL_FOLDER - \
        --pair "DiNTS, nnU-Net budget" "DiNTS, random architecture" \
        --second-seed "DiNTS, nnU-Net budget" SECOND_SEARCH_FOLD_FOLDER [--json OUT.json]

Each ``--row NAME MODEL SEARCH`` names a model folder (``TRAINER__PLANS__CONFIGURATION``, trained on ``--fold``) and
the fold folder of the search behind it (``-`` for none). Per row: nnU-Net's Dice per label and its foreground mean
on the fold's validation cases; the paired per-case difference of the mean Dice to every baseline run with a 95 %
bootstrap interval (``nnunet_nas.study.report.paired_difference``, the study report's); the verdict against the
baseline's noise; the exported width (``channel_mul`` of the plans) and parameters (the network nnU-Net builds); the
search's separation and the share of its edges still changing (its genotype's provenance); the search's compute time,
the sum of nnU-Net's ``Epoch time`` over every training log of the search (every attempt of a resumed search;
a pause of the machine inside an epoch counts). ``--second-seed ROW FOLD_FOLDER`` names a second search of the
row's (same trainer, another ``search_seed``): the row then shows the two-seed agreement, the share of edges whose op
the two searches decide alike, beside the share two random architectures of the space agree on
(``nnunet_nas.agreement.search_agreement``, the one of ``nnunet-nas agreement``).

Noise: the paired difference between the baseline runs; its band is the larger end of its interval, ``n`` =
``max(|low|, |high|)``. A row is *below* a baseline run where its whole interval lies under ``-n``, *above* where it
lies over ``+n``, *within* otherwise; the verdict is "below" or "above" only where it is so against every baseline
run. The numbers come from nnU-Net's own validation ``summary.json``.
"""

import argparse
import glob
import json
import os
import re
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info  # noqa: E402


def fold_scores(model_folder: str, fold: int) -> dict:
    """``{"cases": {case: mean Dice}, "labels": {label: mean Dice}, "foreground_mean"}`` of one trained fold."""
    from nnunet_nas.study.report import case_score, read_fold
    fold_folder = os.path.join(model_folder, f"fold_{fold}")
    read = read_fold(fold_folder)
    if read is None:
        raise SystemExit(f"{fold_folder} has no validation/summary.json: train it with --npz or validate it first.")
    return {"cases": {c: case_score(d) for c, d in read["cases"].items()}, "labels": read["mean"],
            "foreground_mean": read["foreground_mean"]}


def network(model_folder: str, fold: int) -> dict:
    from nnunet_nas.study.report import network_figures
    configuration = os.path.basename(model_folder.rstrip(os.sep)).split("__")[-1]
    figures = network_figures(os.path.join(model_folder, f"fold_{fold}"), configuration) or {}
    with open(os.path.join(model_folder, "plans.json")) as f:
        block = json.load(f)["configurations"][configuration].get("architecture", {})
    return {"configuration": configuration, "channel_mul": block.get("arch_kwargs", {}).get("channel_mul"),
            "cell_channel_mul": block.get("arch_kwargs", {}).get("cell_channel_mul"),
            "parameters_m": figures.get("parameters_m"), "memory_gib": figures.get("memory_gib")}


def search_facts(search_fold: str) -> dict:
    """The search's convergence summary (its genotype's provenance) and compute time (sum of its epoch times)."""
    genotypes = glob.glob(os.path.join(search_fold, "*_genotype.json"))
    convergence = {}
    if genotypes:
        with open(genotypes[0]) as f:
            convergence = json.load(f).get("provenance", {}).get("convergence") or {}
    seconds = 0.0
    for log in glob.glob(os.path.join(search_fold, "training_log_*.txt")):
        with open(log) as f:
            seconds += sum(float(m.group(1)) for m in re.finditer(r"Epoch time: ([0-9.]+) s", f.read()))
    return {"separation": convergence.get("separation"), "edge_separation": convergence.get("edge_separation"),
            "argmax_changed": convergence.get("argmax_changed"), "search_epoch_seconds": round(seconds, 1)}


def verdict(differences, band: float) -> str:
    sides = ["below" if d["high"] < -band else "above" if d["low"] > band else "within" for d in differences]
    return sides[0] if len(set(sides)) == 1 else "within"


def compare(baselines, rows, fold: int, pairs=(), second_seeds=()) -> dict:
    from nnunet_nas.study.report import band_of, paired_difference
    base = [(os.path.basename(b.rstrip(os.sep)), fold_scores(b, fold)) for b in baselines]
    noise = paired_difference(base[1][1]["cases"], base[0][1]["cases"]) if len(base) > 1 else None
    band = band_of(noise)
    out = {"fold": fold, "baselines": [{"model": name, "foreground_mean": s["foreground_mean"], "labels": s["labels"],
                                        **network(b, fold)} for b, (name, s) in zip(baselines, base)],
           "noise": noise, "noise_band": band, "rows": [], "pairs": []}
    cases = {}
    for name, model, search in rows:
        scores = fold_scores(model, fold)
        cases[name] = scores["cases"]
        differences = [dict(paired_difference(scores["cases"], s["cases"]), against=b) for b, s in base]
        row = {"name": name, "model": model, "foreground_mean": scores["foreground_mean"], "labels": scores["labels"],
               "differences": differences, "verdict": verdict(differences, band), **network(model, fold)}
        if search != "-":
            row.update(search_facts(search))
        out["rows"].append(row)
    for a, b in pairs:
        unknown = [n for n in (a, b) if n not in cases]
        if unknown:
            raise SystemExit(f"--pair names no --row: {', '.join(unknown)}; give the NAME of a --row.")
        out["pairs"].append(dict(paired_difference(cases[a], cases[b]), row=a, against=b))
    searches = {name: search for name, _, search in rows}
    for name, second in second_seeds:
        if searches.get(name, "-") == "-":
            raise SystemExit(f"--second-seed names no --row with a search: {name!r}.")
        from nnunet_nas.agreement import search_agreement
        from nnunet_nas.nnunet.export import search_checkpoint
        result = search_agreement(search_checkpoint(searches[name]), search_checkpoint(second))
        next(r for r in out["rows"] if r["name"] == name)["two_seeds"] = dict(result, second_search=second)
    return out


def markdown(result: dict) -> list:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    labels = sorted(result["baselines"][0]["labels"])
    noise = result["noise"]
    lines = [f"Fold {result['fold']}'s validation cases; baseline noise (second run against the first): "
             + (f"{noise['mean']:+.4f} [{noise['low']:+.4f}, {noise['high']:+.4f}], band +-{result['noise_band']:.4f}"
                if noise else "none (one baseline run)"), "",
             "| row | Dice " + " | Dice ".join(labels) + " | mean | " +
             " | ".join(f"against {b['model'].split('__')[-1]}" for b in result["baselines"]) +
             " | verdict | width | parameters (M) | memory (GiB, AMP) | separation | edges changing | "
             "two seeds agree (ops; random) | search (h) |",
             "|---|" + "---|" * (len(labels) + 1 + len(result["baselines"]) + 8)]
    for b in result["baselines"]:
        lines.append(f"| {b['configuration']} (baseline) | " + " | ".join(f"{b['labels'][k]:.4f}" for k in labels)
                     + f" | {b['foreground_mean']:.4f} |" + " |" * (len(result["baselines"]) + 2)
                     + f" {f(b['parameters_m'], '.2f')} | {f(b['memory_gib'], '.2f')} | | | | |")
    for r in result["rows"]:
        width = r["channel_mul"] if r["channel_mul"] is not None else r["cell_channel_mul"]
        hours = r.get("search_epoch_seconds")
        seeds = r.get("two_seeds")
        agree = f"{seeds['agreement']['ops']:.0%} ({seeds['chance']['ops']:.0%})" if seeds else "-"
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['labels'][k]:.4f}" for k in labels)
                     + f" | {r['foreground_mean']:.4f} | "
                     + " | ".join(f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" for d in r["differences"])
                     + f" | {r['verdict']} | {f(width, 'g')} | {f(r['parameters_m'], '.2f')} | "
                       f"{f(r['memory_gib'], '.2f')} | {f(r.get('separation'), '.2f')} | "
                       f"{f(r.get('argmax_changed'), '.0%')} | {agree} | {f(hours and hours / 3600, '.2f')} |")
    if result["pairs"]:
        lines += ["", "Paired per-case difference of the mean Dice between rows (95 % bootstrap interval):", ""]
        lines += [f"- {d['row']} against {d['against']}: {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                  for d in result["pairs"]]
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--baseline", nargs="+", required=True, help="model folders of the baseline runs (first: the "
                                                                "reference)")
    p.add_argument("--row", nargs=3, action="append", required=True, metavar=("NAME", "MODEL", "SEARCH"))
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("ROW", "AGAINST"),
                   help="also set one row against another case by case (e.g. a found one against its random one)")
    p.add_argument("--second-seed", nargs=2, action="append", default=[], metavar=("ROW", "SEARCH"),
                   help="the fold folder of a second search of ROW's (another seed): the row shows their agreement")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    result = dict(compare(args.baseline, args.row, args.fold, args.pair, args.second_seed), machine=machine_info())
    if args.json:
        from nnunet_nas.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=1))
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
