"""Jensen-Shannon stability pruning and early stop (IAC-LTH), a strategy every method can switch on.

IAC-LTH's public text names the idea (per-edge operation-importance distributions, a JSD stability criterion,
progressive pruning of low-importance ops, early stop) but not its parameters; this is the explicit formulation
of NAS_METHODS.md section 2.2 [ours], with every free parameter in :class:`JSDRule`:

1. Importance of op ``o`` on edge ``e`` at epoch ``t``: ``p_e^t(o) = softmax(alpha_e / T)`` over the ops still
   alive, a snapshot after the epoch's last architecture step (architecture epochs only; warm-up epochs, whose
   alpha does not move, are not recorded).
2. ``JS(p || q)`` with base-2 logs (in [0, 1]); an older snapshot is restricted to today's alive ops and
   renormalised.
3. Edge score ``S_e(t) = max_{k=1..W} JS(p_e^t || p_e^{t-k})``. The edge is *stable* when ``S_e <= threshold``,
   its top-k set (``k = min(top_k, alive)``) is the same in all ``W + 1`` snapshots, and ``t >= min_epoch``
   (default: warm-up epochs + W).
4. A stable edge drops every op with ``p < gamma / |alive|``, at most ``ceil(|alive| / 2)`` per event, never its
   argmax; its history then restarts from the current (restricted) snapshot, so the next prune needs W fresh
   epochs. The trainer masks the pruned ops and, where the space can (SCNAS cells), removes their modules and their
   optimiser state (:mod:`.pruning`).
5. Stop when the discrete genotype has been the same for the last ``W + 1`` epochs (W unchanged transitions) and
   every edge the genotype uses is down to one op or has ``S_e <= threshold`` with an argmax unchanged over the
   window. The trainer's epoch count is the hard cap.

Decisions are functions of alpha (identical on every DDP rank); the trainer still takes rank 0's. The whole state
(snapshots, genotype keys, scores, trajectory, stop epoch) goes into the search checkpoint, so ``--c`` resumes
the same decisions.
"""

import copy
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from nnunet_nas.strategies.base import SearchProgress, SearchStrategy


CALIBRATION_ARCH_LR = 6e-4  # the architecture learning rate the default threshold is calibrated for [PC-DARTS]


@dataclass(frozen=True)
class JSDRule:
    """Free parameters of the JSD rule (NAS_METHODS.md 2.2 defaults)."""
    window: int = 5  # W: snapshots compared with the current one
    threshold: float = 1e-3  # tau on S_e
    top_k: int = 3  # the top-k set must not change over the window
    gamma: float = 0.5  # prune ops with p < gamma / |alive|
    min_epoch: Optional[int] = None  # no decision before this epoch; None: warm-up epochs + window
    temperature: float = 1.0  # T of the importance softmax
    early_stop: bool = True  # False: prune only, run every epoch

    @classmethod
    def for_arch_lr(cls, arch_lr: float, **kwargs) -> "JSDRule":
        """The rule with its threshold scaled to another architecture learning rate: ``threshold * (arch_lr /
        6e-4) ** 2``. The default threshold is calibrated at PC-DARTS's 6e-4 (NAS_METHODS 2.2); Adam moves the
        logits by steps proportional to the learning rate and JS grows with their square, so this scaling makes the
        same decisions on a trajectory that is the same up to the step size (e.g. DiNTS at 0.008: 0.18)."""
        threshold = kwargs.pop("threshold", cls.threshold)
        return cls(threshold=threshold * (arch_lr / CALIBRATION_ARCH_LR) ** 2, **kwargs)

    def validate(self, source: str = "JSDRule") -> "JSDRule":
        """One :class:`~nnunet_nas.errors.ConfigError` naming the first field out of range (checked when a search
        starts, not when the rule is created)."""
        from nnunet_nas.config import JSD_RULES
        from nnunet_nas.config_rules import check_fields
        check_fields(self, JSD_RULES, source)
        return self


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence of two distributions over the same ops, base-2 logs (0 .. 1)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def noise_floor(rule: JSDRule, arch_lr: float, arch_betas: Tuple[float, float], steps_per_epoch: int,
                num_ops: int = 8, trials: int = 256, seed: int = 0) -> float:
    """Median ``S_e`` of an edge with no architecture signal: Adam (``arch_lr``, ``arch_betas``, ``steps_per_epoch``
    steps between snapshots) fed zero-mean Gaussian gradients, from zero logits, over ``W + 1`` snapshots.

    Adam's normalised steps make that edge walk by about ``arch_lr`` per step whatever the gradient's scale, so its
    score grows with ``arch_lr ** 2 * steps_per_epoch`` (times about ``W``): 7e-5 at the calibration of NAS_METHODS
    2.2 (PC-DARTS's 6e-4, 250 nnU-Net iterations per epoch, W 5; 15x below the default threshold), 3e-3 at 0.03
    and 5 steps. Where the floor is above ``threshold`` a converged edge is not called stable, so nothing is pruned
    and the search never stops early. Deterministic (own generator, plain Adam without weight decay)."""
    rng = np.random.default_rng(seed)
    b1, b2 = arch_betas
    a, m, v = (np.zeros((trials, num_ops)) for _ in range(3))
    snapshots = []
    for t in range(1, (rule.window + 1) * steps_per_epoch + 1):
        g = rng.standard_normal(a.shape)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        a -= arch_lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
        if t % steps_per_epoch == 0:
            z = np.exp((a - a.max(axis=1, keepdims=True)) / rule.temperature)
            snapshots.append(z / z.sum(axis=1, keepdims=True))
    now = snapshots[-1]
    scores = [max(js_divergence(now[i], q[i]) for q in snapshots[:-1]) for i in range(trials)]
    return float(np.median(scores))


def calibration_note(rule: JSDRule, arch_lr: float, arch_betas: Tuple[float, float], steps_per_epoch: int,
                     num_ops: int) -> str:
    """A log line comparing :func:`noise_floor` at this schedule with the threshold; where the floor is above it
    (the rule cannot call a converged edge stable) the line says so and what to change."""
    floor = noise_floor(rule, arch_lr, arch_betas, steps_per_epoch, num_ops)
    line = (f"JSD rule: an edge with no architecture signal scores S_e about {floor:.2g} at this schedule (arch_lr "
            f"{arch_lr:g}, {steps_per_epoch} architecture steps per epoch, window {rule.window}); threshold "
            f"{rule.threshold:g}")
    if floor <= rule.threshold:
        return line
    return (line + ". The floor is above the threshold, so converged edges are not called stable: nothing will be "
            "pruned and the search will not stop early. Use a lower arch_lr or more iterations per epoch, or raise "
            f"the threshold (JSDRule(threshold=...), at least {floor:.2g}).")


def importance(logits, alive, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` over the alive ops of one edge, 0 on pruned ones."""
    logits, alive = np.asarray(logits, dtype=np.float64), np.asarray(alive, dtype=bool)
    z = np.where(alive, logits / temperature, -np.inf)
    z = np.exp(z - z[alive].max())
    return z / z.sum()


def restrict(p, alive) -> np.ndarray:
    """A snapshot restricted to the ops alive now, renormalised (rule 2)."""
    p = np.where(np.asarray(alive, dtype=bool), np.asarray(p, dtype=np.float64), 0.0)
    return p / p.sum()


def _top(p, alive, k) -> frozenset:
    order = [int(o) for o in np.argsort(-np.asarray(p), kind="stable") if alive[o]]
    return frozenset(order[:min(k, len(order))])


_STATE_KEYS = ("snapshots", "genotypes", "scores", "stable", "argmax_fixed", "events", "trajectory", "stop_now",
               "stop_epoch")


class JSDStabilityPruning(SearchStrategy):
    """The rule above on ``net.arch.op_logits`` ``[..., N]`` (every leading index is one edge).

    ``genotype_fn(net) -> (key, kept)``: a hashable key of the current discrete genotype and a bool array (the
    leading shape of ``op_logits``) of the edges it uses, ``None`` for all; without it the key is every edge's
    argmax and every edge counts. ``arch_optimizer``: the architecture optimiser's ``(lr, betas)``; with it the
    search's log starts with :func:`calibration_note` (whether the rule can call a converged edge stable at this
    schedule).
    """
    name = "jsd_stability"

    def __init__(self, rule: JSDRule = JSDRule(), genotype_fn: Optional[Callable] = None,
                 arch_optimizer: Optional[Tuple[float, Tuple[float, float]]] = None):
        self.rule, self.genotype_fn, self.arch_optimizer = rule, genotype_fn, arch_optimizer
        self.snapshots: List[List[List[float]]] = []  # per edge, the last W + 1 importance distributions
        self.genotypes: List[str] = []  # keys of the last W + 1 genotypes
        self.scores: List[float] = []  # S_e of the last epoch (nan: fewer than W + 1 snapshots)
        self.stable: List[bool] = []
        self.argmax_fixed: List[bool] = []  # argmax the same over the last W + 1 snapshots
        self.events: List[dict] = []  # {"epoch", "edge", "pruned": [op indices]}
        self.trajectory = {"epoch": [], "score": [], "alive": []}  # per recorded epoch, per edge
        self.stop_now = False
        self.stop_epoch: Optional[int] = None

    def on_search_start(self, net, progress: SearchProgress) -> None:
        if self.arch_optimizer is not None:
            lr, betas = self.arch_optimizer
            self.note(calibration_note(self.rule, lr, betas, progress.arch_steps_per_epoch,
                                       net.arch.op_logits.shape[-1]))

    # ------------------------------------------------------------------ the rule, on plain arrays
    def observe(self, logits: np.ndarray, alive: np.ndarray, epoch: int, min_epoch: int,
                genotype: Tuple[str, Optional[np.ndarray]]) -> Optional[np.ndarray]:
        """One epoch's snapshot of ``logits`` / ``alive`` (``[edges, N]``); returns the new alive mask when an op
        was pruned, else None. ``genotype``: ``(key, kept edges or None)``."""
        r = self.rule
        num_edges = logits.shape[0]
        alive = np.array(alive, dtype=bool)
        if not self.snapshots:
            self.snapshots = [[] for _ in range(num_edges)]
        self.scores, self.stable, self.argmax_fixed = [], [], []
        pruned_any = False
        for e in range(num_edges):
            p = importance(logits[e], alive[e], r.temperature)
            history = [restrict(q, alive[e]) for q in self.snapshots[e]][-r.window:]
            self.snapshots[e] = [list(q) for q in history] + [list(p)]
            if len(history) < r.window:
                score, stable, fixed = float("nan"), False, False
            else:
                score = max(js_divergence(p, q) for q in history)
                top = _top(p, alive[e], r.top_k)
                fixed = all(int(np.argmax(q)) == int(np.argmax(p)) for q in history)
                stable = (score <= r.threshold and epoch >= min_epoch
                          and all(_top(q, alive[e], r.top_k) == top for q in history))
            self.scores.append(score)
            self.stable.append(bool(stable))
            self.argmax_fixed.append(bool(fixed))
            if stable and alive[e].sum() > 1:
                drop = self._to_prune(p, alive[e])
                if drop:
                    alive[e, drop] = False
                    pruned_any = True
                    self.events.append({"epoch": int(epoch), "edge": e, "pruned": drop})
                    self.snapshots[e] = [list(restrict(p, alive[e]))]  # W fresh epochs before the next prune
        self.trajectory["epoch"].append(int(epoch))
        self.trajectory["score"].append(list(self.scores))
        self.trajectory["alive"].append([int(a) for a in alive.sum(axis=1)])
        self._update_stop(genotype, alive, epoch, min_epoch)
        return alive if pruned_any else None

    def _to_prune(self, p: np.ndarray, alive: np.ndarray) -> List[int]:
        n = int(alive.sum())
        best = int(np.argmax(p))
        weak = [o for o in np.argsort(p, kind="stable") if alive[o] and o != best and p[o] < self.rule.gamma / n]
        return sorted(int(o) for o in weak[:math.ceil(n / 2)])

    def _update_stop(self, genotype, alive: np.ndarray, epoch: int, min_epoch: int) -> None:
        key, kept = genotype
        self.genotypes = (self.genotypes + [key])[-(self.rule.window + 1):]
        if not self.rule.early_stop or self.stop_now or epoch < min_epoch:
            return
        if len(self.genotypes) <= self.rule.window or len(set(self.genotypes)) != 1:
            return
        edges = range(alive.shape[0]) if kept is None else np.flatnonzero(np.asarray(kept).reshape(-1))
        if all(alive[e].sum() == 1 or (self.scores[e] <= self.rule.threshold and self.argmax_fixed[e])
               for e in edges):
            self.stop_now, self.stop_epoch = True, int(epoch)

    # ------------------------------------------------------------------ strategy hooks
    def on_epoch_end(self, net, progress: SearchProgress):
        if progress.epoch < progress.warmup_epochs:  # alpha has not moved yet
            return None
        import torch
        arch = net.arch
        shape = tuple(arch.op_logits.shape)
        logits = arch.op_logits.detach().float().cpu().numpy().reshape(-1, shape[-1])
        alive = (np.ones(logits.shape, dtype=bool) if arch.alive_ops is None
                 else arch.alive_ops.cpu().numpy().reshape(logits.shape))
        min_epoch = progress.warmup_epochs + self.rule.window if self.rule.min_epoch is None else self.rule.min_epoch
        genotype = self.genotype_fn(net) if self.genotype_fn is not None else (
            ",".join(str(int(i)) for i in np.where(alive, logits, -np.inf).argmax(axis=1)), None)
        new_alive = self.observe(logits, alive, progress.epoch, min_epoch, genotype)
        return None if new_alive is None else torch.from_numpy(new_alive.reshape(shape))

    def should_stop(self, net, progress: SearchProgress) -> bool:
        return self.stop_now

    def history(self):
        scores = [s for s in self.scores if not math.isnan(s)]
        alive = self.trajectory["alive"][-1] if self.trajectory["alive"] else []
        return {"jsd_max_score": max(scores) if scores else float("nan"),
                "jsd_stable_edges": float(sum(self.stable)),
                "jsd_alive_ops": float(sum(alive)) if alive else float("nan")}

    def state_dict(self) -> dict:
        return copy.deepcopy({k: getattr(self, k) for k in _STATE_KEYS})

    def load_state_dict(self, state: dict) -> None:
        for k, v in copy.deepcopy(state).items():
            if k in _STATE_KEYS:
                setattr(self, k, v)

    def plot(self, folder: str) -> Optional[str]:
        from nnunet_nas.viz.jsd import plot_jsd_trajectory
        return plot_jsd_trajectory(self.trajectory, self.stop_epoch, self.rule.threshold, folder)
