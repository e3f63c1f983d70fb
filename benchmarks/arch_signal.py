"""The signal alpha gets during a search, per architecture epoch (issue 23, part 1): alpha's loss-gradient RMS, how
far softmax(alpha) moved, how far it separated, |alpha|, the sampling temperature. It reads what every search
records in its checkpoint (``arch_grad_rms``, ``arch_softmax_shift``, ``arch_separation``, ``op_probs``; the
temperature where the method anneals one), so it measures any finished or running search without rerunning it:

    python benchmarks/arch_signal.py FOLD_FOLDER [FOLD_FOLDER ...] [--json OUT.json] [--markdown]

Each fold folder is a search's (``checkpoint_latest.pth`` or ``checkpoint_final.pth``). The SCNAS probes of the CPU
protocol (``benchmarks/trainers``: today's coupled decay with linear tau, decoupled, decoupled with exponential tau)
run on the protocol's ``2d_bs32`` as, e.g.,
``NNUNET_NAS_EXPORT_NAME=2d_bs32_scnas_decoupled nnUNetv2_train 4 2d_bs32 0 -tr
nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled -device cpu``. ``--markdown`` prints one
table per search for BENCHMARKS.md. With a coupled weight decay ``wd`` (Adam's L2, DARTS's), alpha cannot go past
about ``|g| / wd`` where its loss gradient ``g`` is balanced by the decay: the table prints that bound beside the
logits' spread, so a search whose logits sit at the bound is held there by the decay, not by its data.

Whether a method's ``arch_lr`` is enough for its package schedule (issue 23's "arch_lr against the number of
architecture steps"): Adam moves each logit by at most ``arch_lr`` per step, so over ``S`` steps an edge's spread
(max - min) can grow by at most ``2 * arch_lr * S``. The search's *coherence* is the share of that reach it used
(spread gained over the architecture epochs / ``2 * arch_lr * S``): 1 when every step pushed the same logits the same
way, near 0 when the gradient's sign wanders. With it the table projects the spread the package's default schedule
(the method's default search trainer: its epochs, nnU-Net's 250 iterations, its warm-up, its ``arch_lr``) would
reach at the same coherence, and the probability one op leading the others of an edge by that spread would have.
The projection ignores a coupled decay, whose bound the table prints beside the spread.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import machine_info  # noqa: E402


def search_signal(fold_folder: str) -> dict:
    import torch
    from nnunet_nas.nnunet.search_state import SEARCH_STATE_KEY
    path = next((os.path.join(fold_folder, n) for n in ("checkpoint_final.pth", "checkpoint_latest.pth")
                 if os.path.isfile(os.path.join(fold_folder, n))), None)
    if path is None:
        raise SystemExit(f"{fold_folder} holds no search checkpoint (checkpoint_final.pth / checkpoint_latest.pth).")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state, logged = ckpt[SEARCH_STATE_KEY], ckpt["logging"]
    history = state["arch_history"]
    cfg = state["search_config"]
    epochs = history.get("epoch", [])
    op_probs = [np.asarray(p, dtype=np.float64) for p in history.get("op_probs", [])]
    # the logits' spread per edge (max - min over alive ops), recovered from softmax(alpha): log p_max - log p_min
    spread = [float(np.mean(np.log(p.max(-1)) - np.log(np.where(p > 0, p, np.inf).min(-1)))) for p in op_probs]
    rows = []
    for i, epoch in enumerate(epochs):
        def value(key, _i=i):
            series = logged.get(key) or history.get(key) or []
            return None if _i >= len(series) or series[_i] is None else float(series[_i])
        rms = value("arch_grad_rms")
        coupled = cfg.get("arch_weight_decay") and not cfg.get("arch_decoupled_weight_decay")
        rows.append({"epoch": int(epoch), "temperature": value("arch_temperature"), "grad_rms": rms,
                     "softmax_shift": value("arch_softmax_shift"), "separation": value("arch_separation"),
                     "logit_spread": spread[i] if i < len(spread) else None,
                     "coupled_decay_bound": (2 * rms / cfg["arch_weight_decay"]) if coupled and rms and
                     np.isfinite(rms) else None})
    return {"fold_folder": os.path.abspath(fold_folder), "checkpoint": os.path.basename(path),
            "trainer": ckpt.get("trainer_name"), "method": state.get("method"), "num_ops": int(op_probs[-1].shape[-1])
            if op_probs else None,
            "arch_lr": cfg.get("arch_lr"), "arch_weight_decay": cfg.get("arch_weight_decay"),
            "decoupled": bool(cfg.get("arch_decoupled_weight_decay")), "arch_steps": state.get("arch_steps_done"),
            "epochs": rows}


NNUNET_ITERATIONS_PER_EPOCH = 250  # nnU-Net's, which the package's search trainers keep


def package_schedule(method: str) -> dict:
    """``{"arch_lr", "arch_steps", "trainer"}`` of the method's default search trainer as the package ships it."""
    from nnunet_nas.nnunet import trainers
    name = trainers.default_search_trainer(method)
    cls = getattr(trainers, name)
    _, cfg = cls.method_and_config()
    epochs = cls.num_epochs_default
    per_epoch = cls.iterations_per_epoch or NNUNET_ITERATIONS_PER_EPOCH
    return {"trainer": name, "arch_lr": cfg.arch_lr,
            "arch_steps": (epochs - cfg.num_warmup_epochs(epochs)) * per_epoch}


def schedule_reach(result: dict) -> dict:
    """The search's coherence and the spread its method's package schedule reaches at it (module docstring)."""
    searched = [r for r in result["epochs"] if r["grad_rms"] is not None and r["logit_spread"] is not None]
    if not searched or not result["arch_steps"]:
        return {}
    before = [r for r in result["epochs"] if r["epoch"] < searched[0]["epoch"] and r["logit_spread"] is not None]
    start = (before[-1] if before else searched[0])["logit_spread"]
    gained = searched[-1]["logit_spread"] - start
    coherence = gained / (2 * result["arch_lr"] * result["arch_steps"])
    package = package_schedule(result["method"])
    spread = start + coherence * 2 * package["arch_lr"] * package["arch_steps"]
    n = result["num_ops"] or 2
    return {"spread_gained": gained, "coherence": coherence, "package": package, "package_spread": spread,
            "package_p_max": float(np.exp(spread) / (np.exp(spread) + n - 1))}


def markdown(result: dict) -> list:
    def f(v, fmt):
        return "-" if v is None or not np.isfinite(v) else format(v, fmt)
    decay = ("none" if not result["arch_weight_decay"] else f"{result['arch_weight_decay']:g} "
             f"({'decoupled' if result['decoupled'] else 'coupled, L2 in Adam'})")
    lines = [f"{result['method']} `{result['trainer']}`: arch_lr {result['arch_lr']:g}, weight decay {decay}, "
             f"{result['arch_steps']} architecture steps.", "",
             "| epoch | tau | alpha grad RMS | softmax shift (TV) | separation | logit spread | coupled-decay bound |",
             "|---|---|---|---|---|---|---|"]
    for r in result["epochs"]:
        lines.append(f"| {r['epoch']} | {f(r['temperature'], '.2f')} | {f(r['grad_rms'], '.2e')} | "
                     f"{f(r['softmax_shift'], '.4f')} | {f(r['separation'], '.3f')} | {f(r['logit_spread'], '.3f')} | "
                     f"{f(r['coupled_decay_bound'], '.3f')} |")
    reach = schedule_reach(result)
    if reach:
        pk = reach["package"]
        lines += ["", f"Coherence {reach['coherence']:.3f} (spread gained {reach['spread_gained']:.2f} of at most "
                      f"{2 * result['arch_lr'] * result['arch_steps']:.1f}). The package's `{pk['trainer']}` "
                      f"(arch_lr {pk['arch_lr']:g}, {pk['arch_steps']} architecture steps) reaches at it a spread of "
                      f"{reach['package_spread']:.1f}: one op leading its {result['num_ops'] - 1} rivals by that has "
                      f"p = {reach['package_p_max']:.3f}."]
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="search fold folders")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", action="store_true", help="print BENCHMARKS.md tables")
    args = p.parse_args()
    results = {"machine": machine_info(), "searches": [search_signal(f) for f in args.folders]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    for r in results["searches"]:
        print("\n".join(markdown(r)) if args.markdown else json.dumps(dict(r, schedule_reach=schedule_reach(r))))


if __name__ == "__main__":
    main()
