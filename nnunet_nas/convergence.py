"""Whether a search separated: how far the distributions its discretiser decides on are from uniform, and whether
its decisions still change.

* Separation index of one edge: ``(p_max - 1/N) / (1 - 1/N)`` on the distribution the discretiser decides on, at
  temperature 1 (softmax of the logits, never the sampling temperature), over the N options still alive: 0 is
  uniform, 1 a one-hot decision; an edge with one option left counts as decided (1). A search records the mean
  over its edges per architecture epoch: ``arch_separation`` for the op choice (every method),
  ``arch_edge_separation`` for the edge choice where the method has one (the grid's edge gates: ``|2 p - 1|``, the
  distance of sigmoid(logit) from 0.5 doubled; IAC's edge scores, which include beta, normalised over each node's
  incoming edges, of which it keeps two: the index of the kept pair's mass).
* ``arch_argmax_changed``: the share of edges whose most probable op changed within the last :data:`CHANGE_WINDOW`
  architecture epochs.

A search whose op separation stays below :data:`SEPARATION_FLOOR`, or whose argmax still changes on more than
:data:`CHANGE_CEILING` of its edges, exports an architecture close to a random draw of its space: the log warns past
the search's midpoint, and the export warns in one line and records the figures in the genotype's provenance.
The floor: 0.2 is p_max = 0.3 among 8 ops (2.4x uniform) or 0.36 among 5; the uniform-initialised searches of
this package sit at about 0.02 when they did not move.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

SEPARATION_FLOOR = 0.2
CHANGE_WINDOW = 5
CHANGE_CEILING = 0.1
LEVER = "give the search more architecture steps (epochs x iterations) or a higher arch_lr"


def separation_index(probs, keep: int = 1) -> np.ndarray:
    """Per distribution (last axis), ``(p_max - 1/N) / (1 - 1/N)`` over its N options with probability > 0; for a
    discretiser that keeps the ``keep`` best options (PC-DARTS's edges per node), the mass of those instead of p_max
    and ``keep/N`` instead of 1/N. A distribution with no more than ``keep`` options is decided (1)."""
    p = np.asarray(probs, dtype=np.float64)
    n = (p > 0).sum(axis=-1)
    top = np.sort(p, axis=-1)[..., ::-1][..., :keep].sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        index = (top - keep / n) / (1.0 - keep / n)
    return np.where(n <= keep, 1.0, np.clip(index, 0.0, 1.0))


def gate_separation(gate_probs) -> np.ndarray:
    """Per gate, the distance of its probability from 0.5, doubled (0 undecided, 1 certain)."""
    return np.abs(2.0 * np.asarray(gate_probs, dtype=np.float64) - 1.0)


def argmax_changed_share(op_probs_history: Sequence, window: int = CHANGE_WINDOW) -> Optional[float]:
    """The share of edges whose argmax op differs anywhere within the last ``window`` + 1 records of
    ``op_probs_history`` (per record an array ``[..., N]``); None before there are two records."""
    if len(op_probs_history) < 2:
        return None
    recent = np.stack([np.asarray(p, dtype=np.float64).argmax(axis=-1) for p in op_probs_history[-(window + 1):]])
    return float((recent != recent[-1]).any(axis=0).mean())


def separation_record(op_probs, edge_choice: Optional[np.ndarray] = None) -> Dict[str, float]:
    """The per-epoch figures of one architecture state: ``arch_separation`` from the op distributions and, given the
    per-edge separation of the edge choice, ``arch_edge_separation``."""
    out = {"arch_separation": float(separation_index(op_probs).mean())}
    if edge_choice is not None:
        out["arch_edge_separation"] = float(np.mean(edge_choice))
    return out


def convergence_summary(history: dict, window: int = CHANGE_WINDOW) -> Optional[dict]:
    """What a search's ``arch_history`` says at its last architecture epoch: the figures, the rule's thresholds and
    ``separated`` (None when the history has no separation, e.g. a checkpoint written before it was recorded)."""
    seps = history.get("arch_separation") or []
    if not seps:
        return None
    changed = argmax_changed_share(history.get("op_probs") or [], window)
    edge = history.get("arch_edge_separation") or []
    out = {"separation": round(float(seps[-1]), 4),
           "edge_separation": round(float(edge[-1]), 4) if edge else None,
           "argmax_changed": None if changed is None else round(changed, 4), "window": window,
           "separation_floor": SEPARATION_FLOOR, "change_ceiling": CHANGE_CEILING, "epochs": len(seps)}
    out["separated"] = bool(out["separation"] >= SEPARATION_FLOOR and (changed is None or changed <= CHANGE_CEILING))
    return out


def unseparated_warning(summary: Optional[dict]) -> Optional[str]:
    """One line when ``summary`` (:func:`convergence_summary`) says the search did not separate, else None."""
    if summary is None or summary["separated"]:
        return None
    why: List[str] = []
    if summary["separation"] < summary["separation_floor"]:
        why.append(f"separation {summary['separation']:.3f} < {summary['separation_floor']:g}, 0 being uniform")
    if summary["argmax_changed"] is not None and summary["argmax_changed"] > summary["change_ceiling"]:
        why.append(f"{summary['argmax_changed']:.0%} of the edges changed their op in the last {summary['window']} "
                   f"architecture epochs")
    return (f"WARNING: this architecture is close to a random draw of the search space ({'; '.join(why)}): {LEVER}.")
