"""Running a study's steps on this machine: in dependency order, one at a time, or side by side with one GPU set
per step (``CUDA_VISIBLE_DEVICES``). A failed step stops what depends on it, not the rest. Each step's output goes
to its own log in the run folder; its wall-clock and peak resident memory (the process tree's, read from the
operating system when it ends) go to the ledger."""

import ctypes
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_nas.study.ledger import DONE, FAILED, RUNNING, Ledger
from nnunet_nas.study.steps import Step

BLOCKED = "blocked"


def log_path(run_dir: str, step: Step) -> str:
    return os.path.join(run_dir, "logs", step.name.replace("/", "__") + ".log")


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


def run_one(step: Step, command: List[str], env: dict, log_file: str) -> dict:
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


class LocalExecutor:
    """``slots``: the GPU sets steps run on side by side (``[None]``: one step at a time, the devices as they
    are)."""

    def __init__(self, run_dir: str, ledger: Ledger, base_env: dict, slots: Sequence[Optional[str]] = (None,),
                 log: Callable[[str], None] = print):
        self.run_dir, self.ledger, self.base_env, self.log = run_dir, ledger, base_env, log
        self.slots = list(slots)

    def run(self, steps: List[Step], prints: Dict[str, str], todo: Dict[str, List[str]],
            done_before: Sequence[str] = ()) -> Dict[str, str]:
        """Run every step of ``steps`` in ``todo`` (name -> the command to run, ``--c`` added where a training
        resumes) once its deps are done; the others count as done. Returns each step's status."""
        status = {s.name: DONE for s in steps if s.name not in todo}
        status.update({n: DONE for n in done_before})
        pending = [s for s in steps if s.name in todo]
        free = list(self.slots)
        running: Dict[str, threading.Thread] = {}
        results: Dict[str, dict] = {}
        lock = threading.Condition()
        start, total, finished = time.time(), len(pending), []

        def work(step: Step, slot: Optional[str]):
            env = dict(self.base_env, **step.env)
            if step.kind == "plan" and env.get("nnUNet_n_proc_DA") == "0":
                del env["nnUNet_n_proc_DA"]  # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            result = run_one(step, todo[step.name], env, log_path(self.run_dir, step))
            with lock:
                results[step.name] = result
                free.append(slot)
                lock.notify_all()

        while pending or running:
            with lock:
                for name in [n for n in running if n in results]:
                    running.pop(name).join()
                    finished.append(self._finish(name, steps, results[name], prints, status, start, total,
                                                 len(finished) + 1, finished))
                for step in list(pending):
                    if any(status.get(d) in (FAILED, BLOCKED) for d in step.deps):
                        pending.remove(step)
                        status[step.name] = BLOCKED
                        why = [d for d in step.deps if status.get(d) in (FAILED, BLOCKED)]
                        self.log(f"[nnunet-nas run] skipped {step.name}: {', '.join(why)} did not finish")
                        self.ledger.update(step.name, status=BLOCKED, fingerprint=prints[step.name])
                ready = [s for s in pending if all(status.get(d) == DONE for d in s.deps)]
                while ready and free:
                    step, slot = ready.pop(0), free.pop(0)
                    pending.remove(step)
                    status[step.name] = RUNNING
                    self.ledger.update(step.name, status=RUNNING, fingerprint=prints[step.name],
                                       command=todo[step.name], log=log_path(self.run_dir, step),
                                       started=time.time())
                    self.log(f"[nnunet-nas run] start {step.name}{'' if slot is None else ' on GPU ' + slot}: "
                             f"{' '.join(todo[step.name])}")
                    thread = threading.Thread(target=work, args=(step, slot), daemon=True)
                    running[step.name] = thread
                    thread.start()
                if running and not any(n in results for n in running):
                    lock.wait(timeout=5)
                elif not running and pending and not ready:
                    break  # nothing can start: deps outside this batch are not done
        return status

    def _finish(self, name, steps, result, prints, status, start, total, count, finished) -> tuple:
        ok = result["returncode"] == 0
        status[name] = DONE if ok else FAILED
        step = next(s for s in steps if s.name == name)
        self.ledger.update(name, status=status[name], fingerprint=prints[name], ended=time.time(), **result)
        elapsed = time.time() - start
        left = ""
        if count < total:
            mean = (sum(r[1] for r in finished) + result["seconds"]) / count
            left = f", about {_clock(mean * (total - count))} left"
        what = "done" if ok else f"FAILED (exit {result['returncode']}; log {log_path(self.run_dir, step)})"
        self.log(f"[nnunet-nas run] {count}/{total} {name} {what} in {_clock(result['seconds'])}; elapsed "
                 f"{_clock(elapsed)}{left}")
        return name, result["seconds"]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
