"""``nnunet-nas demo``: the main job on real data, through nnU-Net's real commands, on the CPU.

Copies the 24 MSD Hippocampus cases that ship with the package (``demo_data/hippocampus``, CC-BY-SA 4.0, see
``LICENCE.md`` there) into nnU-Net raw format, plans and preprocesses them, adds ``3d_fullres_bs2`` (nnU-Net's
3d_fullres at batch 2, a CPU budget), runs a short DiNTS search on it, exports the found architecture at the
width that matches nnU-Net's planned memory, trains the found and nnU-Net's own configuration on the same short
schedule, predicts fold 0's validation cases with both and prints per-label Dice side by side, and saves a picture
of one case (image, ground truth, both predictions). ``make_demo_dataset`` writes the tiny synthetic dataset the
tests use.
"""

import json
import os
import shutil
import subprocess
import time

import numpy as np

from nnunet_nas.errors import UserError
from nnunet_nas.nnunet.environment import nnunet_env

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = f"Dataset{DEMO_DATASET_ID:03d}_HippocampusDemo"
SEARCH_TRAINER = "nnUNetTrainerDiNTSSearchDemo"
RETRAIN_TRAINER = "nnUNetTrainerNASDemo"
DEMO_CONFIG = "3d_fullres_bs2"
SYNTHETIC_DATASET_ID = 989  # make_demo_dataset's default (benchmarks); the tests use their own id
LABEL_NAMES = {1: "anterior", 2: "posterior"}


def make_demo_dataset(raw_root: str, dataset_id: int = SYNTHETIC_DATASET_ID, num_cases: int = 16, shape=(40, 40, 40),
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


def copy_demo_dataset(raw_root: str) -> str:
    """Copy the packaged Hippocampus subset to ``raw_root/Dataset990_HippocampusDemo`` and return that folder."""
    from importlib import resources
    source = str(resources.files("nnunet_nas") / "demo_data" / "hippocampus")
    folder = os.path.join(raw_root, DEMO_DATASET_NAME)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder


def add_batch2_configuration(plans_path: str) -> None:
    """``3d_fullres_bs2``: nnU-Net's planned 3d_fullres (same network, patch, preprocessed data) at batch 2."""
    from nnunet_nas.nnunet.plans_io import load_plans, register_configuration
    base = load_plans(plans_path)["configurations"]["3d_fullres"]
    register_configuration(plans_path, "3d_fullres", DEMO_CONFIG, base["architecture"], extra={"batch_size": 2})


def _run(cmd, env, step, log):
    log(f"\n[nnunet-nas demo] step {step}: {' '.join(cmd)}")
    t = time.time()
    subprocess.run(cmd, env=env, check=True)
    log(f"[nnunet-nas demo] step {step} done in {time.time() - t:.0f} s")


def _predict(env, inp, out, config, step, log):
    _run(["nnUNetv2_predict", "-i", inp, "-o", out, "-d", str(DEMO_DATASET_ID), "-c", config, "-f", "0", "-tr",
          RETRAIN_TRAINER, "-device", "cpu", "-npp", "0", "-nps", "0"], env, step, log)


DEMO_MARKER = ".nnunet_nas_demo"
DEMO_ENTRIES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predict_input", "predict_nnunet",
                "predict_dints", "demo_case.png", DEMO_MARKER)


def prepare_workdir(workdir: str, fresh: bool) -> None:
    """Create the demo's work folder, marked as the demo's; ``fresh`` removes what an earlier demo wrote there, and
    only that: a folder holding anything else (or not made by the demo) is refused, never deleted."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file; give a folder for the demo.")
    entries = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []
    if entries and DEMO_MARKER not in entries:
        raise UserError(f"--workdir {workdir} is not empty and was not made by nnunet-nas demo ({entries[:5]}"
                        f"{' ...' if len(entries) > 5 else ''}); nothing there is touched. Give a new or empty folder.")
    if fresh and entries:
        foreign = [e for e in entries if e not in DEMO_ENTRIES]
        if foreign:
            raise UserError(f"--fresh: {workdir} holds files the demo did not write ({foreign[:5]}); nothing was "
                            f"deleted. Move them away, or give another --workdir.")
        for e in entries:
            path = os.path.join(workdir, e)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, DEMO_MARKER), "w") as f:
        f.write("made by nnunet-nas demo; `nnunet-nas demo --fresh` may delete this folder's demo files\n")


def run_demo(workdir: str = "nnunet_nas_demo", fresh: bool = False, log=print) -> dict:
    workdir = os.path.abspath(workdir)
    prepare_workdir(workdir, fresh)
    env = nnunet_env(workdir, n_proc_DA=int(os.environ.get("nnUNet_n_proc_DA", "1")))
    start = time.time()
    raw = copy_demo_dataset(env["nnUNet_raw"])
    log(f"[nnunet-nas demo] 24 MSD Hippocampus cases (CC-BY-SA 4.0) copied to {raw}")
    did = str(DEMO_DATASET_ID)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    _run(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "1", "-npfp", "1"], plan_env,
         "1/7 plan and preprocess", log)
    add_batch2_configuration(os.path.join(env["nnUNet_preprocessed"], DEMO_DATASET_NAME, "nnUNetPlans.json"))
    found = f"{DEMO_CONFIG}_dints"
    _run(["nnUNetv2_train", did, DEMO_CONFIG, "0", "-tr", SEARCH_TRAINER, "-device", "cpu"], env,
         "2/7 DiNTS search", log)
    _run(["nnUNetv2_train", did, found, "0", "-tr", RETRAIN_TRAINER, "-device", "cpu"], env,
         "3/7 train the found configuration", log)
    _run(["nnUNetv2_train", did, DEMO_CONFIG, "0", "-tr", RETRAIN_TRAINER, "-device", "cpu"], env,
         "4/7 train nnU-Net's own configuration on the same schedule", log)
    splits = json.load(open(os.path.join(env["nnUNet_preprocessed"], DEMO_DATASET_NAME, "splits_final.json")))
    val = splits[0]["val"]
    inp = os.path.join(workdir, "predict_input")
    os.makedirs(inp, exist_ok=True)
    for case in val:
        shutil.copy(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"), inp)
    outs = {"nnU-Net": os.path.join(workdir, "predict_nnunet"), "DiNTS": os.path.join(workdir, "predict_dints")}
    _predict(env, inp, outs["nnU-Net"], DEMO_CONFIG, "5/7 predict the validation cases with nnU-Net's", log)
    _predict(env, inp, outs["DiNTS"], found, "6/7 predict them with the found configuration", log)
    labels = os.path.join(raw, "labelsTr")
    scores = {name: dice_scores(folder, labels, tuple(LABEL_NAMES)) for name, folder in outs.items()}
    picture = os.path.join(workdir, "demo_case.png")
    _draw_case(inp, labels, outs, val[0], picture, log)
    fold = os.path.join(env["nnUNet_results"], DEMO_DATASET_NAME, f"{SEARCH_TRAINER}__nnUNetPlans__{DEMO_CONFIG}",
                        "fold_0")
    log(f"\n[nnunet-nas demo] step 7/7 finished in {time.time() - start:.0f} s")
    log(f"[nnunet-nas demo] found architecture: {os.path.join(fold, 'dints_genotype.json')} (picture "
        f"dints_architecture.png, trajectories dints_arch_trajectories.png); one case drawn in {picture}")
    log(f"[nnunet-nas demo] validation Dice, fold 0 ({len(val)} cases), same training schedule for both:")
    log(f"[nnunet-nas demo]   {'':<24}" + "".join(f"{n:>11}" for n in list(LABEL_NAMES.values()) + ["mean"]))
    for name, sc in scores.items():
        config = DEMO_CONFIG if name == "nnU-Net" else found
        log(f"[nnunet-nas demo]   {name + ' ' + config:<24}" + "".join(f"{sc[k]:>11.3f}" for k in LABEL_NAMES)
            + f"{np.mean(list(sc.values())):>11.3f}")
    log(f"[nnunet-nas demo] {RETRAIN_TRAINER} trains each network for 50 iterations only: enough to show the "
        f"pipeline on real data, not to rank the networks (a larger network may not segment anything yet). "
        f"BENCHMARKS.md compares them on full schedules.")
    return scores


def _draw_case(inp, labels, outs, case, path, log) -> None:
    import nibabel as nib
    from nnunet_nas.viz import plot_segmentation_comparison
    load = lambda p: np.asarray(nib.load(p).dataobj)  # noqa: E731
    try:
        plot_segmentation_comparison(
            load(os.path.join(inp, f"{case}_0000.nii.gz")), load(os.path.join(labels, f"{case}.nii.gz")),
            {name: load(os.path.join(folder, f"{case}.nii.gz")) for name, folder in outs.items()}, path,
            title=f"{case}: middle slice")
    except Exception as e:  # noqa: BLE001 - a picture must never fail the demo
        log(f"[nnunet-nas demo] could not draw {case}: {e}")
