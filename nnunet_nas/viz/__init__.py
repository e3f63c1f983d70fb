"""Pictures saved next to nnU-Net's ``progress.png``: found architectures (grid and cells), architecture-parameter,
temperature and JSD trajectories, a case's segmentations. Importing this package does not import matplotlib."""

from nnunet_nas.viz.cells import plot_cell_genotype, plot_cell_trajectories, plot_implanted_cells  # noqa: F401
from nnunet_nas.viz.figure import default_style, new_figure, op_colour_map, save_png  # noqa: F401
from nnunet_nas.viz.grid import plot_arch_trajectories, plot_grid_genotype  # noqa: F401
from nnunet_nas.viz.jsd import plot_jsd_trajectory  # noqa: F401
from nnunet_nas.viz.segmentation import plot_segmentation_comparison  # noqa: F401
