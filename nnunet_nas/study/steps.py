"""A study as a graph of nnU-Net commands: plan, baselines, searches, retrainings of the found configurations on
every fold, model selection, prediction of the test images with the winner. Every step is one command a user could
type; its name says what it makes, ``deps`` what must have finished before it."""

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from nnunet_nas.nnunet.export import EXPORT_NAME_ENV
from nnunet_nas.nnunet.host import HOST_ENV
from nnunet_nas.registry import get_method
from nnunet_nas.study.settings import DatasetFacts, StudySettings

PLAN = "plan"  # the planning step's name
VALIDATED_KINDS = ("baseline", "train", "control")  # trainings with nnU-Net's validation (--npz)
TRAINING_KINDS = VALIDATED_KINDS + ("search",)  # steps that run nnUNetv2_train
MACHINE_OPTIONS = ("-device", "-num_gpus")  # where a step runs, not what it computes: not in its fingerprint


@dataclass
class Step:
    name: str
    kind: str  # plan, config, baseline, search, train, select, predict
    command: List[str]
    deps: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    fold_folder: Optional[str] = None  # nnU-Net's output folder of a training (resumed with --c)
    configuration: Optional[str] = None  # the configuration a training trains
    fold: Optional[int] = None

    def settings(self) -> dict:
        """What the step computes from: its command less where it runs, and the environment it adds."""
        cmd, skip = [], False
        for word in self.command:
            if skip:
                skip = False
            elif word in MACHINE_OPTIONS:
                skip = True
            else:
                cmd.append(word)
        return {"command": cmd, "env": self.env}

    def fingerprint(self, dep_prints: Dict[str, str]) -> str:
        """The step's settings and its dependencies' fingerprints: a retraining is stale when its search changed.
        Planning is left out: it runs only while the dataset is not planned, and what it made is nnU-Net's plans
        file, which a training's own command names."""
        deps = {d: dep_prints[d] for d in sorted(self.deps) if d != PLAN}
        blob = json.dumps({"own": self.settings(), "deps": deps}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (prefix + " " if prefix else "") + " ".join(shlex.quote(w) for w in self.command)


def found_configuration(configuration: str, method: str, tag: Optional[str] = None) -> str:
    """The name a study pins for the configuration ``method``'s search on ``configuration`` registers."""
    return f"{configuration}_{method}" + (f"_{tag}" if tag else "")


def control_configuration(found: str) -> str:
    """The fair control of a found configuration that builds on a trained model (IAC): the planned network
    fine-tuned from the same model as long, without cells."""
    return f"{found}_control"


def random_configuration(found: str, seed: int) -> str:
    """The random-architecture control ``seed`` of a found configuration: a random architecture of the same search's
    space, registered by the same export (``nnunet-nas export --random``: same geometry, width rule, trained start)."""
    return f"{found}_random{seed}"


def repeat_configuration(configuration: str, tag: Optional[str] = None) -> str:
    """The copy of ``configuration`` a second baseline run trains under (nnU-Net keys its models by name)."""
    return f"{configuration}_repeat2" + (f"_{tag}" if tag else "")


def model_folder(facts: DatasetFacts, trainer: str, plans: str, configuration: str) -> str:
    return os.path.join(os.environ["nnUNet_results"], facts.name, f"{trainer}__{plans}__{configuration}")


def _device(s: StudySettings, num_gpus: bool) -> List[str]:
    out = [] if s.device == "cuda" else ["-device", s.device]
    if num_gpus and s.num_gpus_per_training > 1:
        out += ["-num_gpus", str(s.num_gpus_per_training)]
    return out


def build_steps(s: StudySettings, facts: DatasetFacts, search_trainers: Dict[str, str]) -> List[Step]:
    """Every step before model selection's outcome is known, in an order that respects ``deps``."""
    d = facts.name
    steps: List[Step] = []
    plan = []
    if not facts.planned:
        rename = [] if s.plans == "nnUNetPlans" else ["-overwrite_plans_name", s.plans]
        dataset_id = str(int(d[len("Dataset"):len("Dataset") + 3]))  # planning takes ids only
        steps.append(Step(PLAN, "plan", ["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", *s.configurations,
                                           "-np", *[str(s.processes)] * len(s.configurations), "-npfp",
                                           str(s.processes), "--verify_dataset_integrity", *rename]))
        plan = [PLAN]
    trainings: Dict[str, List[str]] = {}  # configuration -> its training steps
    for c in s.configurations:
        names = [c]
        if s.baseline_repeats == 2:
            r = repeat_configuration(c, s.tag)
            steps.append(Step(f"config/{r}", "config", ["nnunet-nas", "add-config", d, c, r, "-p", s.plans],
                              deps=list(plan), configuration=r))
            names.append(r)
        for name in names:
            for f in s.folds:
                deps = plan if name == c else [f"config/{name}"]
                steps.append(_training(s, facts, name, f, "baseline", deps))
                trainings.setdefault(name, []).append(steps[-1].name)
        for method in s.methods:
            found = found_configuration(c, method, s.tag)
            env = {EXPORT_NAME_ENV: found}
            deps = list(plan)
            on_host = get_method(method).trained_host  # IAC builds on the baseline: its fold's, in every fold
            if on_host:
                env[HOST_ENV] = model_folder(facts, s.trainer, s.plans, c)
                deps.append(f"baseline/{c}/fold_{s.fold_of_search}")
            search = Step(f"search/{method}/{c}", "search",
                          ["nnUNetv2_train", d, c, str(s.fold_of_search), "-tr", search_trainers[method], "-p",
                           s.plans, *_device(s, True)], deps=deps, env=env,
                          fold_folder=os.path.join(model_folder(facts, search_trainers[method], s.plans, c),
                                                   f"fold_{s.fold_of_search}"), configuration=c, fold=s.fold_of_search)
            steps.append(search)
            for f in s.folds:
                deps = [search.name] + ([f"baseline/{c}/fold_{f}"] if on_host else [])
                steps.append(_training(s, facts, found, f, "train", deps))
                trainings.setdefault(found, []).append(steps[-1].name)
            for seed in range(s.random_controls):  # for the report, as the controls below
                random = random_configuration(found, seed)
                steps.append(Step(f"config/{random}", "config",
                                  ["nnunet-nas", "export", search.fold_folder, "--random", str(seed), "--name", random,
                                   "--overwrite"], deps=[search.name], configuration=random))
                for f in s.folds:
                    steps.append(_training(s, facts, random, f, "control",
                                           [f"config/{random}"] + ([f"baseline/{c}/fold_{f}"] if on_host else [])))
            if on_host:  # its fair control, for the report (not a candidate of model selection)
                control = control_configuration(found)
                steps.append(Step(f"config/{control}", "config",
                                  ["nnunet-nas", "add-config", d, c, control, "-p", s.plans, "--trained-start",
                                   s.trainer], deps=list(plan), configuration=control))
                for f in s.folds:
                    steps.append(_training(s, facts, control, f, "control",
                                           [f"config/{control}", f"baseline/{c}/fold_{f}"]))
    selected = [n for n in trainings if not any(n == repeat_configuration(c, s.tag) for c in s.configurations)]
    steps.append(Step("select", "select",
                      ["nnUNetv2_find_best_configuration", d, "-c", *selected, "-tr", s.trainer, "-p", s.plans,
                       "-f", *map(str, s.folds), "-np", str(s.processes)],
                      deps=[t for n in selected for t in trainings[n]]))
    return steps


def _training(s: StudySettings, facts: DatasetFacts, configuration: str, fold: int, kind: str, deps) -> Step:
    return Step(f"{kind}/{configuration}/fold_{fold}", kind,
                ["nnUNetv2_train", facts.name, configuration, str(fold), "-tr", s.trainer, "-p", s.plans, "--npz",
                 *_device(s, True)], deps=list(deps),
                fold_folder=os.path.join(model_folder(facts, s.trainer, s.plans, configuration), f"fold_{fold}"),
                configuration=configuration, fold=fold)


def prediction_steps(s: StudySettings, facts: DatasetFacts, selection: dict, out_root: str) -> List[Step]:
    """The test images predicted with what model selection chose, as nnU-Net's ``inference_instructions.txt``
    says: each selected model (with probabilities where an ensemble won), the ensemble, the postprocessing."""
    from nnunetv2.evaluation.find_best_configuration import generate_inference_command
    best = selection["best_model_or_ensemble"]
    models = best["selected_model_or_models"]
    ensemble = len(models) > 1
    steps, outs = [], []
    for m in models:
        out = os.path.join(out_root, f"{m['trainer']}__{m['plans_identifier']}__{m['configuration']}")
        cmd = shlex.split(generate_inference_command(facts.name, m["configuration"], m["plans_identifier"],
                                                     m["trainer"], selection["folds"], input_folder=s.test,
                                                     output_folder=out, save_npz=ensemble))
        cmd += ["-npp", str(s.processes), "-nps", str(s.processes)] + _device(s, False)
        steps.append(Step(f"predict/{m['configuration']}", "predict", cmd, deps=["select"]))
        outs.append(out)
    last = outs[0]
    if ensemble:
        last = os.path.join(out_root, "ensemble")
        steps.append(Step("predict/ensemble", "predict", ["nnUNetv2_ensemble", "-i", *outs, "-o", last, "-np",
                                                          str(s.processes)], deps=[x.name for x in steps]))
    steps.append(Step("predict/postprocess", "predict",
                      ["nnUNetv2_apply_postprocessing", "-i", last, "-o", os.path.join(out_root, "final"),
                       "-pp_pkl_file", best["postprocessing_file"], "-np", str(s.processes), "-plans_json",
                       best["some_plans_file"]], deps=[steps[-1].name]))
    return steps
