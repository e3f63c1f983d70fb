"""The hooks a search strategy offers the search trainer (called at fixed points of nnU-Net's loop).

The trainer runs DARTS's first-order bi-level loop itself; strategies add to it without model code:

* ``on_search_start(net, progress)``: once, after set-up and after a resume;
* ``before_step(net, progress)``: before every training iteration (temperature annealing per step or epoch,
  anything a per-forward sampler needs);
* ``after_arch_step(net, progress)``: after every architecture update;
* ``on_epoch_end(net, progress) -> alive mask or None``: an operation-pruning request (bool, ``op_logits``'
  shape); the trainer applies it everywhere (masks, op modules, optimisers, DDP);
* ``should_stop(net, progress) -> bool``: early stopping; the trainer then saves, exports and ends the run;
* ``history()``: scalars logged per epoch (name -> float); ``state_dict`` / ``load_state_dict``: resume;
* ``plot(folder)``: a picture of the strategy's own trajectory beside nnU-Net's ``progress.png`` (optional).

A strategy writes to the search's log with ``self.note(line)`` (the trainer sets ``log`` to nnU-Net's
``print_to_log_file``; without a trainer, notes go nowhere).

Decisions are functions of the architecture parameters, which DDP keeps identical on every rank; the trainer
still takes rank 0's decision.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch


@dataclass(frozen=True)
class SearchProgress:
    epoch: int  # current epoch, 0-based
    num_epochs: int
    warmup_epochs: int
    arch_steps: int  # architecture updates done so far
    arch_steps_total: int  # planned architecture updates

    @property
    def arch_steps_per_epoch(self) -> int:
        return max(1, self.arch_steps_total // max(1, self.num_epochs - self.warmup_epochs))

    @property
    def arch_fraction(self) -> float:
        """Share of the planned architecture updates done, in [0, 1]."""
        return min(1.0, self.arch_steps / max(1, self.arch_steps_total))

    @property
    def arch_epoch_fraction(self) -> float:
        """Position of this epoch among the architecture epochs, in [0, 1]: 0 at the first (and during warm-up),
        1 at the last, so a per-epoch schedule runs its whole range."""
        span = max(1, self.num_epochs - self.warmup_epochs - 1)
        return min(1.0, max(0.0, (self.epoch - self.warmup_epochs) / span))


class SearchStrategy:
    """Base: every hook does nothing."""
    name = "strategy"
    log: Optional[Callable[[str], None]] = None

    def note(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def on_search_start(self, net, progress: SearchProgress) -> None:
        pass

    def before_step(self, net, progress: SearchProgress) -> None:
        pass

    def after_arch_step(self, net, progress: SearchProgress) -> None:
        pass

    def on_epoch_end(self, net, progress: SearchProgress) -> Optional[torch.Tensor]:
        return None

    def should_stop(self, net, progress: SearchProgress) -> bool:
        return False

    def history(self) -> Dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def plot(self, folder: str):
        return None
