"""The real data that ships for ``nnunet-nas demo``: complete, licensed, and laid out as nnU-Net reads it."""

import json
import os
import re
from importlib import resources

import nibabel as nib
import numpy as np

from nnunet_nas.demo import DEMO_CONFIG, copy_demo_dataset, study_command


def test_packaged_hippocampus_subset_is_complete_and_licensed(tmp_path):
    folder = copy_demo_dataset(str(tmp_path))
    meta = json.load(open(os.path.join(folder, "dataset.json")))
    images = sorted(os.listdir(os.path.join(folder, "imagesTr")))
    labels = sorted(os.listdir(os.path.join(folder, "labelsTr")))
    assert meta["numTraining"] == len(labels) == len(images) == 24
    assert [i.replace("_0000", "") for i in images] == labels
    licence = (resources.files("nnunet_nas") / "demo_data" / "hippocampus" / "LICENCE.md").read_text()
    assert "CC BY-SA 4.0" in licence and "Antonelli" in licence and "Simpson" in licence
    seg = np.asarray(nib.load(os.path.join(folder, "labelsTr", labels[0])).dataobj)
    assert set(np.unique(seg).astype(int)) == {0, 1, 2}


def test_the_demos_study_plans_trains_searches_and_selects_on_the_packaged_cases(tmp_path):
    """``nnunet-nas demo`` is one ``nnunet-nas run``: its command, dry-run on the packaged cases (nothing runs)."""
    from helpers import run_cli
    from nnunet_nas.nnunet.environment import nnunet_env
    env = nnunet_env(str(tmp_path))
    copy_demo_dataset(env["nnUNet_raw"])
    out = run_cli(study_command(str(tmp_path / "study")) + ["--dry-run"], env).stdout
    steps = re.findall(r"\[ *\d+\] (\S+)", out)
    assert steps == ["plan", f"baseline/{DEMO_CONFIG}/fold_0", f"search/dints/{DEMO_CONFIG}",
                     f"train/{DEMO_CONFIG}_dints/fold_0", "select"]
    assert "nnUNetv2_plan_and_preprocess -d 990 -c 2d" in out and "3 trainings" in out
    assert not os.path.exists(tmp_path / "study")
