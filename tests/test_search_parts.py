"""Pieces of the shared search machinery that need no nnU-Net run."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_nas.arch.params import CellArchParams
from nnunet_nas.arch.weighting import GumbelSoftmaxWeighting
from nnunet_nas.config import IACSearchConfig, SCNASSearchConfig, SearchConfig
from nnunet_nas.errors import ConfigError
from nnunet_nas.nnunet.data import split_weight_arch
from nnunet_nas.nnunet.search_trainer import NASSearchTrainer, make_arch_optimizer, outputs_on_host
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
    decoupled decay (IAC's and SCNAS's default) shrinks alpha by lr * wd per step only, so Adam's normalised steps add
    up."""
    iac = replace(IACSearchConfig(), arch_lr=0.03)
    literal = replace(iac, arch_decoupled_weight_decay=False)
    assert iac.arch_decoupled_weight_decay and SCNASSearchConfig().arch_decoupled_weight_decay
    assert _steps_under_constant_gradient(literal, -1e-4, 1000) == pytest.approx(0.1, abs=0.03)
    assert _steps_under_constant_gradient(literal, -1e-4, 2000) == pytest.approx(0.1, abs=0.03)
    assert _steps_under_constant_gradient(iac, -1e-4, 1000) > 25.0  # 1000 steps of about lr, less a 3 % decay


def test_the_arch_optimizer_keeps_its_decoupled_decay_when_pruning_rebuilds_it():
    alpha = [torch.nn.Parameter(torch.zeros(3))]
    opt = rebuild_optimizer(make_arch_optimizer(alpha, IACSearchConfig()), alpha)
    assert opt.param_groups[0]["decoupled_weight_decay"] and opt.param_groups[0]["weight_decay"] == 1e-3


def test_the_architecture_stream_takes_a_share_of_nnunets_augmentation_workers(monkeypatch):
    """nnU-Net's default 12 workers run its training stream (12) and validation stream (6); the architecture stream
    adds half of 12 by default (24 processes in all, not 30), at least one, and none where nnU-Net augments in its own
    process."""
    from nnunet_nas.nnunet import data
    assert SearchConfig().arch_data_workers == 0.5
    assert [data.arch_data_workers(n, 0.5) for n in (12, 8, 3, 1, 0)] == [6, 4, 1, 1, 0]
    assert data.arch_data_workers(12, 1.0) == 12 and data.arch_data_workers(12, 0.01) == 1
    made = []
    monkeypatch.setattr(data, "nnUNetDataLoader", lambda *a, **k: "loader")
    monkeypatch.setattr(data, "NonDetMultiThreadedAugmenter", lambda dl, tr, n, *a, **k: made.append(n) or "mt")
    monkeypatch.setattr(data, "SingleThreadedAugmenter", lambda dl, tr: made.append(0) or "st")
    lm = SimpleNamespace(foreground_labels=[1], has_regions=False, foreground_regions=None, ignore_label=None)
    trainer = SimpleNamespace(
        configuration_manager=SimpleNamespace(patch_size=[8, 8], use_mask_for_norm=[False]), label_manager=lm,
        configure_rotation_dummyDA_mirroring_and_inital_patch_size=lambda: (None, False, [8, 8], None),
        get_training_transforms=lambda *a, **k: None, _get_deep_supervision_scales=lambda: None, is_cascaded=False,
        batch_size=2, oversample_foreground_percent=0.33, probabilistic_oversampling=False, device=torch.device("cpu"),
        cfg=SearchConfig())
    for n in (12, 0):
        monkeypatch.setattr(data, "get_allowed_n_proc_DA", lambda: n)
        data.make_arch_dataloader(trainer, dataset=None)
    trainer.cfg = replace(SearchConfig(), arch_data_workers=0.25)
    monkeypatch.setattr(data, "get_allowed_n_proc_DA", lambda: 12)
    data.make_arch_dataloader(trainer, dataset=None)
    assert made == [6, 0, 3]
    for bad in (0, 1.5, -0.5):
        with pytest.raises(ConfigError, match=r"arch_data_workers=.* must be a finite number \(0, 1\]"):
            replace(SearchConfig(), arch_data_workers=bad).validate()


def test_a_checkpoint_from_before_arch_data_workers_resumes():
    """The field is new: a checkpoint without it resumes under today's default (only the fields a checkpoint holds
    are compared)."""
    from nnunet_nas.nnunet.search_state import differing_settings
    cfg = IACSearchConfig()
    old = cfg.to_dict()
    del old["arch_data_workers"]
    settings = {"method": "iac", "op_set": "darts_3d"}
    assert differing_settings({**settings, "search_config": old}, {**settings, "search_config": cfg.to_dict()}) == []


def test_alpha_checks_and_step_values_stay_on_an_accelerator_until_the_epoch_ends():
    """Per architecture step on an accelerator: alpha's finiteness as device flags, no read; at the epoch's end one
    check with today's error. On the CPU the check stays per step. Step values are read once per epoch, as the numpy
    arrays a per-step read gave."""
    arch = CellArchParams(1, 2, 3)
    net = SimpleNamespace(arch=arch)
    trainer = SimpleNamespace(device=torch.device("cuda"), _arch_finite=None, _unwrap=lambda: net)
    message = "Architecture parameter op_logits contains NaN/inf after an update"
    for value in (0.0, float("nan"), 0.0):  # NaN at the second step only: the epoch's flag keeps it
        with torch.no_grad():
            arch.op_logits[0, 1, 2] = value
        NASSearchTrainer._note_arch_finite(trainer, net)  # no raise, no read
    assert all(isinstance(f, torch.Tensor) for f in trainer._arch_finite.values())
    with pytest.raises(FloatingPointError, match=message):
        NASSearchTrainer.on_train_epoch_end(trainer, [])
    assert trainer._arch_finite is None  # the next epoch starts afresh
    trainer.device = torch.device("cpu")
    with torch.no_grad():
        arch.op_logits[0, 1, 2] = float("inf")
    with pytest.raises(FloatingPointError, match=message):
        NASSearchTrainer._note_arch_finite(trainer, net)

    steps = [{"loss": np.array(0.5 + i, dtype=np.float32), "arch_loss": torch.tensor(1.5 + i),
              "reg_memory": torch.tensor(0.25 * i, dtype=torch.float32)} for i in range(3)]
    per_step = [{k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in o.items()}
                for o in steps]
    on_host = outputs_on_host(steps)
    assert all(isinstance(o["arch_loss"], torch.Tensor) for o in steps)  # the steps' own dicts are left alone
    for a, b in zip(on_host, per_step):
        assert a.keys() == b.keys()
        for k in a:
            assert type(a[k]) is type(b[k]) and a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
            assert np.array_equal(a[k], b[k])
    collated, expected = collate_outputs(on_host), collate_outputs(per_step)
    assert all(np.array_equal(collated[k], expected[k]) for k in expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a GPU matter")
def test_a_gumbel_forward_and_the_finiteness_flags_do_not_sync_the_host():
    arch = CellArchParams(2, 3, 4).cuda()
    weighting = GumbelSoftmaxWeighting(2.0)
    weighting.seed(1)
    trainer = SimpleNamespace(device=torch.device("cuda"), _arch_finite=None)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            loss = weighting(arch).square().sum()
            loss.backward()
            NASSearchTrainer._note_arch_finite(trainer, SimpleNamespace(arch=arch))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(bool(f) for f in trainer._arch_finite.values())
