"""How a step's job process answers signals: SIGINT, and SIGTERM off SLURM, cancel the step
(``StepCancelled``); how it ended is recorded ``uninterrupted``; a late USR2 or TERM does not end a
job whose steps are done, nor one past its last requeue (docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any

import submitit

from cdhpc.base.thirdparty import requeue_handler, requeues_left

log = logging.getLogger("cdhpc")


class StepCancelled(BaseException):
    """SIGTERM or SIGINT reached a step's process: it stops where it is and its receipt says
    cancelled. A BaseException, as KeyboardInterrupt, so that `except Exception` does not catch it."""


_recording_end = False  # set while a step writes how it ended: a second signal must not cut that short


@contextlib.contextmanager
def uninterrupted():
    """Signals that would cancel the step are logged and ignored inside this block."""
    global _recording_end
    before, _recording_end = _recording_end, True
    try:
        yield
    finally:
        _recording_end = before


def _cancel_step(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _recording_end:
        log.warning("%s received while the step records how it ended: ignored", name)
        return
    log.warning("%s received: stopping the step; it resumes from its last checkpoint when run again", name)
    raise StepCancelled(f"cancelled by {name}")


def stop_on_signals() -> list[signal.Signals]:
    """Make SIGINT, and SIGTERM unless on SLURM, stop the step: StepCancelled is raised at the
    next Python instruction of the main thread. Returns the signals taken over.

    submitit's jobs log and ignore SIGTERM ("Bypassing signal SIGTERM"), which on SLURM is what
    lets a preempted job checkpoint and requeue: SLURM sends SIGTERM there before the USR2 that
    submitit answers with checkpoint() and a requeue (submitit's preemption drill sends the same
    two). So on SLURM SIGTERM stays bypassed (scancel ends the job after KillWait and sacct says
    CANCELLED) and USR2 is untouched everywhere. A local job gets no second signal: ``cdhpc cancel``
    and a stopped launcher send SIGTERM to its submitit controller, which passes it on
    (scheduler.stop_local_job), Ctrl-C in a terminal sends SIGINT, and ``kill`` SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return []
    try:
        cluster = submitit.JobEnvironment().name()
    except RuntimeError:  # not a submitit job (a direct call)
        cluster = None
    signals = [signal.SIGINT] + ([] if cluster == "slurm" else [signal.SIGTERM])
    for signum in signals:
        signal.signal(signum, _cancel_step)
    return signals


def ignore_signals_once_done() -> None:
    """Completion wins over a late signal: every step's receipt is written, so a time limit's
    USR2 or a TERM that arrives while the job exits must not make submitit checkpoint and requeue
    it or kill it (sacct would say FAILED and SLURM would cancel its dependents). SIG_IGN, not a
    Python handler, so that it holds through the interpreter's shutdown too."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    log.info("all steps of this job are done: USR2 and TERM are ignored from here on")


def run_past_last_requeue() -> None:
    """Once a job has no requeue left (the profile's max_requeues), submitit's USR2 handler
    would end it with an error as its time limit nears. Keep computing instead: the step may
    still finish, and otherwise SLURM ends it at the limit and says TIMEOUT, which is what the
    manifest should show. Preemption (not near the limit) is always requeued. Raises
    ThirdPartyChanged, at the job's start, if submitit's requeue countdown is gone."""
    handler = signal.getsignal(signal.SIGUSR2)
    owner = requeue_handler(handler)  # submitit's SignalHandler, None outside a submitit job
    if owner is None:
        return

    def on_usr2(signum: int, frame: Any) -> None:
        if owner.has_timed_out() and requeues_left(owner) <= 0:
            log.warning("time limit near and no requeue left: running on until SLURM's limit")
            return
        handler(signum, frame)

    signal.signal(signal.SIGUSR2, on_usr2)
