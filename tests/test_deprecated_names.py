"""Renamed public names keep working, with a deprecation warning, and give the same objects as the new ones."""

import importlib
import sys

import pytest


@pytest.mark.parametrize("old,new,name", [("nnunet_nas.viz_cells", "nnunet_nas.viz.cells", "plot_cell_genotype"),
                                          ("nnunet_nas.viz_jsd", "nnunet_nas.viz.jsd", "plot_jsd_trajectory")])
def test_moved_modules_warn_and_alias(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_renamed_functions_warn_and_alias():
    from nnunet_nas.networks.common import conv_output_elements
    from nnunet_nas.nnunet import width
    from nnunet_nas.ops import catalog
    with pytest.warns(DeprecationWarning, match="op_specs"):
        assert catalog.op_set("dints_3d") == catalog.op_specs("dints_3d")
    assert width.conv_output_elements is conv_output_elements  # its home before it moved to networks/common.py
