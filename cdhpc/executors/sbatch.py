"""The SLURM executor's pure part: which steps go into which array (`plan_arrays`), the job name,
the sbatch parameters of an array (`sbatch_parameters`), dependency strings, and the sbatch script
submitit renders with its line-by-line check (`check_sbatch_script`, docs/design.md §7.2)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdhpc.config.profile import ClusterProfile
from cdhpc.sweep.plan import Plan, StepSpec


# ----------------------------------------------------------------------------- pure: arrays
@dataclass(frozen=True)
class JobRef:
    """One job, or one element of a job array. A `job_id` of ``@N`` is the N-th array of the
    submission being planned (its real id is known once sbatch answers)."""

    job_id: str
    array_index: int | None = None

    def __str__(self) -> str:
        return self.job_id if self.array_index is None else f"{self.job_id}_{self.array_index}"


@dataclass
class ArraySpec:
    """One sbatch call: a job array (or a single job) of packs of steps of one stage."""

    stage: str
    packs: list[list[StepSpec]]  # one pack of steps per array element, run in order
    after: list[JobRef]  # the exact upstream jobs (afterok)
    resources: dict[str, Any]
    ref: str = ""  # "@N": its place in the submission

    @property
    def keys(self) -> list[str]:
        return [s.key for pack in self.packs for s in pack]


def plan_arrays(
    plan: Plan,
    todo: set[str],
    live: dict[str, JobRef],
    max_array_size: int,
    resources: dict[str, dict] | None = None,
) -> list[ArraySpec]:
    """Pure: the arrays that run the steps `todo`, upstream arrays first. Steps wait for the jobs
    of inputs that are live (`live`: key -> job) or submitted in the same go; done inputs are not
    waited for. Steps of one stage with the same upstream jobs and resources share an array,
    packed `steps_per_job` to an element and split at `max_array_size`. `resources` overrides
    a step's resources (e.g. more memory after OUT_OF_MEMORY)."""
    resources = resources or {}
    assigned: dict[str, JobRef] = dict(live)
    pending = [s for s in plan.steps if s.key in todo]
    arrays: list[ArraySpec] = []
    while pending:
        ready = [s for s in pending if all(k not in todo or k in assigned for k in s.inputs.values())]
        if not ready:
            raise ValueError(f"steps {[s.name for s in pending[:5]]} wait for inputs outside the plan")
        groups: dict[tuple, list[StepSpec]] = {}
        for s in ready:
            after = sorted(
                {str(assigned[k]): assigned[k] for k in s.inputs.values() if k in assigned}.items()
            )
            res = resources.get(s.key, s.resources)
            groups.setdefault(
                (s.stage, tuple(a for a, _ in after), json.dumps(res, sort_keys=True)), []
            ).append(s)
        for (stage, _, res_json), steps in groups.items():
            res = json.loads(res_json)
            after = sorted(
                {str(assigned[k]): assigned[k] for k in steps[0].inputs.values() if k in assigned}.values(),
                key=str,
            )
            per_job = res.get("steps_per_job", 1)
            packs = [steps[i : i + per_job] for i in range(0, len(steps), per_job)]
            for lo in range(0, len(packs), max_array_size):
                chunk = packs[lo : lo + max_array_size]
                a = ArraySpec(stage, chunk, after, res, ref=f"@{len(arrays)}")
                arrays.append(a)
                for i, pack in enumerate(chunk):
                    for s in pack:
                        assigned[s.key] = JobRef(a.ref, i if len(chunk) > 1 else None)
        pending = [s for s in pending if s.key not in assigned]
    return arrays


def dependency_string(after: Iterable[JobRef], sizes: dict[str, int]) -> str | None:
    """Pure: ``afterok:...`` for the given upstream jobs; every element of an array of known size
    (`sizes`: job id -> elements) collapses into the array's id."""
    by_job: dict[str, set] = {}
    for ref in after:
        by_job.setdefault(ref.job_id, set()).add(ref.array_index)
    parts = []
    for job_id, indices in sorted(by_job.items()):
        if None in indices or len(indices) == sizes.get(job_id, -1):
            parts.append(job_id)
        else:
            parts += [f"{job_id}_{i}" for i in sorted(indices)]
    return "afterok:" + ":".join(parts) if parts else None


class UnsafeSbatch(ValueError):
    """A job name or sbatch script that a value could have changed: nothing is submitted."""


JOB_NAME_PART = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
)  # sweep names' rule; safe in squeue/sacct --name lists


def job_name(sweep: str, stage: str, keys: list[str], salt: str) -> str:
    """Pure: cdhpc.<sweep>.<stage>.<hash of the steps and the submission>: unique, and findable
    by name after a launcher died between sbatch and writing the job records."""
    for what, part in (("sweep name", sweep), ("stage", stage)):
        if not JOB_NAME_PART.fullmatch(part):
            raise UnsafeSbatch(
                f"{what} {part!r} cannot be part of a SLURM job name (allowed: letters, digits "
                "and _ . + -, starting with a letter or digit)"
            )
    digest = hashlib.sha256(json.dumps([keys, salt]).encode()).hexdigest()[:10]
    return f"cdhpc.{sweep}.{stage}.{digest}"


def sbatch_parameters(
    array: ArraySpec, profile: ClusterProfile, name: str, dependency: str | None, log_level: str | None = None
) -> dict[str, Any]:
    """Pure: submitit SlurmExecutor parameters of one array (the sbatch lines it renders).
    `log_level` (a cdhpc.base.verbosity level) is exported to the job even where a profile exports
    no environment (``--export=NONE``)."""
    res = array.resources
    stage = profile.stages.get(array.stage)
    params: dict[str, Any] = {
        "job_name": name,
        "time": res["timeout_min"] * max(len(p) for p in array.packs),
        "nodes": res["nodes"],
        "ntasks_per_node": res["tasks_per_node"],
        "cpus_per_task": res["cpus_per_task"],
        "mem": f"{math.ceil(res['mem_gb'] * 1024)}M",
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": profile.array_parallelism,
        "setup": [f"export OMP_NUM_THREADS={res['cpus_per_task']}"],
        "additional_parameters": {"requeue": True},
    }
    if log_level is not None:  # one of cdhpc.base.verbosity.LEVELS: a plain word, safe in the script
        params["setup"].append(f"export CDHPC_LOG_LEVEL={log_level}")
    if res["gpus_per_node"]:
        params["gpus_per_node"] = res["gpus_per_node"]
    for key in ("partition", "qos"):
        value = getattr(stage, key, None) if stage is not None else None
        if value or getattr(profile, key):
            params[key] = value or getattr(profile, key)
    for key in ("account", "constraint"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    if dependency:
        params["dependency"] = dependency
        params["additional_parameters"]["kill-on-invalid-dep"] = (
            "yes"  # a failed input cancels its dependents
        )
    extra = {**profile.sbatch, **(stage.sbatch if stage is not None else {})}
    params["additional_parameters"].update(extra.pop("additional_parameters", {}))
    return params | extra


# ----------------------------------------------------------------------------- pure: the script
SBATCH_FLAG = re.compile(r"#SBATCH --([A-Za-z][A-Za-z0-9-]*)(=.*)?")
SUBMITIT_FLAGS = {"signal", "output", "error", "open-mode", "array", "job-name", "time", "nodes", "wckey"}
NOT_FLAGS = {
    "array_parallelism",
    "additional_parameters",
    "setup",
    "teardown",
    "signal_delay_s",
    "stderr_to_stdout",
    "srun_args",
    "use_srun",
    "num_gpus",
}  # submitit parameters that are no #SBATCH line of their own


def sbatch_script(params: dict[str, Any], folder: str | Path, n_jobs: int, command: str | None = None) -> str:
    """Pure: the script submitit's SlurmExecutor writes for these parameters (its own renderer),
    for an array of `n_jobs` (a single job when 1) logging to `folder`."""
    from cdhpc.base.thirdparty import make_sbatch_string, submitit_command

    command = command or submitit_command(folder)
    return make_sbatch_string(command, folder, **({"map_count": n_jobs} if n_jobs > 1 else {}), **params)


def check_sbatch_script(text: str, params: dict[str, Any], name: str) -> None:
    """Raise UnsafeSbatch unless no parameter has a line break or control character and every
    line of `text` is accounted for: the shebang, one ``#SBATCH --key=value`` line per parameter
    (each key once, a key submitit or a parameter sets), the `setup` lines, submitit's command
    block and the `teardown` lines, in submitit's order and number."""

    def refuse(why: str) -> UnsafeSbatch:
        return UnsafeSbatch(
            f"refusing to submit {name}: {why}; nothing was submitted for it "
            "(fix the value in the cluster profile or the sweep)"
        )

    for key, value in _strings(params):
        if any(not c.isprintable() for c in value):
            raise refuse(f"sbatch parameter {key} = {value!r} has a line break or control character")
    flags: dict[str, str | None] = dict.fromkeys(SUBMITIT_FLAGS)  # flag -> its line (None: submitit's value)
    if "num_gpus" in params:
        flags["gpus-per-node"] = None
    for key, value in [*params.items(), *(params.get("additional_parameters") or {}).items()]:
        if value is not None and key not in NOT_FLAGS:
            flags[key.replace("_", "-")] = f"#SBATCH --{key.replace('_', '-')}" + (
                "" if value is True else f"={shlex.quote(str(value))}"
            )
    lines = text.split("\n")
    end = lines.index("", 3) if lines[:3] == ["#!/bin/bash", "", "# Parameters"] and "" in lines[3:] else 0
    if not end:
        raise refuse("its sbatch script does not start as submitit's scripts do")
    seen = set()
    for n, line in enumerate(lines[3:end], 4):
        m = SBATCH_FLAG.fullmatch(line)
        key = m[1] if m else None
        if key not in flags or flags[key] not in (None, line) or key in seen:
            raise refuse(f"line {n} of its sbatch script, {line!r}, is not the line of one parameter")
        seen.add(key)
    setup, teardown = params.get("setup"), params.get("teardown")
    tail = (
        (["", "# setup", *setup] if setup is not None else [])
        + ["", "# command", "export SUBMITIT_EXECUTOR=slurm", None, ""]
        + (["", "# teardown", *teardown] if teardown is not None else [])
    )
    rest = lines[end:]
    wrong = len(rest) != len(tail) or any(want is not None and want != got for want, got in zip(tail, rest))
    if wrong or rest[tail.index(None)].lstrip().startswith("#"):
        raise refuse(
            "after its #SBATCH lines, its sbatch script is not submitit's setup, command and teardown "
            "lines (a value started a line of its own)"
        )


def _strings(value: Any, key: str = "") -> Iterable[tuple[str, str]]:
    """Every string in a parameter set (keys of mappings too), with the parameter it is in."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k, f"{key}.{k!r}" if key else str(k))
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")
