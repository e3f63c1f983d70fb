"""Figures of grid searches (DiNTS, DAST): the found grid architecture (the DiNTS paper's Fig. 7) and the
architecture-parameter trajectories, one function per panel."""

from typing import Optional, Sequence

import numpy as np

from nnunet_nas.viz.convergence import draw_convergence
from nnunet_nas.viz.figure import default_style, new_figure, op_colour_map, save_png

DIRECTION_NAMES = {-1: "down (finer -> coarser)", 0: "same resolution", 1: "up (coarser -> finer)"}
DIRECTION_COLOURS = {-1: "tab:blue", 0: "tab:gray", 1: "tab:red"}


@default_style
def plot_grid_genotype(genotype, path: str, title: Optional[str] = None, marked_ops: Sequence[str] = ()) -> str:
    """Draw a grid genotype as in the DiNTS paper's Fig. 7 and save it as a PNG at ``path``.

    Nodes sit at x = block boundary 0..L (column 0: the inputs of block 0) and y = level 0..D-1 (finest at the
    top); inactive nodes are grey. Active edge (b, e) joins (b, in) and (b+1, out) and is coloured by its op; an edge
    whose op is in ``marked_ops`` also gets a labelled square at its middle (DAST's transformer cells: "T", as in
    the DAST paper's Fig. 3). Stems and the tail are not drawn. Returns ``path``.
    """
    from matplotlib.lines import Line2D

    from nnunet_nas.ops.catalog import op_names
    from nnunet_nas.spaces.grid_topology import grid_topology

    topo = grid_topology(genotype.num_depths)
    L, D = genotype.num_blocks, genotype.num_depths
    names = op_names(genotype.op_set)
    colours = op_colour_map(names)
    fig = new_figure(max(5.0, 1.0 + 0.55 * (L + 1)) + 2.2, 1.3 + 0.75 * D)
    ax = fig.add_subplot(1, 1, 1)
    used = set()
    for b in range(L):
        for e in range(topo.num_edges):
            if not genotype.arch_code_a[b, e]:
                continue
            op = genotype.ops[b][e]
            used.add(op)
            ax.plot([b, b + 1], [topo.edge_in[e], topo.edge_out[e]], color=colours.get(op, "black"),
                    lw=2.6 if op != "skip" else 1.8, ls="-" if op != "skip" else "--", zorder=1,
                    solid_capstyle="round")
            if op in marked_ops:
                ax.text(b + 0.5, (topo.edge_in[e] + topo.edge_out[e]) / 2, op[0].upper(), ha="center", va="center",
                        fontsize=8, fontweight="bold", color="white", zorder=4,
                        bbox=dict(boxstyle="square,pad=0.2", fc=colours.get(op, "black"), ec="black", lw=0.8))
    node_a = np.asarray(genotype.node_a).astype(bool)
    xs, ys = np.meshgrid(np.arange(L + 1), np.arange(D), indexing="ij")
    active = node_a[xs, ys]
    ax.scatter(xs[active], ys[active], s=110, c="gold", edgecolors="black", linewidths=1.0, zorder=3)
    ax.scatter(xs[~active], ys[~active], s=70, c="lightgrey", edgecolors="grey", linewidths=0.8, zorder=2)
    ax.set_xlim(-0.5, L + 0.5)
    ax.set_ylim(D - 0.5, -0.5)  # finest level at the top
    ax.set_xticks(range(L + 1))
    ax.set_yticks(range(D))
    ax.set_yticklabels([f"{d}  (1/{2 ** (d + 1)})" for d in range(D)])
    ax.set_xlabel("block boundary (column b = inputs of block b)")
    ax.set_ylabel("level (resolution)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [Line2D([], [], color=colours[n], lw=2.6 if n != "skip" else 1.8, ls="-" if n != "skip" else "--",
                      marker="s" if n in marked_ops else None, ms=8, mec="black",
                      label=f"{n} ({n[0].upper()})" if n in marked_ops else n) for n in names if n in used]
    handles += [Line2D([], [], ls="", marker="o", ms=9, mfc="gold", mec="black", label="active node"),
                Line2D([], [], ls="", marker="o", ms=7, mfc="lightgrey", mec="grey", label="inactive node")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8,
              title="operation", title_fontsize=9)
    n_edges = int(np.asarray(genotype.arch_code_a).sum())
    ax.set_title(title or f"DiNTS architecture: L={L} blocks, D={D} levels, {n_edges} active edges ({genotype.op_set})",
                 fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


@default_style
def plot_arch_trajectories(history: dict, path: str) -> str:
    """Draw how the architecture parameters evolved during a search and save a PNG at ``path``.

    ``history`` holds per-epoch lists: ``epoch`` [T], ``edge_probs`` [T][L][E] (sigmoid of the edge logits),
    ``op_probs`` [T][L][E][N] (softmax), ``op_names`` [N]; optional scalar series ``gap``, ``memory_ratio``,
    ``topology_loss``, ``entropy_alpha``, ``entropy_eta`` and the convergence series (``arch_separation``, ...:
    :mod:`nnunet_nas.viz.convergence`) ([T] each, ``None`` entries allowed) and an optional
    scalar ``sigma`` (memory budget) and ``max_ratio`` (``GridMemoryModel.max_ratio()``), drawn as lines in
    the memory panel, and an optional ``title``. Panels for missing series are omitted (one function per panel,
    :data:`PANELS`). Returns ``path``.
    """
    from matplotlib.ticker import MaxNLocator

    h = _Trajectories(history)
    panels = [name for name, (needs, _) in PANELS.items() if any(h.series(k) is not None for k in needs)]
    ncols = 3 if len(panels) > 4 else 2
    nrows = (len(panels) + ncols - 1) // ncols
    fig = new_figure(5.0 * ncols, 3.6 * nrows)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if h.T == 1:
            ax.set_xlim(h.epochs[0] - 1, h.epochs[0] + 1)
        ax.grid(alpha=0.3)
        PANELS[name][1](ax, h)
    fig.suptitle(history.get("title") or "DiNTS search: architecture parameters", fontsize=12)
    fig.tight_layout()
    return save_png(fig, path)


class _Trajectories:
    """The history's arrays, checked: epochs [T], edge probabilities [T, L, E], op probabilities [T, L, E, N]."""

    def __init__(self, history: dict):
        from nnunet_nas.spaces.grid_topology import grid_topology
        self.history = history
        self.epochs = np.asarray(history["epoch"], dtype=np.float64)
        self.edge = np.asarray(history["edge_probs"], dtype=np.float64)
        self.ops = np.asarray(history["op_probs"], dtype=np.float64)
        self.names = list(history["op_names"])
        self.T = len(self.epochs)
        if self.edge.ndim != 3 or self.edge.shape[0] != self.T or self.ops.ndim != 4 or \
                self.ops.shape != self.edge.shape + (len(self.names),):
            raise ValueError(f"plot_arch_trajectories: expected edge_probs [T, L, E] and op_probs [T, L, E, N] with "
                             f"T={self.T} epochs and N={len(self.names)} op names; got {list(self.edge.shape)} and "
                             f"{list(self.ops.shape)}.")
        self.num_edges = self.edge.shape[2]
        if (self.num_edges + 2) % 3:
            raise ValueError(f"plot_arch_trajectories: {self.num_edges} edges per block is not 3D-2 for any depth D.")
        self.topo = grid_topology((self.num_edges + 2) // 3)
        self.marker = "o" if self.T <= 30 else None

    def series(self, key):
        """A scalar series [T] (NaN where None), or None when the history lacks it; the arrays always exist."""
        if key in ("edge_probs", "op_probs"):
            return getattr(self, "edge" if key == "edge_probs" else "ops")
        v = self.history.get(key)
        if v is None or len(v) == 0 or all(x is None for x in v):
            return None
        return np.asarray([np.nan if x is None else float(x) for x in v], dtype=np.float64)


def _edges_panel(ax, h: _Trajectories) -> None:
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    L = h.edge.shape[1]
    lw, alpha = (1.0, 0.7) if L * h.num_edges <= 40 else (0.6, 0.35)
    for b in range(L):
        for e in range(h.num_edges):
            ax.plot(h.epochs, h.edge[:, b, e], color=DIRECTION_COLOURS[int(h.topo.edge_dir[e])], lw=lw, alpha=alpha,
                    marker="." if h.T <= 3 else None)
    for k in (-1, 0, 1):  # mean per direction, drawn thick on top
        sel = h.topo.edge_dir == k
        ax.plot(h.epochs, h.edge[:, :, sel].mean(axis=(1, 2)), color=DIRECTION_COLOURS[k], lw=2.8,
                path_effects=[patheffects.withStroke(linewidth=4.2, foreground="white")])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("edge probability sigmoid(logit)")
    ax.set_title(f"Edge probabilities ({L} blocks x {h.num_edges} edges; thick: mean)", fontsize=10)
    ax.legend(handles=[Line2D([], [], color=DIRECTION_COLOURS[k], label=v) for k, v in DIRECTION_NAMES.items()],
              fontsize=8, loc="best")


def _ops_panel(ax, h: _Trajectories) -> None:
    mean = h.ops.mean(axis=(1, 2))  # [T, N]
    colours = op_colour_map(h.names)
    for n, op in enumerate(h.names):
        ax.plot(h.epochs, mean[:, n], color=colours[op], lw=1.8, marker=h.marker, ms=3, label=op)
    ax.set_ylabel("mean op probability (softmax)")
    ax.set_title("Operation weights, mean over all edges", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def _memory_panel(ax, h: _Trajectories) -> None:
    ax.plot(h.epochs, h.series("memory_ratio"), color="tab:green", lw=1.8, marker=h.marker, ms=3, label="M_e / M_a")
    if h.history.get("sigma") is not None:
        ax.axhline(float(h.history["sigma"]), color="black", ls="--", lw=1.2,
                   label=f"budget sigma = {float(h.history['sigma']):g}")
    if h.history.get("max_ratio") is not None:
        ax.axhline(float(h.history["max_ratio"]), color="tab:red", ls=":", lw=1.2,
                   label=f"attainable max = {float(h.history['max_ratio']):.3g}")
    ax.set_ylabel("memory ratio")
    ax.set_title("Expected memory / full memory (Eq. 8-10)", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def _gap_panel(ax, h: _Trajectories) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.plot(h.epochs, h.series("gap"), color="tab:purple", lw=1.8, marker=h.marker, ms=3, drawstyle="steps-mid")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("G (edges)")
    ax.set_title("Discretisation gap G = sum |C_max - C_top|", fontsize=10)


def _topology_panel(ax, h: _Trajectories) -> None:
    ax.plot(h.epochs, h.series("topology_loss"), color="tab:red", lw=1.8, marker=h.marker, ms=3)
    ax.set_ylabel("topology loss L_tp")
    ax.set_title("Topology loss (Eq. 7)", fontsize=10)


def _entropy_panel(ax, h: _Trajectories) -> None:
    ent_a, ent_e = h.series("entropy_alpha"), h.series("entropy_eta")
    if ent_a is not None:
        ax.plot(h.epochs, ent_a, color="tab:orange", lw=1.8, marker=h.marker, ms=3, label="L_alpha (ops)")
    if ent_e is not None:
        ax.plot(h.epochs, ent_e, color="tab:blue", lw=1.8, marker=h.marker, ms=3, label="L_eta (patterns)")
    ax.set_yscale("log" if _positive(ent_a, ent_e) else "linear")
    ax.set_ylabel("entropy loss")
    ax.set_title("Entropy losses (Eq. 5)", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def _convergence_panel(ax, h: _Trajectories) -> None:
    draw_convergence(ax, h.epochs, h.history, h.marker)


# panel name -> (history keys, any of which makes it drawn; the function drawing it), in drawing order
PANELS = {"edges": (("edge_probs",), _edges_panel), "ops": (("op_probs",), _ops_panel),
          "memory": (("memory_ratio",), _memory_panel), "gap": (("gap",), _gap_panel),
          "topology": (("topology_loss",), _topology_panel),
          "entropy": (("entropy_alpha", "entropy_eta"), _entropy_panel),
          "convergence": (("arch_separation",), _convergence_panel)}


def _positive(*arrays) -> bool:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays if a is not None])
    return vals.size > 0 and bool((vals > 0).all()) and vals.max() / vals.min() > 20
