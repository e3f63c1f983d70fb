"""What each step of a study did: its fingerprint (the settings it ran with), status, times, peak memory and log,
kept in ``<run folder>/ledger.json`` (written atomically after every change, so a killed run knows where it
stopped)."""

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

    def done(self, name: str, fingerprint: str) -> bool:
        record = self.get(name)
        return record is not None and record.get("status") == DONE and record.get("fingerprint") == fingerprint
