"""What every figure of the package shares: matplotlib's default style (nnU-Net changes global rcParams in the
training process), a figure on the Agg canvas, atomic PNG writes, one colour per op.

matplotlib is imported inside the functions (object-oriented API with the Agg canvas, no pyplot and no global backend
switch), so importing :mod:`nnunet_nas.viz` is cheap and safe in headless training processes.
"""

from nnunet_nas.io import atomic_path

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


