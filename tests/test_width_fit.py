"""Exported networks are sized like the network nnU-Net planned for the base configuration (same estimator)."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from helpers import DATASET_NAME
from nnunet_nas.nnunet.width import FIT_TOLERANCE, conv_output_elements, fit_channel_mul, planned_network_elements


def test_counter_is_nnunets_own_estimate_for_its_unets():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    for dims, conv, norm in ((2, nn.Conv2d, nn.InstanceNorm2d), (3, nn.Conv3d, nn.InstanceNorm3d)):
        build = lambda: PlainConvUNet(2, 4, [8, 16, 32, 32], conv, 3, [1, 2, 2, 2], 2, 3, 2, False, norm,  # noqa: E731
                                      {"affine": True}, None, None, nn.LeakyReLU, None, deep_supervision=True)
        patch = [24, 40, 32][:dims]
        with torch.device("meta"):
            expected = build().compute_conv_feature_map_size(patch)
        assert conv_output_elements(build, 2, patch) == expected


def test_fit_never_exceeds_the_target_when_channel_steps_are_coarse():
    """A 4-channel-wide toy: elements are 100 per channel and only whole channels exist, so a target of 250 has no
    width within the tolerance; the fit takes 2 channels (200, below), never 3 (300, above), and a target below
    the narrowest buildable width gives that width."""
    def build(mul):
        c = int(4 * mul)
        if c < 1:
            raise ValueError("too narrow")
        return nn.Conv2d(1, c, 3, padding=1)
    mul, elements = fit_channel_mul(build, 1, [10, 10], 250)
    assert elements == 200 and int(4 * mul) == 2
    mul, elements = fit_channel_mul(build, 1, [10, 10], 50)
    assert elements == 100 and int(4 * mul) == 1


def _random_genotype(L=3, D=2, seed=0):
    from nnunet_nas.discretize.grid_path import decode_grid_codes
    from nnunet_nas.genotypes.monai_compat import from_monai_codes
    rng = np.random.RandomState(seed)
    return from_monai_codes(*decode_grid_codes(rng.normal(0, 2, (L, 3 * D - 2)), rng.normal(0, 2, (L, 3 * D - 2, 5))))


def test_export_fits_the_width_to_the_planned_network_and_an_explicit_width_wins(fresh_dataset):
    from nnunet_nas.nnunet.export import register_searched_configuration
    from nnunet_nas.registry import get_method
    root, env = fresh_dataset
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    plans_path = os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")
    method, g = get_method("dints"), _random_genotype()
    logs = []
    name = register_searched_configuration(plans_path, "3d_fullres", method, g, None, name="fitted", log=logs.append)
    config = json.load(open(plans_path))["configurations"][name]
    target = planned_network_elements(plans_path, "3d_fullres", 1, 3)
    kwargs = config["architecture"]["arch_kwargs"]
    ours = conv_output_elements(lambda: method.network_class(1, 3, deep_supervision=True, **kwargs), 1,
                                config["patch_size"])
    assert abs(ours / target - 1) <= FIT_TOLERANCE and ours <= target * (1 + FIT_TOLERANCE / 4)
    assert any("fitted to nnU-Net's planned network" in line for line in logs)
    register_searched_configuration(plans_path, "3d_fullres", method, g, 0.25, name="explicit", log=logs.append)
    assert json.load(open(plans_path))["configurations"]["explicit"]["architecture"]["arch_kwargs"]["channel_mul"] \
        == 0.25


def test_unbuildable_base_network_gives_one_clear_error(tmp_path):
    plans = {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
        "patch_size": [32, 32, 32], "batch_size": 2, "data_identifier": "x", "spacing": [1, 1, 1],
        "architecture": {"network_class_name": "no.such.Net", "arch_kwargs": {}, "_kw_requires_import": []}}}}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="pass an explicit --channel-mul"):
        planned_network_elements(str(path), "3d_fullres", 1, 2)
