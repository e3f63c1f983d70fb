"""Pieces of the shared search machinery that need no nnU-Net run."""

from dataclasses import replace

import pytest
import torch

from nnunet_nas.config import IACSearchConfig, SCNASSearchConfig
from nnunet_nas.nnunet.data import split_weight_arch
from nnunet_nas.nnunet.search_trainer import make_arch_optimizer
from nnunet_nas.strategies.pruning import rebuild_optimizer


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


def _steps_under_constant_gradient(cfg, grad: float, steps: int) -> float:
    alpha = torch.nn.Parameter(torch.zeros(1))
    opt = make_arch_optimizer([alpha], cfg)
    for _ in range(steps):
        alpha.grad = torch.full_like(alpha, grad)
        opt.step()
    return alpha.item()


def test_coupled_weight_decay_holds_a_weak_gradient_at_g_over_wd_and_iac_decouples_it():
    """A loss gradient g = -1e-4 on a logit (IAC's measured scale behind its zero-initialised cell output). With
    DARTS's coupled L2 (wd 1e-3) Adam settles where g + wd * alpha = 0, alpha = 0.1, whatever the step count; the
    decoupled decay (IAC's default) shrinks alpha by lr * wd per step only, so Adam's normalised steps add up."""
    iac = replace(IACSearchConfig(), arch_lr=0.03)
    literal = replace(iac, arch_decoupled_weight_decay=False)
    assert iac.arch_decoupled_weight_decay and not SCNASSearchConfig().arch_decoupled_weight_decay
    assert _steps_under_constant_gradient(literal, -1e-4, 1000) == pytest.approx(0.1, abs=0.03)
    assert _steps_under_constant_gradient(literal, -1e-4, 2000) == pytest.approx(0.1, abs=0.03)
    assert _steps_under_constant_gradient(iac, -1e-4, 1000) > 25.0  # 1000 steps of about lr, less a 3 % decay


def test_the_arch_optimizer_keeps_its_decoupled_decay_when_pruning_rebuilds_it():
    alpha = [torch.nn.Parameter(torch.zeros(3))]
    opt = rebuild_optimizer(make_arch_optimizer(alpha, IACSearchConfig()), alpha)
    assert opt.param_groups[0]["decoupled_weight_decay"] and opt.param_groups[0]["weight_decay"] == 1e-3
