"""Temperature annealing of a sampling weighting (SCNAS / GDAS: tau from 10 to 0.1 over the search).

``tau(f) = start + (end - start) f`` (linear) or ``start (end / start)^f`` (exponential), with ``f`` the share of
the architecture phase done: per architecture step, or per epoch (constant within an epoch). During warm-up
``tau = start``.
"""

from nnunet_nas.strategies.base import SearchProgress, SearchStrategy

SCHEDULES = ("linear", "exponential")
UNITS = ("step", "epoch")


class TemperatureAnnealing(SearchStrategy):
    name = "temperature"

    def __init__(self, start: float = 10.0, end: float = 0.1, schedule: str = "linear", per: str = "epoch"):
        if schedule not in SCHEDULES or per not in UNITS:
            raise ValueError(f"TemperatureAnnealing: schedule must be one of {SCHEDULES} and per one of {UNITS}; got "
                             f"{schedule!r}, {per!r}.")
        if start <= 0 or end <= 0:
            raise ValueError(f"TemperatureAnnealing: temperatures must be positive, got {start} -> {end}.")
        self.start, self.end, self.schedule, self.per = float(start), float(end), schedule, per
        self.current = self.start

    def temperature(self, progress: SearchProgress) -> float:
        f = progress.arch_fraction if self.per == "step" else progress.arch_epoch_fraction
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * f
        return self.start * (self.end / self.start) ** f

    def _apply(self, net, progress: SearchProgress) -> None:
        self.current = self.temperature(progress)
        net.weighting.temperature = self.current

    on_search_start = _apply
    before_step = _apply

    def history(self):
        return {"arch_temperature": self.current}
