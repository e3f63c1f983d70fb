"""What every benchmark script under ``benchmarks/`` shares: the machine a result was measured on, a child Python
process whose result comes back as JSON, the resumable step runner of the real-data protocols and the update of a
table between two markers of ``BENCHMARKS.md``.

The scripts import it as ``from harness import ...``: a script run as ``python benchmarks/<name>.py`` has
``benchmarks/`` first on ``sys.path``, and ``nnunet_nas`` is importable because it is installed (or on
``PYTHONPATH``). Only the standard library is imported here at module level, so that a script that runs where
nnU-Net, SimpleITK or matplotlib are absent (``gpu_acceptance.py`` on a bare GPU machine) can use it: ``torch`` and
``nnunet_nas`` are imported inside the functions that need them.

Child convention: a child process prints its result as one JSON object on a line of its own; :func:`run_child`
returns the last stdout line that parses as a JSON object, so anything the child prints before it does no harm.
"""

import json
import os
import platform
import re
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")

_STDERR_TAIL = 4000  # characters of a failed child's output quoted in the error


# ------------------------------------------------------------------------------------------------ the machine
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows, else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def ram_gib():
    """Total memory in GiB, rounded to 0.1 (``/proc/meminfo``); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def loadavg():
    """The 1-, 5- and 15-minute load averages, rounded to 0.01; None where the system has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def uptime() -> str:
    """What ``uptime`` prints (the time, the uptime and the load averages)."""
    return subprocess.run("uptime", shell=True, capture_output=True, text=True).stdout.strip()


def package_version(name: str):
    """The installed distribution's version, or None where ``name`` is not installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(**extra) -> dict:
    """The machine a result was measured on: ``platform`` (the processor architecture), ``cpu`` (model), ``cores``,
    ``python``, ``torch`` (None without torch) and, where CUDA is available, ``gpu`` (device 0's name); then
    ``extra``, each script's own keys (``threads``, ``ram``, ``loadavg``, ...), which win over those above."""
    info = {"platform": platform.processor() or platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": None}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    info.update(extra)
    return info


# ------------------------------------------------------------------------------------------------ child processes
class ChildError(RuntimeError):
    """A child process failed, or printed no JSON object; the message quotes the end of its output."""


def _tail(text: str) -> str:
    text = (text or "").rstrip()
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


def run_child(cmd, env=None, timeout=None) -> dict:
    """Run ``cmd`` (a list, no shell) with ``env`` (None: this process's environment), its output captured, and
    return the last line of its stdout that parses as a JSON object. Raises :class:`ChildError` with the command, its
    exit status and the tail of its stderr where it exits non-zero, or with the tail of its stdout where no line is a
    JSON object."""
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(str(c) for c in cmd)
    if proc.returncode != 0:
        raise ChildError(f"child process failed with exit status {proc.returncode}: {shown}\n"
                         f"--- its stderr (end) ---\n{_tail(proc.stderr) or '(empty)'}")
    for line in reversed(proc.stdout.splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            return result
    raise ChildError(f"child process printed no JSON object: {shown}\n--- its stdout (end) ---\n"
                     f"{_tail(proc.stdout) or '(empty)'}\n--- its stderr (end) ---\n{_tail(proc.stderr) or '(empty)'}")


# ------------------------------------------------------------------------------------------------ resumable steps
def parse_time_file(path):
    """Wall-clock (s), peak RSS (MiB; of the largest single process of the tree, as GNU time reports it), rc."""
    if not os.path.isfile(path):
        return {}
    text = open(path).read()
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        secs = 0.0
        for p in parts:
            secs = secs * 60 + p
        out["wall_s"] = round(secs, 1)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_mib"] = round(int(m.group(1)) / 1024, 1)
    m = re.search(r"Exit status: (\d+)", text)
    if m:
        out["exit_status"] = int(m.group(1))
    m = re.search(r"Percent of CPU this job got: (\S+)", text)
    if m:
        out["cpu_percent"] = m.group(1)
    return out


class Runner:
    """Runs a protocol's shell steps one at a time under ``/usr/bin/time -v`` with ``env``, logging to
    ``<work>/logs/<step>.{log,time,rc,uptime_start,uptime_end}``; a finished step is skipped and its timing read back,
    an interrupted one continued with its resume command; ``only_report`` runs nothing."""

    def __init__(self, work, env, only_report=False):
        self.work, self.env, self.only_report = work, env, only_report
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)

    def step(self, name, cmd, done, resume_cmd=None, resumable=None):
        """Run ``cmd`` unless ``done()`` (or the runner only reports); returns the step's timing record (from this
        run or an earlier one)."""
        tfile = os.path.join(self.logs, f"{name}.time")
        if self.only_report:
            pass
        elif done():
            print(f"[{name}] already done: skipped", flush=True)
        else:
            use = resume_cmd if (resume_cmd and resumable and resumable()) else cmd
            if use is resume_cmd:
                print(f"[{name}] interrupted earlier: continuing with --c", flush=True)
            print(f"[{name}] $ {use}", flush=True)
            with open(os.path.join(self.logs, f"{name}.uptime_start"), "w") as f:
                f.write(uptime() + "\n")
            t0 = time.time()
            with open(os.path.join(self.logs, f"{name}.log"), "a") as log:
                rc = subprocess.call(["/usr/bin/time", "-v", "-o", tfile, "bash", "-c", use], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
            with open(os.path.join(self.logs, f"{name}.uptime_end"), "w") as f:
                f.write(uptime() + "\n")
            with open(os.path.join(self.logs, f"{name}.rc"), "w") as f:
                f.write(f"{rc}\n")
            print(f"[{name}] rc={rc} in {time.time() - t0:.0f} s", flush=True)
            if rc != 0:
                raise SystemExit(f"step {name} failed (rc {rc}); see {os.path.join(self.logs, name + '.log')}")
        rec = parse_time_file(tfile)
        rec["command"] = cmd
        for k in ("uptime_start", "uptime_end"):
            p = os.path.join(self.logs, f"{name}.{k}")
            if os.path.isfile(p):
                rec[k] = open(p).read().strip()
        return rec


# ------------------------------------------------------------------------------------------------ BENCHMARKS.md
def publish_table(table: str, markers, update: bool) -> None:
    """Print a benchmark's markdown table and, with ``update`` (``--update-markdown``), write it between
    ``markers`` in BENCHMARKS.md."""
    print(table)
    if update:
        update_markdown(os.path.join(REPO, "BENCHMARKS.md"), table, *markers)


def update_markdown(path, text, start_marker, end_marker):
    """Replace what stands between ``start_marker`` and ``end_marker`` in ``path`` (BENCHMARKS.md) with ``text``
    (re-read right before an atomic write; nothing else in the file is touched). A missing file or marker is said and
    left alone."""
    if not os.path.isfile(path):
        print(f"{path} missing: table not written there")
        return
    old = open(path).read()
    i, j = old.find(start_marker), old.find(end_marker)
    if i < 0 or j < i:
        print(f"markers not found in {path}: table not written there")
        return
    from nnunet_nas.io import atomic_write_text
    atomic_write_text(path, old[:i + len(start_marker)] + "\n" + text + "\n" + old[j:])
    print(f"updated the table in {path}")
