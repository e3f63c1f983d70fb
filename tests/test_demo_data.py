"""The real data that ships for ``nnunet-nas demo``: complete, licensed, and laid out as nnU-Net reads it."""

import json
import os
from importlib import resources

import nibabel as nib
import numpy as np

from nnunet_nas.demo import DEMO_CONFIG, add_batch2_configuration, copy_demo_dataset


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


def test_batch2_configuration_inherits_the_planned_network(tmp_path):
    plans = {"dataset_name": "Dataset990_HippocampusDemo", "plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": {"patch_size": [40, 56, 40], "batch_size": 9, "architecture": {"network_class_name": "x"}}}}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    add_batch2_configuration(str(path))
    c = json.load(open(path))["configurations"][DEMO_CONFIG]
    assert c["inherits_from"] == "3d_fullres" and c["batch_size"] == 2 and c["architecture"]["network_class_name"] == "x"
