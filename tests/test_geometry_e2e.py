"""The plan's geometry and label layout through nnU-Net's real commands: a thick-slice dataset with an ignore label
searched by one grid and one cell method (the found network keeps nnU-Net's strides, kernels and patch, and counts
the heads nnU-Net trains), and regions end to end."""

import json
import os

import nibabel as nib
import pytest

from helpers import nnunet_env, plan_dataset, run_cli, write_dataset

pytestmark = pytest.mark.e2e
THICK, REGIONS = 992, 993
SEARCH_TRAINERS = {"dints": "nnUNetTrainerDiNTSSearchBriefTest", "scnas": "nnUNetTrainerSCNASSearchBriefTest"}
PLAIN = "nnUNetTrainerNASTest"


def _prepared(tmp_path_factory, dataset_id, name, **dataset):
    env = nnunet_env(str(tmp_path_factory.mktemp(name)))
    write_dataset(env["nnUNet_raw"], dataset_id, name, **dataset)
    plan_dataset(env, dataset_id)
    return env


def _plans(env, dataset_id, name):
    with open(os.path.join(env["nnUNet_preprocessed"], f"Dataset{dataset_id:03d}_{name}", "nnUNetPlans.json")) as f:
        return json.load(f)


def _train(env, dataset_id, configuration, trainer):
    return run_cli(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-device", "cpu"], env)


def _predict_keeps_shapes(env, dataset_id, name, configuration, tmp_path, channels=1):
    """Predict two training cases with the stock trainer's model; the predictions have the inputs' shapes."""
    raw = os.path.join(env["nnUNet_raw"], f"Dataset{dataset_id:03d}_{name}")
    inp, out = tmp_path / f"in_{configuration}", tmp_path / f"out_{configuration}"
    inp.mkdir()
    cases = sorted(os.listdir(os.path.join(raw, "labelsTr")))[:2]
    for case in cases:
        for c in range(channels):
            image = case.replace(".nii.gz", f"_{c:04d}.nii.gz")
            os.symlink(os.path.join(raw, "imagesTr", image), inp / image)
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", str(dataset_id), "-c", configuration, "-f",
             "0", "-tr", PLAIN, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    for case in cases:
        assert nib.load(str(out / case)).shape == nib.load(os.path.join(raw, "labelsTr", case)).shape


@pytest.fixture(scope="module")
def thick_slices(tmp_path_factory):
    """8 cases of 12 x 64 x 64 voxels at 5 x 1 x 1 mm with an ignore label (background, two labels and the ignore
    label: three heads), planned by nnU-Net (3d_fullres)."""
    return _prepared(tmp_path_factory, THICK, "ThickSlices", kind="ignore", shape=(12, 64, 64),
                     spacing=(5.0, 1.0, 1.0), num_cases=8)  # SCNAS splits 4:1: at least 5 training cases


@pytest.mark.parametrize("method", sorted(SEARCH_TRAINERS))
def test_a_thick_slice_search_keeps_nnunets_geometry_and_patch(thick_slices, method, tmp_path):
    env = thick_slices
    planned = _plans(env, THICK, "ThickSlices")["configurations"]["3d_fullres"]
    kwargs = planned["architecture"]["arch_kwargs"]
    assert kwargs["strides"][1] == [1, 2, 2] and kwargs["kernel_sizes"][0] == [1, 3, 3]  # nnU-Net saw thick slices
    search = _train(env, THICK, "3d_fullres", SEARCH_TRAINERS[method])
    assert "patch size" not in search.stdout  # nnU-Net's patch is searched as it is
    assert "1 input channels, 3 outputs" in search.stdout  # the heads nnU-Net trains: the ignore label is none
    fold = os.path.join(env["nnUNet_results"], "Dataset992_ThickSlices",
                        f"{SEARCH_TRAINERS[method]}__nnUNetPlans__3d_fullres", "fold_0")
    with open(os.path.join(os.path.dirname(fold), "plans.json")) as f:
        assert json.load(f)["configurations"]["3d_fullres"]["patch_size"] == planned["patch_size"]
    found = _plans(env, THICK, "ThickSlices")["configurations"][f"3d_fullres_{method}"]
    geometry = found["architecture"]["arch_kwargs"]["genotype"]["geometry"]
    stages = len(geometry["strides"])
    assert geometry["strides"] == kwargs["strides"][:stages] and geometry["kernels"] == kwargs["kernel_sizes"][:stages]
    assert found.get("patch_size", planned["patch_size"]) == planned["patch_size"]
    _train(env, THICK, f"3d_fullres_{method}", PLAIN)
    _predict_keeps_shapes(env, THICK, "ThickSlices", f"3d_fullres_{method}", tmp_path)


def test_regions_end_to_end(tmp_path_factory, tmp_path):
    """A BraTS-style dataset (4 channels, three overlapping regions: three heads) through search, export, stock
    training and prediction; the export counts the heads nnU-Net trains."""
    env = _prepared(tmp_path_factory, REGIONS, "Regions", kind="regions", channels=4, shape=(16, 16, 16))
    search = _train(env, REGIONS, "3d_fullres", SEARCH_TRAINERS["dints"])
    assert "4 input channels, 3 outputs" in search.stdout
    _train(env, REGIONS, "3d_fullres_dints", PLAIN)
    _predict_keeps_shapes(env, REGIONS, "Regions", "3d_fullres_dints", tmp_path, 4)
