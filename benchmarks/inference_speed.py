#!/usr/bin/env python
"""Inference speed: the found Hippocampus 2-D DiNTS configuration against nnU-Net's own, at equal memory (CPU).

The found architecture (``benchmarks/results/hippocampus_2d_dints_genotype.json``, from ``hippocampus_2d.py``) is
registered on ``2d_bs32`` with ``nnunet-nas add-arch``, whose default width is fitted to the memory nnU-Net planned
for ``2d_bs32`` (the equal-memory rule of the export). For each of the two configurations the script writes an
nnU-Net model folder (``nnUNetTrainer__nnUNetPlans__<config>/fold_0/checkpoint_final.pth``, the network as nnU-Net's
trainer builds and initialises it, seed 0: a forward pass costs the same for any weight values) and then times, on
the 40 validation cases of fold 0 of nnU-Net's split:

1. per case, in process, with nnU-Net's own predictor as ``nnUNetv2_predict`` sets it up (``nnUNetPredictor``,
   ``initialize_from_trained_model_folder``, ``predict_single_npy_array``: preprocessing, sliding window with
   mirroring, resampling back); one warm-up case first, not counted;
2. the real command ``nnUNetv2_predict -device cpu -npp 1 -nps 1`` on the same 40 cases (wall-clock, start-up
   included);
3. the network alone: one forward at batch 1 at the configuration's patch (median of repeats), and a
   ``torch.profiler`` table of its top operators, written to
   ``benchmarks/results/<table>_profile_<config>_t<threads>.txt``.

Threads: nnU-Net's predictor runs the network with ``min(nnUNet_def_n_proc, torch threads)`` threads; the protocol
sets ``nnUNet_def_n_proc=1`` on 2-core machines, ``--threads 1 2`` times both.

``--genotype`` times another found architecture (issue 23's row: the DiNTS search under the nnU-Net budget,
``--genotype benchmarks/results/issue23_dints_nnunet_genotype.json --table inference_speed_issue23``); ``--table``
names the results JSON and the BENCHMARKS.md table it updates.

    python benchmarks/inference_speed.py [--work /tmp/hippo_infer] [--threads 1 2] [--genotype PATH] [--table TAG]
        [--update-benchmarks-md]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from harness import REPO, RESULTS, parse_time_file, run_child, update_markdown
from hippocampus_2d import DATA, DATASET, add_bs32, env_for, machine

GENOTYPE = os.path.join(RESULTS, "hippocampus_2d_dints_genotype.json")
BASE, FOUND = "2d_bs32", "2d_bs32_dints"
TRAINER = "nnUNetTrainer"


def model_folder(env, config):
    return os.path.join(env["nnUNet_results"], DATASET, f"{TRAINER}__nnUNetPlans__{config}")


def prepare(work, genotype):
    """Raw data, plans, ``2d_bs32``, the found configuration and one model folder per configuration."""
    env = env_for(work)
    raw = os.path.join(env["nnUNet_raw"], DATASET)
    if not os.path.isdir(raw):
        os.makedirs(env["nnUNet_raw"], exist_ok=True)
        subprocess.run(["cp", "-r", DATA, raw], check=True)
    plans = os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json")
    if not os.path.isfile(plans):
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "2d", "-np", "1", "-npfp", "1", "--no_pp"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    add_bs32(env)
    add = subprocess.run(["nnunet-nas", "add-arch", "4", "-c", BASE, "--genotype", genotype, "--name", FOUND,
                          "--overwrite"], env=env, check=True, capture_output=True, text=True)
    print(add.stdout.strip(), flush=True)
    for config in (BASE, FOUND):
        subprocess.run([sys.executable, __file__, "--work", work, "--write-model", config], env=env, check=True)
    return env, add.stdout


def write_model(config):
    """An nnU-Net model folder for ``config``: plans, dataset.json and a fold-0 checkpoint of a freshly
    initialised network (as ``nnUNetTrainer`` builds it for training: deep supervision on)."""
    import shutil
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_nas.io import atomic_path
    pre = os.path.join(os.environ["nnUNet_preprocessed"], DATASET)
    folder = model_folder(os.environ, config)
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    for name, target in (("nnUNetPlans.json", "plans.json"), ("dataset.json", "dataset.json")):
        shutil.copy(os.path.join(pre, name), os.path.join(folder, target))
    pm = PlansManager(os.path.join(pre, "nnUNetPlans.json"))
    ds = json.load(open(os.path.join(pre, "dataset.json")))
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(config), len(ds["channel_names"]),
                                                   pm.get_label_manager(ds).num_segmentation_heads, True)
    checkpoint = {"network_weights": net.state_dict(), "trainer_name": TRAINER,
                  "init_args": {"configuration": config, "fold": 0, "plans": pm.plans, "dataset_json": ds},
                  "inference_allowed_mirroring_axes": (0, 1), "current_epoch": 0}
    with atomic_path(os.path.join(folder, "fold_0", "checkpoint_final.pth")) as tmp:
        torch.save(checkpoint, tmp)


def validation_cases(env):
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    images = os.path.join(env["nnUNet_raw"], DATASET, "imagesTr")
    ids = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images) if f.endswith("_0000.nii.gz"))
    return [os.path.join(images, f"{c}_0000.nii.gz") for c in generate_crossval_split(ids, 12345, 5)[0]["val"]]


def time_config(config, threads, table):
    """Run in a subprocess with ``nnUNet_def_n_proc=threads`` set before nnU-Net is imported; prints a JSON."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    torch.set_num_threads(os.cpu_count())  # as nnUNetv2_predict does on the CPU
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder(os.environ, config), (0,))
    cases = validation_cases(os.environ)
    io = SimpleITKIO()
    per_case = []
    for i, path in enumerate([cases[0]] + cases):
        img, props = io.read_images([path])
        t0 = time.perf_counter()
        predictor.predict_single_npy_array(img, props, None, None, False)
        if i:
            per_case.append(time.perf_counter() - t0)
    net = predictor.network.eval()
    patch = predictor.configuration_manager.patch_size
    x = torch.randn(1, 1, *patch)
    torch.set_num_threads(threads)
    forward = []
    with torch.inference_mode():
        for _ in range(10):
            net(x)
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(20):
                net(x)
            forward.append((time.perf_counter() - t0) / 20)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                net(x)
    operators = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    with open(os.path.join(RESULTS, f"{table}_profile_{config}_t{threads}.txt"), "w") as f:
        f.write(f"{config}: 20 forwards at batch 1, patch {list(patch)}, {threads} thread(s)\n{operators}\n")
    ops = sum(e.count for e in prof.key_averages() if not e.key.startswith("aten::empty")) / 20
    print(json.dumps({"config": config, "threads": threads, "patch": list(patch), "cases": len(per_case),
                      "per_case_median_s": statistics.median(per_case), "per_case_mean_s": statistics.mean(per_case),
                      "total_s": sum(per_case), "forward_ms": 1000 * statistics.median(forward),
                      "aten_calls_per_forward": round(ops),
                      "parameters": sum(p.numel() for p in net.parameters())}))


def time_command(env, config, threads, work):
    """``nnUNetv2_predict`` on the 40 validation cases, under GNU time."""
    inp = os.path.join(work, "val_images")
    if not os.path.isdir(inp):
        os.makedirs(inp)
        for path in validation_cases(env):
            os.symlink(path, os.path.join(inp, os.path.basename(path)))
    out = os.path.join(work, f"pred_{config}_t{threads}")
    tfile = os.path.join(work, f"pred_{config}_t{threads}.time")
    subprocess.run(["/usr/bin/time", "-v", "-o", tfile, "nnUNetv2_predict", "-i", inp, "-o", out, "-d", "4", "-c",
                    config, "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1",
                    "--disable_progress_bar"], env=dict(env, nnUNet_def_n_proc=str(threads)), check=True,
                   stdout=subprocess.DEVNULL)
    return parse_time_file(tfile)


def render_table(res):
    lines = ["| threads | configuration | parameters | conv feature maps (M elements, batch 1) | patch | forward "
             "(batch 1) | per case, median / mean (40 cases) | `nnUNetv2_predict`, 40 cases | found / nnU-Net "
             "per case |", "|---|---|---|---|---|---|---|---|---|"]
    for threads, rows in sorted(res["timings"].items()):
        base = rows[BASE]["per_case_mean_s"]
        for config in (BASE, FOUND):
            r = rows[config]
            ratio = f"**{r['per_case_mean_s'] / base:.2f}x**" if config == FOUND else ""
            lines.append(f"| {threads} | `{config}` | {r['parameters']:,} | {res['elements'][config] / 1e6:.3f} | "
                         f"{r['patch'][0]}x{r['patch'][1]} | {r['forward_ms']:.1f} ms | {r['per_case_median_s']:.2f}"
                         f" / {r['per_case_mean_s']:.2f} s | {r['command']['wall_s']:.0f} s | {ratio} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/hippo_infer")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--genotype", default=GENOTYPE, help="the found architecture timed (a genotype JSON)")
    ap.add_argument("--table", default="inference_speed",
                    help="tag of the results (benchmarks/results/TAG.json) and of BENCHMARKS.md's table markers")
    ap.add_argument("--update-benchmarks-md", action="store_true")
    ap.add_argument("--write-model", help=argparse.SUPPRESS)
    ap.add_argument("--time-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_model:
        return write_model(args.write_model)
    if args.time_config:
        return time_config(args.time_config, args.threads[0], args.table)
    genotype = os.path.abspath(args.genotype)
    if not os.path.isfile(genotype):
        raise SystemExit(f"--genotype {args.genotype}: no such file; give a found genotype JSON (e.g. a search's "
                         f"<method>_genotype.json).")
    env, add_arch_output = prepare(args.work, genotype)
    from nnunet_nas.nnunet.width import conv_output_elements
    res = {"machine": machine(), "genotype": os.path.relpath(genotype, REPO), "add_arch": add_arch_output.strip(),
           "timings": {}, "elements": {}}
    for threads in args.threads:
        rows = res["timings"].setdefault(str(threads), {})
        for config in (BASE, FOUND):
            print(f"[{config}, {threads} thread(s)] in-process per-case timing", flush=True)
            rows[config] = run_child([sys.executable, __file__, "--work", args.work, "--time-config", config,
                                      "--threads", str(threads), "--table", args.table],
                                     env=dict(env, nnUNet_def_n_proc=str(threads)))
            print(f"[{config}, {threads} thread(s)] nnUNetv2_predict", flush=True)
            rows[config]["command"] = time_command(env, config, threads, args.work)
            print(json.dumps(rows[config]), flush=True)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(os.path.join(env["nnUNet_preprocessed"], DATASET, "nnUNetPlans.json"))
    for config in (BASE, FOUND):
        cm = pm.get_configuration(config)
        res["elements"][config] = conv_output_elements(
            lambda: get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                           cm.network_arch_init_kwargs_req_import, 1, 3, allow_init=False,
                                           deep_supervision=True), 1, cm.patch_size)
    table = render_table(res)
    print(table)
    from nnunet_nas.io import atomic_write_text
    atomic_write_text(os.path.join(RESULTS, f"{args.table}.json"), json.dumps(res, indent=1))
    if args.update_benchmarks_md:
        update_markdown(os.path.join(REPO, "BENCHMARKS.md"), table, f"<!-- {args.table}:table:start -->",
                        f"<!-- {args.table}:table:end -->")


if __name__ == "__main__":
    main()
