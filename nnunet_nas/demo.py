"""``nnunet-nas demo``: the main job on real data, as one ``nnunet-nas run`` study on the CPU.

Copies the 24 MSD Hippocampus cases that ship with the package (``demo_data/hippocampus``, CC-BY-SA 4.0, see
``LICENCE.md`` there) into nnU-Net raw format and runs the study ``nnunet-nas run 990 -c 2d --methods dints
--folds 0``: nnU-Net plans and preprocesses them, trains its own 2d configuration on fold 0, a short DiNTS search
finds an architecture that is exported at the width of nnU-Net's planned memory and trained on the same schedule,
``nnUNetv2_find_best_configuration`` chooses, and the run's report compares them; the demo then prints the Dice
table and draws one validation case (image, ground truth, both predictions). On 24 cases nnU-Net plans its 2d
configuration at batch 35, where both networks learn within a few hundred iterations on a CPU (3d_fullres at a CPU
batch does not). ``make_demo_dataset`` writes the tiny synthetic dataset the tests use.
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
DEMO_CONFIG = "2d"  # nnU-Net plans it at batch 35 for these 24 cases
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


def copy_demo_dataset(raw_root: str) -> str:
    """Copy the packaged Hippocampus subset to ``raw_root/Dataset990_HippocampusDemo`` and return that folder."""
    from importlib import resources
    source = str(resources.files("nnunet_nas") / "demo_data" / "hippocampus")
    folder = os.path.join(raw_root, DEMO_DATASET_NAME)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder


DEMO_MARKER = ".nnunet_nas_demo"
DEMO_ENTRIES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "study", "demo_case.png", DEMO_MARKER)


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


def study_command(run_dir: str) -> list:
    """The demo's study: nnU-Net's 2d configuration and a short DiNTS search, fold 0, on the CPU."""
    return ["nnunet-nas", "run", str(DEMO_DATASET_ID), "-c", DEMO_CONFIG, "--methods", "dints", "--folds", "0",
            "--trainer", RETRAIN_TRAINER, "--search-trainer", f"dints={SEARCH_TRAINER}", "-device", "cpu",
            "--run-dir", run_dir]


def run_demo(workdir: str = "nnunet_nas_demo", fresh: bool = False, log=print) -> dict:
    from nnunet_nas.study.report import configuration_results
    from nnunet_nas.study.steps import found_configuration
    workdir = os.path.abspath(workdir)
    prepare_workdir(workdir, fresh)
    env = nnunet_env(workdir, n_proc_DA=int(os.environ.get("nnUNet_n_proc_DA", "1")))
    start = time.time()
    raw = copy_demo_dataset(env["nnUNet_raw"])
    log(f"[nnunet-nas demo] 24 MSD Hippocampus cases (CC-BY-SA 4.0) copied to {raw}")
    run_dir = os.path.join(workdir, "study")
    command = study_command(run_dir)
    log(f"[nnunet-nas demo] the study: {' '.join(command)}")
    if subprocess.run(command, env=env).returncode != 0:
        raise UserError(f"the demo's study did not finish ({run_dir}/ledger.json names the step and its log); "
                        f"`nnunet-nas demo --workdir {workdir}` again resumes it.")
    with open(os.path.join(run_dir, "study.json")) as f:
        results = configuration_results(json.load(f))
    found = found_configuration(DEMO_CONFIG, "dints")
    scores = {name: {int(k): v for k, v in r["folds"][0]["mean"].items()} for name, r in results.items()}
    folds = {name: os.path.join(env["nnUNet_results"], DEMO_DATASET_NAME, f"{RETRAIN_TRAINER}__nnUNetPlans__{name}",
                                "fold_0") for name in results}
    picture = os.path.join(workdir, "demo_case.png")
    case = sorted(f for f in os.listdir(os.path.join(folds[DEMO_CONFIG], "validation")) if f.endswith(".nii.gz"))[0]
    _draw_case(raw, {name: os.path.join(folder, "validation") for name, folder in folds.items()},
               case[:-len(".nii.gz")], picture, log)
    log(f"\n[nnunet-nas demo] finished in {time.time() - start:.0f} s; the study's report: "
        f"{os.path.join(run_dir, 'report.md')}; one validation case drawn in {picture}")
    log(f"[nnunet-nas demo] fold 0 validation Dice ({len(results[DEMO_CONFIG]['folds'][0]['cases'])} cases), "
        f"{RETRAIN_TRAINER} for both:")
    log(f"[nnunet-nas demo]   {'':<24}" + "".join(f"{n:>11}" for n in list(LABEL_NAMES.values()) + ["mean"]))
    for name, sc in scores.items():
        who = "nnU-Net " if name == DEMO_CONFIG else "DiNTS "
        log(f"[nnunet-nas demo]   {who + name:<24}" + "".join(f"{sc[k]:>11.3f}" for k in LABEL_NAMES)
            + f"{np.mean([sc[k] for k in LABEL_NAMES]):>11.3f}")
    log(f"[nnunet-nas demo] What this shows: the whole path on real MRI, from raw images through nnU-Net's planning, a "
        f"search, the found network ({found}) trained by nnU-Net's own trainer and nnU-Net's model selection, at "
        f"equal planned memory. What it does not show: which network is better. It is one fold of 24 cases, "
        f"{len(results[DEMO_CONFIG]['folds'][0]['cases'])} of them validation, a 500-iteration schedule and a "
        f"one-minute search; nnU-Net's own 2d runs differ by about 0.015 mean Dice between identical runs even on "
        f"the 200-case protocol. BENCHMARKS.md has the comparisons on that protocol.")
    return scores


def _draw_case(raw: str, predictions: dict, case: str, path: str, log) -> None:
    import nibabel as nib
    from nnunet_nas.viz import plot_segmentation_comparison
    load = lambda p: np.asarray(nib.load(p).dataobj)  # noqa: E731
    try:
        plot_segmentation_comparison(
            load(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz")),
            load(os.path.join(raw, "labelsTr", f"{case}.nii.gz")),
            {name: load(os.path.join(folder, f"{case}.nii.gz")) for name, folder in predictions.items()}, path,
            title=f"{case}: middle slice")
    except Exception as e:  # noqa: BLE001 - a picture must never fail the demo
        log(f"[nnunet-nas demo] could not draw {case}: {e}")
