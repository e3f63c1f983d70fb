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


def test_renamed_config_field_jsd_warns_and_old_files_still_load():
    from dataclasses import replace

    from nnunet_nas.config import SearchConfig
    from nnunet_nas.nnunet.search_state import differing_settings
    from nnunet_nas.strategies.jsd_pruning import JSDRule
    from nnunet_nas.methods.iac import IACSearchConfig
    rule = JSDRule(window=3)
    with pytest.warns(DeprecationWarning, match="'jsd' is now 'jsd_pruning'"):
        cfg = IACSearchConfig(jsd=rule)
    assert cfg.jsd_pruning == rule and isinstance(cfg, IACSearchConfig)
    with pytest.warns(DeprecationWarning, match="'jsd' is now 'jsd_pruning'"):
        assert replace(IACSearchConfig(), jsd=rule) == cfg
    with pytest.warns(DeprecationWarning, match="jsd is now SearchConfig.jsd_pruning"):
        assert cfg.jsd == rule
    assert replace(cfg, arch_lr=0.1).jsd_pruning == rule  # replace of another field keeps it, without a warning
    old_file = dict(cfg.to_dict())
    old_file["jsd"] = old_file.pop("jsd_pruning")  # a checkpoint or genotype written before the rename
    assert IACSearchConfig.from_dict(old_file) == cfg
    assert differing_settings({"method": "iac", "op_set": "x", "search_config": old_file},
                              {"method": "iac", "op_set": "x", "search_config": cfg.to_dict()}) == []
    assert SearchConfig().jsd_pruning is None


def test_renamed_edge_normalisation_logits_load_from_old_checkpoints():
    import torch

    from nnunet_nas.arch.params import CellEdgeArchParams
    from nnunet_nas.methods.iac import discretize
    saved = CellEdgeArchParams(1, 5, 8)
    old_state = {("edge_logits" if k == "edge_norm_logits" else k): v for k, v in saved.state_dict().items()}
    arch = CellEdgeArchParams(1, 5, 8)
    arch.load_state_dict(old_state)  # strict: the old name is neither unexpected nor leaves the new one missing
    assert torch.equal(arch.edge_norm_logits, saved.edge_norm_logits)
    with pytest.warns(DeprecationWarning, match="edge_norm_logits"):
        assert arch.edge_logits is arch.edge_norm_logits
    assert discretize(old_state, "darts_3d") == discretize(saved.state_dict(), "darts_3d")
