"""``nnunet-nas run``: check everything, lay the study out as steps, run what is not done yet (resuming what was
cut off), select the model with nnU-Net's ``find_best_configuration`` over what finished, predict the test images
with the winner, write the report.

A step is skipped when the ledger says it finished with the same settings and its outputs are on disk; a finished
nnU-Net training found on disk that the ledger does not know (trained before the study) is adopted; a step whose
settings changed since it ran is redone only with ``--redo-changed`` (its old model folder is moved aside, never
deleted); model selection and prediction are redone whenever what they read changed."""

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from typing import Dict, List

from nnunet_nas.errors import UserError
from nnunet_nas.io import atomic_write_text
from nnunet_nas.study.executor import BLOCKED, LocalExecutor, _clock
from nnunet_nas.study.ledger import DONE, FAILED, Ledger
from nnunet_nas.study.resume import command_to_run
from nnunet_nas.study.settings import (DatasetFacts, StudySettings, check_settings, check_trainers,
                                      study_trainer_folders)
from nnunet_nas.study.steps import (TRAINING_KINDS, VALIDATED_KINDS, Step, build_steps, model_folder,
                                    prediction_steps)

RUN_MARKER = ".nnunet_nas_run"
DERIVED_KINDS = ("config", "select", "predict")  # cheap, and read what others made: redone when they change
LOG = "[nnunet-nas run]"


def fingerprints(steps: List[Step]) -> Dict[str, str]:
    prints: Dict[str, str] = {}
    for step in steps:  # deps come first
        prints[step.name] = step.fingerprint(prints)
    return prints


def outputs_exist(step: Step, facts: DatasetFacts, run_dir: str) -> bool:
    """Whether what ``step`` makes is on disk (a training's final checkpoint and its validation with
    probabilities; a search's checkpoint and the configuration it registers; a plan's plans file)."""
    from nnunet_nas.nnunet.export import EXPORT_NAME_ENV
    from nnunet_nas.nnunet.plans_io import load_plans
    if step.kind == "plan":
        return os.path.isfile(facts.plans_path)
    if step.kind == "config":
        return os.path.isfile(facts.plans_path) and step.configuration in load_plans(facts.plans_path)["configurations"]
    if step.kind in VALIDATED_KINDS:
        validation = os.path.join(step.fold_folder, "validation")
        return (os.path.isfile(os.path.join(step.fold_folder, "checkpoint_final.pth"))
                and os.path.isfile(os.path.join(validation, "summary.json"))
                and any(f.endswith(".npz") for f in os.listdir(validation)))
    if step.kind == "search":
        return (os.path.isfile(os.path.join(step.fold_folder, "checkpoint_final.pth"))
                and os.path.isfile(facts.plans_path)
                and step.env[EXPORT_NAME_ENV] in load_plans(facts.plans_path)["configurations"])
    if step.kind == "select":
        return os.path.isfile(os.path.join(run_dir, "selection", "inference_information.json"))
    return True  # predictions: the ledger's word


def study_env() -> dict:
    """This process's environment with our trainer shims added to the user's ``nnUNet_extTrainer`` entries."""
    env = dict(os.environ)
    env["nnUNet_extTrainer"] = study_trainer_folders()
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def prepare_run_dir(run_dir: str) -> None:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"--run-dir {run_dir} is a file; give a folder.")
    entries = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    if entries and RUN_MARKER not in entries:
        raise UserError(f"--run-dir {run_dir} is not empty and is not a run folder of nnunet-nas run; give a new or "
                        f"empty folder.")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, RUN_MARKER), "w") as f:
        f.write("a run folder of nnunet-nas run\n")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("nnunet_nas", "nnunetv2", "torch", "dynamic_network_architectures", "batchgenerators", "monai"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def check_names(s: StudySettings, facts: DatasetFacts, steps: List[Step], ledger: Ledger) -> None:
    """The configurations the study registers must be new or its own: never replace what an earlier search or a
    user registered under the same name."""
    from nnunet_nas.nnunet.export import EXPORT_NAME_ENV
    from nnunet_nas.nnunet.plans_io import load_plans
    if not os.path.isfile(facts.plans_path):
        return
    configs = load_plans(facts.plans_path)["configurations"]
    for step in steps:
        name = step.env.get(EXPORT_NAME_ENV) if step.kind == "search" else (
            step.configuration if step.kind == "config" else None)
        if name in configs and ledger.get(step.name) is None and not os.path.isfile(
                os.path.join(step.fold_folder or "", "checkpoint_final.pth")):
            raise UserError(f"configuration {name!r} already exists in {facts.plans_path} and was not made by this "
                            f"study (run folder {ledger.path}); the study would replace it. Pass --tag NAME to name "
                            f"this study's configurations {name}_NAME, or use the run folder that made it.")


def decide(steps: List[Step], prints: Dict[str, str], ledger: Ledger, facts: DatasetFacts, run_dir: str,
           log) -> tuple:
    """``(todo, changed)``: the steps to run (name -> command) and those whose settings changed since they ran."""
    todo, changed = {}, []
    for step in steps:
        record = ledger.get(step.name)
        here = outputs_exist(step, facts, run_dir)
        if record is not None and record.get("status") == DONE:
            if record.get("fingerprint") != prints[step.name]:
                changed.append(step.name)
                todo[step.name] = list(step.command)
            elif not here:
                todo[step.name] = command_to_run(step)
        elif record is None and here and step.kind in TRAINING_KINDS + ("plan", "config"):
            ledger.update(step.name, status=DONE, fingerprint=prints[step.name], command=step.command,
                          adopted=True)
            log(f"{LOG} {step.name}: found finished on disk ({step.fold_folder or facts.plans_path}); reused")
        else:
            todo[step.name] = command_to_run(step)
    return todo, changed


def move_aside(step: Step, facts: DatasetFacts, s: StudySettings, log) -> None:
    """Before a changed training or search is redone: its old fold folder (and, for a search, the models trained
    from the configuration it registered) moved to ``*.stale-<time>``."""
    from nnunet_nas.nnunet.export import EXPORT_NAME_ENV
    folders = [step.fold_folder] if step.fold_folder else []
    if step.kind == "search":
        folders.append(model_folder(facts, s.trainer, s.plans, step.env[EXPORT_NAME_ENV]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in folders:
        if os.path.isdir(folder):
            os.rename(folder, f"{folder}.stale-{stamp}")
            log(f"{LOG} {step.name}: settings changed; the old {folder} moved to {folder}.stale-{stamp}")


def run_study(s: StudySettings, dry_run: bool = False, redo_changed: bool = False, log=print) -> dict:
    facts = check_settings(s)
    search_trainers = check_trainers(s)
    run_dir = os.path.abspath(s.run_dir or f"nnunet_nas_run_{facts.name}")
    steps = build_steps(s, facts, search_trainers)
    prints = fingerprints(steps)
    ledger = Ledger(run_dir) if os.path.isfile(os.path.join(run_dir, "ledger.json")) else None
    if dry_run:
        for line in dry_run_lines(s, facts, steps, prints, ledger, run_dir):
            log(line)
        return {}
    prepare_run_dir(run_dir)
    with run_folder_lock(run_dir):
        return _run(s, facts, search_trainers, run_dir, steps, prints, ledger or Ledger(run_dir), redo_changed, log)


@contextlib.contextmanager
def run_folder_lock(run_dir: str):
    """One ``nnunet-nas run`` per run folder at a time (released when the process ends, however it ends)."""
    import filelock
    lock = filelock.FileLock(os.path.join(run_dir, ".lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise UserError(f"another nnunet-nas run is using {run_dir}; wait for it to end (or stop it) before "
                        f"starting this one.") from None
    try:
        yield
    finally:
        lock.release()


def _run(s, facts, search_trainers, run_dir, steps, prints, ledger, redo_changed, log) -> dict:
    check_names(s, facts, steps, ledger)
    todo, changed = decide([st for st in steps if st.kind != "select"], prints, ledger, facts, run_dir, log)
    costly = [n for n in changed if next(st for st in steps if st.name == n).kind not in DERIVED_KINDS]
    if costly and not redo_changed:
        raise UserError(f"the settings of {len(costly)} finished step(s) changed since they ran ({', '.join(costly)}"
                        f"); nothing was run. Pass --redo-changed to redo them (their old models are moved aside), "
                        f"or run the old settings again (their record: {ledger.path}).")
    record_study(run_dir, s, facts, steps, search_trainers)
    for name in costly:
        move_aside(next(st for st in steps if st.name == name), facts, s, log)
        todo[name] = list(next(st for st in steps if st.name == name).command)
    executor = make_executor(s, run_dir, ledger, log)
    log(f"{LOG} run folder {run_dir}: {len(todo)} of {len(steps) - 1} steps to run before model selection "
        f"({describe_executor(s)})")
    status = executor.run([st for st in steps if st.kind != "select"], prints, todo)
    status.update(select_and_predict(s, facts, steps, status, ledger, executor, run_dir, log))
    return finish(s, run_dir, steps, status, ledger, log)


def make_executor(s: StudySettings, run_dir: str, ledger: Ledger, log):
    if s.executor in ("slurm", "submitit-local"):
        from nnunet_nas.study.slurm import SlurmExecutor, SubmititLocalExecutor
        options = {"partition": s.slurm_partition, "time": s.slurm_time, "cpus_per_task": s.slurm_cpus,
                   "mem": s.slurm_mem_gb}
        if s.executor == "slurm":
            return SlurmExecutor(run_dir, ledger, study_env(), options, s.num_gpus_per_training, log)
        return SubmititLocalExecutor(run_dir, ledger, study_env(), options, s.num_gpus_per_training, log,
                                     at_once=s.parallel or 1)
    return LocalExecutor(run_dir, ledger, study_env(), _slots(s), log)


def describe_executor(s: StudySettings) -> str:
    if s.executor == "slurm":
        return "each a SLURM job"
    if s.executor == "submitit-local":
        return f"each a job of submitit's local executor, {s.parallel or 1} at a time"
    slots = _slots(s)
    return "one at a time" if len(slots) == 1 else f"{len(slots)} side by side"


def _slots(s: StudySettings):
    if not s.gpus:
        return [None] * (s.parallel or 1)
    k = s.num_gpus_per_training
    return [",".join(s.gpus[i:i + k]) for i in range(0, len(s.gpus), k)]


def select_and_predict(s, facts, steps, status, ledger, executor, run_dir, log) -> Dict[str, str]:
    """Model selection over the configurations whose every fold finished (saying what is missing), then the test
    images predicted with the winner."""
    select = next(st for st in steps if st.kind == "select")
    trainings = [st for st in steps if st.kind in ("baseline", "train") and st.name in select.deps]
    configs = list(dict.fromkeys(st.configuration for st in trainings))
    complete = [c for c in configs if all(status.get(st.name) == DONE for st in trainings if st.configuration == c)]
    missing = [c for c in configs if c not in complete]
    out: Dict[str, str] = {}
    if not complete:
        log(f"{LOG} model selection skipped: no configuration finished all its folds")
        return {select.name: BLOCKED}
    if missing:
        log(f"{LOG} model selection over {complete} only: {missing} did not finish every fold")
        at = select.command.index("-c")
        end = select.command.index("-tr")
        select = dataclasses.replace(select, command=select.command[:at + 1] + complete + select.command[end:],
                                     deps=[st.name for st in trainings if st.configuration in complete])
    prints = {d: ledger.get(d)["fingerprint"] for d in select.deps}
    prints[select.name] = select.fingerprint(prints)
    todo = {} if ledger.done(select.name, prints[select.name]) and outputs_exist(select, facts, run_dir) else \
        {select.name: select.command}
    out.update(executor.run([select], prints, todo, done_before=select.deps))
    if out[select.name] != DONE:
        return out
    results = os.path.join(os.environ["nnUNet_results"], facts.name)
    target = os.path.join(run_dir, "selection")
    if todo:
        os.makedirs(target, exist_ok=True)
        for f in ("inference_information.json", "inference_instructions.txt"):
            shutil.copy(os.path.join(results, f), os.path.join(target, f))
    if s.test is None:
        return out
    with open(os.path.join(target, "inference_information.json")) as f:
        selection = json.load(f)
    predict = prediction_steps(s, facts, selection, os.path.join(run_dir, "test_predictions"))
    p_prints = {select.name: prints[select.name]}
    for st in predict:
        p_prints[st.name] = st.fingerprint(p_prints)
    p_todo = {st.name: st.command for st in predict if not ledger.done(st.name, p_prints[st.name])}
    out.update(executor.run(predict, p_prints, p_todo, done_before=[select.name]))
    return out


def record_study(run_dir, s, facts, steps, search_trainers) -> None:
    """What the run is, for the report and for a user reproducing it: the resolved settings, the package versions,
    every step's command and dependencies."""
    atomic_write_text(os.path.join(run_dir, "settings.json"), json.dumps(s.to_dict(), indent=1))
    atomic_write_text(os.path.join(run_dir, "versions.json"), json.dumps(versions(), indent=1))
    study = {"dataset": facts.name, "labels": facts.labels, "search_fold": s.fold_of_search, "folds": s.folds,
             "trainer": s.trainer, "plans": s.plans, "configurations": s.configurations,
             "search_trainers": search_trainers, "device": s.device, "gpus_per_training": s.num_gpus_per_training,
             "steps": [dict(dataclasses.asdict(st), shell=st.shell()) for st in steps]}
    atomic_write_text(os.path.join(run_dir, "study.json"), json.dumps(study, indent=1))
    with open(os.path.join(run_dir, "commands.sh"), "w") as f:
        f.write("# the study's steps in order (nnunet-nas run writes this; the test predictions follow model "
                "selection as selection/inference_instructions.txt says)\n")
        for st in steps:
            f.write(st.shell() + "\n")


def finish(s, run_dir, steps, status, ledger, log) -> dict:
    from nnunet_nas.study.report import write_report
    failed = [n for n, v in status.items() if v == FAILED]
    blocked = [n for n, v in status.items() if v == BLOCKED]
    try:
        report = write_report(run_dir)
        log(f"{LOG} report: {report}")
    except Exception as e:  # noqa: BLE001 - a report must not hide what the run did
        log(f"{LOG} the report could not be written ({type(e).__name__}: {e}); nnunet-nas report {run_dir} "
            f"retries it")
    for name in failed:
        record = ledger.get(name)
        log(f"{LOG} FAILED {name}: its log {record.get('log')}; rerun the same nnunet-nas run command to retry it "
            f"(finished steps are kept), or by hand: {' '.join(record.get('command', []))}")
    if blocked:
        log(f"{LOG} not run because a step they need failed: {', '.join(blocked)}")
    if not failed and not blocked:
        log(f"{LOG} every step finished")
    return status


def dry_run_lines(s, facts, steps, prints, ledger, run_dir) -> List[str]:
    lines = [f"{LOG} dry run: {len(steps)} steps in this order, then (with --test) the winner's predictions as "
             f"nnU-Net's inference_instructions.txt says. Run folder {run_dir}."]
    for i, st in enumerate(steps, 1):
        record = ledger.get(st.name) if ledger else None
        state = ("done" if record and record.get("status") == DONE and record.get("fingerprint") == prints[st.name]
                 else "settings changed: would be redone (--redo-changed)" if record and record.get("status") == DONE
                 else (record or {}).get("status", "to run"))
        lines.append(f"[{i:>2}] {st.name}  ({state}; after: {', '.join(st.deps) or 'nothing'})")
        lines.append(f"      {st.shell()}")
    trainings = [st for st in steps if st.kind in TRAINING_KINDS]
    kinds = [st.kind for st in steps]
    controls = f", {counted(kinds.count('control'), 'control')}" if "control" in kinds else ""
    lines.append(f"{LOG} {counted(len(trainings), 'training')} ({kinds.count('baseline')} baseline, "
                 f"{counted(kinds.count('search'), 'search', 'searches')}, {kinds.count('train')} of found "
                 f"configurations{controls}); {time_estimate(trainings, ledger)}; {disk_estimate(s, facts, steps)}")
    return lines


def counted(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def time_estimate(trainings: List[Step], ledger) -> str:
    seconds = [ledger.get(st.name).get("seconds") for st in trainings if ledger and ledger.get(st.name)
               and ledger.get(st.name).get("status") == DONE and ledger.get(st.name).get("seconds")]
    if not seconds:
        return "time: unknown until a training finishes (each runs the trainer's whole schedule)"
    left = sum(1 for st in trainings if not (ledger.get(st.name) or {}).get("status") == DONE)
    mean = sum(seconds) / len(seconds)
    return f"time: about {_clock(mean * left)} left at {_clock(mean)} per training measured so far"


def disk_estimate(s: StudySettings, facts: DatasetFacts, steps: List[Step]) -> str:
    """The ``--npz`` probabilities the trainings' validations write: cases x classes x voxels (the configuration's
    median image) x 4 bytes, before compression."""
    if not facts.planned:
        return "disk: known once planned"
    from nnunet_nas.io import read_json
    from nnunet_nas.nnunet.plans_io import load_plans
    plans = load_plans(facts.plans_path)
    cases = read_json(os.path.join(os.path.dirname(facts.plans_path), "dataset.json"), "dataset.json").get(
        "numTraining", 0)
    total = 0
    for st in steps:
        if st.kind in VALIDATED_KINDS:
            base = next(c for c in s.configurations if st.configuration.startswith(c))
            voxels = 1
            for v in plans["configurations"][base].get("median_image_size_in_voxels", [0]):
                voxels *= v
            total += cases / facts.num_folds * len(facts.labels) * voxels * 4
    return f"disk: about {total / 2 ** 30:.1f} GiB of --npz validation probabilities (before compression)"
