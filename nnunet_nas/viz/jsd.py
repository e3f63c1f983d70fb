"""Figure of the JSD stability strategy (:mod:`nnunet_nas.strategies.jsd_pruning`): per edge and epoch the score
``S_e`` against the threshold and the number of alive ops, with the stop epoch marked.

Same conventions as :mod:`nnunet_nas.viz.figure`: matplotlib imported inside the function, default style, atomic PNG.
"""

import os
from typing import Optional

import numpy as np

from nnunet_nas.viz.figure import default_style, new_figure, save_png

FILE_NAME = "jsd_stability.png"


@default_style
def plot_jsd_trajectory(trajectory: dict, stop_epoch: Optional[int], threshold: float, folder: str) -> Optional[str]:
    """``jsd_stability.png`` in ``folder``: two heat maps (edges x epochs), log10 S_e and alive ops per edge."""
    epochs = trajectory.get("epoch", [])
    if not epochs:
        return None
    scores = np.array(trajectory["score"], dtype=np.float64).T  # [edges, epochs]
    alive = np.array(trajectory["alive"], dtype=np.float64).T
    num_edges = scores.shape[0]
    fig = new_figure(max(8.0, 0.35 * len(epochs) + 3.0), min(12.0, max(5.0, 0.08 * num_edges * 2 + 2.0)))
    extent = (epochs[0] - 0.5, epochs[-1] + 0.5, num_edges - 0.5, -0.5)
    with np.errstate(divide="ignore"):
        log_scores = np.log10(np.maximum(scores, 1e-12))
    panels = ((log_scores, f"log10 S_e (stable when <= {np.log10(max(threshold, 1e-12)):.1f}; blank: window "
                           f"not full)", "viridis"),
              (alive, "alive operations per edge", "magma"))
    for row, (data, title, cmap) in enumerate(panels):
        ax = fig.add_subplot(2, 1, row + 1)
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", interpolation="nearest", cmap=cmap, extent=extent)
        fig.colorbar(im, ax=ax)
        if stop_epoch is not None:
            ax.axvline(stop_epoch, color="red", lw=1.5, label=f"stopped at epoch {stop_epoch}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_ylabel("edge")
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch")
    return save_png(fig, os.path.join(folder, FILE_NAME))
