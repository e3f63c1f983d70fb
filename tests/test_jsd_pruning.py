"""JSD stability pruning and early stop (strategies/jsd_pruning.py) on hand-made alpha trajectories, and on a real
search network (mask shape, resume of its state)."""

import math

import numpy as np
import pytest
import torch

from nnunet_nas.strategies.base import SearchProgress
from nnunet_nas.strategies.jsd_pruning import (JSDRule, JSDStabilityPruning, calibration_note, importance,
                                               js_divergence, noise_floor, restrict)


def test_js_divergence_by_hand():
    assert js_divergence([0.2, 0.8], [0.2, 0.8]) == 0.0
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: the base-2 maximum
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); KL(p||m) = log2(4/3), KL(q||m) = (log2(2/3) + log2(2)) / 2
    expected = 0.5 * math.log2(4 / 3) + 0.25 * (math.log2(2 / 3) + 1.0)
    assert js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(expected)
    assert js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(js_divergence([0.5, 0.5], [1, 0]))


def test_importance_and_restriction_ignore_pruned_ops():
    p = importance([0.0, math.log(3.0), 5.0], [True, True, False])
    assert p == pytest.approx([0.25, 0.75, 0.0])
    assert restrict([0.2, 0.3, 0.5], [True, True, False]) == pytest.approx([0.4, 0.6, 0.0])


def _run(trajectory, rule, keys=None, kept=None, min_epoch=0):
    """Feed epochs of logits ``[edges, N]``; returns the strategy and the prune events as (epoch, edge, ops)."""
    s = JSDStabilityPruning(rule)
    alive = np.ones(np.asarray(trajectory[0]).shape, dtype=bool)
    for t, logits in enumerate(trajectory):
        new = s.observe(np.asarray(logits, dtype=np.float64), alive, t, min_epoch,
                        (keys[t] if keys else "same", kept))
        if new is not None:
            alive = new
    return s, [(e["epoch"], e["edge"], e["pruned"]) for e in s.events], alive


STABLE = [2.0, 1.0, 0.0, -3.0]  # p = 0.705, 0.259, 0.095, 0.005


def test_stable_edge_is_pruned_after_the_window_drifting_and_oscillating_edges_never():
    epochs = 8
    drifting = [[0.0, 0.4 * t, 0.0, 0.0] for t in range(epochs)]
    oscillating = [[1.0, 0.0, 0.0, 0.0] if t % 2 else [0.0, 1.0, 0.0, 0.0] for t in range(epochs)]
    traj = [[STABLE, drifting[t], oscillating[t]] for t in range(epochs)]
    s, events, alive = _run(traj, JSDRule(window=2, threshold=1e-3, early_stop=False))
    # epoch 2: the window (2 earlier snapshots) is full; ops 2 and 3 lie below gamma / 4 = 0.125; the history
    # restarts, so nothing more can happen before epoch 4, where the survivors (0.73 / 0.27 > 0.25) stay
    assert events == [(2, 0, [2, 3])]
    assert alive[0].tolist() == [True, True, False, False]
    assert alive[1].all() and alive[2].all()
    assert s.scores[1] > 1e-3 and s.scores[2] > 0.1
    assert s.trajectory["alive"][1] == [4, 4, 4] and s.trajectory["alive"][2] == [2, 4, 4]  # per epoch, per edge


def test_at_most_half_the_ops_per_event_and_never_the_argmax():
    # gamma = 1: every op below the uniform share is a candidate; 5 ops -> at most ceil(5/2) = 3, the weakest first
    s, events, _ = _run([[[3.0, -1.0, -2.0, -3.0, 0.0]]] * 2, JSDRule(window=1, gamma=1.0, early_stop=False))
    assert events == [(1, 0, [1, 2, 3])]
    # a flat edge: nothing lies below the uniform share, nothing is pruned
    s, events, _ = _run([[[0.0, 0.0, 0.0]]] * 4, JSDRule(window=1, gamma=1.0, early_stop=False))
    assert events == []
    # pruning runs down to the argmax alone, never below one op
    s, events, alive = _run([[[0.0, -4.0]]] * 6, JSDRule(window=1, gamma=1.0, early_stop=False))
    assert events == [(1, 0, [1])] and alive[0].tolist() == [True, False]


def test_top_k_set_must_hold_over_the_window():
    # alpha moves so little that JS stays below the threshold, but ops 2 and 3 swap places inside the top 3
    a, b = [1.0, 0.5, 0.01, 0.0, -5.0], [1.0, 0.5, 0.0, 0.01, -5.0]
    s, events, _ = _run([[a], [a], [b]], JSDRule(window=2, threshold=1e-2, top_k=2, early_stop=False))
    assert events == [(2, 0, [4])]  # top 2 unchanged: stable
    s, events, _ = _run([[[1.0, 0.01, 0.0, -5.0]], [[1.0, 0.01, 0.0, -5.0]], [[1.0, 0.0, 0.01, -5.0]]],
                        JSDRule(window=2, threshold=1e-2, top_k=2, early_stop=False))
    assert events == [] and s.scores[0] < 1e-2  # JS small, top 2 changed: not stable


def test_stop_fires_exactly_when_the_genotype_and_its_edges_hold_for_the_window():
    rule = JSDRule(window=2, threshold=1e-3)
    drifting = [[0.0, 0.4 * t, 0.0, 0.0] for t in range(10)]
    traj = [[STABLE, drifting[t]] for t in range(10)]
    keys = ["a", "b", "a", "b", "b", "b", "b", "b", "b", "b"]
    # a drifting edge in the genotype blocks the stop
    s, _, _ = _run(traj, rule, keys)
    assert s.stop_epoch is None
    # only the stable edge counts: the genotype last changed at epoch 3, so it is constant over epochs 3, 4, 5
    s, _, _ = _run(traj, rule, keys, kept=np.array([True, False]))
    assert s.stop_epoch == 5 and s.stop_now
    # min_epoch postpones it; early_stop=False never stops
    s, _, _ = _run(traj, rule, keys, kept=np.array([True, False]), min_epoch=7)
    assert s.stop_epoch == 7
    s, _, _ = _run(traj, JSDRule(window=2, early_stop=False), keys, kept=np.array([True, False]))
    assert s.stop_epoch is None


def test_noise_floor_grows_with_lr_squared_times_steps_and_the_log_warns_where_it_passes_the_threshold():
    """An edge with no signal walks by about arch_lr per Adam step: its S_e scales with lr^2 x steps per epoch. At
    NAS_METHODS 2.2's calibration (lr 6e-4, 250 steps) it is far below tau = 1e-3; at the CPU benchmark's (0.03, 5
    steps: 50x the product) above it, and the log line says so."""
    rule = JSDRule()
    paper = noise_floor(rule, 6e-4, (0.5, 0.999), 250)
    cpu = noise_floor(rule, 0.03, (0.5, 0.999), 5)
    assert paper < rule.threshold / 10 < rule.threshold < cpu
    assert 35 < cpu / paper < 65
    assert noise_floor(rule, 0.03, (0.5, 0.999), 5) == cpu  # deterministic
    assert "above the threshold" not in calibration_note(rule, 6e-4, (0.5, 0.999), 250, 8)
    note = calibration_note(rule, 0.03, (0.5, 0.999), 5, 8)
    assert "above the threshold" in note and "nothing will be pruned" in note


def test_threshold_scaled_to_arch_lr_keeps_the_noise_floor_below_it_by_the_same_factor():
    """JSDRule.for_arch_lr: threshold x (lr / 6e-4)^2. The floor of a signal-free edge grows with lr^2 too, so at
    DiNTS's and SCNAS's learning rates (nnU-Net's 250 steps per epoch) it stays as far below the scaled threshold as
    PC-DARTS's floor below 1e-3; with the unscaled default it would be above, and nothing would ever be pruned."""
    betas = (0.5, 0.999)
    margin = JSDRule().threshold / noise_floor(JSDRule(), 6e-4, betas, 250)
    assert JSDRule.for_arch_lr(6e-4) == JSDRule()
    for lr in (3e-3, 0.008):
        rule = JSDRule.for_arch_lr(lr, window=5)
        assert rule.threshold == pytest.approx(1e-3 * (lr / 6e-4) ** 2)
        floor = noise_floor(rule, lr, betas, 250)
        assert JSDRule().threshold < floor and rule.threshold / floor == pytest.approx(margin, rel=0.3)


def test_rule_rejects_bad_parameters():
    with pytest.raises(ValueError, match="window"):
        JSDRule(window=0).validate()
    with pytest.raises(ValueError, match="gamma"):
        JSDRule(gamma=0.0).validate()


def _scnas_search_network():
    from nnunet_nas.arch.weighting import GumbelPairWeighting
    from nnunet_nas.config import SCNASSearchConfig
    from nnunet_nas.methods.scnas import build_arch_params, build_supernet
    from nnunet_nas.nnunet.search_network import SearchNetwork
    cfg = SCNASSearchConfig(channel_mul=0.125, num_nodes=2)
    supernet = build_supernet(cfg, "scnas_2d", 1, 2, 2, False)
    return SearchNetwork(supernet, build_arch_params(cfg, supernet, "scnas_2d"), GumbelPairWeighting(5.0))


def test_on_a_search_network_the_mask_has_op_logits_shape_and_the_state_resumes():
    torch.manual_seed(0)
    net = _scnas_search_network()
    shape = tuple(net.arch.op_logits.shape)
    rule = JSDRule(window=1, threshold=1.0, gamma=1.0, early_stop=False)  # everything stable: prune at once
    progress = [SearchProgress(epoch, 6, 1, 0, 10) for epoch in range(6)]
    full = JSDStabilityPruning(rule)
    assert full.on_epoch_end(net, progress[0]) is None  # warm-up epoch: not recorded
    assert full.on_epoch_end(net, progress[1]) is None  # one snapshot: window not full
    with torch.no_grad():
        net.arch.op_logits.add_(torch.randn(shape))
    mask = full.on_epoch_end(net, progress[2])
    assert mask is not None and tuple(mask.shape) == shape and mask.any(-1).all() and not mask.all()
    # the winner of every edge survives
    assert mask.flatten(0, -2)[torch.arange(mask[..., 0].numel()),
                                net.arch.op_logits.detach().flatten(0, -2).argmax(-1)].all()
    net.arch.set_alive_ops(mask)
    resumed = JSDStabilityPruning(rule)
    resumed.load_state_dict(full.state_dict())
    with torch.no_grad():
        net.arch.op_logits.add_(0.01 * torch.randn(shape))
    a, b = full.on_epoch_end(net, progress[3]), resumed.on_epoch_end(net, progress[3])
    assert (a is None and b is None) or torch.equal(a, b)
    assert full.state_dict() == resumed.state_dict()
    assert set(full.history()) == {"jsd_max_score", "jsd_stable_edges", "jsd_alive_ops"}


def test_the_strategy_writes_its_calibration_note_to_the_search_log_at_start():
    from types import SimpleNamespace

    from nnunet_nas.strategies.base import SearchProgress
    lines = []
    strategy = JSDStabilityPruning(JSDRule(), arch_optimizer=(0.03, (0.5, 0.999)))
    strategy.log = lines.append
    net = SimpleNamespace(arch=SimpleNamespace(op_logits=np.zeros((3, 8))))
    strategy.on_search_start(net, SearchProgress(epoch=0, num_epochs=4, warmup_epochs=2, arch_steps=0,
                                                 arch_steps_total=10))
    assert lines == [calibration_note(JSDRule(), 0.03, (0.5, 0.999), 5, 8)]
    JSDStabilityPruning(JSDRule()).on_search_start(net, None)  # no optimiser given, no log: nothing to say
