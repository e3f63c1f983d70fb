"""Moved to :mod:`nnunet_nas.viz.jsd`; this alias warns and will be removed."""

import warnings

from nnunet_nas.viz.jsd import FILE_NAME, plot_jsd_trajectory  # noqa: F401

warnings.warn("nnunet_nas.viz_jsd moved to nnunet_nas.viz.jsd", DeprecationWarning, stacklevel=2)
