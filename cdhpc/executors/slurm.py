"""The SLURM executor: the whole DAG submitted at once as job arrays with ``afterok`` edges, so
it runs unattended after the launcher exits.

Pure part: which steps go into which array, the sbatch parameters of an array, dependency
strings and the script checks (`cdhpc.executors.sbatch`), and here the parsing of sacct/squeue
answers. Shell part (`SlurmScheduler`, `refresh_job_records`): submitit's SlurmExecutor, one sacct
call per poll.

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
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

from cdhpc.base.verbosity import env_level
from cdhpc.config.profile import ClusterProfile
from cdhpc.executors.sbatch import (ArraySpec, JobRef, UnsafeSbatch, check_sbatch_script, dependency_string,
    job_name, plan_arrays, sbatch_parameters, sbatch_script)
from cdhpc.executors.scheduler import LIVE_JOB_STATES  # live: sacct/squeue states of a job that may still run
from cdhpc.sweep.jobrecords import JobRecord, job_record_path, update_job_record
from cdhpc.sweep.plan import Plan, StepSpec
from cdhpc.base.atomicio import atomic_write_json
from cdhpc.sweep.receipts import receipt_path
from cdhpc.sweep.workdir import Workdir

log = logging.getLogger("cdhpc")

LEFT_QUEUE = "LEFT_QUEUE"  # not listed by squeue any more and no accounting to say how it ended
# sbatch errors that waiting a few seconds does not cure: a limit of the cluster or the account.
# Each names the limit a user can look up; "temporarily unable to accept job" is what sbatch
# prints while it retries by itself against MaxJobCount.
WAVES_ADVICE = ("launch again when jobs have finished: a launch submits in waves within the limits it reads "
                "(the profile's max_submitted_jobs sets the limit where SLURM's cannot be read)")
LIMIT_SBATCH = (  # (sbatch's words, the limit, what to do)
    (re.compile(r"MaxJobCount|temporarily unable to accept job", re.I), "MaxJobCount (slurm.conf: jobs the controller holds)",
     WAVES_ADVICE),
    (re.compile(r"QOSMaxSubmitJobPerUserLimit|MaxSubmitJobs", re.I), "the QOS's MaxSubmitJobsPerUser", WAVES_ADVICE),
    (re.compile(r"AssocMaxSubmitJobLimit|job submit limit", re.I), "your association's MaxSubmitJobs", WAVES_ADVICE),
    (re.compile(r"Invalid job array specification|MaxArraySize", re.I), "MaxArraySize (slurm.conf)",
     "lower the profile's max_array_size below it and launch again"),
)
TRANSIENT_SBATCH = re.compile(r"Socket timed out|Unable to contact slurm controller|Resource temporarily unavailable|"
                              r"try again|Connection refused|Zero Bytes were transmitted", re.I)



# ----------------------------------------------------------------------------- pure: states
def canonical_state(raw: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'OUT_OF_MEMORY' stays."""
    return raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"


def expand_job_id(text: str) -> list[str]:
    """Pure: '123_[0-2,5%4]' -> ['123_0', '123_1', '123_2', '123_5']; anything else unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", text)
    if not m:
        return [text]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def parse_states(text: str) -> dict[str, str]:
    """Pure: 'JobID|State' lines (sacct -P, or squeue -o '%i|%T') -> job or element -> state.
    The last line of a job wins (sacct lists a requeued job's earlier runs first); a line of
    one element wins over the line of a pending range (sacct prints '3_[0-2%2]|PENDING' for an
    array whose elements 3_0 and 3_1 already run)."""
    single, ranges = {}, {}
    for line in text.splitlines():
        job, sep, state = line.strip().partition("|")
        if sep and "." not in job:
            for j in expand_job_id(job):
                (ranges if "[" in job else single)[j] = canonical_state(state.split("|")[0])
    return ranges | single


def record_state(rec: dict, answer: dict[str, str], complete: bool, now: float, grace_s: float = 120.0) -> str:
    """Pure: the new state of a live job record given a poll's answer. `complete`: the answer
    lists every job still known to SLURM (squeue was asked), so a job it omits has left the
    queue; without squeue's word a job missing from sacct's answer may only be lagging, and is
    declared gone after `grace_s` more. No job is declared gone within `grace_s` of its
    submission (an array being split into elements can be missing from both for a moment)."""
    ref = str(JobRef(rec["job_id"], rec.get("array_index")))
    state = answer.get(ref) or (answer.get(rec["job_id"]) if rec.get("array_index") is None else None)
    if state is not None:
        return state
    age_s = now - (rec.get("submitted") or now)
    if age_s > grace_s and (complete or age_s > 2 * grace_s):
        return LEFT_QUEUE
    return rec["state"]


# ----------------------------------------------------------------------------- shell: polling
def _run(cmd: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def _ask(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return _run(cmd)
    except (OSError, subprocess.TimeoutExpired):
        return None


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """What squeue knows of the given jobs (finished ones too, for MinJobAge); None if it fails."""
    done = _ask(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(sorted(set(job_ids)))])
    if done is None:
        return None
    if done.returncode:
        return {} if "Invalid job id" in done.stderr else None  # every job has left squeue's memory
    return parse_states(done.stdout)


def query_states(job_ids: list[str], wanted: list[str] = ()) -> tuple[dict[str, str], bool]:
    """One sacct call for all the given jobs; squeue where accounting is off or down, and for
    the jobs sacct does not list (slurmdbd lags the controller, e.g. while an array's first
    elements start). `wanted`: the jobs and elements asked about. Returns (state by job or element, whether a job missing from the answer
    has left the queue, in the sense of record_state)."""
    done = _ask(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted(set(job_ids)))])
    answer = parse_states(done.stdout) if done is not None and done.returncode == 0 else None
    if answer is not None:
        # an array sacct has not split into elements yet is one line under the array's id,
        # whose state is not its elements' (PENDING while they run): ask squeue for those
        missing = [w for w in wanted if w not in answer]
        if not missing:
            return answer, False
        queued = squeue_states([w.split("_")[0] for w in missing])
        return (answer, False) if queued is None else (queued | answer, True)
    queued = squeue_states(job_ids)
    if queued is None:
        raise RuntimeError(f"neither sacct nor squeue answers ({done.stderr.strip() if done is not None else 'not found'})")
    return queued, True


def refresh_job_records(workdir: Path, records: Iterable[Any]) -> int:
    """Poll SLURM once for every live slurm job record (manifest rows or dicts with a `path`)
    and rewrite the records whose state changed. Returns how many changed."""
    live = [dict(r) for r in records if r["executor"] == "slurm" and r["state"] in LIVE_JOB_STATES]
    if not live:
        return 0
    answer, complete = query_states([r["job_id"] for r in live], [str(JobRef(r["job_id"], r["array_index"])) for r in live])
    now, changed = time.time(), 0
    for r in live:
        state = record_state(r, answer, complete, now)
        if state != r["state"]:
            update_job_record(Path(workdir) / r["path"], state=state, updated=now)
            changed += 1
    return changed


def find_jobs_by_name(names: list[str]) -> dict[str, list[str]]:
    """Job ids (array elements expanded) SLURM knows under each name: squeue, then sacct."""
    if not names:
        return {}
    out: dict[str, list[str]] = {}
    for cmd in (["squeue", "-h", "-r", "-t", "all", "-o", "%j|%i", "--name", ",".join(names)],
                ["sacct", "-n", "-P", "-X", "-S", "now-30days", "-o", "JobName,JobID", "--name", ",".join(names)]):
        done = _run(cmd)
        for line in done.stdout.splitlines() if done.returncode == 0 else ():
            name, _, job = line.strip().partition("|")
            if name in names:
                out.setdefault(name, []).extend(j for j in expand_job_id(job) if j not in out.get(name, []))
        if out:
            break
    return out


# ----------------------------------------------------------------------------- shell: submission
@dataclass
class Submission:
    arrays: int = 0
    jobs: int = 0
    steps: int = 0
    job_ids: list[str] = field(default_factory=list)
    left: int = 0  # steps of `todo` left for a later wave (cdhpc.executors.waves)


class SlurmScheduler:
    """Submits steps through submitit's SlurmExecutor, one array per `ArraySpec`."""

    def __init__(self, workdir: Path, profile: ClusterProfile, sweep: str,
                 submit_fn: Callable[[ArraySpec, dict, int], list[Any]] | None = None):
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
                    _run(["scancel", base])
                    log.warning("cancelled job %s (%s): a launcher stopped after sbatch, before submitit wrote "
                                "its pickles; its steps are submitted again", base, d["name"])
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
                    self._record(by_key[key], JobRef(base, None if single else i), intent["attempts"].get(key, 1),
                                 intent["name"], intent["resources"], None)
                    adopted += 1
        log.warning("adopted job %s (%s), submitted by a launcher that stopped before recording it", base, intent["name"])
        return adopted

    # -- submission --------------------------------------------------------------------------
    def submit(self, plan: Plan, todo: set[str], live: dict[str, JobRef], attempts: dict[str, int],
               resources: dict[str, dict] | None = None, budget: int | None = None) -> Submission:
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
            atomic_write_json(intent, {"name": name, "stage": a.stage, "packs": [[s.key for s in p] for p in a.packs],
                                       "attempts": {k: attempts.get(k, 0) + 1 for k in a.keys}, "resources": a.resources})
            jobs = self._submit_with_retries(a, params, name, attempts)
            base = str(jobs[0].job_id).split("_")[0]
            real[a.ref], sizes[base] = base, len(a.packs)
            for i, (pack, job) in enumerate(zip(a.packs, jobs)):
                for s in pack:
                    self._record(s, JobRef(base, None if len(jobs) == 1 else i), attempts.get(s.key, 0) + 1, name,
                                 a.resources, job.paths)
            intent.unlink()
            out.arrays += 1
            out.jobs += len(jobs)
            out.steps += len(a.keys)
            out.job_ids.append(base)
            log.info("submitted %s: %d step(s) as %s%s", a.stage, len(a.keys),
                     f"array {base} of {len(jobs)} jobs" if len(jobs) > 1 else f"job {base}",
                     f", after {params['dependency'].removeprefix('afterok:').replace(':', ' ')}" if "dependency" in params else "")
            time.sleep(self.profile.submit_interval_s)
        return out

    def _submit_with_retries(self, a: ArraySpec, params: dict, name: str, attempts: dict[str, int]) -> list[Any]:
        """sbatch, retried with back-off on transient controller errors; a submission that went
        through although sbatch reported an error is found by its name, not submitted twice."""
        for attempt in range(self.profile.submit_retries + 1):
            try:
                return self.submit_fn(a, params, max(attempts.get(k, 0) + 1 for k in a.keys))
            except UnsafeSbatch:
                raise
            except Exception as e:  # noqa: BLE001 - submitit wraps sbatch's stderr in FailedJobError
                limit = next(((what, todo) for pattern, what, todo in LIMIT_SBATCH if pattern.search(str(e))), None)
                if limit is not None:
                    raise RuntimeError(
                        f"sbatch for {a.stage} ({name}) refused: {limit[0]} is reached. The arrays submitted before it "
                        f"stand; {limit[1]}. sbatch said: {' '.join(str(e).split())[-300:]}") from None
                if not TRANSIENT_SBATCH.search(str(e)) or attempt == self.profile.submit_retries:
                    raise RuntimeError(f"sbatch for {a.stage} ({name}) failed: {e}") from None
                if find_jobs_by_name([name]):
                    raise RuntimeError(f"sbatch for {name} reported an error but the job exists; run the launch "
                                       "again to adopt it") from None
                wait = min(60.0, 2.0 ** attempt)
                log.warning("sbatch failed transiently (%s); retrying in %.0f s", str(e).strip()[:200], wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _sbatch(self, a: ArraySpec, params: dict, attempt: int) -> list[Any]:
        import submitit

        from cdhpc.base.thirdparty import executor_command
        from jobs import StepJob

        executor = submitit.SlurmExecutor(folder=self.log_dir(a.stage), max_num_timeout=self.profile.max_requeues)
        executor.update_parameters(**params)
        # the script exactly as submitit is about to write it (an array's copy of the executor renders the same)
        text = sbatch_script(executor.parameters, executor.folder, len(a.packs), executor_command(executor))
        check_sbatch_script(text, params, params["job_name"])
        with executor.batch():
            jobs = [executor.submit(StepJob(str(self.workdir), [s.to_dict() for s in pack], attempt)) for pack in a.packs]
        return jobs

    def _record(self, spec: StepSpec, ref: JobRef, attempt: int, name: str, resources: dict, paths: Any) -> None:
        now = time.time()
        JobRecord(spec.key, "slurm", ref.job_id, "PENDING", attempt, now, now, ref.array_index,
                  str(paths.stdout) if paths is not None else None, str(paths.stderr) if paths is not None else None,
                  name, resources.get("mem_gb")).write(job_record_path(self.workdir, spec))

    def cancel(self, refs: list[JobRef]) -> None:
        """scancel jobs that can never run (they wait on a failed input that is resubmitted)."""
        if refs:
            _run(["scancel", *sorted({str(r) for r in refs})])
