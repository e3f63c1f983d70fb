"""``nnunet-nas``: what nnU-Net's own commands do not cover.

    nnunet-nas trainer-dir                    folder to put in nnUNet_extTrainer
    nnunet-nas methods                        the registered NAS methods and their search trainers
    nnunet-nas export CHECKPOINT              discretise a search checkpoint, register <config>_<method>
    nnunet-nas add-arch DATASET               register a genotype without search (default: published DiNTS)
    nnunet-nas attention -i IMAGE -o OUT ...  DAST: transformer attention of a trained model for one case
    nnunet-nas demo                           search, train and predict on real data; Dice against nnU-Net's
    nnunet-nas memory DATASET -tr TRAINER     will the search fit? its GPU memory, planned and fitted to a card
    nnunet-nas run DATASET --methods ...      a whole study: baselines, searches, retrainings, model selection, report
    nnunet-nas report RUN_DIR                 rebuild a study's report from what is on disk
    nnunet-nas add-config DATASET BASE NAME   a copy of a configuration under another name (a second baseline run)
"""

import argparse
import contextlib
import io
import math
import os
import sys
import traceback
from importlib import resources

from nnunet_nas.errors import REPORT_URL_HINT, EnvironmentSetupError, MissingFileError, UserError, one_line


def published_genotype_path() -> str:
    return str(resources.files("nnunet_nas") / "genotypes" / "zoo" / "dints_cvpr.json")


def _cmd_trainer_dir(args) -> None:
    from nnunet_nas.nnunet.environment import trainer_dir
    print(trainer_dir())


def _cmd_methods(args) -> None:
    from nnunet_nas.registry import get_method, method_names
    from nnunet_nas.nnunet import trainers
    for name in method_names():
        m = get_method(name)
        names = [t for t in trainers.__all__ if getattr(getattr(trainers, t), "nas_method", None) == name]
        print(f"{name}: {m.paper}\n  trainers: {', '.join(names)}\n  configuration suffix: _{name}; fixed network: "
              f"{m.network_class_name}")


def _cmd_export(args) -> None:
    from nnunet_nas.nnunet.export import export_from_checkpoint, search_checkpoint
    export_from_checkpoint(search_checkpoint(args.checkpoint), name=args.name, channel_mul=args.channel_mul,
                           base_config=args.base_config, overwrite=args.overwrite, random_seed=args.random)


def _cmd_agreement(args) -> None:
    import json
    from nnunet_nas.agreement import agreement_lines, search_agreement
    from nnunet_nas.nnunet.export import search_checkpoint
    result = search_agreement(search_checkpoint(args.a), search_checkpoint(args.b), args.samples, args.seed)
    print(json.dumps(result, indent=1) if args.json else "\n".join(agreement_lines(result)))


def _dataset_name(dataset: str) -> str:
    """nnU-Net's dataset name for an id or name; one error naming the fix when nnU-Net knows no such dataset."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"dataset {dataset!r}: {one_line(e)} Give the id or name of a dataset planned with "
                        f"nnUNetv2_plan_and_preprocess (nnUNet_raw / nnUNet_preprocessed as for nnU-Net).") from None


def _cmd_memory(args) -> None:
    import json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_nas.io import read_json
    from nnunet_nas.nnunet.plans_io import load_plans, plans_file
    from nnunet_nas.nnunet.search_memory import describe, memory_report
    if nnUNet_preprocessed is None:
        raise EnvironmentSetupError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file. Set it "
                                    "as for nnUNetv2_train.")
    folder = os.path.join(nnUNet_preprocessed, _dataset_name(args.dataset))
    plans = load_plans(plans_file(folder, args.plans))
    if args.configuration not in plans.get("configurations", {}):
        raise UserError(f"configuration {args.configuration!r} is not in {plans_file(folder, args.plans)}; it has "
                        f"{sorted(plans['configurations'])}.")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's lookup lists every folder it searches
            trainer = recursive_find_trainer_class_by_name(args.trainer)
    except RuntimeError as e:
        raise UserError(f"{one_line(e)} Set nnUNet_extTrainer=$(nnunet-nas trainer-dir).") from None
    if not hasattr(trainer, "method_and_config"):
        raise UserError(f"{args.trainer} is not a search trainer; `nnunet-nas methods` lists them.")
    dataset_json = read_json(os.path.join(folder, "dataset.json"), "nnU-Net's dataset.json")
    report = memory_report(trainer, PlansManager(plans), args.configuration, dataset_json, args.gpu_memory)
    print(json.dumps(report, indent=1) if args.json else describe(report))


def _cmd_add_arch(args) -> None:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunet_nas.genotypes.monai_compat import load_monai_file
    from nnunet_nas.genotypes.schema import GenotypeError, load_genotype
    from nnunet_nas.nnunet.export import register_searched_configuration
    from nnunet_nas.nnunet.plans_io import plans_file
    from nnunet_nas.nnunet.host import load_host_checkpoint
    from nnunet_nas.registry import get_method

    if args.monai and args.genotype:
        raise UserError("--monai and --genotype both name an architecture; pass one of them.")
    if not nnUNet_preprocessed:
        raise EnvironmentSetupError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file. Set it "
                                    "as for nnUNetv2_train.")
    dataset = _dataset_name(args.dataset)
    path = plans_file(os.path.join(nnUNet_preprocessed, dataset), args.plans)
    if args.monai:
        genotype = load_monai_file(args.monai)
    else:
        genotype = load_genotype(args.genotype or published_genotype_path())
    method = get_method(args.method or genotype.provenance.get("method") or "dints")
    if not isinstance(genotype, method.genotype_class):
        raise GenotypeError(f"the genotype is a {genotype.schema_name} genotype; method {method.name!r} takes "
                            f"{method.genotype_class.schema_name} genotypes. Pass the matching --method.")
    host = os.path.abspath(args.host_checkpoint) if args.host_checkpoint else None
    if host is not None:
        if not method.trained_host:
            raise UserError(f"--host-checkpoint: method {method.name!r} does not start from a trained model (only "
                            f"methods that build on one, such as IAC, take it); leave it out.")
        load_host_checkpoint(host, args.configuration, dataset, fold=None)  # read as data, before any write
        host = _per_fold(host)
    suffix = "cvpr" if not (args.monai or args.genotype) else "imported"
    name = args.name or f"{args.configuration}_{method.name}_{suffix}"
    used = register_searched_configuration(path, args.configuration, method, genotype, args.channel_mul, name=name,
                                           overwrite=args.overwrite, host_checkpoint=host)
    print(f"Train it with: nnUNetv2_train {dataset} {used} FOLD")


def _per_fold(host: str) -> str:
    """A host checkpoint inside nnU-Net's ``fold_<n>`` folder stands for every fold's own model (as a search's export
    records it): fold f's validation cases were training cases of every other fold's model."""
    import re
    from nnunet_nas.nnunet.host import per_fold_host
    folds = [int(m.group(1)) for part in os.path.normpath(host).split(os.sep)[:-1]
             for m in [re.fullmatch(r"fold_(\d+)", part)] if m]
    if not folds:
        return host
    per_fold = per_fold_host(host, folds[-1])
    print(f"trained start: each fold's own model, {per_fold} (fold f's validation cases were training cases of "
          f"fold_{folds[-1]}'s model)")
    return per_fold


def _cmd_attention(args) -> None:
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunet_nas.nnunet.attention_export import export_attention
    if not nnUNet_results:
        raise EnvironmentSetupError("nnUNet_results is not set; nnU-Net needs it to find the trained model. Set it as "
                                    "for nnUNetv2_predict.")
    dataset = _dataset_name(args.dataset)
    folder = get_output_folder(dataset, args.trainer, args.plans, args.configuration)
    if not os.path.isdir(folder):
        raise MissingFileError(f"{folder}: no trained model there. Train it first (nnUNetv2_train {dataset} "
                             f"{args.configuration} {args.fold} -tr {args.trainer}), or check -d, -c, -tr and -p (as "
                             f"for nnUNetv2_predict).")
    export_attention(folder, args.input, args.output, args.fold, args.checkpoint, args.center)


def _cmd_add_config(args) -> None:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunet_nas.nnunet.plans_io import load_plans, plans_file, register_configuration, written_by_us
    if not nnUNet_preprocessed:
        raise EnvironmentSetupError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file. Set it "
                                    "as for nnUNetv2_train.")
    path = plans_file(os.path.join(nnUNet_preprocessed, _dataset_name(args.dataset)), args.plans)
    configs = load_plans(path)["configurations"]
    base = configs.get(args.base)
    if base is None or "architecture" not in base:
        raise UserError(f"{path} has no configuration {args.base!r} with an architecture to copy.")
    extra = None if args.batch_size is None else {"batch_size": args.batch_size}
    architecture = base["architecture"]
    if args.trained_start:
        from nnunetv2.paths import nnUNet_results
        from nnunet_nas.networks.trained_start import trained_start_block
        if not nnUNet_results:
            raise EnvironmentSetupError("nnUNet_results is not set; --trained-start names a trained model there. "
                                        "Set it as for nnUNetv2_train.")
        host = os.path.join(nnUNet_results, _dataset_name(args.dataset),
                            f"{args.trained_start}__{args.plans}__{args.base}", "fold_{fold}", "checkpoint_final.pth")
        architecture = trained_start_block(architecture, host)
    entry = {"inherits_from": args.base, "architecture": architecture, **(extra or {})}
    ours = args.name in configs and written_by_us(configs[args.name])  # replaced only without trained models
    if args.name in configs and configs[args.name] != entry and not ours:
        raise UserError(f"{path} already has a configuration {args.name!r}, not this copy of {args.base!r}; "
                        f"choose another name.")
    used = register_configuration(path, args.base, args.name, architecture, extra=extra, overwrite=ours)
    start = f", starting from {args.trained_start}'s model of each fold" if args.trained_start else ""
    print(f"registered {used!r} (the network, patch and preprocessed data of {args.base!r}"
          f"{'' if extra is None else f', batch {args.batch_size}'}{start}) in {path}")


STUDY_INCOMPLETE = 3  # nnunet-nas run: a step failed (or could not run); the summary names it


def _cmd_run(args) -> int:
    from nnunet_nas.study.runner import run_study
    from nnunet_nas.study.settings import StudySettings
    options = {k: getattr(args, k) for k in StudySettings.field_names() if hasattr(args, k)}
    settings = StudySettings.from_sources(options, args.config)
    status = run_study(settings, dry_run=args.dry_run, redo_changed=args.redo_changed)
    return STUDY_INCOMPLETE if any(v in ("failed", "blocked") for v in status.values()) else 0


def _cmd_report(args) -> None:
    from nnunet_nas.study.report import write_report
    print(write_report(args.run_dir))


def _cmd_demo(args) -> None:
    from nnunet_nas.demo import run_demo
    run_demo(args.workdir, fresh=args.fresh)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``nnunet-nas export: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    """A finite positive number (NaN, infinity, zero and negatives refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a whole number of at least 1")


def seed(text: str) -> int:
    return _int_at_least(text, 0, "a seed (a whole number of at least 0)")


def fold(text: str):
    """nnU-Net's fold: ``all`` or an integer >= 0."""
    return text if text == "all" else _int_at_least(text, 0, "a fold (an integer >= 0, or 'all')")


def build_parser() -> argparse.ArgumentParser:
    from nnunet_nas.study.settings import EXECUTORS as STUDY_EXECUTORS
    p = _Parser(prog="nnunet-nas", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("trainer-dir", help="print the folder for nnUNet_extTrainer")
    s.set_defaults(func=_cmd_trainer_dir)

    s = sub.add_parser("methods", help="list the registered NAS methods and their search trainers")
    s.set_defaults(func=_cmd_methods)

    s = sub.add_parser("export", help="discretise a search checkpoint (any method) and register it as a "
                                      "configuration")
    s.add_argument("checkpoint", help="a search checkpoint, or the fold folder holding it")
    s.add_argument("--name", help="configuration name (default <searched configuration>_<method>)")
    s.add_argument("--channel-mul", type=positive_float, help="width of the retrained network (default: the search's "
                                                    "export_channel_mul, or fitted to the memory nnU-Net planned for "
                                                    "the base configuration)")
    s.add_argument("--base-config", help="configuration to inherit from (default: the searched one)")
    s.add_argument("--overwrite", action="store_true", help="replace a configuration holding another architecture")
    s.add_argument("--random", type=seed, metavar="SEED", help="register the random architecture SEED draws from the "
                                                               "search's space instead of the found one, with the "
                                                               "found one's geometry, width rule and trained start: "
                                                               "its control at the same memory (default name "
                                                               "<configuration>_<method>_random<SEED>)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("agreement", help="do two searches of the same space agree? The share of edges their "
                                         "architectures decide alike, against two random architectures")
    s.add_argument("a", help="a search checkpoint, or the fold folder holding it")
    s.add_argument("b", help="another search of the same method and space (e.g. another seed or fold)")
    s.add_argument("--samples", type=positive_int, default=500, help="random pairs for chance (default 500)")
    s.add_argument("--seed", type=seed, default=0, help="seed of the random architectures")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=_cmd_agreement)

    s = sub.add_parser("add-arch", help="register an architecture without search (default: the published DiNTS "
                                        "CVPR 2021 architecture, MONAI Auto3DSeg's default)")
    s.add_argument("dataset", help="dataset id or name (planned with nnUNetv2_plan_and_preprocess)")
    s.add_argument("-c", "--configuration", default="3d_fullres", help="configuration to inherit from")
    s.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    s.add_argument("--monai", help="a MONAI arch-code file (.pth or .json) instead of the published one")
    s.add_argument("--genotype", help="an nnunet_nas genotype JSON (any method) instead of the published one")
    s.add_argument("--method", help="the method whose fixed network builds it (default: the genotype's provenance)")
    s.add_argument("--name", help="configuration name (default <configuration>_<method>_cvpr / _imported)")
    s.add_argument("--channel-mul", type=positive_float, help="channel multiplier (default: fitted to the memory "
                                                             "nnU-Net planned for the configuration; MONAI retrains "
                                                             "at 1.0)")
    s.add_argument("--overwrite", action="store_true", help="replace a configuration holding another architecture")
    s.add_argument("--host-checkpoint", help="IAC: a trained model of the configuration's network; training the "
                                             "registered configuration starts from it (default: no trained start)")
    s.set_defaults(func=_cmd_add_arch)

    s = sub.add_parser("attention", help="DAST: export the segmentation attention of a trained model's transformer "
                                         "cells for one case (NIfTI overlay aligned with the input, and a PNG)")
    s.add_argument("-i", "--input", nargs="+", required=True, help="the case's image files, one per input channel "
                                                                   "(CASE_0000.nii.gz ...)")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    s.add_argument("-c", "--configuration", required=True, help="the trained configuration (e.g. 3d_fullres_dast)")
    s.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer it was trained with")
    s.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    s.add_argument("-f", "--fold", type=fold, default=0, help="fold of the trained model (default 0)")
    s.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    s.add_argument("--center", type=int, nargs="+", help="patch centre in preprocessed voxels (z y x; default: the "
                                                       "image centre; 2-D configurations: z is the slice)")
    s.set_defaults(func=_cmd_attention)

    s = sub.add_parser("memory", help="will a search fit the GPU? One search iteration's memory as planned and as the "
                                      "memory fit would run it, beside nnU-Net's planned network (no GPU needed)")
    s.add_argument("dataset", help="dataset id or name (planned with nnUNetv2_plan_and_preprocess)")
    s.add_argument("-c", "--configuration", default="3d_fullres", help="the configuration to search")
    s.add_argument("-tr", "--trainer", required=True, help="a search trainer (nnunet-nas methods lists them)")
    s.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    s.add_argument("--gpu-memory", type=positive_float, help="the card's memory in GiB (default: the visible CUDA "
                                                            "device's free memory, or NNUNET_NAS_MEMORY_GB)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=_cmd_memory)

    s = sub.add_parser("run", help="a whole study in one command: plan, nnU-Net's baseline, each method's search, "
                                   "the found configurations on every fold, nnU-Net's model selection, the test "
                                   "images predicted with the winner, a report")
    s.add_argument("dataset", nargs="?", help="dataset id or name (planned, or in nnUNet_raw)")
    s.add_argument("-c", dest="configurations", nargs="+", help="configuration(s) (default 3d_fullres)")
    s.add_argument("--methods", nargs="+", help="NAS methods to search (nnunet-nas methods lists them)")
    s.add_argument("--folds", nargs="+", type=int, help="folds to train (default 0 1 2 3 4)")
    s.add_argument("--search-fold", type=int, help="the fold the searches run on (default: the first of --folds)")
    s.add_argument("--trainer", help="trainer of every baseline and retraining (default nnUNetTrainer)")
    s.add_argument("--search-trainer", dest="search_trainers", nargs="+", metavar="METHOD=TRAINER",
                   help="a search trainer per method (default: each method's default search trainer)")
    s.add_argument("-p", dest="plans", help="plans identifier (default nnUNetPlans)")
    s.add_argument("--test", help="a folder of images (nnU-Net's naming) to predict with the winner")
    s.add_argument("--baseline-repeats", type=int, help="train the baseline twice (2) to show its run-to-run spread")
    s.add_argument("--random-controls", type=int, metavar="N",
                   help="train N random architectures of each search's space (seeds 0..N-1) beside its found one, at "
                        "the same memory and from the same start: did the search choose better than chance? "
                        "(default 0)")
    s.add_argument("-device", dest="device", help="cuda (default), cpu or mps, as for nnUNetv2_train")
    s.add_argument("--gpus", nargs="+", help="run independent steps side by side, one per GPU (CUDA ids)")
    s.add_argument("--parallel", type=int, help="without --gpus: steps run side by side (default 1)")
    s.add_argument("--num-gpus-per-training", type=int, help="nnU-Net's -num_gpus for each training")
    s.add_argument("--executor", choices=STUDY_EXECUTORS,
                   help="local (default): this machine; slurm: each step a SLURM job through submitit; "
                        "submitit-local: submitit's jobs on this machine (the SLURM set-up without a cluster)")
    s.add_argument("--slurm-partition", help="SLURM partition of the jobs")
    s.add_argument("--slurm-time", type=int, help="SLURM time limit per job, minutes")
    s.add_argument("--slurm-cpus", type=int, help="CPUs per SLURM job")
    s.add_argument("--slurm-mem-gb", type=float, help="memory per SLURM job, GB")
    s.add_argument("-np", dest="processes", type=int, help="processes of planning, model selection, ensembling")
    s.add_argument("--run-dir", help="the run folder (default ./nnunet_nas_run_<dataset>)")
    s.add_argument("--tag", help="suffix of the configuration names the study registers (3d_fullres_dints_TAG)")
    s.add_argument("--config", help="a YAML or JSON file of these settings (options given here win)")
    s.add_argument("--dry-run", action="store_true", help="print every command in order, with its dependencies "
                                                          "and what it would cost; run nothing")
    s.add_argument("--redo-changed", action="store_true", help="redo the steps whose settings changed since they "
                                                               "ran (their old models are moved aside, not deleted)")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("report", help="rebuild a study's report (report.md and figures) from its run folder")
    s.add_argument("run_dir", help="the run folder of nnunet-nas run")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("add-config", help="register a copy of a configuration under another name (same network, "
                                          "patch and preprocessed data), e.g. for a second baseline run")
    s.add_argument("dataset", help="dataset id or name (planned)")
    s.add_argument("base", help="the configuration to copy")
    s.add_argument("name", help="the new configuration's name")
    s.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    s.add_argument("--batch-size", type=positive_int, help="another batch size (e.g. a CPU protocol's 2d at 32)")
    s.add_argument("--trained-start", metavar="TRAINER", help="the copy starts from the model TRAINER trained of BASE, "
                                                             "each fold from its own (IAC's fair control)")
    s.set_defaults(func=_cmd_add_config)

    s = sub.add_parser("demo", help="DiNTS end to end on 24 real MSD Hippocampus cases against nnU-Net's own "
                                    "configuration (CPU, under 15 minutes)")
    s.add_argument("--workdir", default="nnunet_nas_demo", help="folder for nnUNet_raw/preprocessed/results")
    s.add_argument("--fresh", action="store_true", help="delete what an earlier demo wrote in the work folder first "
                                                         "(a folder holding anything else is refused)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    """Run one command; a user error is one line on stderr and exit code 2, our own bug a traceback and 1."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as e:
        print(f"nnunet-nas {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet-nas {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug of ours: show where
        traceback.print_exc()
        print(f"nnunet-nas {args.command}: internal error: {REPORT_URL_HINT}", file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
