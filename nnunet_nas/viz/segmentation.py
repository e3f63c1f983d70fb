"""A case's image, ground truth and predictions side by side (the demo's picture)."""

from typing import Optional

import numpy as np

from nnunet_nas.viz.figure import default_style, new_figure, save_png


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
