"""The cluster's submit limits, read rather than guessed: ``MaxArraySize`` and ``MaxJobCount``
from ``scontrol show config``, the user's ``MaxSubmitJobs`` from the association and the QOS
(``sacctmgr``, where accounting exists), and the jobs already queued (``squeue``). A profile's
``max_submitted_jobs`` overrides the user's limit (or fills it in where accounting cannot be read).

From them, `Limits.budget` is how many more jobs (array elements count one each) this launch may
submit. ``MaxJobs`` (running jobs) is read and shown but is no submit limit: jobs above it wait
in the queue (reason AssocMaxJobsLimit) instead of being refused.

Pure part: the parsers of recorded command outputs and the budget; shell part: `read_limits`.
Every command is read-only, so ``--dry-run`` may call it too.
"""

from __future__ import annotations

import getpass
import math
import subprocess
from dataclasses import dataclass

MARGIN_FRACTION = 0.05  # of the tightest limit, kept free: other tools, a relaunch's own continuation
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
}  # states that no longer count against MaxSubmitJobs


@dataclass(frozen=True)
class Limits:
    max_array_size: int | None = None  # slurm.conf MaxArraySize: indices go up to this - 1
    max_job_count: int | None = None  # slurm.conf MaxJobCount: jobs the controller holds, finished ones too
    max_submit: int | None = None  # the user's submitted (pending + running) jobs: min(assoc, QOS, profile)
    max_running: int | None = None  # MaxJobs: shown, not a submit limit
    submit_source: str = ""  # where max_submit comes from, in words
    queued_mine: int = 0  # the user's pending and running jobs (array elements one each)
    held_all: int = 0  # every job the controller lists, finished ones within MinJobAge too
    read: bool = False  # whether SLURM answered at all
    accounting: bool = False  # whether sacctmgr answered (then a missing limit is none, not unknown)

    def room(self) -> int | None:
        """Jobs the limits leave for this launch before the margin (None: no limit known)."""
        rooms = []
        if self.max_submit is not None:
            rooms.append(self.max_submit - self.queued_mine)
        if self.max_job_count is not None:
            rooms.append(self.max_job_count - self.held_all)
        return min(rooms) if rooms else None

    def margin(self) -> int:
        tight = min(x for x in (self.max_submit, self.max_job_count, 10**9) if x is not None)
        return max(1, math.ceil(tight * MARGIN_FRACTION)) if tight < 10**9 else 0

    def budget(self) -> int | None:
        """Jobs this launch may submit: the room minus the margin, never below 0 (None: unlimited)."""
        room = self.room()
        return None if room is None else max(0, room - self.margin())

    def array_cap(self, wanted: int) -> int:
        """The array size to plan with: the profile's, capped at MaxArraySize - 1 (indices start at 0)."""
        return wanted if self.max_array_size is None else max(1, min(wanted, self.max_array_size - 1))

    def describe(self) -> str:
        """One line for logs and --dry-run."""
        if not self.read and self.max_submit is None:
            return "cluster limits unknown (SLURM does not answer here)"

        def show(x: int | None, none: str = "unknown") -> str:
            return none if x is None else str(x)

        acct = "none" if self.accounting else "unknown"
        budget = self.budget()
        return (
            f"MaxArraySize {show(self.max_array_size)}, MaxJobCount {show(self.max_job_count)} "
            f"({self.held_all} held), MaxSubmitJobs {show(self.max_submit, acct)}"
            f"{f' ({self.submit_source})' if self.submit_source else ''}, MaxJobs "
            f"{show(self.max_running, acct)}; "
            f"{self.queued_mine} of your jobs queued or running; budget "
            f"{'unlimited' if budget is None else f'{budget} job(s) (margin {self.margin()})'}"
        )


# ----------------------------------------------------------------------------- pure: parsing
def limit_value(text: str) -> int | None:
    """'1001' -> 1001; '' / 'None' / 'UNLIMITED' / garbage -> None (no limit)."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_config(text: str) -> dict[str, int | None]:
    """`scontrol show config` -> {'MaxArraySize': int|None, 'MaxJobCount': int|None}."""
    out: dict[str, int | None] = {"MaxArraySize": None, "MaxJobCount": None}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in out:
            out[key.strip()] = limit_value(value)
    return out


def _min(values) -> int | None:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def parse_assoc(text: str, account: str | None = None) -> tuple[int | None, int | None, list[str]]:
    """`sacctmgr -n -P show assoc where user=U format=Account,MaxSubmit,MaxJobs,QOS,DefaultQOS`
    -> (MaxSubmit, MaxJobs, the QOS names a job without --qos gets). With several associations
    (accounts), the profile's `account`, else the tightest of all; the QOS is the DefaultQOS, else
    the association's only QOS."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") >= 4]
    if account:
        rows = [r for r in rows if r[0] == account] or rows
    qos: list[str] = []
    for r in rows:
        default, allowed = r[4].strip(), [q for q in r[3].split(",") if q]
        qos += [default] if default else allowed if len(allowed) == 1 else []
    return _min(limit_value(r[1]) for r in rows), _min(limit_value(r[2]) for r in rows), sorted(set(qos))


def parse_qos(text: str, names: list[str]) -> tuple[int | None, int | None]:
    """`sacctmgr -n -P show qos format=Name,MaxSubmitPU,MaxJobsPU` -> the tightest
    (MaxSubmitJobsPerUser, MaxJobsPerUser) of the named QOS."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") >= 2]
    rows = [r for r in rows if r[0] in names]
    return _min(limit_value(r[1]) for r in rows), _min(limit_value(r[2]) for r in rows)


def parse_queue(text: str, user: str) -> tuple[int, int]:
    """`squeue -h -r -t all -o '%i|%u|%T'` -> (the user's unfinished jobs, all jobs listed)."""
    mine = held = 0
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        held += 1
        mine += parts[1] == user and parts[2] not in FINISHED
    return mine, held


def combine(
    config: dict[str, int | None],
    assoc: tuple[int | None, int | None, list[str]],
    qos: tuple[int | None, int | None],
    queue: tuple[int, int],
    override: int | None,
    read: bool = True,
    accounting: bool = True,
    qos_names: list[str] | None = None,
) -> Limits:
    """Pure: the Limits from the parsed answers; the profile's `override` wins over what was read.
    `qos_names`: the QOS the jobs get (default: the association's)."""
    submit = _min([assoc[0], qos[0]])
    names = ",".join(assoc[2] if qos_names is None else qos_names)
    source = ("association" if submit == assoc[0] else f"QOS {names}") if submit is not None else ""
    if override is not None:
        submit, source = override, "profile max_submitted_jobs"
    return Limits(
        config["MaxArraySize"],
        config["MaxJobCount"],
        submit,
        _min([assoc[1], qos[1]]),
        source,
        queue[0],
        queue[1],
        read,
        accounting,
    )


# ----------------------------------------------------------------------------- shell
def _ask(cmd: list[str], timeout_s: float = 10) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def read_limits(profile, user: str | None = None) -> Limits:
    """Ask SLURM (read-only) for the limits that apply to `user` (default: this user) under the
    profile's account and QOS. Anything that does not answer counts as unknown."""
    user = user or getpass.getuser()
    override = getattr(profile, "max_submitted_jobs", None)
    config_text = _ask(["scontrol", "show", "config"])
    config = parse_config(config_text or "")
    assoc_text = _ask(
        [
            "sacctmgr",
            "-n",
            "-P",
            "show",
            "assoc",
            f"where user={user}",
            "format=Account,MaxSubmit,MaxJobs,QOS,DefaultQOS",
        ]
    )
    assoc = parse_assoc(assoc_text or "", getattr(profile, "account", None))
    names = [q for q in (getattr(profile, "qos", None) or "").split(",") if q] or assoc[2]
    qos_text = (
        _ask(["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU,MaxJobsPU"]) if names else None
    )
    qos = parse_qos(qos_text or "", names)
    queue_text = _ask(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%u|%T"])
    queue = parse_queue(queue_text or "", user)
    return combine(
        config,
        assoc,
        qos,
        queue,
        override,
        read=config_text is not None or queue_text is not None,
        accounting=assoc_text is not None,
        qos_names=names,
    )


def waves_needed(jobs_per_array: list[int], budget: int | None) -> int | None:
    """Pure: how many waves submit arrays of these sizes (dependency order) with `budget` jobs a
    wave, one of them the continuation job (None: the budget leaves no room for a wave)."""
    if not jobs_per_array:
        return 0
    if budget is None:
        return 1
    room = budget - 1
    if room < 1:
        return None
    total = sum(jobs_per_array)  # waves before the last fill `room` exactly (arrays split at packs)
    return 1 if total <= budget else 1 + math.ceil((total - budget) / room)
