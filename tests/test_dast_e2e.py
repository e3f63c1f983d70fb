"""DAST through nnU-Net's real entry points, in subprocesses, on the tiny generated dataset (CPU): search, export,
train, predict, attention export and its bad inputs."""

import json
import os

import numpy as np
import pytest

from helpers import (DATASET_ID, DATASET_NAME, fold_folder, one_error_line, point_nnunet_at, run_cli, run_main,
                     search_on_copy)
from nnunet_nas.genotypes.grid import GridGenotype

SEARCH = "nnUNetTrainerDASTSearchTest"
PLAIN = "nnUNetTrainerNASTest"


@pytest.fixture(scope="module")
def searched(planned_dataset, tmp_path_factory):
    return search_on_copy(planned_dataset, str(tmp_path_factory.mktemp("dast")), SEARCH)


def test_search_exports_a_dast_configuration_that_trains_predicts_and_shows_its_attention(searched, tmp_path,
                                                                                          monkeypatch, capsys):
    import SimpleITK as sitk
    env, out = searched
    fold = fold_folder(env, SEARCH)
    g = GridGenotype.load(os.path.join(fold, "dast_genotype.json"))
    assert g.op_set == "dast_3d" and g.provenance["method"] == "dast"
    for picture in ("dast_architecture.png", "dast_arch_trajectories.png", "progress.png"):
        assert os.path.getsize(os.path.join(fold, picture)) > 1000, picture
    assert "DAST transformers (8 heads): level 0: 16x16x16 map, 8x8x8 token grid" in out.stdout
    assert "width fitted to nnU-Net's planned network" in out.stdout
    plans_path = os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")
    config = json.load(open(plans_path))["configurations"]["3d_fullres_dast"]
    kwargs = config["architecture"]["arch_kwargs"]
    assert kwargs["patch_size"] == config["patch_size"] and kwargs["channel_multiple"] == 8
    assert kwargs["op_options"] == {"token_grid": None, "num_heads": 8}
    assert GridGenotype.from_dict(kwargs["genotype"]) == g

    # a genotype with a transformer on every active edge (the short search may have picked none), registered as an
    # ordinary configuration, trained and used by nnU-Net's predictor; then its attention for one case
    d = g.to_dict()
    d["ops"] = [["transformer" if on else None for on in row] for row in d["edges"]]
    path = tmp_path / "all_transformer.json"
    path.write_text(json.dumps(d))
    run_cli(["nnunet-nas", "add-arch", str(DATASET_ID), "-c", "3d_fullres", "--genotype", str(path), "--name",
             "3d_fullres_dast_t", "--channel-mul", "0.125"], env)
    run_cli(["nnUNetv2_train", str(DATASET_ID), "3d_fullres_dast_t", "0", "-tr", PLAIN, "-device", "cpu"], env)
    images = os.path.join(env["nnUNet_raw"], DATASET_NAME, "imagesTr")
    case = sorted(os.listdir(images))[0]
    inp = tmp_path / "in"
    inp.mkdir()
    os.symlink(os.path.join(images, case), inp / case)
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(tmp_path / "pred"), "-d", str(DATASET_ID), "-c",
             "3d_fullres_dast_t", "-f", "0", "-tr", PLAIN, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    assert os.path.isfile(tmp_path / "pred" / case.replace("_0000", ""))
    res = run_cli(["nnunet-nas", "attention", "-i", os.path.join(images, case), "-o", str(tmp_path / "att"), "-d",
                   str(DATASET_ID), "-c", "3d_fullres_dast_t", "-tr", PLAIN, "-f", "0"], env)
    stem = case.replace("_0000.nii.gz", "")
    written = sorted(os.listdir(tmp_path / "att"))
    n_cells = int(np.asarray(g.arch_code_a).sum())
    assert len(written) == 2 * n_cells and f"{stem}_b0_e" in written[0], (written, res.stdout)
    source = sitk.ReadImage(os.path.join(images, case))
    nifti = [f for f in written if f.endswith(".nii.gz")][0]
    overlay = sitk.ReadImage(str(tmp_path / "att" / nifti))
    assert overlay.GetSize() == source.GetSize() and overlay.GetSpacing() == source.GetSpacing()
    assert overlay.GetOrigin() == source.GetOrigin() and overlay.GetDirection() == source.GetDirection()
    values = sitk.GetArrayFromImage(overlay)
    assert values.min() >= -1e-6 and values.max() > 0  # attention weights, the patch covers the image
    assert os.path.getsize(tmp_path / "att" / nifti.replace(".nii.gz", ".png")) > 1000

    # bad input for the trained model: one line, exit code 2, nothing written (nnunet-nas's own checks, in process)
    point_nnunet_at(monkeypatch, env)
    capsys.readouterr()
    text = tmp_path / "not_an_image_0000.nii.gz"
    text.write_text("hello")
    image = os.path.join(images, case)
    bad = [([image] * 2, [], "2 image files given, but the dataset has 1 input channel"),
           ([str(text)], [], "cannot be read as an image"),
           ([image], ["--center", "1", "2"], "--center has 2 values; give 3"),
           ([image], ["--center", "999", "0", "0"], "outside the preprocessed image")]
    for files, extra, message in bad:
        rc, _, err = run_main(capsys, ["attention", "-i", *files, "-o", str(tmp_path / "att_bad"), "-d",
                                       str(DATASET_ID), "-c", "3d_fullres_dast_t", "-tr", PLAIN, "-f", "0", *extra])
        assert message in one_error_line(rc, err, "attention"), err
        assert not os.path.exists(tmp_path / "att_bad")
