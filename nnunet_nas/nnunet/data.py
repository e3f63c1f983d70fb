"""The two data streams of bi-level search: the fold's training cases split into a weight half and an
architecture half (DARTS / DiNTS "train1 / train2"), the fold's validation cases left untouched."""

from typing import List, Sequence, Tuple

import numpy as np


def split_weight_arch(train_keys: Sequence[str], seed: int = 12345) -> Tuple[List[str], List[str]]:
    """Deterministic 50/50 split of a fold's training keys (sorted, then a seeded permutation)."""
    keys = sorted(train_keys)
    if len(keys) < 2:
        raise ValueError(
            f"Architecture search needs at least 2 training cases in the fold (one for the weights, one for the "
            f"architecture), got {len(keys)}. Add cases to the dataset or use a fold with more training cases "
            f"(check splits_final.json in the preprocessed dataset folder).")
    perm = np.random.RandomState(seed).permutation(len(keys))
    half = len(keys) // 2
    weight = sorted(keys[i] for i in perm[half:])
    arch = sorted(keys[i] for i in perm[:half])
    return weight, arch
