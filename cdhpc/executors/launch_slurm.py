"""``executor.kind: slurm``: diff the plan with the manifest and SLURM's view, submit what is not
done, queued or running, and return. The DAG then runs unattended; ``cdhpc status`` follows it
and re-running the launch is always safe:

- done steps are skipped; queued and running ones are left alone (no duplicate submissions,
  even after a launcher was killed mid-submit: see `SlurmScheduler.adopt_intents`);
- failed and missing steps are submitted with every dependent that is not done; dependents
  still queued on a failed job (they can never start) are cancelled and submitted again;
- a step that ran out of memory is submitted with ``oom_mem_factor`` times its memory.

A sweep larger than the cluster's submit limits (read at launch: cdhpc.executors.slurm_limits) is submitted
in waves, each with a continuation job that launches the next (cdhpc.executors.waves); ``--follow`` stays
attached instead and tops the queue up itself, for clusters where jobs may not submit jobs.

Timeouts and preemptions need no launcher: submitit's ``checkpoint()`` requeues the job, up to
the profile's ``max_requeues``, and the step resumes from its last checkpoint. Code errors are
not retried by themselves: the step fails with its traceback in its receipt until a launch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cdhpc.config import SweepConfig
from cdhpc.config.profile import ClusterProfile
from cdhpc.sweep.plan import Plan
from cdhpc.sweep.stepstate import DONE

log = logging.getLogger("cdhpc")


def submit_sweep(
    cfg: SweepConfig,
    plan: Plan,
    workdir: Path,
    profile: ClusterProfile,
    verify: bool = False,
    follow: bool = False,
    missing_only: bool = False,
) -> int:
    """Submit what the sweep needs; print the table when everything is already done. `follow`:
    stay, and submit the next wave as the queue empties (no continuation job)."""
    from cdhpc.executors.outcome import print_results
    from cdhpc.executors.sbatch import UnsafeSbatch

    try:
        states, sub, live = submit_plan(
            workdir, plan, profile, cfg.name, verify, missing_only, waves=not follow
        )
        if follow:
            states = follow_sweep(workdir, plan, profile, cfg.name, sub, live, max(cfg.executor.poll_s, 5.0))
    except UnsafeSbatch as e:  # a value that would change the sbatch script: checked before any sbatch
        log.error("%s", e)
        return 2
    except RuntimeError as e:  # sbatch refused (bad partition, ...) or SLURM does not answer
        log.error("%s; what was submitted before is recorded, and the same launch continues from there", e)
        return 1
    except KeyboardInterrupt:
        log.warning(
            "stopped following; nothing was cancelled: the submitted jobs run on. Launch again "
            "(with --follow) to submit the rest"
        )
        return 130
    if not follow and (sub.steps or live):
        log.info("the sweep runs on SLURM without this launcher; follow it with: cdhpc status %s", workdir)
    elif all(s == DONE for s in states.values()):
        print_results(workdir, plan, [s.key for s in plan.steps])
    return 0


def follow_sweep(
    workdir: Path, plan: Plan, profile: ClusterProfile, sweep: str, sub, live, poll_s: float
) -> dict:
    """``launch --follow``: poll, submit the next wave whenever the queue has room, until nothing
    is queued, running or missing (failed steps are left for a launch, as a continuation leaves
    them). Ctrl-C stops following and cancels nothing. Returns the last states."""
    import time

    from cdhpc.executors.waves import cancel_old, read_waves

    cancel_old(read_waves(workdir))  # an earlier launch's continuation: this launcher does its work
    while sub.left or live or sub.steps:
        time.sleep(poll_s)
        states, sub, live = submit_plan(workdir, plan, profile, sweep, missing_only=True, waves=False)
    return states


def submit_plan(
    workdir: Path,
    plan: Plan,
    profile: ClusterProfile,
    sweep: str,
    verify: bool = False,
    missing_only: bool = False,
    waves: bool = True,
    limits=None,
    relaunch: list[str] | None = None,
):
    """Diff `plan` with the manifest and SLURM, submit what is needed, as much as the cluster's
    `limits` allow (default: read now). `missing_only`: submit steps that never ran and their
    dependents, not failed ones (a continuation's launch). `waves`: submit a continuation job
    when steps are left (else the caller follows). Returns (states before submission, the
    Submission, the live steps left alone). `relaunch`: the continuation's launch as arguments
    (default: the workdir's sweep.resolved.yaml through cdhpc.launch)."""
    from cdhpc.executors.outcome import outputs_lookup, report_bad, sync_manifest
    from cdhpc.executors.sbatch import JobRef
    from cdhpc.executors.scheduler import FAILED, MISSING, job_alive, step_states
    from cdhpc.executors.slurm import SlurmScheduler, more_memory
    from cdhpc.executors.slurm_limits import read_limits
    from cdhpc.executors.slurm_queue import refresh_job_records
    from cdhpc.sweep.manifest import Manifest

    limits = limits if limits is not None else read_limits(profile)
    if limits.array_cap(profile.max_array_size) < profile.max_array_size:
        log.info(
            "arrays of at most %d jobs (the cluster's MaxArraySize is %d)",
            limits.array_cap(10**9),
            limits.max_array_size,
        )
        profile = profile.model_copy(update={"max_array_size": limits.array_cap(profile.max_array_size)})
    sched = SlurmScheduler(workdir, profile, sweep)
    with Manifest(workdir) as m:
        sync_manifest(m, workdir, plan)
        adopted = sched.adopt_intents(plan)
        m.ingest()
        refresh_job_records(workdir, m.jobs_by_key().values())
        report_bad(m.ingest().bad)
        jobs = m.jobs_by_key()
        states = step_states(workdir, plan, m.receipts_by_key(), jobs, outputs_lookup(m), rehash=verify)
        failed = {k for k, s in states.items() if s == FAILED}
        broken = {k for k, s in states.items() if s == MISSING} | (set() if missing_only else failed)
        todo = {k for k in plan.descendants(broken) if states[k] != DONE}
        if missing_only:  # a continuation does not retry failures (nor runs what reads them)
            todo -= plan.descendants(failed)
        stuck = [JobRef(jobs[k]["job_id"], jobs[k]["array_index"]) for k in todo if job_alive(jobs.get(k))]
        sched.cancel(stuck)
        live = {
            k: JobRef(j["job_id"], j["array_index"])
            for k, j in jobs.items()
            if k in states and k not in todo and states[k] != DONE and job_alive(j)
        }  # done: nothing to wait for
        attempts = {k: j["attempt"] or 0 for k, j in jobs.items()}
        resources = more_memory(plan, todo, jobs, profile)
        budget = limits.budget()
        sub = sched.submit(plan, todo, live, attempts, resources, budget)
        m.ingest()
    if waves:
        from cdhpc.executors.waves import next_wave

        next_wave(workdir, profile, sweep, sub, sorted({r.job_id for r in live.values()}), relaunch)
    n_done = sum(s == DONE for s in states.values())
    log.info(
        "sweep %s: %d steps: %d done, %d queued or running (left alone)%s, %d submitted in %d job(s), %d "
        "array(s)%s%s",
        sweep,
        len(plan.steps),
        n_done,
        len(live),
        f", {adopted} adopted" if adopted else "",
        sub.steps,
        sub.jobs,
        sub.arrays,
        f", {len(stuck)} stuck job(s) cancelled" if stuck else "",
        f", {sub.left} left for the next wave ({limits.describe()})" if sub.left else "",
    )
    if missing_only and failed and not todo and not live:
        log.warning(
            "%d step(s) failed; a continuation does not retry them: launch the sweep again to retry",
            len(failed),
        )
    return states, sub, live
