"""``nnunet-nas``: what nnU-Net's own commands do not cover.

    nnunet-nas trainer-dir                    folder to put in nnUNet_extTrainer
    nnunet-nas methods                        the registered NAS methods and their search trainers
    nnunet-nas export CHECKPOINT              discretise a search checkpoint, register <config>_<method>
    nnunet-nas add-arch DATASET               register a genotype without search (default: published DiNTS)
    nnunet-nas attention -i IMAGE -o OUT ...  DAST: transformer attention of a trained model for one case
    nnunet-nas demo                           search, train and predict on real data; Dice against nnU-Net's
"""

import argparse
import os
import sys
from importlib import resources


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
    from nnunet_nas.nnunet.export import export_from_checkpoint
    ckpt = args.checkpoint
    if os.path.isdir(ckpt):
        names = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
        found = [os.path.join(ckpt, n) for n in names if os.path.isfile(os.path.join(ckpt, n))]
        if not found:
            raise FileNotFoundError(f"{ckpt} holds none of {names}.")
        ckpt = found[0]
    export_from_checkpoint(ckpt, name=args.name, channel_mul=args.channel_mul, base_config=args.base_config,
                           overwrite=args.overwrite)


def _cmd_add_arch(args) -> None:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunet_nas.genotypes.monai_compat import load_monai_file
    from nnunet_nas.genotypes.schema import load_genotype
    from nnunet_nas.nnunet.export import register_searched_configuration
    from nnunet_nas.nnunet.plans_io import plans_file
    from nnunet_nas.registry import get_method

    if args.monai:
        genotype = load_monai_file(args.monai)
    else:
        genotype = load_genotype(args.genotype or published_genotype_path())
    method = get_method(args.method or genotype.provenance.get("method") or "dints")
    if not isinstance(genotype, method.genotype_class):
        raise ValueError(f"the genotype is a {genotype.schema_name} genotype; method {method.name!r} takes "
                         f"{method.genotype_class.schema_name} genotypes. Pass the matching --method.")
    if nnUNet_preprocessed is None:
        raise EnvironmentError("nnUNet_preprocessed is not set; nnU-Net needs it to find the plans file.")
    dataset = maybe_convert_to_dataset_name(args.dataset)
    path = plans_file(os.path.join(nnUNet_preprocessed, dataset), args.plans)
    suffix = "cvpr" if not (args.monai or args.genotype) else "imported"
    name = args.name or f"{args.configuration}_{method.name}_{suffix}"
    host = os.path.abspath(args.host_checkpoint) if args.host_checkpoint else None
    if host is not None and not os.path.isfile(host):
        raise FileNotFoundError(f"--host-checkpoint {host}: no such file (a trained model's checkpoint_final.pth).")
    used = register_searched_configuration(path, args.configuration, method, genotype, args.channel_mul, name=name,
                                           overwrite=args.overwrite, host_checkpoint=host)
    print(f"Train it with: nnUNetv2_train {dataset} {used} FOLD")


def _cmd_attention(args) -> None:
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunet_nas.nnunet.attention_export import export_attention
    folder = get_output_folder(args.dataset, args.trainer, args.plans, args.configuration)
    fold = args.fold if args.fold == "all" else int(args.fold)
    export_attention(folder, args.input, args.output, fold, args.checkpoint, args.center)


def _cmd_demo(args) -> None:
    from nnunet_nas.demo import run_demo
    run_demo(args.workdir, fresh=args.fresh)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet-nas", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("trainer-dir", help="print the folder for nnUNet_extTrainer")
    s.set_defaults(func=_cmd_trainer_dir)

    s = sub.add_parser("methods", help="list the registered NAS methods and their search trainers")
    s.set_defaults(func=_cmd_methods)

    s = sub.add_parser("export", help="discretise a search checkpoint (any method) and register it as a "
                                      "configuration")
    s.add_argument("checkpoint", help="a search checkpoint, or the fold folder holding it")
    s.add_argument("--name", help="configuration name (default <searched configuration>_<method>)")
    s.add_argument("--channel-mul", type=float, help="width of the retrained network (default: the search's "
                                                    "export_channel_mul, or fitted to the memory nnU-Net planned for "
                                                    "the base configuration)")
    s.add_argument("--base-config", help="configuration to inherit from (default: the searched one)")
    s.add_argument("--overwrite", action="store_true", help="replace a configuration holding another architecture")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("add-arch", help="register an architecture without search (default: the published DiNTS "
                                        "CVPR 2021 architecture, MONAI Auto3DSeg's default)")
    s.add_argument("dataset", help="dataset id or name (planned with nnUNetv2_plan_and_preprocess)")
    s.add_argument("-c", "--configuration", default="3d_fullres", help="configuration to inherit from")
    s.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    s.add_argument("--monai", help="a MONAI arch-code file (.pth or .json) instead of the published one")
    s.add_argument("--genotype", help="an nnunet_nas genotype JSON (any method) instead of the published one")
    s.add_argument("--method", help="the method whose fixed network builds it (default: the genotype's provenance)")
    s.add_argument("--name", help="configuration name (default <configuration>_<method>_cvpr / _imported)")
    s.add_argument("--channel-mul", type=float, help="channel multiplier (default: fitted to the memory nnU-Net "
                                                    "planned for the configuration; MONAI retrains at 1.0)")
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
    s.add_argument("-f", "--fold", default="0", help="fold of the trained model (default 0)")
    s.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    s.add_argument("--center", type=int, nargs="+", help="patch centre in preprocessed voxels (z y x; default: the "
                                                       "image centre; 2-D configurations: z is the slice)")
    s.set_defaults(func=_cmd_attention)

    s = sub.add_parser("demo", help="DiNTS end to end on 24 real MSD Hippocampus cases against nnU-Net's own "
                                    "configuration (CPU, under 15 minutes)")
    s.add_argument("--workdir", default="nnunet_nas_demo", help="folder for nnUNet_raw/preprocessed/results")
    s.add_argument("--fresh", action="store_true", help="delete the work folder first")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, EnvironmentError, RuntimeError) as e:
        print(f"nnunet-nas {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
