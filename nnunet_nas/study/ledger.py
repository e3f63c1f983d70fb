"""What each step of a study did: its fingerprint (the settings it ran with), status, times, peak memory and log,
kept in ``<run folder>/ledger.json`` (written atomically after every change, so a killed run knows where it
stopped).

A step's wall-clock counts every attempt of the same computation: a training that failed, was cut off by a
scheduler's time limit or died with the run, then continued with ``--c``, cost its earlier attempts too
(``earlier_seconds``, ``attempts``). An attempt that died with the run has no end on record; it is counted up to the
last write to its log. A step redone because its settings changed starts its count again."""

import json
import os
import threading
import time
from typing import Optional

from nnunet_nas.io import atomic_write_text

DONE, RUNNING, FAILED = "done", "running", "failed"


class Ledger:
    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "ledger.json")
        self._lock = threading.Lock()
        self.records = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.records = json.load(f)

    def get(self, name: str) -> Optional[dict]:
        with self._lock:
            return dict(self.records[name]) if name in self.records else None

    def update(self, name: str, **fields) -> None:
        with self._lock:
            record = self.records.setdefault(name, {})
            record.update(fields, updated=time.strftime("%Y-%m-%d %H:%M:%S"))
            atomic_write_text(self.path, json.dumps(self.records, indent=1, sort_keys=True))

    def start_attempt(self, name: str, fingerprint: str, **fields) -> None:
        """Record that ``name`` starts now, carrying the time of its earlier attempts of the same fingerprint."""
        old = self.get(name) or {}
        resumed = old.get("status") in (RUNNING, FAILED) and old.get("fingerprint") == fingerprint
        earlier = (old.get("earlier_seconds") or 0.0) + attempt_seconds(old) if resumed else 0.0
        self.update(name, status=RUNNING, fingerprint=fingerprint, started=time.time(), ended=None, seconds=None,
                    earlier_seconds=round(earlier, 1), attempts=(old.get("attempts") or 1) + 1 if resumed else 1,
                    **fields)

    def done(self, name: str, fingerprint: str) -> bool:
        record = self.get(name)
        return record is not None and record.get("status") == DONE and record.get("fingerprint") == fingerprint


def attempt_seconds(record: dict) -> float:
    """The wall-clock of a record's last attempt: its measured seconds, else (the run died while it ran, a SLURM job
    was cancelled or timed out) from its start (a SLURM job's submission) to the last write to its log."""
    if record.get("seconds"):
        return float(record["seconds"])
    log, started = record.get("log"), record.get("started")
    if started and log and os.path.isfile(log):
        return max(0.0, os.path.getmtime(log) - started)
    return 0.0


def wall_seconds(record: dict) -> float:
    """A step's wall-clock over all its attempts (see the module's docstring)."""
    return (record.get("seconds") or 0.0) + (record.get("earlier_seconds") or 0.0)
