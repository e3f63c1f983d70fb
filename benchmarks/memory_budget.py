#!/usr/bin/env python
"""Memory budget benchmark: does sigma mean what it says, and does the printed estimate match what training keeps?

Three seeded DiNTS searches on the generated 3-D dataset of ``nnunet_nas.demo.make_demo_dataset`` (16 cases of 40^3),
identical but for sigma = 0.2 / 0.5 / 0.8 (a share of the largest discrete architecture, the default
``memory_reference``), run through ``nnUNetv2_train`` on the CPU with ``nnUNet_n_proc_DA=0``. Each export is at the
same width (channel_mul 0.25), so memory differences come from the found architecture alone. For each exported
network the script measures the activations autograd keeps for one training step (CPU, fp32, the configuration's
patch and batch; ``nnunet_nas.arch.memory.saved_activation_elements``) and compares them with the estimate printed
at export (``batch * compute_conv_feature_map_size(patch) * 4`` bytes). Writes
``benchmarks/results/memory_budget.json``.

    python benchmarks/memory_budget.py [--work /tmp/nas_budget]
"""

import argparse
import json
import os
import subprocess
import time

from harness import REPO, machine_info

TRAINERS = {0.2: "nnUNetTrainerDiNTSBudget02", 0.5: "nnUNetTrainerDiNTSBudget05", 0.8: "nnUNetTrainerDiNTSBudget08"}
DATASET_ID = 989  # nnunet_nas.demo.SYNTHETIC_DATASET_ID
DATASET_NAME = f"Dataset{DATASET_ID}_NASDemo"


def run(cmd, env):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def measure(env, dataset, config):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_nas.arch.memory import saved_activation_elements
    from nnunet_nas.genotypes.grid import GridGenotype
    plans = json.load(open(os.path.join(env["nnUNet_preprocessed"], dataset, "nnUNetPlans.json")))
    c = dict(plans["configurations"]["3d_fullres"])
    c.update(plans["configurations"][config])
    arch = c["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                 allow_init=True, deep_supervision=True)
    torch.manual_seed(0)
    measured = saved_activation_elements(net, torch.randn(c["batch_size"], 1, *c["patch_size"])) * 4
    estimate = c["batch_size"] * net.compute_conv_feature_map_size(c["patch_size"]) * 4
    g = GridGenotype.from_dict(arch["arch_kwargs"]["genotype"])
    model = net.memory_model
    discrete_ratio = model.genotype_elements(g, c["patch_size"], 1) / (model.max_ratio() * model.full(c["patch_size"]))
    return {"configuration": config, "patch": c["patch_size"], "batch": c["batch_size"],
            "active_edges": int(g.arch_code_a.sum()), "ops": sorted({o for r in g.ops for o in r if o}),
            "parameters": sum(p.numel() for p in net.parameters()),
            "measured_activation_MiB": measured / 2 ** 20, "estimated_activation_MiB": estimate / 2 ** 20,
            "estimate_over_measured": estimate / measured, "discrete_memory_ratio": discrete_ratio}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/nas_budget")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "memory_budget.json"))
    args = p.parse_args()
    from nnunet_nas.demo import make_demo_dataset
    from nnunet_nas.nnunet.environment import nnunet_env
    env = nnunet_env(args.work, [os.path.join(REPO, "benchmarks", "trainers")], n_proc_DA=0)
    if not os.path.isdir(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME)):
        make_demo_dataset(env["nnUNet_raw"])
        plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}  # planning sets threads from it
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
            plan_env)
    rows = []
    for sigma, trainer in TRAINERS.items():
        fold = os.path.join(env["nnUNet_results"], DATASET_NAME, f"{trainer}__nnUNetPlans__3d_fullres", "fold_0")
        name = f"3d_fullres_budget{int(sigma * 10):02d}"
        t = time.time()
        if not os.path.isfile(os.path.join(fold, "checkpoint_final.pth")):
            run(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
        search_s = time.time() - t
        run(["nnunet-nas", "export", fold, "--name", name, "--channel-mul", "0.25", "--overwrite"], env)
        os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        row = {"sigma": sigma, "trainer": trainer, "search_s": round(search_s, 1)}
        row.update(measure(env, DATASET_NAME, name))
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = machine_info()
    result = {"machine": f"{info['platform']}, {info['cores']} cores, CPU only", "torch": info["torch"], "rows": rows,
              "measured_increasing": all(a["measured_activation_MiB"] < b["measured_activation_MiB"]
                                         for a, b in zip(rows, rows[1:]))}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
