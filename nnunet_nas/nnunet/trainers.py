"""The nnUNetTrainer subclasses users name with ``-tr`` (exposed to nnU-Net by the shim in ``trainers/``).

Variants only set class attributes, in nnU-Net's style. Names are unique (nnU-Net looks classes up by name,
its own folder first) and contain no ``__``.
"""

from dataclasses import replace

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_nas.config import DASTSearchConfig, DiNTSSearchConfig, IACSearchConfig, SCNASSearchConfig
from nnunet_nas.nnunet.search_trainer import NASSearchTrainer
from nnunet_nas.strategies.jsd_pruning import JSDRule


class nnUNetTrainerDiNTSSearch(NASSearchTrainer):
    """DiNTS with the paper's search space (L=12, D=4) and MONAI's search width (channel_mul 0.5); the memory budget
    in nnU-Net's terms: sigma 1.0 of the memory nnU-Net planned, the found network counted at its export width (twice
    the search width, the paper's rule)."""
    nas_method = "dints"


class nnUNetTrainerDiNTSSearch_sigma05(nnUNetTrainerDiNTSSearch):
    """Half of nnU-Net's planned memory at the export width."""
    search_config = replace(DiNTSSearchConfig(), memory_budget=0.5)


class nnUNetTrainerDiNTSSearch_sigma02(nnUNetTrainerDiNTSSearch):
    """A fifth of nnU-Net's planned memory at the export width, searched at half the default width (channel_mul
    0.25): at 0.5 the parts every architecture has, with one edge per block, already count 0.20-0.23 of it on MSD
    Hippocampus, so no architecture would meet the budget. The export fits the width to nnU-Net's memory."""
    search_config = replace(DiNTSSearchConfig(), memory_budget=0.2, channel_mul=0.25)


class nnUNetTrainerDiNTSSearch_spaceBudget(nnUNetTrainerDiNTSSearch):
    """The paper's budget as a share of the search space: sigma 0.8 of its largest discrete architecture (the
    default before budgets in nnU-Net's terms); the export then fits the width to nnU-Net's plan."""
    search_config = replace(DiNTSSearchConfig(), memory_reference="max_discrete")


class nnUNetTrainerDiNTSSearchDemo(nnUNetTrainerDiNTSSearch):
    """A few-minute CPU search on a small grid (L=4, D=3, narrow): for the demo and for trying things out. The
    export fits the width to nnU-Net's planned memory (the default)."""
    search_config = replace(DiNTSSearchConfig(), num_blocks=4, num_depths=3, channel_mul=0.125, arch_lr=0.03)
    num_epochs_default = 6
    iterations_per_epoch = 12
    val_iterations_per_epoch = 3


class nnUNetTrainerSCNASSearch(NASSearchTrainer):
    """SCNAS with the paper's space (four cell types of 4 nodes, 8 ops), search width 48 stem channels, the 4:1
    split, Adam, tau 10 -> 0.1; 200 epochs as in the paper."""
    nas_method = "scnas"
    num_epochs_default = 200


class nnUNetTrainerSCNASSearch_nnunetBudget(nnUNetTrainerSCNASSearch):
    """SCNAS with DiNTS's memory term in nnU-Net's terms [ours; the paper has none]: the found network at its export
    width at most 1.0 of nnU-Net's planned network, so the export's width fit stays a small correction. Searched at
    channel_mul 0.25 (an 8-channel stem, counted at 68 / 48 of it): at the paper's 48 channels the stem, the cells'
    input projections and the heads alone count 4.7-4.8x nnU-Net's planned memory (MSD Hippocampus 2d and 3d_fullres),
    a budget no architecture meets; at 0.25 they take 0.8x and the ops choose within the rest."""
    search_config = replace(SCNASSearchConfig(), channel_mul=0.25, memory_budget=1.0)


class nnUNetTrainerSCNASSearchDemo(nnUNetTrainerSCNASSearch):
    """A short search for trying things out: 6 epochs x 12 iterations, narrow (8 stem channels)."""
    search_config = replace(SCNASSearchConfig(), channel_mul=0.25)
    num_epochs_default = 6
    iterations_per_epoch = 12
    val_iterations_per_epoch = 3


class nnUNetTrainerDiNTSSearch_JSD(nnUNetTrainerDiNTSSearch):
    """DiNTS with IAC-LTH's JSD stability pruning and early stop (JSDRule's defaults, the threshold scaled to DiNTS's
    arch_lr 0.008: 0.18); the epoch count stays the cap."""
    search_config = replace(DiNTSSearchConfig(), jsd_pruning=JSDRule.for_arch_lr(DiNTSSearchConfig().arch_lr))


class nnUNetTrainerSCNASSearch_JSD(nnUNetTrainerSCNASSearch):
    """SCNAS with IAC-LTH's JSD stability pruning and early stop (JSDRule's defaults, the threshold scaled to SCNAS's
    arch_lr 3e-3: 0.025); 200 epochs stay the cap."""
    search_config = replace(SCNASSearchConfig(), jsd_pruning=JSDRule.for_arch_lr(SCNASSearchConfig().arch_lr))


class nnUNetTrainerIACSearch(NASSearchTrainer):
    """IAC: one searchable PC-DARTS cell (4 nodes, 8 DARTS ops, K=4 partial channels, edge normalisation) implanted
    into every skip connection of the trained nnUNetTrainer model of the same dataset, plans, configuration and fold
    (``NNUNET_NAS_HOST`` points elsewhere), which stays frozen; one shared genotype; 200 epochs, the first 15 without
    architecture steps. Exports ``<configuration>_iac``, fine-tuned from the trained model by plain nnUNetv2_train."""
    nas_method = "iac"
    num_epochs_default = 200


class nnUNetTrainerIACSearch_perLevel(nnUNetTrainerIACSearch):
    """IAC with one genotype per skip level instead of one shared genotype."""
    search_config = replace(IACSearchConfig(), shared_cell=False)


class nnUNetTrainerIACLTHSearch(nnUNetTrainerIACSearch):
    """IAC-LTH: IAC with Jensen-Shannon stability pruning and early stop (JSDRule's defaults); the 200 epochs of IAC
    are the cap."""
    search_config = replace(IACSearchConfig(), jsd_pruning=JSDRule())


class nnUNetTrainerDASTSearch(NASSearchTrainer):
    """DAST: the DiNTS search (L=12, D=4, search width channel_mul 0.5; at most nnU-Net's planned memory at the
    export width) with the ops skip, conv and transformer (8 heads, token grid min(8, extent) per axis at each
    level). Exports ``<configuration>_dast``."""
    nas_method = "dast"


class nnUNetTrainerDASTSearch_sigma05(nnUNetTrainerDASTSearch):
    """At most half of nnU-Net's planned memory at the export width."""
    search_config = replace(DASTSearchConfig(), memory_budget=0.5)


class nnUNetTrainerDASTSearch_sigma02(nnUNetTrainerDASTSearch):
    """At most a fifth of nnU-Net's planned memory at the export width, searched at half the default width
    (channel_mul 0.25), as ``nnUNetTrainerDiNTSSearch_sigma02`` and for the same reason."""
    search_config = replace(DASTSearchConfig(), memory_budget=0.2, channel_mul=0.25)


class nnUNetTrainerDASTSearch_spaceBudget(nnUNetTrainerDASTSearch):
    """The budget as a share of the search space: at most 0.8 of its largest discrete architecture (the default
    before budgets in nnU-Net's terms)."""
    search_config = replace(DASTSearchConfig(), memory_reference="max_discrete")


class nnUNetTrainerDASTSearch_P3D(nnUNetTrainerDASTSearch):
    """DAST with the DiNTS set's factorised ops (P3D in 3-D, their 2-D analogues) beside skip, conv, transformer."""
    search_config = replace(DASTSearchConfig(), factorised_ops=True)


class nnUNetTrainerDASTSearchDemo(nnUNetTrainerDASTSearch):
    """A few-minute CPU search on a small grid (L=4, D=3, channel_mul 0.25): for trying things out."""
    search_config = replace(DASTSearchConfig(), num_blocks=4, num_depths=3, channel_mul=0.25, arch_lr=0.03)
    num_epochs_default = 6
    iterations_per_epoch = 12
    val_iterations_per_epoch = 3


class _ShortSchedule(nnUNetTrainer):
    """nnU-Net's trainer on a shorter schedule. It saves its latest checkpoint every epoch: nnU-Net saves it every 50,
    which a 20-epoch schedule never reaches, so a training killed before its end (a study cut off, a preempted job)
    would resume with ``--c`` from its best epoch, not its last."""
    schedule = (1000, 250, 50)  # epochs, iterations per epoch, validation iterations per epoch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.schedule
        self.save_every = 1


class nnUNetTrainerNASDemo(_ShortSchedule):
    """nnU-Net's default trainer on the demo's short CPU schedule (20 epochs x 25 iterations, 5 validation
    iterations), for the found and for nnU-Net's own configuration alike: on the demo's 24 Hippocampus cases
    nnU-Net's 2d configuration (batch 35) reaches about 0.79 mean Dice on fold 0 in about 5 minutes on 2 cores
    (0.09 after 200 iterations). It shows the pipeline on real data, not which network is better."""
    schedule = (20, 25, 5)


class nnUNetTrainerNAS_20x50(_ShortSchedule):
    """The CPU benchmark schedule of BENCHMARK_PROTOCOL.md: 20 epochs x 50 iterations, 10 validation iterations."""
    schedule = (20, 50, 10)


__all__ = ["nnUNetTrainerDiNTSSearch", "nnUNetTrainerDiNTSSearch_sigma05", "nnUNetTrainerDiNTSSearch_sigma02",
           "nnUNetTrainerDiNTSSearch_spaceBudget", "nnUNetTrainerDASTSearch_spaceBudget",
           "nnUNetTrainerDiNTSSearchDemo", "nnUNetTrainerDiNTSSearch_JSD", "nnUNetTrainerSCNASSearch",
           "nnUNetTrainerSCNASSearch_nnunetBudget", "nnUNetTrainerSCNASSearchDemo", "nnUNetTrainerSCNASSearch_JSD",
           "nnUNetTrainerIACSearch",
           "nnUNetTrainerIACSearch_perLevel", "nnUNetTrainerIACLTHSearch", "nnUNetTrainerDASTSearch",
           "nnUNetTrainerDASTSearch_sigma05", "nnUNetTrainerDASTSearch_sigma02", "nnUNetTrainerDASTSearch_P3D",
           "nnUNetTrainerDASTSearchDemo",
           "nnUNetTrainerNASDemo", "nnUNetTrainerNAS_20x50"]


def default_search_trainer(method: str) -> str:
    """The search trainer of ``method`` with the paper's settings (its variants subclass it)."""
    from nnunet_nas.nnunet.search_trainer import NASSearchTrainer
    for name in __all__:
        cls = globals()[name]
        if getattr(cls, "nas_method", None) == method and NASSearchTrainer in cls.__bases__:
            return name
    raise KeyError(f"no search trainer of method {method!r}")
