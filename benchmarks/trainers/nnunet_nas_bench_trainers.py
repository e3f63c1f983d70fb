# Trainers of the real-data CPU benchmark (benchmarks/hippocampus_2d.py, BENCHMARKS.md).
# Found through nnUNet_extTrainer="$(nnunet-nas trainer-dir):<repo>/benchmarks/trainers".
# Keep it tiny: nnU-Net imports every module here by bare name. Class names are unique and contain no "__".
from dataclasses import replace

from nnunet_nas.config import DiNTSSearchConfig
from nnunet_nas.nnunet.trainers import nnUNetTrainerDiNTSSearch


class nnUNetTrainerDiNTSSearchHippo2D_L8D3(nnUNetTrainerDiNTSSearch):
    """CPU search for MSD Hippocampus 2d_bs32 (first, loaded-machine run; BENCHMARKS.md now uses the 40x25 variant).

    L=8 blocks, D=3 levels (patch 56x40 -> 64x48), search width channel_mul 0.125, retrained at twice the
    search width (0.25, as the paper's 2x). Memory budget: the default sigma. 6 epochs x 8 iterations,
    half warm-up (24 weight-only, 24 weight+architecture iterations), 2 validation iterations per epoch.
    arch_lr 0.03 (not the paper's 0.008): with so few architecture steps, 0.008 barely moves the logits.
    """
    search_config = replace(DiNTSSearchConfig(), num_blocks=8, num_depths=3, channel_mul=0.125,
                            export_channel_mul=0.25, arch_lr=0.03)
    num_epochs_default = 6
    iterations_per_epoch = 8
    val_iterations_per_epoch = 2
    save_every_default = 1


class nnUNetTrainerDiNTSSearchHippo2D_L8D3_40x25(nnUNetTrainerDiNTSSearchHippo2D_L8D3):
    """The same space on an idle machine with a 20 times larger budget: 40 epochs x 25 iterations, half warm-up
    (500 weight-only, 500 weight+architecture iterations)."""
    num_epochs_default = 40
    iterations_per_epoch = 25
