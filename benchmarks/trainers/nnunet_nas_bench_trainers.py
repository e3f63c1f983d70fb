# Trainers of the real-data CPU benchmark (benchmarks/hippocampus_2d.py, BENCHMARKS.md).
# Found through nnUNet_extTrainer="$(nnunet-nas trainer-dir):<repo>/benchmarks/trainers".
# Keep it tiny: nnU-Net imports every module here by bare name. Class names are unique and contain no "__".
import os
from dataclasses import replace

import torch

from nnunet_nas.config import DASTSearchConfig, DiNTSSearchConfig, IACSearchConfig, SCNASSearchConfig
from nnunet_nas.nnunet.trainers import (_ShortSchedule, nnUNetTrainerDASTSearch, nnUNetTrainerDiNTSSearch,
                                        nnUNetTrainerIACSearch, nnUNetTrainerSCNASSearch)
from nnunet_nas.strategies.jsd_pruning import JSDRule


class nnUNetTrainerDiNTSSearchHippo2D_L8D3(nnUNetTrainerDiNTSSearch):
    """CPU search for MSD Hippocampus 2d_bs32 (first, loaded-machine run; BENCHMARKS.md now uses the 40x25 variant).

    L=8 blocks, D=3 levels (patch 56x40 -> 64x48), search width channel_mul 0.125, retrained at twice the
    search width (0.25, as the paper's 2x). Memory budget: sigma 0.8 of the space's largest discrete architecture
    (the default before issue 23; the _nnunet variants below budget in nnU-Net's terms). 6 epochs x 8 iterations,
    half warm-up (24 weight-only, 24 weight+architecture iterations), 2 validation iterations per epoch.
    arch_lr 0.03 (not the paper's 0.008): with so few architecture steps, 0.008 barely moves the logits.
    """
    search_config = replace(DiNTSSearchConfig(), num_blocks=8, num_depths=3, channel_mul=0.125,
                            export_channel_mul=0.25, arch_lr=0.03, memory_reference="max_discrete")
    num_epochs_default = 6
    iterations_per_epoch = 8
    val_iterations_per_epoch = 2


class nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25(nnUNetTrainerDiNTSSearchHippo2D_L8D3):
    """The same space on an idle machine with a 20 times larger budget: 40 epochs x 25 iterations, half warm-up
    (500 weight-only, 500 weight+architecture iterations)."""
    num_epochs_default = 40
    iterations_per_epoch = 25


class nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25_nnunet(nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25):
    """Issue 23's DiNTS row under the package's budget default: sigma 1.0 of nnU-Net's planned network, the found
    network counted at twice the search width (0.25), the export's width fit then a correction."""
    search_config = replace(nnUNetTrainerDiNTSSearchHippo2D_L8D3.search_config, memory_reference="nnunet",
                            export_channel_mul=None)


class nnUNetTrainerDiNTSSearchHippo2D_L8D3_20x25_fit(nnUNetTrainerDiNTSSearchHippo2D_L8D3):
    """The DiNTS row of the DAST benchmark: the L8D3 space with half the 40x25 budget (20 epochs x 25 iterations,
    10 warm-up epochs), exported at the width fitted to nnU-Net's planned memory (the default export rule)."""
    search_config = replace(nnUNetTrainerDiNTSSearchHippo2D_L8D3.search_config, export_channel_mul=None)
    num_epochs_default = 20
    iterations_per_epoch = 25


class nnUNetTrainerDASTSearchHippo2D_L8D3_20x25(nnUNetTrainerDASTSearch):
    """DAST with the settings of the DiNTS row above (L=8, D=3, patch 56x40, search width 0.125, i.e. 8 / 16 / 32
    channels at the three levels, one channel per head at level 0; 20 epochs x 25 iterations, half warm-up, arch_lr
    0.03, sigma 0.8), ops skip, conv 3x3, transformer (token grids 8x8, 8x8, 7x5 at the levels of 28x20, 14x10,
    7x5); exported at the width fitted to nnU-Net's planned memory."""
    search_config = replace(DASTSearchConfig(), num_blocks=8, num_depths=3, channel_mul=0.125, arch_lr=0.03,
                            memory_reference="max_discrete")
    num_epochs_default = 20
    iterations_per_epoch = 25
    val_iterations_per_epoch = 2


class nnUNetTrainerDASTSearchHippo2D_L8D3_20x25_nnunet(nnUNetTrainerDASTSearchHippo2D_L8D3_20x25):
    """Issue 23's DAST row under the package's budget default: sigma 1.0 of nnU-Net's planned network (a cap, DAST's
    penalty), the found network counted at twice the search width."""
    search_config = replace(nnUNetTrainerDASTSearchHippo2D_L8D3_20x25.search_config, memory_reference="nnunet")


class nnUNetTrainerDiNTSBudget02(nnUNetTrainerDiNTSSearch):
    """Memory-budget benchmark (benchmarks/memory_budget.py): the demo's small grid (L=4, D=3, channel_mul 0.125),
    sigma 0.2 of the largest discrete architecture, 10 epochs x 12 iterations, 3 warm-up epochs, arch_lr 0.05 (so
    84 architecture steps move the logits). Exported at a fixed width (0.25) so that memory differences come from
    the architecture alone."""
    search_config = replace(DiNTSSearchConfig(), num_blocks=4, num_depths=3, channel_mul=0.125,
                            export_channel_mul=0.25, arch_lr=0.05, warmup_epochs=3, memory_budget=0.2,
                            memory_reference="max_discrete")
    num_epochs_default = 10
    iterations_per_epoch = 12
    val_iterations_per_epoch = 2
    save_every_default = 5


class nnUNetTrainerDiNTSBudget05(nnUNetTrainerDiNTSBudget02):
    search_config = replace(nnUNetTrainerDiNTSBudget02.search_config, memory_budget=0.5)


class nnUNetTrainerDiNTSBudget08(nnUNetTrainerDiNTSBudget02):
    search_config = replace(nnUNetTrainerDiNTSBudget02.search_config, memory_budget=0.8)


class nnUNetTrainerSCNASSearchHippo2D_20x10(nnUNetTrainerSCNASSearch):
    """CPU search of SCNAS for MSD Hippocampus 2d_bs32 (benchmarks/hippocampus_2d.py --method scnas).

    The paper's space (four cell types, 4 nodes, 14 edges, 8 ops), 4:1 split, Adam, tau 10 -> 0.1 linear over the
    epochs. Budget deviations, all forced by 2 CPU cores (about 6 s per weight + architecture iteration at batch
    32 and 8 stem channels): search width channel_mul 0.25 (8 stem channels, paper 48); 20 epochs x 10
    iterations (200 weight and 200 architecture steps; paper 200 epochs); arch_lr 0.03 instead of the paper's
    3e-3, because 200 Adam steps of 3e-3 move a logit by at most 0.6. The export width is nnU-Net's memory target
    (the default)."""
    search_config = replace(SCNASSearchConfig(), channel_mul=0.25, arch_lr=0.03,
                            arch_decoupled_weight_decay=False)  # as recorded: the coupled default before issue 23
    num_epochs_default = 20
    iterations_per_epoch = 10
    val_iterations_per_epoch = 2


class nnUNetTrainerSCNASSearchHippo2D_20x10_JSD(nnUNetTrainerSCNASSearchHippo2D_20x10):
    """The same search with IAC-LTH's JSD stability pruning and early stop at JSDRule's defaults (window 5,
    threshold 1e-3, top 3, gamma 0.5); 20 epochs stay the cap (benchmarks/jsd_saving.py)."""
    search_config = replace(nnUNetTrainerSCNASSearchHippo2D_20x10.search_config, jsd_pruning=JSDRule())


class nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled(nnUNetTrainerSCNASSearchHippo2D_20x10):
    """The signal probe of issue 23 (benchmarks/arch_signal.py): the same search with alpha's weight decay decoupled
    (AdamW's) instead of Adam's L2, which holds a logit where its loss gradient equals 1e-3 times it."""
    search_config = replace(nnUNetTrainerSCNASSearchHippo2D_20x10.search_config, arch_decoupled_weight_decay=True)


class nnUNetTrainerSCNASSearchHippo2D_20x10_DecoupledExp(nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled):
    """The decoupled probe with tau annealed exponentially (10 -> 0.1): half the epochs below tau 1 instead of a
    tenth."""
    search_config = replace(nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled.search_config,
                            temperature_schedule="exponential")


class nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled_nnunet(nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled):
    """Issue 23's SCNAS row with the optional memory term in nnU-Net's terms: at most 1.0 of nnU-Net's planned
    network, the found network counted at its export width (the search width's 68/48 ratio, as the paper's stem)."""
    search_config = replace(nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled.search_config, memory_budget=1.0)


class nnUNetTrainerIACSearchHippo2D_40x5(nnUNetTrainerIACSearch):
    """CPU IAC search for MSD Hippocampus 2d_bs32 (benchmarks/iac_hippocampus.py), on the benchmark's trained
    baseline (nnUNetTrainerNAS_20x50), frozen. The default IAC cell (4 nodes, 8 DARTS ops, K=4 partial channels, edge
    normalisation, one shared genotype, fusion mode) and split; budget deviations forced by 2 CPU cores (about 8 s per
    weight + architecture iteration at batch 32): 40 epochs x 5 iterations stand for IAC's 200 epochs ("full"
    length on the CPU), the first 3 (7.5 %, as 15 of 200) without architecture steps; arch_lr 0.03 instead of
    PC-DARTS's 6e-4 (as the other CPU searches: about 185 architecture steps)."""
    search_config = replace(IACSearchConfig(), arch_lr=0.03)
    host_trainer = "nnUNetTrainerNAS_20x50"
    num_epochs_default = 40
    iterations_per_epoch = 5
    val_iterations_per_epoch = 1


class nnUNetTrainerIACLTHSearchHippo2D_40x5(nnUNetTrainerIACSearchHippo2D_40x5):
    """IAC-LTH: the same search with JSD stability pruning and early stop at JSDRule's defaults (window 5, threshold
    1e-3, top 3, gamma 0.5); the 40 epochs of the full search are the cap."""
    search_config = replace(nnUNetTrainerIACSearchHippo2D_40x5.search_config, jsd_pruning=JSDRule())


class nnUNetTrainerNAS_10x50(_ShortSchedule):
    """Fine-tuning budget of the IAC benchmark: 10 epochs x 50 iterations (half the baseline's), nnU-Net's default
    trainer otherwise. An IAC configuration starts from its trained host (IACUNet loads it)."""
    schedule = (10, 50, 10)


class nnUNetTrainerNAS_10x50_FromModel(nnUNetTrainerNAS_10x50):
    """The control of the IAC benchmark: nnU-Net's network fine-tuned with the same budget, starting from every
    weight of the checkpoint in NNUNET_NAS_BENCH_INIT (segmentation heads included, which nnU-Net's
    -pretrained_weights would re-initialise), so that it starts where the IAC configurations start."""

    def initialize(self):
        super().initialize()
        path = os.environ["NNUNET_NAS_BENCH_INIT"]
        weights = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        net = self.network.module if hasattr(self.network, "module") else self.network
        getattr(net, "_orig_mod", net).load_state_dict(weights)
        self.print_to_log_file(f"initialised from {path}")


# The second searches of issue 23's two-seed agreement (nnunet-nas agreement FIRST SECOND): the same search with
# another seed, under its own trainer name so that its fold folder lies beside the first's.
SECOND_SEED = 23456


class nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25_nnunet_seed2(nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25_nnunet):
    search_seed = SECOND_SEED


class nnUNetTrainerDASTSearchHippo2D_L8D3_20x25_nnunet_seed2(nnUNetTrainerDASTSearchHippo2D_L8D3_20x25_nnunet):
    search_seed = SECOND_SEED


class nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled_seed2(nnUNetTrainerSCNASSearchHippo2D_20x10_Decoupled):
    search_seed = SECOND_SEED


class nnUNetTrainerIACSearchHippo2D_40x5_seed2(nnUNetTrainerIACSearchHippo2D_40x5):
    search_seed = SECOND_SEED
