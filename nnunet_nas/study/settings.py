"""What a study runs: the settings of ``nnunet-nas run`` from its options and an optional config file, checked
against the registry, nnU-Net's folders and the dataset before any work starts (one error naming the problem and
the fix)."""

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from nnunet_nas.errors import EnvironmentSetupError, UserError

NNUNET_PLANNED_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")  # what nnUNetv2_plan_and_preprocess -c makes


EXECUTORS = ("local", "slurm", "submitit-local")


@dataclass
class StudySettings:
    dataset: str
    methods: List[str]
    configurations: List[str] = field(default_factory=lambda: ["3d_fullres"])
    folds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    search_fold: Optional[int] = None  # None: the first of folds
    trainer: str = "nnUNetTrainer"  # every baseline and every retraining
    search_trainers: Dict[str, str] = field(default_factory=dict)  # method -> trainer; default: the method's own
    plans: str = "nnUNetPlans"
    test: Optional[str] = None  # a folder of images to predict with the winner
    baseline_repeats: int = 1
    random_controls: int = 0  # random architectures of each search's space trained beside its found one
    device: str = "cuda"
    gpus: List[str] = field(default_factory=list)  # local executor: one step per GPU at a time
    parallel: Optional[int] = None  # steps side by side without --gpus (default 1: CPU machines)
    num_gpus_per_training: int = 1
    processes: int = 1  # nnU-Net's -np of model selection, ensembling and postprocessing
    run_dir: Optional[str] = None  # None: ./nnunet_nas_run_<dataset>
    tag: Optional[str] = None  # appended to the names of the configurations the study registers
    executor: str = "local"  # or slurm: every step a SLURM job (submitit); submitit-local: submitit's jobs here
    slurm_partition: Optional[str] = None
    slurm_time: Optional[int] = None  # minutes per job
    slurm_cpus: Optional[int] = None  # per job
    slurm_mem_gb: Optional[float] = None  # per job

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_sources(cls, options: dict, config_file: Optional[str] = None) -> "StudySettings":
        """The settings from a config file (YAML or JSON, keys as the options' long names) and the options given on
        the command line (which win; ``None`` means not given)."""
        values = read_config_file(config_file) if config_file else {}
        values.update({k: v for k, v in options.items() if v is not None})
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UserError(f"{config_file or 'the options'}: unknown setting(s) {unknown}; known: "
                            f"{cls.field_names()}.")
        if "dataset" not in values or "methods" not in values:
            raise UserError("nnunet-nas run needs a DATASET and --methods (on the command line or in --config).")
        if isinstance(values.get("search_trainers"), list):
            values["search_trainers"] = parse_pairs(values["search_trainers"], "--search-trainer")
        for key in ("methods", "configurations", "gpus"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
        values["dataset"] = str(values["dataset"])
        values["gpus"] = [str(g) for g in values.get("gpus", [])]
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def fold_of_search(self) -> int:
        return self.folds[0] if self.search_fold is None else self.search_fold


def read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"--config {path}: no such file.")
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"--config {path} could not be read ({type(e).__name__}: {e}); give a YAML (.yaml) or JSON "
                        f"file of settings.") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} holds no mapping of settings.")
    return {k.replace("-", "_"): v for k, v in values.items()}


def parse_pairs(pairs: List[str], option: str) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key or not value:
            raise UserError(f"{option} {pair!r}: write METHOD=TRAINER, e.g. dints=nnUNetTrainerDiNTSSearchDemo.")
        out[key] = value
    return out


@dataclass
class DatasetFacts:
    """What the checks learned about the dataset: its nnU-Net name, whether it is planned, its plans file, the
    number of folds of its split and the channels and file ending of its images."""
    name: str
    planned: bool
    plans_path: str
    num_folds: int
    num_channels: int
    file_ending: str
    labels: dict


def check_settings(s: StudySettings) -> DatasetFacts:
    """Every check that needs no training, in the order a user would fix them; returns what they learned."""
    from nnunet_nas.registry import method_names
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(var):
            raise EnvironmentSetupError(f"{var} is not set; nnunet-nas run uses nnU-Net's folders. Set nnUNet_raw, "
                                        f"nnUNet_preprocessed and nnUNet_results as for nnUNetv2_train.")
    unknown = [m for m in s.methods if m not in method_names()]
    if unknown or not s.methods:
        raise UserError(f"--methods {unknown or s.methods}: unknown; the registered methods are {method_names()}.")
    if len(set(s.methods)) != len(s.methods):
        raise UserError(f"--methods {s.methods} names a method twice.")
    stray = sorted(set(s.search_trainers) - set(s.methods))
    if stray:
        raise UserError(f"--search-trainer names {stray}, which --methods {s.methods} does not run.")
    if s.device not in ("cuda", "cpu", "mps"):
        raise UserError(f"-device {s.device!r}: nnU-Net knows cuda, cpu and mps.")
    counts = ("baseline_repeats", "num_gpus_per_training", "processes")
    for key in counts + (("parallel",) if s.parallel is not None else ()):
        if not isinstance(getattr(s, key), int) or getattr(s, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} {getattr(s, key)!r} must be a whole number of at least 1.")
    if s.gpus and len(s.gpus) % s.num_gpus_per_training:
        raise UserError(f"--gpus {s.gpus} cannot be split into sets of --num-gpus-per-training "
                        f"{s.num_gpus_per_training}.")
    if not isinstance(s.random_controls, int) or s.random_controls < 0:
        raise UserError(f"--random-controls {s.random_controls!r} must be a whole number of at least 0 (random "
                        f"architectures per search, trained beside the found one).")
    if s.baseline_repeats > 2:
        raise UserError(f"--baseline-repeats {s.baseline_repeats}: 1 or 2 (a second run shows the baseline's own "
                        f"run-to-run spread).")
    if s.executor not in EXECUTORS:
        raise UserError(f"--executor {s.executor!r}: local (this machine), slurm, or submitit-local (submitit's "
                        f"jobs on this machine).")
    if s.executor != "local":
        from nnunet_nas.study.slurm import require_submitit
        require_submitit()
    if s.executor == "submitit-local" and s.gpus:
        raise UserError("--gpus places steps with the local executor; submitit-local runs --parallel steps at a time "
                        "on the GPUs this process sees (--num-gpus-per-training each).")
    if s.executor == "slurm":
        if not s.slurm_time or s.slurm_time < 1:
            raise UserError("--executor slurm needs --slurm-time MINUTES, each job's time limit (submitit's default is "
                            "5 minutes; nnU-Net's 1000-epoch training takes about a day or two on one GPU, and a "
                            "training cut off by its limit continues with --c when the run is started again).")
        if s.gpus or s.parallel:
            raise UserError("--gpus and --parallel place steps on this machine; with --executor slurm SLURM places "
                            "them (--num-gpus-per-training sets each training's GPUs).")
    facts = dataset_facts(s)
    if not s.folds or any(not isinstance(f, int) or isinstance(f, bool) for f in s.folds):
        raise UserError(f"--folds {s.folds}: give fold numbers, e.g. --folds 0 1 2 3 4.")
    bad = [f for f in s.folds if not 0 <= f < facts.num_folds]
    if bad or len(set(s.folds)) != len(s.folds):
        raise UserError(f"--folds {s.folds}: {facts.name} has folds 0 to {facts.num_folds - 1} "
                        f"({'splits_final.json' if facts.planned else 'nnU-Net splits 5 folds'}); each fold once.")
    if s.fold_of_search not in s.folds:
        raise UserError(f"--search-fold {s.fold_of_search} is not among --folds {s.folds}: the search fold must be "
                        f"one the study trains (its validation cases are the clean comparison).")
    if s.tag is not None and not re.fullmatch(r"[A-Za-z0-9]+", str(s.tag)):
        raise UserError(f"--tag {s.tag!r}: letters and digits only (it becomes part of configuration names).")
    check_configurations(s, facts)
    if s.test is not None:
        check_test_folder(s.test, facts)
    return facts


def dataset_facts(s: StudySettings) -> DatasetFacts:
    from nnunet_nas.io import read_json
    from nnunet_nas.nnunet.plans_io import plans_file
    try:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        name = maybe_convert_to_dataset_name(s.dataset)
    except (RuntimeError, ValueError):
        raise UserError(f"dataset {s.dataset!r} is neither planned (nnUNet_preprocessed) nor in nnUNet_raw; put it "
                        f"in nnUNet_raw in nnU-Net's layout (DatasetXXX_Name with dataset.json, imagesTr, "
                        f"labelsTr) or give the id of a planned dataset.") from None
    preprocessed = os.path.join(os.environ["nnUNet_preprocessed"], name)
    plans_path = os.path.join(preprocessed, f"{s.plans}.json")
    planned = os.path.isfile(plans_path)
    if planned:
        plans_path = plans_file(preprocessed, s.plans)
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    source = os.path.join(preprocessed if planned else raw, "dataset.json")
    if not os.path.isfile(source):
        raise UserError(f"{name}: {source} is missing; the dataset needs nnU-Net's dataset.json.")
    dataset_json = read_json(source, "nnU-Net's dataset.json")
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    splits = os.path.join(preprocessed, "splits_final.json")
    num_folds = len(read_json(splits, "nnU-Net's splits_final.json", list)) if os.path.isfile(splits) else 5
    return DatasetFacts(name, planned, plans_path, num_folds, len(channels), dataset_json.get("file_ending", ""),
                        dataset_json.get("labels", {}))


def check_configurations(s: StudySettings, facts: DatasetFacts) -> None:
    if not s.configurations:
        raise UserError("-c: name at least one configuration, e.g. -c 3d_fullres.")
    if facts.planned:
        from nnunet_nas.nnunet.plans_io import load_plans
        known = load_plans(facts.plans_path)["configurations"]
        missing = [c for c in s.configurations if c not in known]
        if missing:
            raise UserError(f"-c {missing}: not in {facts.plans_path} (it has {sorted(known)}); plan them with "
                            f"nnUNetv2_plan_and_preprocess -d {facts.name} -c ..., or pick one of these.")
    else:
        odd = [c for c in s.configurations if c not in NNUNET_PLANNED_CONFIGURATIONS]
        if odd:
            raise UserError(f"-c {odd}: {facts.name} is not planned yet and nnUNetv2_plan_and_preprocess makes only "
                            f"{list(NNUNET_PLANNED_CONFIGURATIONS)}.")


def check_test_folder(folder: str, facts: DatasetFacts) -> None:
    """The images to predict: nnU-Net's naming (``CASE_XXXX<file ending>``), one file per channel of the dataset."""
    if not os.path.isdir(folder):
        raise UserError(f"--test {folder}: no such folder.")
    ending = re.escape(facts.file_ending)
    cases: Dict[str, set] = {}
    for f in os.listdir(folder):
        m = re.fullmatch(rf"(.+)_(\d{{4}}){ending}", f)
        if m:
            cases.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not cases:
        raise UserError(f"--test {folder} holds no image named CASE_0000{facts.file_ending} (nnU-Net's naming).")
    want = set(range(facts.num_channels))
    wrong = {c: sorted(ch) for c, ch in cases.items() if ch != want}
    if wrong:
        case, got = sorted(wrong.items())[0]
        raise UserError(f"--test {folder}: {len(wrong)} case(s) do not have the dataset's {facts.num_channels} "
                        f"channel(s) _0000.._{facts.num_channels - 1:04d} (e.g. {case} has {got}); nnU-Net would "
                        f"stop there or predict garbage.")


def study_trainer_folders() -> str:
    """``nnUNet_extTrainer`` for the study's steps: the user's entries, then our trainer shims."""
    from nnunet_nas.nnunet.environment import trainer_dir
    entries = [e for e in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if e]
    return os.pathsep.join(entries + [trainer_dir()] * (trainer_dir() not in entries))


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_trainers(s: StudySettings) -> Dict[str, str]:
    """``--trainer`` and every search trainer, found by nnU-Net's own lookup (``nnUNet_extTrainer`` included) and
    of the right kind; returns the search trainer of each method."""
    import io
    from nnunetv2.run.run_training import recursive_find_trainer_class_by_name
    from nnunet_nas.nnunet.trainers import default_search_trainer

    folders = study_trainer_folders()

    def lookup(name, option):
        try:  # with the folders the steps will see: the user's entries and our shims
            with contextlib.redirect_stdout(io.StringIO()), _environ(nnUNet_extTrainer=folders):
                return recursive_find_trainer_class_by_name(name)  # (nnU-Net lists every folder it searches)
        except RuntimeError:
            raise UserError(f"{option} {name}: nnU-Net finds no such trainer (nnunetv2's trainers and "
                            f"nnUNet_extTrainer={folders}). Check the name, or add its folder to "
                            f"nnUNet_extTrainer.") from None
    if hasattr(lookup(s.trainer, "--trainer"), "method_and_config"):
        raise UserError(f"--trainer {s.trainer} is a search trainer; --trainer trains the baselines and the found "
                        f"configurations (nnUNetTrainer or a variant of it).")
    chosen = {}
    for method in s.methods:
        name = s.search_trainers.get(method) or default_search_trainer(method)
        cls = lookup(name, f"--search-trainer {method}=")
        if getattr(cls, "nas_method", None) != method:
            raise UserError(f"--search-trainer {method}={name}: {name} is not a search trainer of {method} "
                            f"(`nnunet-nas methods` lists them).")
        chosen[method] = name
    return chosen
