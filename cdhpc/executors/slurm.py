"""The SLURM executor: the whole DAG submitted at once as job arrays with ``afterok`` edges, so
it runs unattended after the launcher exits.

Pure part: which steps go into which array, the sbatch parameters of an array, dependency
strings and the script checks (`cdhpc.executors.sbatch`), and here the parsing of sacct/squeue
answers (`cdhpc.executors.slurm_queue`), and the memory of a step resubmitted after it ran out
of memory (`more_memory`). Shell part: `SlurmScheduler` (submitit's SlurmExecutor) here, the
polling (one sacct call per poll) in `cdhpc.executors.slurm_queue`.

Steps that read the same upstream jobs go into one array, so every edge is exact: an evaluate
array waits for the one pretrain array element that trains its run, not for the whole stage.
A launcher killed mid-submit leaves an intent file (``workdir/submitting/<job name>.json``)
written before sbatch; the next launch finds the job by its unique name (squeue, then sacct)
and adopts it instead of submitting it twice.

Before any sbatch, the script submitit renders for every array is checked line by line
(`check_sbatch_script`): the profile's values were checked when it loaded, and this is the
second line of defence against a value that would start a line of its own in the script.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdhpc.base.atomicio import atomic_write_json
from cdhpc.base.verbosity import env_level
from cdhpc.config.profile import ClusterProfile
from cdhpc.executors.sbatch import (
    ArraySpec,
    JobRef,
    UnsafeSbatch,
    check_sbatch_script,
    dependency_string,
    job_name,
    plan_arrays,
    sbatch_parameters,
    sbatch_script,
)
from cdhpc.executors.slurm_queue import find_jobs_by_name, run_slurm
from cdhpc.sweep.jobrecords import JobRecord, job_record_path
from cdhpc.sweep.plan import Plan, StepSpec
from cdhpc.sweep.receipts import receipt_path
from cdhpc.sweep.workdir import Workdir

log = logging.getLogger("cdhpc")

# sbatch errors that waiting a few seconds does not cure: a limit of the cluster or the account.
# Each names the limit a user can look up; "temporarily unable to accept job" is what sbatch
# prints while it retries by itself against MaxJobCount.
WAVES_ADVICE = (
    "launch again when jobs have finished: a launch submits in waves within the limits it reads "
    "(the profile's max_submitted_jobs sets the limit where SLURM's cannot be read)"
)
LIMIT_SBATCH = (  # (sbatch's words, the limit, what to do)
    (
        re.compile(r"MaxJobCount|temporarily unable to accept job", re.I),
        "MaxJobCount (slurm.conf: jobs the controller holds)",
        WAVES_ADVICE,
    ),
    (
        re.compile(r"QOSMaxSubmitJobPerUserLimit|MaxSubmitJobs", re.I),
        "the QOS's MaxSubmitJobsPerUser",
        WAVES_ADVICE,
    ),
    (
        re.compile(r"AssocMaxSubmitJobLimit|job submit limit", re.I),
        "your association's MaxSubmitJobs",
        WAVES_ADVICE,
    ),
    (
        re.compile(r"Invalid job array specification|MaxArraySize", re.I),
        "MaxArraySize (slurm.conf)",
        "lower the profile's max_array_size below it and launch again",
    ),
)
TRANSIENT_SBATCH = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Resource temporarily unavailable|"
    r"try again|Connection refused|Zero Bytes were transmitted",
    re.I,
)


# ----------------------------------------------------------------------------- shell: submission
@dataclass
class Submission:
    arrays: int = 0
    jobs: int = 0
    steps: int = 0
    job_ids: list[str] = field(default_factory=list)
    left: int = 0  # steps of `todo` left for a later wave (cdhpc.executors.waves)


# ----------------------------------------------------------------------------- OOM retry
def more_memory(plan: Plan, todo: set[str], jobs: dict, profile: ClusterProfile) -> dict[str, dict]:
    """Pure: resources of the steps to submit whose last job ran out of memory, with the memory
    of that job times the profile's oom_mem_factor (capped at max_mem_gb)."""
    out = {}
    for s in plan.steps:
        j = jobs.get(s.key)
        if s.key in todo and j is not None and j["state"] == "OUT_OF_MEMORY":
            mem = (j["mem_gb"] or s.resources["mem_gb"]) * profile.oom_mem_factor
            if profile.max_mem_gb is not None:
                mem = min(mem, profile.max_mem_gb)
            log.warning("step %s/%s ran out of memory; resubmitting it with %.1f GB", s.stage, s.name, mem)
            out[s.key] = {**s.resources, "mem_gb": mem}
    return out


class SlurmScheduler:
    """Submits steps through submitit's SlurmExecutor, one array per `ArraySpec`."""

    def __init__(
        self,
        workdir: Path,
        profile: ClusterProfile,
        sweep: str,
        submit_fn: Callable[[ArraySpec, dict, int], list[Any]] | None = None,
    ):
        self.workdir = workdir
        self.profile = profile
        self.sweep = sweep
        self.submit_fn = submit_fn or self._sbatch

    def log_dir(self, stage: str) -> Path:
        return Workdir(self.workdir).logs(stage)

    # -- intents: no duplicate submission after a launcher died mid-submit ------------------
    def intent_dir(self) -> Path:
        return Workdir(self.workdir).submitting

    def adopt_intents(self, plan: Plan) -> int:
        """Jobs a killed launcher submitted but did not record: find them by name; record those
        whose submitit pickles were written (they can run their steps), scancel those without
        (submitit moves the pickles into place only after sbatch returned, and a job without
        them fails after a minute), whose steps are then submitted again; forget intents SLURM
        never saw. Returns how many steps were adopted."""
        intents = sorted(self.intent_dir().glob("*.json")) if self.intent_dir().is_dir() else []
        if not intents:
            return 0
        docs = [json.loads(p.read_text()) for p in intents]
        found = find_jobs_by_name([d["name"] for d in docs])
        by_key, adopted = plan.by_key(), 0
        for path, d in zip(intents, docs):
            ids = found.get(d["name"], [])
            if ids:
                base = max((i.split("_")[0] for i in ids), key=int)  # the newest, should a name recur
                if self._pickled(d, base):
                    adopted += self._adopt(d, base, by_key)
                else:
                    run_slurm(["scancel", base])
                    log.warning(
                        "cancelled job %s (%s): a launcher stopped after sbatch, before submitit wrote "
                        "its pickles; its steps are submitted again",
                        base,
                        d["name"],
                    )
            path.unlink()
        return adopted

    def _pickled(self, intent: dict, base: str) -> bool:
        """Whether every job of an intent has its submitit pickle (`JobPaths.submitted_pickle`:
        `<id>_submitted.pkl`, `<id>_<index>_submitted.pkl` for an array's elements)."""
        n = len(intent["packs"])
        names = [f"{base}_submitted.pkl"] if n == 1 else [f"{base}_{i}_submitted.pkl" for i in range(n)]
        folder = self.log_dir(intent["stage"])
        return all((folder / name).is_file() for name in names)

    def _adopt(self, intent: dict, base: str, by_key: dict[str, StepSpec]) -> int:
        single, adopted = len(intent["packs"]) == 1, 0
        for i, pack in enumerate(intent["packs"]):
            for key in pack:
                if key in by_key:
                    self._record(
                        by_key[key],
                        JobRef(base, None if single else i),
                        intent["attempts"].get(key, 1),
                        intent["name"],
                        intent["resources"],
                        None,
                    )
                    adopted += 1
        log.warning(
            "adopted job %s (%s), submitted by a launcher that stopped before recording it",
            base,
            intent["name"],
        )
        return adopted

    # -- submission --------------------------------------------------------------------------
    def submit(
        self,
        plan: Plan,
        todo: set[str],
        live: dict[str, JobRef],
        attempts: dict[str, int],
        resources: dict[str, dict] | None = None,
        budget: int | None = None,
    ) -> Submission:
        """Submit every step in `todo` (upstream first), waiting on `live` jobs where they are
        inputs; with a `budget` of jobs they do not fit, only the wave that fits (cdhpc.executors.waves)."""
        from cdhpc.executors.waves import cut_wave, wave_room

        arrays = plan_arrays(plan, todo, live, self.profile.max_array_size, resources)
        arrays, left = cut_wave(arrays, wave_room(arrays, budget))
        real: dict[str, str] = {}  # "@N" -> job id
        sizes: dict[str, int] = {}
        out = Submission(left=left)
        salt = f"{time.time_ns()}"
        for a in arrays:  # every script is checked before the first sbatch (the edges to come are @N here)
            name = job_name(self.sweep, a.stage, a.keys, salt)
            params = sbatch_parameters(a, self.profile, name, dependency_string(a.after, {}), env_level())
            check_sbatch_script(sbatch_script(params, self.log_dir(a.stage), len(a.packs)), params, name)
        for a in arrays:
            after = [JobRef(real.get(r.job_id, r.job_id), r.array_index) for r in a.after]
            name = job_name(self.sweep, a.stage, a.keys, salt)
            params = sbatch_parameters(a, self.profile, name, dependency_string(after, sizes), env_level())
            for s in (s for p in a.packs for s in p):  # a stale receipt must not let the job skip its step
                receipt_path(self.workdir, s.stage, s.name, s.key).unlink(missing_ok=True)
            intent = Workdir(self.workdir).intent(name)
            atomic_write_json(
                intent,
                {
                    "name": name,
                    "stage": a.stage,
                    "packs": [[s.key for s in p] for p in a.packs],
                    "attempts": {k: attempts.get(k, 0) + 1 for k in a.keys},
                    "resources": a.resources,
                },
            )
            jobs = self._submit_with_retries(a, params, name, attempts)
            base = str(jobs[0].job_id).split("_")[0]
            real[a.ref], sizes[base] = base, len(a.packs)
            for i, (pack, job) in enumerate(zip(a.packs, jobs)):
                for s in pack:
                    self._record(
                        s,
                        JobRef(base, None if len(jobs) == 1 else i),
                        attempts.get(s.key, 0) + 1,
                        name,
                        a.resources,
                        job.paths,
                    )
            intent.unlink()
            out.arrays += 1
            out.jobs += len(jobs)
            out.steps += len(a.keys)
            out.job_ids.append(base)
            log.info(
                "submitted %s: %d step(s) as %s%s",
                a.stage,
                len(a.keys),
                f"array {base} of {len(jobs)} jobs" if len(jobs) > 1 else f"job {base}",
                f", after {params['dependency'].removeprefix('afterok:').replace(':', ' ')}"
                if "dependency" in params
                else "",
            )
            time.sleep(self.profile.submit_interval_s)
        return out

    def _submit_with_retries(
        self, a: ArraySpec, params: dict, name: str, attempts: dict[str, int]
    ) -> list[Any]:
        """sbatch, retried with back-off on transient controller errors; a submission that went
        through although sbatch reported an error is found by its name, not submitted twice."""
        for attempt in range(self.profile.submit_retries + 1):
            try:
                return self.submit_fn(a, params, max(attempts.get(k, 0) + 1 for k in a.keys))
            except UnsafeSbatch:
                raise
            except Exception as e:  # noqa: BLE001 - submitit wraps sbatch's stderr in FailedJobError
                limit = next(
                    ((what, todo) for pattern, what, todo in LIMIT_SBATCH if pattern.search(str(e))), None
                )
                if limit is not None:
                    raise RuntimeError(
                        f"sbatch for {a.stage} ({name}) refused: {limit[0]} is reached. The arrays "
                        f"submitted before it stand; {limit[1]}. sbatch said: "
                        f"{' '.join(str(e).split())[-300:]}"
                    ) from None
                if not TRANSIENT_SBATCH.search(str(e)) or attempt == self.profile.submit_retries:
                    raise RuntimeError(f"sbatch for {a.stage} ({name}) failed: {e}") from None
                if find_jobs_by_name([name]):
                    raise RuntimeError(
                        f"sbatch for {name} reported an error but the job exists; run the launch "
                        "again to adopt it"
                    ) from None
                wait = min(60.0, 2.0**attempt)
                log.warning("sbatch failed transiently (%s); retrying in %.0f s", str(e).strip()[:200], wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _sbatch(self, a: ArraySpec, params: dict, attempt: int) -> list[Any]:
        import submitit

        from cdhpc.base.thirdparty import executor_command
        from jobs import StepJob

        executor = submitit.SlurmExecutor(
            folder=self.log_dir(a.stage), max_num_timeout=self.profile.max_requeues
        )
        executor.update_parameters(**params)
        # the script exactly as submitit is about to write it (an array's copy of the executor
        # renders the same)
        text = sbatch_script(executor.parameters, executor.folder, len(a.packs), executor_command(executor))
        check_sbatch_script(text, params, params["job_name"])
        with executor.batch():
            jobs = [
                executor.submit(StepJob(str(self.workdir), [s.to_dict() for s in pack], attempt))
                for pack in a.packs
            ]
        return jobs

    def _record(
        self, spec: StepSpec, ref: JobRef, attempt: int, name: str, resources: dict, paths: Any
    ) -> None:
        now = time.time()
        JobRecord(
            spec.key,
            "slurm",
            ref.job_id,
            "PENDING",
            attempt,
            now,
            now,
            ref.array_index,
            str(paths.stdout) if paths is not None else None,
            str(paths.stderr) if paths is not None else None,
            name,
            resources.get("mem_gb"),
        ).write(job_record_path(self.workdir, spec))

    def cancel(self, refs: list[JobRef]) -> None:
        """scancel jobs that can never run (they wait on a failed input that is resubmitted)."""
        if refs:
            run_slurm(["scancel", *sorted({str(r) for r in refs})])
