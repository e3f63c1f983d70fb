"""Figures of cell searches (SCNAS, IAC): the found cells as DAGs with the operation on each edge (SCNAS Fig. 2),
and the trajectories of the op probabilities per cell type and of the sampling temperature.

Same conventions as :mod:`nnunet_nas.viz.figure`: matplotlib imported inside the functions, default style, atomic PNGs.
"""

from typing import List, Optional

import numpy as np

from nnunet_nas.viz.convergence import draw_convergence, has_convergence
from nnunet_nas.viz.figure import default_style, new_figure, op_colour_map, save_png


@default_style
def plot_cell_genotype(genotype, path: str, title: Optional[str] = None) -> str:
    """One panel per cell type: inputs s0, s1 and the intermediate nodes left to right, an arc per edge coloured and
    labelled by its operation, and the concatenated output."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    types = genotype.cell_types
    n = genotype.num_nodes
    names = sorted({op for t in types for op in genotype.edge_ops(t) if op is not None})
    colours = op_colour_map(names)
    fig = new_figure(2.2 * (n + 3), 3.0 * len(types) + 0.8)
    x = {0: 0.0, 1: 0.0}
    y = {0: 1.4, 1: -1.4}
    for j in range(n):  # staggered, so that edges between nodes do not run on top of each other
        x[j + 2], y[j + 2] = 1.5 * (j + 1), 0.55 if j % 2 == 0 else -0.55
    out_x = 1.5 * (n + 1)
    for row, t in enumerate(types):
        ax = fig.add_subplot(len(types), 1, row + 1)
        for j, node_ops in enumerate(genotype.cells[t]):
            for src, op in enumerate(node_ops):
                if op is None:
                    continue
                dst = j + 2
                rad = 0.0 if dst - src == 1 else (0.12 if src < 2 else -0.3)
                ax.add_patch(FancyArrowPatch((x[src], y[src]), (x[dst], y[dst]), connectionstyle=f"arc3,rad={rad}",
                                             arrowstyle="-|>", mutation_scale=10, lw=1.8, color=colours[op],
                                             shrinkA=9, shrinkB=9))
        for j in range(n):
            ax.add_patch(FancyArrowPatch((x[j + 2], y[j + 2]), (out_x, 0.0), connectionstyle="arc3,rad=0.0",
                                         arrowstyle="-|>", mutation_scale=8, lw=0.8, color="lightgrey", shrinkA=9,
                                         shrinkB=12))
        for s, label in list({0: "s0", 1: "s1"}.items()) + [(j + 2, str(j)) for j in range(n)]:
            ax.plot(x[s], y[s], "o", ms=17, mfc="lightblue" if s < 2 else "gold", mec="black")
            ax.text(x[s], y[s], label, ha="center", va="center", fontsize=8)
        ax.plot(out_x, 0.0, "s", ms=19, mfc="palegreen", mec="black")
        ax.text(out_x, 0.0, "cat", ha="center", va="center", fontsize=7)
        ax.set_xlim(-0.7, out_x + 0.7)
        ax.set_ylim(-2.0, 2.0)
        ax.set_axis_off()
        ax.set_title(t.replace("_", "-") + " cell", fontsize=10, loc="left")
    fig.legend(handles=[Line2D([], [], color=colours[o], lw=2.5, label=o) for o in names], loc="lower center",
               ncol=min(4, max(1, len(names))), frameon=False, fontsize=8)
    fig.suptitle(title or "Cells", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save_png(fig, path)


@default_style
def plot_cell_trajectories(history: dict, path: str, op_names: List[str], cell_types: List[str]) -> str:
    """Per cell type, the mean op probability over its edges per epoch; the temperature, the mean op entropy and the
    convergence panel. ``history``: per-epoch ``epoch``, ``op_probs`` [T][types][E][N], optional
    ``arch_temperature``, ``arch_entropy_alpha`` and the series of :mod:`nnunet_nas.viz.convergence`."""
    from matplotlib.ticker import MaxNLocator
    epochs = np.asarray(history["epoch"], dtype=np.float64)
    probs = np.asarray(history["op_probs"], dtype=np.float64)
    if probs.ndim != 4 or probs.shape[0] != len(epochs) or probs.shape[1] != len(cell_types) \
            or probs.shape[3] != len(op_names):
        raise ValueError(f"plot_cell_trajectories: op_probs {list(probs.shape)} is not [T={len(epochs)}, "
                         f"{len(cell_types)} cell types, E, {len(op_names)} ops].")
    extra = [k for k in ("arch_temperature", "arch_entropy_alpha") if history.get(k)]
    extra += ["convergence"] if has_convergence(history) else []
    panels = len(cell_types) + len(extra)
    ncols = 3
    fig = new_figure(5.0 * ncols, 3.4 * ((panels + ncols - 1) // ncols))
    colours = op_colour_map(op_names)
    marker = "o" if len(epochs) <= 30 else None
    for i in range(panels):
        ax = fig.add_subplot((panels + ncols - 1) // ncols, ncols, i + 1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if i < len(cell_types):
            mean = probs[:, i].mean(axis=1)
            for n, op in enumerate(op_names):
                ax.plot(epochs, mean[:, n], color=colours[op], lw=1.6, marker=marker, ms=3, label=op)
            ax.set_ylabel("mean op probability")
            ax.set_title(f"{cell_types[i].replace('_', '-')} cell", fontsize=10)
            if i == 0:
                ax.legend(fontsize=7, loc="best")
        elif extra[i - len(cell_types)] == "convergence":
            draw_convergence(ax, epochs, history, marker)
        else:
            key = extra[i - len(cell_types)]
            ax.plot(epochs, history[key], color="black", lw=1.8, marker=marker, ms=3)
            ax.set_title({"arch_temperature": "Gumbel-softmax temperature tau",
                          "arch_entropy_alpha": "mean op entropy (softmax alpha)"}[key], fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


@default_style
def plot_implanted_cells(skip_channels: List[int], cell_types: List[str], path: str,
                         title: Optional[str] = None) -> str:
    """Where IAC's cells sit: the host U-Net's encoder and decoder stages (channels written in), and on every skip
    connection the implanted cell (its genotype's cell type), finest level at the top."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    levels = len(skip_channels) + 1  # the bottleneck has no skip
    fig = new_figure(8.0, 1.1 * levels + 1.0)
    ax = fig.add_subplot(1, 1, 1)

    def box(x, y, text, colour, w=1.5):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - 0.3), w, 0.6, boxstyle="round,pad=0.02", fc=colour, ec="black"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(a, b, colour="black"):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, lw=1.2, color=colour))

    for level in range(levels):
        y = -level
        enc_x = 1.0 + 0.5 * level
        dec_x = 8.0 - 0.5 * level
        if level < levels - 1:
            c = skip_channels[level]
            box(enc_x, y, f"encoder {level}\n{c} ch", "lightblue")
            box(dec_x, y, f"decoder {level}\n{c} ch", "lightblue")
            box((enc_x + dec_x) / 2, y, f"IAC: {cell_types[0 if len(cell_types) == 1 else level]}", "gold", w=2.0)
            arrow((enc_x + 0.75, y), ((enc_x + dec_x) / 2 - 1.0, y), "grey")
            arrow(((enc_x + dec_x) / 2 + 1.0, y), (dec_x - 0.75, y), "grey")
            last = level == levels - 2  # the next level down is the bottleneck
            arrow((enc_x, y - 0.3), (3.5, y - 1.0) if last else (1.0 + 0.5 * (level + 1), y - 0.7))
            arrow((5.5, y - 1.0) if last else (8.0 - 0.5 * (level + 1), y - 0.7), (dec_x, y - 0.3))
        else:
            box(4.5, y, "bottleneck", "lightblue", w=2.0)
    ax.set_xlim(-0.2, 9.2)
    ax.set_ylim(-levels + 0.3, 0.8)
    ax.set_axis_off()
    ax.set_title(title or "Implanted cells: skip E -> E + out(cell(E, U)), out zero-initialised", fontsize=10)
    return save_png(fig, path)
