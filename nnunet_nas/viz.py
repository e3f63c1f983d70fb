"""Figures of DiNTS searches: the found grid architecture and the architecture-parameter trajectories.

matplotlib is imported inside the functions (object-oriented API with the Agg canvas, no pyplot and no global
backend switch), so importing this module is cheap and safe in headless training processes. PNGs are written
atomically (temporary file in the same folder, then ``os.replace``).
"""

from typing import Optional, Sequence

import numpy as np

from nnunet_nas.io import atomic_path

DIRECTION_NAMES = {-1: "down (finer -> coarser)", 0: "same resolution", 1: "up (coarser -> finer)"}
DIRECTION_COLOURS = {-1: "tab:blue", 0: "tab:gray", 1: "tab:red"}
_OP_COLOURS = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:red"]


def default_style(fn):
    """Draw with matplotlib's default style: nnU-Net's progress plot changes global rcParams (seaborn font scale
    2.5) in the training process, which would make our figures unreadable."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib
        with matplotlib.rc_context(matplotlib.rcParamsDefault):
            return fn(*args, **kwargs)
    return wrapper


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def op_colour_map(op_names) -> dict:
    return {name: _OP_COLOURS[i % len(_OP_COLOURS)] for i, name in enumerate(op_names)}


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
    ``topology_loss``, ``entropy_alpha``, ``entropy_eta`` ([T] each, ``None`` entries allowed) and an optional
    scalar ``sigma`` (memory budget) and ``max_ratio`` (``GridMemoryModel.max_ratio()``), drawn as lines in
    the memory panel, and an optional ``title``. Panels for missing series are
    omitted. Returns ``path``.
    """
    from matplotlib import patheffects
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from nnunet_nas.spaces.grid_topology import grid_topology

    epochs = np.asarray(history["epoch"], dtype=np.float64)
    edge = np.asarray(history["edge_probs"], dtype=np.float64)  # [T, L, E]
    ops = np.asarray(history["op_probs"], dtype=np.float64)  # [T, L, E, N]
    names = list(history["op_names"])
    T = len(epochs)
    if edge.ndim != 3 or edge.shape[0] != T or ops.ndim != 4 or ops.shape != edge.shape + (len(names),):
        raise ValueError(f"plot_arch_trajectories: expected edge_probs [T, L, E] and op_probs [T, L, E, N] with "
                         f"T={T} epochs and N={len(names)} op names; got {list(edge.shape)} and {list(ops.shape)}.")
    num_edges = edge.shape[2]
    if (num_edges + 2) % 3:
        raise ValueError(f"plot_arch_trajectories: {num_edges} edges per block is not 3D-2 for any depth D.")
    topo = grid_topology((num_edges + 2) // 3)

    def series(key):
        v = history.get(key)
        if v is None or len(v) == 0 or all(x is None for x in v):
            return None
        return np.asarray([np.nan if x is None else float(x) for x in v], dtype=np.float64)

    panels = ["edges", "ops"]
    mem, gap, topo_loss = series("memory_ratio"), series("gap"), series("topology_loss")
    ent_a, ent_e = series("entropy_alpha"), series("entropy_eta")
    panels += [k for k, v in (("memory", mem), ("gap", gap), ("topology", topo_loss)) if v is not None]
    if ent_a is not None or ent_e is not None:
        panels.append("entropy")
    ncols = 3 if len(panels) > 4 else 2
    nrows = (len(panels) + ncols - 1) // ncols
    fig = new_figure(5.0 * ncols, 3.6 * nrows)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(len(panels))]
    marker = "o" if T <= 30 else None

    for name, ax in zip(panels, axes):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if T == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.grid(alpha=0.3)
        if name == "edges":
            L = edge.shape[1]
            lw, alpha = (1.0, 0.7) if L * num_edges <= 40 else (0.6, 0.35)
            for b in range(L):
                for e in range(num_edges):
                    ax.plot(epochs, edge[:, b, e], color=DIRECTION_COLOURS[int(topo.edge_dir[e])], lw=lw, alpha=alpha,
                            marker="." if T <= 3 else None)
            for k in (-1, 0, 1):  # mean per direction, drawn thick on top
                sel = topo.edge_dir == k
                ax.plot(epochs, edge[:, :, sel].mean(axis=(1, 2)), color=DIRECTION_COLOURS[k], lw=2.8,
                        path_effects=[patheffects.withStroke(linewidth=4.2, foreground="white")])
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("edge probability sigmoid(logit)")
            ax.set_title(f"Edge probabilities ({L} blocks x {num_edges} edges; thick: mean)", fontsize=10)
            ax.legend(handles=[Line2D([], [], color=DIRECTION_COLOURS[k], label=v) for k, v in DIRECTION_NAMES.items()],
                      fontsize=8, loc="best")
        elif name == "ops":
            mean = ops.mean(axis=(1, 2))  # [T, N]
            colours = op_colour_map(names)
            for n, op in enumerate(names):
                ax.plot(epochs, mean[:, n], color=colours[op], lw=1.8, marker=marker, ms=3, label=op)
            ax.set_ylabel("mean op probability (softmax)")
            ax.set_title("Operation weights, mean over all edges", fontsize=10)
            ax.legend(fontsize=8, loc="best")
        elif name == "memory":
            ax.plot(epochs, mem, color="tab:green", lw=1.8, marker=marker, ms=3, label="M_e / M_a")
            if history.get("sigma") is not None:
                ax.axhline(float(history["sigma"]), color="black", ls="--", lw=1.2,
                           label=f"budget sigma = {float(history['sigma']):g}")
            if history.get("max_ratio") is not None:
                ax.axhline(float(history["max_ratio"]), color="tab:red", ls=":", lw=1.2,
                           label=f"attainable max = {float(history['max_ratio']):.3g}")
            ax.set_ylabel("memory ratio")
            ax.set_title("Expected memory / full memory (Eq. 8-10)", fontsize=10)
            ax.legend(fontsize=8, loc="best")
        elif name == "gap":
            ax.plot(epochs, gap, color="tab:purple", lw=1.8, marker=marker, ms=3, drawstyle="steps-mid")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("G (edges)")
            ax.set_title("Discretisation gap G = sum |C_max - C_top|", fontsize=10)
        elif name == "topology":
            ax.plot(epochs, topo_loss, color="tab:red", lw=1.8, marker=marker, ms=3)
            ax.set_ylabel("topology loss L_tp")
            ax.set_title("Topology loss (Eq. 7)", fontsize=10)
        elif name == "entropy":
            if ent_a is not None:
                ax.plot(epochs, ent_a, color="tab:orange", lw=1.8, marker=marker, ms=3, label="L_alpha (ops)")
            if ent_e is not None:
                ax.plot(epochs, ent_e, color="tab:blue", lw=1.8, marker=marker, ms=3, label="L_eta (patterns)")
            ax.set_yscale("log" if _positive(ent_a, ent_e) else "linear")
            ax.set_ylabel("entropy loss")
            ax.set_title("Entropy losses (Eq. 5)", fontsize=10)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(history.get("title") or "DiNTS search: architecture parameters", fontsize=12)
    fig.tight_layout()
    return save_png(fig, path)


def _positive(*arrays) -> bool:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays if a is not None])
    return vals.size > 0 and bool((vals > 0).all()) and vals.max() / vals.min() > 20


@default_style
def plot_segmentation_comparison(image: np.ndarray, truth: np.ndarray, predictions: dict, path: str,
                                 title: Optional[str] = None) -> str:
    """One case side by side: the image's middle slice along the first axis, the ground truth and each prediction
    (``{name: label array}``, same shape as ``image``) as label overlays. Returns ``path``."""
    from matplotlib.colors import ListedColormap

    k = image.shape[0] // 2
    panels = [("image", None), ("ground truth", truth)] + list(predictions.items())
    fig = new_figure(2.6 * len(panels), 3.0)
    overlay = ListedColormap([(0, 0, 0, 0), (0.9, 0.3, 0.1, 0.6), (0.1, 0.5, 0.95, 0.6), (0.2, 0.8, 0.2, 0.6)])
    for i, (name, labels) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(image[k].T, cmap="gray", origin="lower")
        if labels is not None:
            ax.imshow(np.asarray(labels[k]).T, cmap=overlay, vmin=0, vmax=3, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
