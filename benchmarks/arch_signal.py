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
            "trainer": ckpt.get("trainer_name"), "method": state.get("method"),
            "arch_lr": cfg.get("arch_lr"), "arch_weight_decay": cfg.get("arch_weight_decay"),
            "decoupled": bool(cfg.get("arch_decoupled_weight_decay")), "arch_steps": state.get("arch_steps_done"),
            "epochs": rows}


def markdown(result: dict) -> list:
    def f(v, fmt):
        return "-" if v is None or not np.isfinite(v) else format(v, fmt)
    lines = [f"{result['method']} `{result['trainer']}`: arch_lr {result['arch_lr']:g}, weight decay "
             f"{result['arch_weight_decay']:g} ({'decoupled' if result['decoupled'] else 'coupled, L2 in Adam'}), "
             f"{result['arch_steps']} architecture steps.", "",
             "| epoch | tau | alpha grad RMS | softmax shift (TV) | separation | logit spread | coupled-decay bound |",
             "|---|---|---|---|---|---|---|"]
    for r in result["epochs"]:
        lines.append(f"| {r['epoch']} | {f(r['temperature'], '.2f')} | {f(r['grad_rms'], '.2e')} | "
                     f"{f(r['softmax_shift'], '.4f')} | {f(r['separation'], '.3f')} | {f(r['logit_spread'], '.3f')} | "
                     f"{f(r['coupled_decay_bound'], '.3f')} |")
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
        print("\n".join(markdown(r)) if args.markdown else json.dumps(r))


if __name__ == "__main__":
    main()
