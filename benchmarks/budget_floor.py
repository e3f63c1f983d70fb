"""The range of memory a search space spans in nnU-Net's terms, per shipped search trainer (issue 23, part 3): the
floor (what every architecture of the space counts before any op is chosen: ``min_ratio``) and the largest
architecture (``max_ratio``), both as a share of the network nnU-Net planned, counted by the export's counter at the
width the search counts (the search's own ``count_export_memory``, on the meta device: no memory used), beside the
trainer's budget. A budget below the floor is one no architecture meets; the search refuses it at its start.

    python benchmarks/budget_floor.py PLANS_JSON CONFIGURATION [CONFIGURATION ...] [--input-channels 1] [--heads 3]

Prints a markdown table for BENCHMARKS.md.
"""

import argparse

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_nas.nnunet import trainers
from nnunet_nas.nnunet.search_memory import count_export_memory
from nnunet_nas.nnunet.search_trainer import NASSearchTrainer
from nnunet_nas.planned_network import PlannedNetwork


def budget(cfg):
    """The trainer's budget in nnU-Net's terms, or None where it has none."""
    return getattr(cfg, "sigma", getattr(cfg, "memory_budget", None))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans")
    parser.add_argument("configurations", nargs="+")
    parser.add_argument("--input-channels", type=int, default=1)
    parser.add_argument("--heads", type=int, default=3, help="segmentation heads (labels with background)")
    args = parser.parse_args()
    plans = PlansManager(args.plans)
    print("| trainer | configuration | counted width | budget | floor | largest | budget met |")
    print("|---|---|---|---|---|---|---|")
    for name in trainers.__all__:
        cls = getattr(trainers, name)
        if not issubclass(cls, NASSearchTrainer):
            continue
        method, cfg = cls.method_and_config()
        for configuration in args.configurations:
            planned = PlannedNetwork.from_configuration_manager(plans.get_configuration(configuration))
            counted = count_export_memory(method, cfg, planned, args.input_channels, args.heads)
            if counted is None:
                continue
            sigma = budget(cfg)
            met = "-" if sigma is None else ("yes" if sigma >= counted.min_ratio() else "**no**")
            print(f"| `{name}` | {configuration} | {cfg.counted_export_width():.4g} | "
                  f"{'none' if sigma is None else f'{sigma:g}'} | {counted.min_ratio():.3f}x | "
                  f"{counted.max_ratio():.2f}x | {met} |")


if __name__ == "__main__":
    main()
