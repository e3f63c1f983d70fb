"""The two data streams of bi-level search: the fold's training cases split into a weight part and an
architecture part (DARTS / DiNTS "train1 / train2" 1:1, SCNAS 4:1), the fold's validation cases left untouched;
and the architecture stream's loader, built with the trainer's own augmentation."""

from typing import List, Sequence, Tuple

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA


def split_weight_arch(train_keys: Sequence[str], ratio: Tuple[int, int] = (1, 1),
                      seed: int = 12345) -> Tuple[List[str], List[str]]:
    """Deterministic split of a fold's training keys in ``ratio`` = (weight : architecture) parts (sorted, then a
    seeded permutation; the architecture part gets ``n * a // (w + a)`` cases, at least one)."""
    keys = sorted(train_keys)
    w, a = (int(r) for r in ratio)
    if len(keys) < w + a:
        raise ValueError(
            f"This search splits the fold's training cases {w}:{a} between the weights and the architecture, which "
            f"needs at least {w + a} training cases; the fold has {len(keys)}. Add cases to the dataset, use a fold "
            f"with more training cases (check splits_final.json in the preprocessed dataset folder), or set the "
            f"search config's data_split to a smaller ratio such as (1, 1).")
    num_arch = min(len(keys) - 1, max(1, len(keys) * a // (w + a)))
    perm = np.random.RandomState(seed).permutation(len(keys))
    weight = sorted(keys[i] for i in perm[num_arch:])
    arch = sorted(keys[i] for i in perm[:num_arch])
    return weight, arch


def make_arch_dataloader(trainer, dataset):
    """A data stream over ``dataset`` with the trainer's patch, batch size, oversampling and training
    augmentation (the same transforms nnU-Net builds for its weight stream), in a share of nnU-Net's augmentation
    processes (the config's ``arch_data_workers``: nnU-Net's streams already run ``n + n // 2`` of them)."""
    cm = trainer.configuration_manager
    augmentation = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    rotation, dummy_2d, initial_patch, mirror_axes = augmentation
    lm = trainer.label_manager
    transforms = trainer.get_training_transforms(
        cm.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes, dummy_2d,
        use_mask_for_norm=cm.use_mask_for_norm, is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)
    dl = nnUNetDataLoader(dataset, trainer.batch_size, initial_patch, cm.patch_size, lm,
                          oversample_foreground_percent=trainer.oversample_foreground_percent,
                          sampling_probabilities=None, pad_sides=None, transforms=transforms,
                          probabilistic_oversampling=trainer.probabilistic_oversampling)
    n = arch_data_workers(get_allowed_n_proc_DA(), trainer.cfg.arch_data_workers)
    if n == 0:
        return SingleThreadedAugmenter(dl, None)
    return NonDetMultiThreadedAugmenter(dl, None, n, max(6, n // 2), None,
                                        pin_memory=trainer.device.type == "cuda", wait_time=0.002)


def arch_data_workers(nnunet_workers: int, share: float) -> int:
    """Augmentation processes of the architecture stream: ``share`` of nnU-Net's training stream's
    (``nnUNet_n_proc_DA``, rounded down), at least one; none when nnU-Net augments in its own process."""
    return 0 if nnunet_workers <= 0 else max(1, int(nnunet_workers * share))
