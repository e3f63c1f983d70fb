"""``nnunet-nas demo``: the main job on a built-in dataset, through nnU-Net's real commands.

Generates a small 3-D dataset in nnU-Net raw format (bright ellipsoids with a darker core in noisy volumes:
label 1 shell, label 2 core), plans and preprocesses it, runs a short DiNTS search on the CPU, trains the found
configuration briefly, predicts the validation cases with ``nnUNetv2_predict`` and prints their Dice.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from nnunet_nas.nnunet.environment import nnunet_env

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = f"Dataset{DEMO_DATASET_ID:03d}_NASDemo"
SEARCH_TRAINER = "nnUNetTrainerDiNTSSearchDemo"
RETRAIN_TRAINER = "nnUNetTrainerNASDemo"


def make_demo_dataset(raw_root: str, dataset_id: int = DEMO_DATASET_ID, num_cases: int = 16, shape=(40, 40, 40),
                      seed: int = 0) -> str:
    """Write ``Dataset<id>_NASDemo`` under ``raw_root`` and return its folder."""
    import nibabel as nib

    name = f"Dataset{dataset_id:03d}_NASDemo"
    folder = os.path.join(raw_root, name)
    os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
    rng = np.random.RandomState(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    affine = np.eye(4)
    for i in range(num_cases):
        center = np.array([rng.uniform(0.35, 0.65) * s for s in shape])[:, None, None, None]
        radii = np.array([rng.uniform(0.18, 0.3) * min(shape) for _ in shape])[:, None, None, None]
        r = np.sqrt((((grid - center) / radii) ** 2).sum(0))
        label = np.zeros(shape, np.uint8)
        label[r < 1] = 1
        label[r < 0.5] = 2
        image = rng.normal(0, 1, shape).astype(np.float32) + 2.0 * (label == 1) + 1.0 * (label == 2)
        case = f"nasdemo_{i:03d}"
        nib.save(nib.Nifti1Image(image, affine), os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "noise"}, "labels": {"background": 0, "shell": 1, "core": 2},
                   "numTraining": num_cases, "file_ending": ".nii.gz", "name": "NASDemo"}, f, indent=2)
    return folder


def dice_scores(pred_folder: str, label_folder: str, labels=(1, 2)) -> dict:
    import nibabel as nib
    scores = {lab: [] for lab in labels}
    for f in sorted(os.listdir(pred_folder)):
        if not f.endswith(".nii.gz"):
            continue
        p = np.asarray(nib.load(os.path.join(pred_folder, f)).dataobj)
        g = np.asarray(nib.load(os.path.join(label_folder, f)).dataobj)
        for lab in labels:
            inter, total = np.sum((p == lab) & (g == lab)), np.sum(p == lab) + np.sum(g == lab)
            scores[lab].append(1.0 if total == 0 else 2 * inter / total)
    return {lab: float(np.mean(v)) for lab, v in scores.items()}


def _run(cmd, env, step, log):
    log(f"\n[nnunet-nas demo] step {step}: {' '.join(cmd)}")
    t = time.time()
    subprocess.run(cmd, env=env, check=True)
    log(f"[nnunet-nas demo] step {step} done in {time.time() - t:.0f} s")


def run_demo(workdir: str = "nnunet_nas_demo", fresh: bool = False, log=print) -> dict:
    workdir = os.path.abspath(workdir)
    if fresh and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    env = nnunet_env(workdir, n_proc_DA=int(os.environ.get("nnUNet_n_proc_DA", "1")))
    start = time.time()
    raw = make_demo_dataset(env["nnUNet_raw"])
    log(f"[nnunet-nas demo] dataset written to {raw}")
    did = str(DEMO_DATASET_ID)
    _run(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env,
         "1/4 plan and preprocess", log)
    _run(["nnUNetv2_train", did, "3d_fullres", "0", "-tr", SEARCH_TRAINER, "-device", "cpu"], env,
         "2/4 DiNTS search", log)
    _run(["nnUNetv2_train", did, "3d_fullres_dints", "0", "-tr", RETRAIN_TRAINER, "-device", "cpu"], env,
         "3/4 train the found configuration", log)
    splits = json.load(open(os.path.join(env["nnUNet_preprocessed"], DEMO_DATASET_NAME, "splits_final.json")))
    val = splits[0]["val"]
    inp = os.path.join(workdir, "predict_input")
    out = os.path.join(workdir, "predict_output")
    os.makedirs(inp, exist_ok=True)
    for case in val:
        shutil.copy(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"), inp)
    _run(["nnUNetv2_predict", "-i", inp, "-o", out, "-d", did, "-c", "3d_fullres_dints", "-f", "0", "-tr",
          RETRAIN_TRAINER, "-device", "cpu", "-npp", "0", "-nps", "0"], env, "4/4 predict the validation cases", log)
    scores = dice_scores(out, os.path.join(raw, "labelsTr"))
    fold = os.path.join(env["nnUNet_results"], DEMO_DATASET_NAME, f"{SEARCH_TRAINER}__nnUNetPlans__3d_fullres",
                        "fold_0")
    log(f"\n[nnunet-nas demo] finished in {time.time() - start:.0f} s")
    log(f"[nnunet-nas demo] found architecture: {os.path.join(fold, 'dints_genotype.json')} (picture "
        f"dints_architecture.png, trajectories dints_arch_trajectories.png)")
    log(f"[nnunet-nas demo] validation Dice ({len(val)} cases): shell {scores[1]:.3f}, core {scores[2]:.3f}, "
        f"mean {np.mean(list(scores.values())):.3f}")
    return scores


if __name__ == "__main__":
    run_demo(sys.argv[1] if len(sys.argv) > 1 else "nnunet_nas_demo")
