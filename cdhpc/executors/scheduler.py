"""Executors: where steps run. ``local`` runs the DAG on this machine through submitit's
LocalExecutor, in dependency order, with a parallelism limit.

State is files: a job record ``workdir/jobs/<stage>/<name>-<key8>.json`` is written when a job is
submitted and when it ends; a receipt is the only proof of success. A launcher killed mid-sweep
(SIGKILL) leaves its local jobs running (submitit's controllers outlive it); the next launch finds
them by pid and waits for them instead of starting the same work twice. A launcher stopped by
SIGINT or SIGTERM cancels the local jobs it runs and waits for them to stop; their steps resume
at the next launch. A step cancelled by a signal is not retried. Record writes are best effort (a
full disk must not stop the loop): a RUNNING record whose process is gone counts as failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc.base.devices import LAUNCHER_GPUS, launcher_gpus
from cdhpc.sweep.jobrecords import JobRecord, job_record_path
from cdhpc.sweep.plan import Plan, StepSpec
from cdhpc.sweep.receipts import ReceiptError, read_receipt, receipt_path

# the step-state rule (re-exported): cdhpc.sweep.stepstate imports no plan or config, so `cdhpc status`
# starts fast
from cdhpc.sweep.stepstate import (  # noqa: F401
    BLOCKED,
    DONE,
    FAILED,
    LIVE_JOB_STATES,
    MISSING,
    QUEUED,
    QUEUED_JOB_STATES,
    RUNNING,
    classify,
    job_alive,
    outputs_intact,
    pid_alive,
    step_done,
    step_states,
)
from cdhpc.sweep.workdir import Workdir

log = logging.getLogger("cdhpc")


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


@dataclass
class _Running:
    specs: list[StepSpec]
    job: Any  # submitit LocalJob, or None for a job a previous launcher started
    job_id: str
    attempt: int

    def alive(self) -> bool:
        return not self.job.done() if self.job is not None else pid_alive(self.job_id)


class SweepInterrupted(KeyboardInterrupt):
    """SIGTERM reached the launcher: handled as Ctrl-C (SIGINT) is, by cancelling its local jobs."""


def _interrupt(signum: int, frame: Any) -> None:
    raise SweepInterrupted(f"stopped by {signal.Signals(signum).name}")


def stop_local_job(pid: int) -> None:
    """Stop a local job: SIGINT to its submitit controller (as LocalJob.cancel: it passes SIGINT
    on to the step, which records itself cancelled, and SIGKILLs it a second later), then SIGTERM,
    which the controller passes on too (base.jobsignals.stop_on_signals). The SIGTERM is for a launcher
    started in the background by a shell without job control (`nohup ... &`): its jobs start with
    SIGINT ignored, and the controller would never hear the SIGINT."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class LocalScheduler:
    """Runs steps as submitit local jobs, at most `max_parallel` at once, inputs first."""

    def __init__(
        self,
        workdir: Path,
        *,
        max_parallel: int,
        retries: int,
        poll_s: float,
        on_change: Callable[[dict[str, str]], None] | None = None,
    ):
        self.workdir = workdir
        self.max_parallel = max_parallel
        self.retries = retries
        self.poll_s = poll_s
        self.on_change = on_change or (lambda states: None)

    def run(self, plan: Plan, states: dict[str, str], jobs: dict[str, Any]) -> RunSummary:
        """Run every step not done; wait for steps already running. Returns when nothing can run."""
        by_key = plan.by_key()
        state = dict(states)
        attempts = {k: (jobs[k]["attempt"] or 0) if k in jobs else 0 for k in by_key}
        running: list[_Running] = [
            _Running([by_key[k]], None, jobs[k]["job_id"], attempts[k])
            for k, s in state.items()
            if s in (RUNNING, QUEUED)
        ]
        for k, s in state.items():
            if s in (FAILED, MISSING):
                state[k] = MISSING
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
        try:
            while True:
                self._finish(running, state, attempts)
                self._block(plan, state)
                self._submit(plan, state, running, attempts)
                if not running:
                    break
                time.sleep(self.poll_s)
        except KeyboardInterrupt:  # Ctrl-C, SIGINT, or SIGTERM (SweepInterrupted)
            self._cancel(running)
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        return RunSummary(
            done=[k for k, s in state.items() if s == DONE],
            failed=[k for k, s in state.items() if s == FAILED],
            blocked=[k for k, s in state.items() if s == BLOCKED],
        )

    def _block(self, plan: Plan, state: dict[str, str]) -> None:
        for spec in plan.steps:  # dependency order: blocking propagates in one pass
            if state[spec.key] == MISSING and any(
                state.get(k) in (FAILED, BLOCKED) for k in spec.inputs.values()
            ):
                state[spec.key] = BLOCKED

    def _ready(self, plan: Plan, state: dict[str, str]) -> Iterable[StepSpec]:
        return (
            s
            for s in plan.steps
            if state[s.key] == MISSING and all(state.get(k) == DONE for k in s.inputs.values())
        )

    def _submit(
        self, plan: Plan, state: dict[str, str], running: list[_Running], attempts: dict[str, int]
    ) -> None:
        ready = list(self._ready(plan, state))
        while ready and len(running) < self.max_parallel:
            pack = [s for s in ready if s.stage == ready[0].stage][
                : ready[0].resources.get("steps_per_job", 1)
            ]
            ready = [s for s in ready if s not in pack]
            for s in pack:
                attempts[s.key] += 1
                state[s.key] = RUNNING
            try:
                running.append(self._start(pack, max(attempts[s.key] for s in pack)))
            except OSError as e:  # e.g. ENOSPC writing the job's pickle: fail these steps, not the launcher
                log.error("could not start %s: %s", ", ".join(f"{s.stage}/{s.name}" for s in pack), e)
                state.update((s.key, FAILED) for s in pack)
        self.on_change(state)

    def _start(self, pack: list[StepSpec], attempt: int) -> _Running:
        import submitit

        from jobs import StepJob

        stage = pack[0].stage
        executor = submitit.LocalExecutor(folder=Workdir(self.workdir).logs(stage))
        res = pack[0].resources
        executor.update_parameters(
            timeout_min=res.get("timeout_min", 60) * len(pack),
            tasks_per_node=res.get("tasks_per_node", 1),
            gpus_per_node=res.get("gpus_per_node", 0),
        )
        os.environ["OMP_NUM_THREADS"] = str(res.get("cpus_per_task", 1))  # inherited by the job process
        if res.get("gpus_per_node", 0) == 0 and res.get("tasks_per_node", 1) == 1:
            os.environ.update(launcher_gpus())  # submitit hides every GPU (""): the job restores ours
        else:  # submitit numbers the GPUs the job gets; CPU ranks (gloo) of a multi-task job stay on the CPU
            os.environ.pop(LAUNCHER_GPUS, None)
        for s in pack:  # a stale receipt (outputs changed) must not let the job skip the step
            receipt_path(self.workdir, s.stage, s.name, s.key).unlink(missing_ok=True)
        job = executor.submit(StepJob(str(self.workdir), [s.to_dict() for s in pack], attempt))
        for s in pack:
            self._record(s, job.job_id, "RUNNING", attempt, job.paths)
        names = pack[0].name if len(pack) == 1 else f"{len(pack)} steps, {pack[0].name} ... {pack[-1].name}"
        log.info("started %s: %s (job %s)", stage, names, job.job_id)
        return _Running(pack, job, job.job_id, attempt)

    def _finish(self, running: list[_Running], state: dict[str, str], attempts: dict[str, int]) -> None:
        for r in list(running):
            if r.alive():
                continue
            running.remove(r)
            cancelled = any(self._cancelled(s) for s in r.specs)  # a cancelled job stops its whole pack
            for s in r.specs:
                ok = step_done(self.workdir, s.stage, s.name, s.key)
                self._record(
                    s,
                    r.job_id,
                    "COMPLETED" if ok else "CANCELLED" if cancelled else "FAILED",
                    r.attempt,
                    r.job.paths if r.job else None,
                )
                if ok:
                    state[s.key] = DONE
                elif cancelled:  # by the user (cdhpc cancel, kill): no retry; the next launch resumes it
                    log.warning("step %s/%s cancelled; launching the sweep again resumes it", s.stage, s.name)
                    state[s.key] = FAILED
                elif attempts[s.key] <= self.retries:
                    log.warning("step %s/%s failed (attempt %d); retrying", s.stage, s.name, attempts[s.key])
                    state[s.key] = MISSING
                else:
                    log.error(
                        "step %s/%s failed; see its receipt and %s",
                        s.stage,
                        s.name,
                        r.job.paths.stdout if r.job else "its log",
                    )
                    state[s.key] = FAILED

    def _cancelled(self, spec: StepSpec) -> bool:
        """The step's job record (cdhpc cancel, the step itself) or receipt says it was cancelled."""
        path = job_record_path(self.workdir, spec)
        try:
            if path.is_file() and JobRecord.read(path).state == "CANCELLED":
                return True
            return (
                read_receipt(receipt_path(self.workdir, spec.stage, spec.name, spec.key)).status
                == "cancelled"
            )
        except (OSError, ValueError, ReceiptError):
            return False

    def _record(self, spec: StepSpec, job_id: str, job_state: str, attempt: int, paths: Any) -> None:
        """Write the step's job record; best effort (logged): a full disk must not stop the loop."""
        path = job_record_path(self.workdir, spec)
        now = time.time()
        try:
            submitted = JobRecord.read(path).submitted if path.is_file() and job_state != "RUNNING" else now
            JobRecord(
                spec.key,
                "local",
                str(job_id),
                job_state,
                attempt,
                submitted,
                now,
                stdout=str(paths.stdout) if paths else None,
                stderr=str(paths.stderr) if paths else None,
            ).write(path)
        except (OSError, ValueError) as e:
            log.error(
                "step %s/%s: could not write its job record (%s): %s", spec.stage, spec.name, job_state, e
            )

    def _cancel(self, running: list[_Running], wait_s: float = 10.0) -> None:
        """Stop every running job (`stop_local_job`), wait for them to end, and record their steps
        CANCELLED; their outputs stay resumable."""
        for r in running:
            if r.job is not None or pid_alive(r.job_id):
                stop_local_job(int(r.job_id))
        deadline = time.time() + wait_s
        while time.time() < deadline and any(r.alive() for r in running):
            time.sleep(0.1)
        for r in running:
            for s in r.specs:
                ok = step_done(self.workdir, s.stage, s.name, s.key)
                self._record(
                    s, r.job_id, "COMPLETED" if ok else "CANCELLED", r.attempt, r.job.paths if r.job else None
                )
        log.warning("cancelled %d running job(s); launching the sweep again resumes them", len(running))
