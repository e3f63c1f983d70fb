"""Registering configurations never corrupts the user's plans file."""

import glob
import json

import pytest

from nnunet_nas.genotypes.monai_compat import load_monai_file
from nnunet_nas.nnunet.export import architecture_block, register_searched_configuration
from nnunet_nas.registry import get_method
from nnunet_nas.nnunet.plans_io import PlansError, free_configuration_name, load_plans, register_configuration
from helpers import CVPR_JSON

DINTS = get_method("dints")


@pytest.fixture
def plans_path(tmp_path):
    plans = {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": {"patch_size": [40, 56, 40], "batch_size": 2, "architecture": {"network_class_name": "x"}},
        "2d": {"patch_size": [56, 40], "batch_size": 32}}}
    p = tmp_path / "nnUNetPlans.json"
    p.write_text(json.dumps(plans))
    return str(p)


def test_register_adds_an_inheriting_configuration_with_adjusted_patch(plans_path):
    g = load_monai_file(CVPR_JSON)
    name = register_searched_configuration(plans_path, "3d_fullres", DINTS, g, 0.5, log=lambda *a: None)
    plans = json.load(open(plans_path))
    c = plans["configurations"][name]
    assert name == "3d_fullres_dints" and c["inherits_from"] == "3d_fullres"
    assert c["patch_size"] == [48, 64, 48]  # multiples of 2^D = 16
    assert c["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5  # deepest level 3: 5 outputs
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 56, 40]
    with pytest.raises(ValueError, match="2-D but the genotype is 3-D"):
        register_searched_configuration(plans_path, "2d", DINTS, g, 0.5, log=lambda *a: None)


def test_different_architecture_is_never_overwritten_silently(plans_path):
    a = {"network_class_name": "nnunet_nas.A", "arch_kwargs": {}}
    b = {"network_class_name": "nnunet_nas.B", "arch_kwargs": {}}
    register_configuration(plans_path, "3d_fullres", "3d_fullres_dints", a)
    before = open(plans_path).read()
    with pytest.raises(PlansError, match="already holds a different architecture"):
        register_configuration(plans_path, "3d_fullres", "3d_fullres_dints", b)
    assert open(plans_path).read() == before
    register_configuration(plans_path, "3d_fullres", "3d_fullres_dints", a)  # same architecture: refresh is fine
    plans = load_plans(plans_path)
    assert free_configuration_name(plans, "3d_fullres_dints", b) == "3d_fullres_dints_2"
    assert free_configuration_name(plans, "3d_fullres_dints", a) == "3d_fullres_dints"
    register_configuration(plans_path, "3d_fullres", "3d_fullres_dints", b, overwrite=True)
    newest = max(glob.glob(plans_path + ".bak.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    assert json.load(open(newest))["configurations"]["3d_fullres_dints"]["architecture"] == a


def test_bad_names_and_bases(plans_path):
    with pytest.raises(PlansError, match="must not contain '__'"):
        register_configuration(plans_path, "3d_fullres", "a__b", {})
    with pytest.raises(PlansError, match="no configuration '3d_lowres'"):
        register_configuration(plans_path, "3d_lowres", "x", {})


def test_architecture_block_is_json_serialisable():
    g = load_monai_file(CVPR_JSON)
    block = architecture_block(DINTS, g, 1.0)
    assert json.loads(json.dumps(block)) == block


def test_an_identical_entry_may_be_written_again_even_where_replacing_is_refused(plans_path):
    """The demo registers nnU-Net's own network at batch 2 and, on it, a found one; a rerun writes the same entries."""
    plain = {"network_class_name": "x"}
    register_configuration(plans_path, "3d_fullres", "3d_fullres_bs2", plain, extra={"batch_size": 2})
    register_configuration(plans_path, "3d_fullres_bs2", "3d_fullres_bs2_dints", {"network_class_name": "nnunet_nas.A"})
    register_configuration(plans_path, "3d_fullres", "3d_fullres_bs2", plain, extra={"batch_size": 2})  # unchanged
    with pytest.raises(PlansError, match=r"the base of \['3d_fullres_bs2_dints'\]"):
        register_configuration(plans_path, "3d_fullres", "3d_fullres_bs2", plain, extra={"batch_size": 4})
