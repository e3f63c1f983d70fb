"""Steps as SLURM jobs, through submitit (``pip install "nnunet_nas[slurm]"``): one job per step, submitted once what
it needs is done, its state read with ``sacct`` (submitit's watcher). The job id goes to the ledger the moment the
job is submitted, so a rerun of the same ``nnunet-nas run`` after the controlling process died follows a job that
is still queued or running instead of submitting a second copy, and takes the result of one that finished
meanwhile.

``--executor submitit-local`` runs the same jobs through submitit's local executor (each job a process of this
machine, with submitit's pickled function, result and log files): the SLURM set-up tried without a cluster. A
local job cannot be followed by a later run; a rerun that finds one still alive stops and says so."""

import os
import time
from typing import Callable, Dict, List, Optional

from nnunet_nas.errors import UserError
from nnunet_nas.study.executor import StepScheduler, log_path, run_one, step_env
from nnunet_nas.study.ledger import Ledger
from nnunet_nas.study.steps import TRAINING_KINDS, Step

POLL_ENV = "NNUNET_NAS_SLURM_POLL_S"  # how often the run looks at its jobs (default 30 s)


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError('--executor slurm submits through submitit, which is not installed: pip install '
                        '"nnunet_nas[slurm]" (or pip install submitit).') from None
    return submitit


def run_step_job(command: List[str], env_overrides: Dict[str, str], log_file: str) -> dict:
    """What a SLURM job runs: the step's command in the job's environment (its GPUs as SLURM set them) plus the
    study's nnU-Net settings."""
    return run_one(command, dict(os.environ, **env_overrides), log_file)


class SlurmExecutor(StepScheduler):
    cluster = "slurm"

    def __init__(self, run_dir: str, ledger: Ledger, base_env: dict, options: dict, gpus_per_training: int,
                 log: Callable[[str], None] = print):
        super().__init__(run_dir, ledger, log)
        self.submitit = require_submitit()
        self.folder = os.path.join(run_dir, "slurm")
        # what the jobs need from the study's environment; SLURM gives them the rest (and their GPUs)
        self.overrides = {k: v for k, v in base_env.items() if k.startswith(("nnUNet", "NNUNET_NAS"))}
        self.overrides["PATH"] = base_env["PATH"]
        self.options, self.gpus_per_training = options, gpus_per_training
        self.poll_s = float(os.environ.get(POLL_ENV, "30"))
        self.jobs: Dict[str, object] = {}

    def _executor(self, step: Step):
        ex = self.submitit.SlurmExecutor(folder=self.folder)
        params = {k: v for k, v in self.options.items() if v is not None}
        params["job_name"] = "nnunet-nas:" + step.name
        if step.kind in TRAINING_KINDS and self.gpus_per_training:
            params["gpus_per_node"] = self.gpus_per_training
        ex.update_parameters(**params)
        return ex

    def can_start(self) -> bool:
        return True  # SLURM queues them

    def start(self, step: Step, command: List[str]) -> Optional[dict]:
        env = step_env(self.overrides, step)
        job = self._executor(step).submit(run_step_job, command, env, log_path(self.run_dir, step))
        self.jobs[step.name] = job
        return {"job_id": job.job_id}

    def where(self, note: Optional[dict]) -> str:
        return f" as {self.cluster} job {note['job_id']}" if note else ""

    def attach(self, step: Step, record: dict) -> bool:
        if not record.get("job_id"):
            return False
        job = self.submitit.SlurmJob(folder=self.folder, job_id=str(record["job_id"]))
        self.jobs[step.name] = job
        return True  # a job that ended meanwhile is collected by finished()

    def finished(self):
        done = []
        for name, job in list(self.jobs.items()):
            if not job.done():
                continue
            self.jobs.pop(name)
            try:
                result = job.result()
            except Exception as e:  # noqa: BLE001 - the job died (cancelled, timed out, node failure)
                result = {"returncode": None, "seconds": None, "peak_rss_mib": None,
                          "error": f"SLURM job {job.job_id} {job.state}: {type(e).__name__}"}
            done.append((name, result))
        return done

    def wait(self) -> None:
        time.sleep(self.poll_s)


class SubmititLocalExecutor(SlurmExecutor):
    """submitit's local executor: the jobs of :class:`SlurmExecutor` as processes of this machine."""
    cluster = "submitit-local"

    def __init__(self, *args, at_once: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.at_once = at_once

    def can_start(self) -> bool:
        return len(self.jobs) < self.at_once

    def _executor(self, step: Step):
        ex = self.submitit.LocalExecutor(folder=self.folder)
        params = {"timeout_min": self.options.get("time") or 60 * 24 * 30}  # submitit's default would be 5 minutes
        if step.kind in TRAINING_KINDS and self.gpus_per_training:
            params["gpus_per_node"] = self.gpus_per_training
        ex.update_parameters(**params)
        return ex

    def attach(self, step: Step, record: dict) -> bool:
        pid = record.get("job_id")
        if pid and _alive(int(pid)):
            raise UserError(f"{step.name} still runs as submitit local job {pid}, started by a run that died (a local "
                            f"job cannot be followed by another run): wait for it to end or kill it (kill {pid}), "
                            f"then start the run again.")
        return False  # started again (a training continues with --c)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
