"""Running a study's steps: :class:`StepScheduler` starts each step once what it needs is done (a failed step stops
what depends on it, not the rest) and records it in the ledger; :class:`LocalExecutor` runs steps on this machine,
one at a time or side by side with one GPU set each (``CUDA_VISIBLE_DEVICES``); :mod:`.slurm` submits them as SLURM
jobs. Each step's output goes to its own log in the run folder; its wall-clock and peak resident memory (its
process tree's) go to the ledger."""

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_nas.study.ledger import DONE, FAILED, RUNNING, Ledger
from nnunet_nas.study.resume import set_aside_unreadable_checkpoints
from nnunet_nas.study.steps import TRAINING_KINDS, Step

BLOCKED = "blocked"


def log_path(run_dir: str, step: Step) -> str:
    return os.path.join(run_dir, "logs", step.name.replace("/", "__") + ".log")


def gpu_peak_path(run_dir: str, step: Step) -> str:
    return os.path.join(run_dir, "logs", step.name.replace("/", "__") + ".gpu.json")


def launched(run_dir: str, step: Step, command: List[str]) -> List[str]:
    """The command as it is started: an nnU-Net training through :mod:`.gpu_peak` (the same command in the same
    process, its CUDA peak written beside its log); anything else as it is."""
    if command[0] != "nnUNetv2_train":
        return command
    return [sys.executable, "-m", "nnunet_nas.study.gpu_peak", gpu_peak_path(run_dir, step), *command]


MEMORY_SAMPLE_S = 2.0
try:  # Linux: a step's process is ended (SIGTERM) when the run that started it dies, never left running unseen
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tree_rss_kib(pid: int) -> Optional[int]:
    """The resident memory of process ``pid`` and its descendants (Linux ``/proc``; None elsewhere)."""
    try:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
    except OSError:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier and p not in tree]
        tree.update(frontier)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


def step_env(base_env: dict, step: Step) -> dict:
    env = dict(base_env, **step.env)
    if step.kind == "plan" and env.get("nnUNet_n_proc_DA") == "0":
        del env["nnUNet_n_proc_DA"]  # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA)
    return env


def run_one(command: List[str], env: dict, log_file: str) -> dict:
    """Run ``command``; returns its exit code, seconds and peak resident memory in MiB (of the step's process tree,
    data-augmentation workers included, sampled every 2 s)."""
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    start = time.time()
    peak = None
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent)
        except FileNotFoundError as e:
            out.write(f"{e}\n")
            return {"returncode": 127, "seconds": 0.0, "peak_rss_mib": None}
        while True:
            try:
                proc.wait(timeout=MEMORY_SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                rss = tree_rss_kib(proc.pid)
                peak = rss if peak is None or (rss or 0) > peak else peak
    return {"returncode": proc.returncode, "seconds": round(time.time() - start, 1),
            "peak_rss_mib": None if not peak else round(peak / 1024, 1)}


class StepScheduler:
    """Runs steps in dependency order through a back-end: ``start(step, command)`` begins one (returns a ledger
    note such as a job id), ``finished()`` yields ``(name, result)`` of those that ended, ``can_start()`` says
    whether another may begin, ``wait()`` blocks a little, ``attach(step, record)`` takes over a step an earlier
    run left running (True: it is followed now)."""

    def __init__(self, run_dir: str, ledger: Ledger, log: Callable[[str], None] = print):
        self.run_dir, self.ledger, self.log = run_dir, ledger, log

    def attach(self, step: Step, record: dict) -> bool:
        return False

    def run(self, steps: List[Step], prints: Dict[str, str], todo: Dict[str, List[str]],
            done_before: Sequence[str] = ()) -> Dict[str, str]:
        """Run every step of ``steps`` in ``todo`` (name -> the command to run, ``--c`` added where a training
        resumes) once its deps are done; the others count as done. Returns each step's status."""
        status = {s.name: DONE for s in steps if s.name not in todo}
        status.update({n: DONE for n in done_before})
        pending = [s for s in steps if s.name in todo]
        start, batch, durations = time.time(), list(pending), {}
        for step in list(pending):
            record = self.ledger.get(step.name)
            if record is not None and record.get("status") == RUNNING and self.attach(step, record):
                pending.remove(step)
                status[step.name] = RUNNING
                self.log(f"[nnunet-nas run] {step.name}: still running from an earlier run ({record.get('job_id')}); "
                         f"followed, not started again")
        while pending or RUNNING in status.values():
            for name, result in self.finished():
                durations[name] = result.get("seconds") or 0.0
                self._finish(next(s for s in steps if s.name == name), result, prints, status, start, batch,
                             durations)
            for step in list(pending):
                why = [d for d in step.deps if status.get(d) in (FAILED, BLOCKED)]
                if why:
                    pending.remove(step)
                    status[step.name] = BLOCKED
                    self.log(f"[nnunet-nas run] skipped {step.name}: {', '.join(why)} did not finish")
                    self.ledger.update(step.name, status=BLOCKED, fingerprint=prints[step.name])
            ready = [s for s in pending if all(status.get(d) == DONE for d in s.deps)]
            while ready and self.can_start():
                step = ready.pop(0)
                pending.remove(step)
                status[step.name] = RUNNING
                self.ledger.start_attempt(step.name, prints[step.name], command=todo[step.name],
                                          log=log_path(self.run_dir, step), job_id=None)
                peak = gpu_peak_path(self.run_dir, step)
                if os.path.isfile(peak):
                    os.remove(peak)  # an earlier attempt's
                set_aside_unreadable_checkpoints(step, self.log)
                note = self.start(step, launched(self.run_dir, step, todo[step.name]))
                if note:
                    self.ledger.update(step.name, **note)
                self.log(f"[nnunet-nas run] start {step.name}{self.where(note)}: {' '.join(todo[step.name])}")
            if RUNNING not in status.values() and pending and not ready:
                break  # nothing can start: deps outside this batch are not done
            if RUNNING in status.values():
                self.wait()
        return status

    def where(self, note: Optional[dict]) -> str:
        return ""

    def _finish(self, step: Step, result: dict, prints, status, start, batch, durations) -> None:
        ok = result.get("returncode") == 0
        status[step.name] = DONE if ok else FAILED
        peak = gpu_peak_path(self.run_dir, step)
        if os.path.isfile(peak):
            with open(peak) as f:
                result = dict(result, peak_gpu_mib=json.load(f)["peak_gpu_mib"])
        self.ledger.update(step.name, status=status[step.name], fingerprint=prints[step.name], ended=time.time(),
                           **result)
        count, total = len(durations), len(batch)
        left = "" if count == total else f", {time_left(batch, durations)}"
        what = "done" if ok else f"FAILED ({result.get('error') or 'exit ' + str(result.get('returncode'))}; log " \
                                 f"{log_path(self.run_dir, step)})"
        self.log(f"[nnunet-nas run] {count}/{total} {step.name} {what} in {_clock(result.get('seconds') or 0)}; "
                 f"elapsed {_clock(time.time() - start)}{left}")


def time_left(batch: List[Step], durations: Dict[str, float]) -> str:
    """What the steps not finished yet will take, from the mean of those finished of their kind (trainings and
    searches, or the rest); unknown while no training has finished."""
    def is_training(step):
        return step.kind in TRAINING_KINDS
    left = 0.0
    for training in (True, False):
        done = [durations[s.name] for s in batch if s.name in durations and is_training(s) == training]
        todo = sum(1 for s in batch if s.name not in durations and is_training(s) == training)
        if todo and not done:
            return "time left unknown until a training finishes" if training else "time left unknown"
        left += todo * (sum(done) / len(done) if done else 0.0)
    return f"about {_clock(left)} left"


class LocalExecutor(StepScheduler):
    """Steps as processes of this machine. ``slots``: the GPU sets steps run on side by side (``[None]``: one
    step at a time on the devices as they are; ``[None] * n``: n side by side)."""

    def __init__(self, run_dir: str, ledger: Ledger, base_env: dict, slots: Sequence[Optional[str]] = (None,),
                 log: Callable[[str], None] = print):
        super().__init__(run_dir, ledger, log)
        self.base_env = base_env
        self.free = list(slots)
        self.results: Dict[str, dict] = {}
        self.threads: Dict[str, threading.Thread] = {}
        self.lock = threading.Condition()

    def can_start(self) -> bool:
        return bool(self.free)

    def start(self, step: Step, command: List[str]) -> Optional[dict]:
        slot = self.free.pop(0)
        env = step_env(self.base_env, step)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot

        def work():
            result = run_one(command, env, log_path(self.run_dir, step))
            with self.lock:
                self.results[step.name] = result
                self.free.append(slot)
                self.lock.notify_all()
        self.threads[step.name] = threading.Thread(target=work, daemon=True)
        self.threads[step.name].start()
        return None if slot is None else {"gpus": slot}

    def where(self, note: Optional[dict]) -> str:
        return f" on GPU {note['gpus']}" if note else ""

    def finished(self):
        with self.lock:
            done = [(n, self.results.pop(n)) for n in list(self.results)]
        for name, _ in done:
            self.threads.pop(name).join()
        return done

    def wait(self) -> None:
        with self.lock:
            if not self.results:
                self.lock.wait(timeout=5)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
