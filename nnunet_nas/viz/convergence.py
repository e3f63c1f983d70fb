"""The convergence panel of every search's trajectories picture: the separation index of the op choice (and of the
edge choice where the method has one), the share of edges whose op still changes, and the floor below which the
export warns (:mod:`nnunet_nas.convergence`)."""

import numpy as np

from nnunet_nas.convergence import CHANGE_WINDOW, SEPARATION_FLOOR

SERIES = (("arch_separation", "op choice separation", "tab:blue", "-"),
          ("arch_edge_separation", "edge choice separation", "tab:green", "-"),
          ("arch_argmax_changed", f"edges whose op changed (last {CHANGE_WINDOW} epochs)", "tab:red", ":"))


def has_convergence(history: dict) -> bool:
    return bool(history.get("arch_separation"))


def draw_convergence(ax, epochs, history: dict, marker=None) -> None:
    for key, label, colour, style in SERIES:
        values = history.get(key)
        if values:
            y = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            ax.plot(epochs, y, color=colour, ls=style, lw=1.8, marker=marker, ms=3, label=label)
    ax.axhline(SEPARATION_FLOOR, color="black", ls="--", lw=1.0, label=f"separation floor {SEPARATION_FLOOR:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("0 uniform ... 1 decided")
    ax.set_title("Convergence: separation index, argmax changes", fontsize=10)
    ax.legend(fontsize=7, loc="best")
