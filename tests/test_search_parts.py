"""Pieces of the shared search machinery that need no nnU-Net run."""

import pytest

from nnunet_nas.nnunet.data import split_weight_arch


def test_weight_arch_split_is_deterministic_disjoint_and_complete():
    keys = [f"case_{i:03d}" for i in range(11)]
    w, a = split_weight_arch(keys)
    assert split_weight_arch(list(reversed(keys))) == (w, a)
    assert set(w).isdisjoint(a) and sorted(w + a) == keys and (len(w), len(a)) == (6, 5)


def test_fold_with_too_few_training_cases_is_refused():
    with pytest.raises(ValueError, match="needs at least 2 training cases; the fold has 1"):
        split_weight_arch(["only_one"])
    with pytest.raises(ValueError, match="training cases 4:1.*at least 5 training cases; the fold has 4"):
        split_weight_arch(["a", "b", "c", "d"], (4, 1))
