"""Moved to :mod:`nnunet_nas.viz.cells`; this alias warns and will be removed."""

import warnings

from nnunet_nas.viz.cells import plot_cell_genotype, plot_cell_trajectories, plot_implanted_cells  # noqa: F401

warnings.warn("nnunet_nas.viz_cells moved to nnunet_nas.viz.cells", DeprecationWarning, stacklevel=2)
