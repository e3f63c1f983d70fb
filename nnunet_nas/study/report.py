"""A study's report, from what is on disk only (``nnunet-nas report RUN_DIR`` rebuilds it): per configuration the
cross-validated Dice per label and its spread over folds (nnU-Net's own ``summary.json`` values), each found
configuration against the baseline case by case (the mean paired difference with a bootstrap interval, pooled and
on the search fold's clean cases alone; beside it the baseline's second run where there is one), parameters and
estimated training memory against nnU-Net's planned network, wall-clock and peak memory of every step, the
searches' pictures, and what ``nnUNetv2_find_best_configuration`` chose."""

import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_nas.convergence import CHANGE_CEILING, SEPARATION_FLOOR
from nnunet_nas.io import atomic_write_text
from nnunet_nas.nnunet.export import EXPORT_NAME_ENV
from nnunet_nas.study.ledger import wall_seconds
from nnunet_nas.study.steps import TRAINING_KINDS, VALIDATED_KINDS, control_configuration, random_configuration

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
FEW_CASES = 20  # below this many paired cases the report says the interval is rough


def read_fold(fold_folder: str) -> Optional[dict]:
    """nnU-Net's validation ``summary.json`` of one trained fold: per case the Dice of each label, and the fold's
    ``foreground_mean`` Dice; None when the fold has no validation."""
    path = os.path.join(fold_folder, "validation", "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    cases = {}
    for entry in summary["metric_per_case"]:
        case = os.path.basename(entry["reference_file"])  # the same file name in every configuration's summary
        cases[case] = {label: m["Dice"] for label, m in entry["metrics"].items()}
    return {"cases": cases, "foreground_mean": summary["foreground_mean"]["Dice"],
            "mean": {label: m["Dice"] for label, m in summary["mean"].items()}}


def case_score(dice: Dict[str, float]) -> float:
    """A case's mean Dice over the labels (nnU-Net's foreground mean; a label absent from reference and prediction,
    NaN in nnU-Net's summary, is left out)."""
    values = [v for v in dice.values() if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def paired_difference(a: Dict[str, float], b: Dict[str, float]) -> Optional[dict]:
    """``a - b`` over the cases both have: the mean difference and its 95 % bootstrap interval (cases resampled)."""
    cases = sorted(c for c in set(a) & set(b) if not (np.isnan(a[c]) or np.isnan(b[c])))
    if not cases:
        return None
    diff = np.array([a[c] - b[c] for c in cases])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP_SAMPLES, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"cases": len(cases), "mean": float(diff.mean()), "low": float(low), "high": float(high)}


def configuration_results(study: dict) -> Dict[str, dict]:
    """Per trained configuration: its kind (baseline / found), folds read, per-case scores and summaries."""
    out: Dict[str, dict] = {}
    for step in study["steps"]:
        if step["kind"] not in VALIDATED_KINDS:
            continue
        entry = out.setdefault(step["configuration"], {"kind": step["kind"], "folds": {}})
        fold = read_fold(step["fold_folder"])
        if fold is not None:
            entry["folds"][step["fold"]] = fold
    return out


def network_figures(fold_folder: str, configuration: str) -> Optional[dict]:
    """Parameters and estimated training memory (AMP, nnU-Net's batch and patch) of a configuration's network, built
    as nnU-Net builds it from the model folder's plans."""
    model = os.path.dirname(fold_folder)
    if not os.path.isfile(os.path.join(model, "plans.json")):
        return None
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_nas.arch.memory import estimate_training_memory_bytes
    with open(os.path.join(model, "plans.json")) as f:
        plans = PlansManager(json.load(f))
    with open(os.path.join(model, "dataset.json")) as f:
        dataset_json = json.load(f)
    cm = plans.get_configuration(configuration)
    channels = determine_num_input_channels(plans, cm, dataset_json)
    heads = plans.get_label_manager(dataset_json).num_segmentation_heads
    with torch.random.fork_rng(devices=[]):
        net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, channels, heads, allow_init=False,
                                     deep_supervision=True)
    memory = estimate_training_memory_bytes(net, cm.patch_size, cm.batch_size, amp=True)
    return {"parameters_m": sum(p.numel() for p in net.parameters()) / 1e6, "memory_gib": memory / 2 ** 30,
            "patch": list(cm.patch_size), "batch": cm.batch_size}


def write_report(run_dir: str) -> str:
    """Write ``report.md`` and its figures into ``run_dir``; returns the report's path."""
    run_dir = os.path.abspath(run_dir)
    study_path = os.path.join(run_dir, "study.json")
    if not os.path.isfile(study_path):
        from nnunet_nas.errors import UserError
        raise UserError(f"{run_dir} holds no study.json: it is not a run folder of nnunet-nas run (or the run never "
                        f"started).")
    with open(study_path) as f:
        study = json.load(f)
    ledger = {}
    if os.path.isfile(os.path.join(run_dir, "ledger.json")):
        with open(os.path.join(run_dir, "ledger.json")) as f:
            ledger = json.load(f)
    results = configuration_results(study)
    scores = {c: {case: case_score(d) for fold in r["folds"].values() for case, d in fold["cases"].items()}
              for c, r in results.items()}
    figures_dir = os.path.join(run_dir, "figures")
    os.makedirs(figures_dir, exist_ok=True)
    lines = [f"# nnunet-nas run: {study['dataset']}", "",
             f"Trainer {study['trainer']}, plans {study['plans']}, folds {study['folds']}, searches on fold "
             f"{study['search_fold']}. Dice from nnU-Net's validation `summary.json` of each fold.", ""]
    lines += dice_table(study, results)
    lines += comparison_table(study, results, scores)
    picture = strip_plot(scores, results, os.path.join(figures_dir, "dice_per_case.png"))
    if picture:
        lines += ["", f"![Dice per case](figures/{os.path.basename(picture)})", ""]
    lines += network_table(study, results)
    lines += selection_lines(run_dir, results, scores)
    lines += search_lines(study, ledger, figures_dir)
    lines += step_table(study, ledger)
    path = os.path.join(run_dir, "report.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _label_names(study: dict) -> Dict[str, str]:
    names = {}
    for name, value in study.get("labels", {}).items():
        if name != "background":
            names[str(value if not isinstance(value, list) else tuple(value))] = name
    return names


def search_convergence(study) -> Dict[str, dict]:
    """Per found configuration, the convergence summary its search's genotype records (nnunet_nas.convergence)."""
    out = {}
    for step in study["steps"]:
        if step["kind"] != "search":
            continue
        path = os.path.join(step["fold_folder"], f"{step['name'].split('/')[1]}_genotype.json")
        try:
            with open(path) as f:
                summary = json.load(f).get("provenance", {}).get("convergence")
        except (OSError, ValueError):
            continue
        if summary:
            out[step["env"].get(EXPORT_NAME_ENV)] = summary
    return out


def separation_cell(summary: Optional[dict]) -> str:
    if not summary:
        return "-"
    changed = summary.get("argmax_changed")
    text = f"{summary['separation']:.2f}" + (f", {changed:.0%} changing" if changed else "")
    return text if summary["separated"] else f"**{text}: close to a random draw**"


def dice_table(study, results) -> List[str]:
    labels = _label_names(study)
    keys = sorted({k for r in results.values() for f in r["folds"].values() for k in f["mean"]})
    head = [labels.get(k, k) for k in keys]
    convergence = search_convergence(study)
    lines = ["## Cross-validated Dice", "",
             "Per label: mean over the validation cases of the folds read; mean: nnU-Net's foreground mean per fold, "
             "averaged over folds (spread: standard deviation over folds). Search separation: how far the search's "
             f"final op choice is from uniform (0) towards decided (1), and the share of edges whose op still changed "
             f"in its last epochs; below {SEPARATION_FLOOR:g}, or with more than {CHANGE_CEILING:.0%} changing, the "
             f"found architecture is close to a random draw of its space.", "",
             "| configuration | folds | " + " | ".join(head) + " | mean | spread over folds | search separation |",
             "|---|---|" + "---|" * (len(head) + 3)]
    for c, r in results.items():
        folds = r["folds"]
        if not folds:
            lines.append(f"| {c} | none finished |" + " |" * (len(head) + 2)
                         + f" {separation_cell(convergence.get(c))} |")
            continue
        per_label = []
        for k in keys:
            values = [f["cases"][case].get(k) for f in folds.values() for case in f["cases"]]
            values = [v for v in values if v is not None and not np.isnan(v)]
            per_label.append(f"{np.mean(values):.4f}" if values else "-")
        fold_means = [f["foreground_mean"] for f in folds.values()]
        lines.append(f"| {c} | {','.join(map(str, sorted(folds)))} | " + " | ".join(per_label)
                     + f" | {np.mean(fold_means):.4f} | {np.std(fold_means):.4f} | "
                       f"{separation_cell(convergence.get(c))} |")
    return lines + [""]


def comparison_table(study, results, scores) -> List[str]:
    baselines = [c for c, r in results.items() if r["kind"] == "baseline"]
    base = baselines[0] if baselines else None
    if base is None:
        return []
    clean = set(results[base]["folds"].get(study["search_fold"], {}).get("cases", {}))
    lines = ["## Against the baseline, case by case", "",
             f"Mean paired difference of the per-case mean Dice to {base}, with a 95 % bootstrap interval over cases "
             f"({BOOTSTRAP_SAMPLES} resamples). The searches chose their architectures on fold "
             f"{study['search_fold']}'s training cases: its validation cases are clean; the other folds' were seen "
             f"by the search. An interval that contains 0, or a difference within the baseline's second run's, is "
             f"noise.", "",
             "| configuration | pooled: cases | difference [95 % interval] | clean fold: cases | difference "
             "[95 % interval] |", "|---|---|---|---|---|"]

    counts = []

    def fmt(d):
        return ("-", "-") if d is None else (str(d["cases"]), f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")

    def compared(a, b):
        """``a - b`` pooled over every case both have and on the clean fold's cases."""
        return (paired_difference(scores[a], scores[b]),
                paired_difference({k: v for k, v in scores[a].items() if k in clean}, scores[b]))
    for c in results:
        if c == base:
            continue
        pooled, only_clean = compared(c, base)
        lines.append(f"| {c} | {' | '.join(fmt(pooled))} | {' | '.join(fmt(only_clean))} |")
        counts += [d["cases"] for d in (pooled, only_clean) if d is not None]
    for found, control, what in control_pairs(results):
        if scores[found] and scores[control]:
            pooled, only_clean = compared(found, control)
            lines.append(f"| {found} against {control} ({what}) | {' | '.join(fmt(pooled))} | "
                         f"{' | '.join(fmt(only_clean))} |")
    if counts and min(counts) < FEW_CASES:
        lines.append(f"\nWith fewer than {FEW_CASES} cases an interval over cases is rough: it cannot show the "
                     f"run-to-run spread of the trainings themselves (about 0.015 mean Dice between identical "
                     f"nnU-Net runs on the 200-case Hippocampus protocol); more folds, more cases or "
                     f"--baseline-repeats 2 tell more.")
    return lines + [""]


FAIR_CONTROL = "the same start and schedule, no cells"


def control_pairs(results) -> List[Tuple[str, str, str]]:
    """``(found, control, what the control is)`` for every control the study trained beside a found configuration:
    random architectures of its search's space at the same memory, and IAC's fair control."""
    pairs = []
    for found in results:
        randoms = {random_configuration(found, seed) for seed in range(len(results))}
        controls = [(c, "a random architecture of its search's space at the same memory") for c in results
                    if c in randoms]
        controls.append((control_configuration(found), FAIR_CONTROL))
        pairs += [(found, control, what) for control, what in controls if control in results]
    return pairs


def band_of(noise: Optional[dict]) -> float:
    """The noise band of a paired difference between two runs of one configuration: the larger end of its 95 %
    interval (0 without a second run: then only an interval holding 0 is noise)."""
    return max(abs(noise["low"]), abs(noise["high"])) if noise else 0.0


def noise_band(results, scores) -> float:
    """The baselines' run-to-run noise: the band of the second baseline run against the first, case by case."""
    baselines = [c for c, r in results.items() if r["kind"] == "baseline"]
    return band_of(paired_difference(scores[baselines[1]], scores[baselines[0]]) if len(baselines) > 1 else None)


def strip_plot(scores, results, path) -> Optional[str]:
    if not any(scores.values()):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [c for c in results if scores[c]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 4))
    rng = np.random.default_rng(0)
    for i, c in enumerate(names):
        values = np.array([v for v in scores[c].values() if not np.isnan(v)])
        ax.boxplot(values, positions=[i], widths=0.5, showfliers=False)
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=8, alpha=0.6)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("per-case mean Dice")
    ax.set_title("validation cases of every fold read")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def network_table(study, results) -> List[str]:
    lines = ["## Networks", "", "Parameters and estimated training memory (AMP, nnU-Net's batch and patch of the "
             "configuration) of the network each configuration trains.", "",
             "| configuration | parameters (M) | estimated memory (GiB) | batch x patch |", "|---|---|---|---|"]
    for step in study["steps"]:
        if step["kind"] in VALIDATED_KINDS and step["fold"] == study["folds"][0]:
            try:
                n = network_figures(step["fold_folder"], step["configuration"])
            except Exception as e:  # noqa: BLE001 - one network that cannot be built must not lose the report
                n, why = None, f"{type(e).__name__}: {e}"
            else:
                why = "not trained yet"
            if n is None:
                lines.append(f"| {step['configuration']} | - | - | {why} |")
            else:
                lines.append(f"| {step['configuration']} | {n['parameters_m']:.2f} | {n['memory_gib']:.2f} | "
                             f"{n['batch']} x {'x'.join(map(str, n['patch']))} |")
    return lines + [""]


def selection_lines(run_dir, results, scores) -> List[str]:
    """What nnU-Net's model selection chose, every candidate's score, and, where a chosen configuration is not above
    one of its controls beyond the noise, a line that says so: model selection never sees the controls."""
    path = os.path.join(run_dir, "selection", "inference_information.json")
    if not os.path.isfile(path):
        return ["## Model selection", "", "nnUNetv2_find_best_configuration has not run.", ""]
    with open(path) as f:
        info = json.load(f)
    best = info["best_model_or_ensemble"]
    chosen = " + ".join(m["configuration"] for m in best["selected_model_or_models"])
    ranked = sorted(info["all_results"].items(), key=lambda kv: -kv[1])
    lines = ["## Model selection (nnUNetv2_find_best_configuration)", "",
             f"Chosen: **{chosen}** ({'ensemble' if len(best['selected_model_or_models']) > 1 else 'single model'}), "
             f"cross-validated foreground Dice {best['result_on_crossval_pre_pp']:.4f}, "
             f"{best['result_on_crossval_post_pp']:.4f} after its postprocessing. "
             f"Instructions: `selection/inference_instructions.txt`.", "", "| candidate | Dice |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in ranked]
    if len(ranked) > 1:
        lines.append(f"\nThe winner leads the runner-up by {ranked[0][1] - ranked[1][1]:.4f}.")
    band = noise_band(results, scores)
    members = {m["configuration"] for m in best["selected_model_or_models"]}
    for found, control, what in control_pairs(results):
        d = paired_difference(scores[found], scores[control]) if found in members else None
        if d and d["low"] <= band:
            why = ("what it gains over the baseline comes from training on from the trained model, which the "
                   "control does too" if what == FAIR_CONTROL else "a random architecture of its space does as well, "
                   "so what it brings to the choice is not its search's")
            lines.append(f"\n**{found} is not above {control}** ({what}) beyond the noise: {d['mean']:+.4f} "
                         f"[{d['low']:+.4f}, {d['high']:+.4f}] case by case, noise band +-{band:.4f}; {why}.")
    return lines + [""]


def search_lines(study, ledger, figures_dir) -> List[str]:
    lines = ["## Searches", ""]
    for step in study["steps"]:
        if step["kind"] != "search":
            continue
        method = step["name"].split("/")[1]
        record = ledger.get(step["name"], {})
        lines.append(f"- {method} ({study['search_trainers'].get(method)}, fold {step['fold']}): "
                     f"{record.get('status', 'not run')}, {_wall_clock(record)}; registered "
                     f"`{step['env'].get(EXPORT_NAME_ENV)}`")
        for suffix in ("architecture", "arch_trajectories"):
            source = os.path.join(step["fold_folder"], f"{method}_{suffix}.png")
            if os.path.isfile(source):
                target = f"{method}_{step['configuration']}_{suffix}.png"
                shutil.copy(source, os.path.join(figures_dir, target))
                lines.append(f"  ![{method} {suffix}](figures/{target})")
    return lines + [""]


def step_table(study, ledger) -> List[str]:
    """Every step's status, wall-clock (all its attempts), GPU-hours (trainings on CUDA: wall-clock x GPUs), peak
    resident memory of its process tree and peak CUDA memory (``torch.cuda.max_memory_allocated``, single-GPU
    trainings)."""
    lines = ["## Steps", "", "| step | status | wall-clock | GPU-hours | peak RSS (MiB) | peak GPU memory (MiB) |",
             "|---|---|---|---|---|---|"]
    kinds = {st["name"]: st["kind"] for st in study["steps"]}
    names = list(kinds) + [n for n in ledger if n.startswith("predict/") and n not in kinds]  # after selection
    total = 0.0
    for name in names:
        r = ledger.get(name, {})
        gpu_hours = None
        if study.get("device") == "cuda" and kinds.get(name) in TRAINING_KINDS and wall_seconds(r):
            gpu_hours = wall_seconds(r) / 3600 * study.get("gpus_per_training", 1)
            total += gpu_hours
        lines.append(f"| {name} | {r.get('status', 'not run')}{' (found on disk)' if r.get('adopted') else ''}"
                     f" | {_wall_clock(r)} | {'-' if gpu_hours is None else f'{gpu_hours:.2f}'} | "
                     f"{r.get('peak_rss_mib') or '-'} | {r.get('peak_gpu_mib') or '-'} |")
    if total:
        lines.append(f"\nGPU-hours of the trainings and searches: {total:.2f}.")
    return lines + [""]


def _wall_clock(record: dict) -> str:
    """A step's wall-clock over all its attempts, with their number where there were several."""
    attempts = record.get("attempts") or 1
    return _hours(wall_seconds(record)) + (f" ({attempts} attempts)" if attempts > 1 else "")


def _hours(seconds) -> str:
    if not seconds:
        return "-"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"
