"""Cluster profiles: ``slurm/<name>.yaml``, what a SLURM cluster needs beyond the sweep itself.

A profile names the partition, account, qos and constraint every job gets, per-stage resources
(the sweep's own ``executor.resources`` override them key by key), the array throttle and
MaxArraySize, and extra sbatch parameters. Extra parameters use submitit's SlurmExecutor names,
checked against the signature submitit derives them from, so a misspelled name lists the valid
ones; ``additional_parameters`` passes anything else to sbatch unchanged.

Every value that reaches the sbatch script is checked when the profile loads (`check_values`).
submitit shell-quotes a value, but a quoted newline still ends the ``#SBATCH`` line: what follows
becomes another directive or a shell line the job runs. Profiles are often shared files, so a
value must look like what SLURM accepts in its field (`VALUE_RULES`) and text never has a line
break or another control character (the rules: `cdhpc.config.sbatch_rules`).
`cdhpc.executors.sbatch.check_sbatch_script` checks the rendered script again before sbatch sees it.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator

from cdhpc import STAGES
from cdhpc.config import SweepConfig
from cdhpc.config.pydantic_errors import format_pydantic_errors
from cdhpc.config.sbatch_rules import (
    OWN_PARAMETERS,
    SCALAR,
    VALUE_RULES,
    additional_problem,
    safe_key,
    sbatch_parameter_names,
    text_problem,
    value_problem,
)
from cdhpc.config.sections import ResourcesConfig, Strict, known_stages
from cdhpc.config.yamlio import ConfigError, Issue, load_yaml


class StageProfile(Strict):
    """Resources of one stage on this cluster. Unset keys fall back to the defaults."""

    nodes: Annotated[int, Field(gt=0)] | None = None
    """Nodes per step."""
    tasks_per_node: Annotated[int, Field(gt=0)] | None = None
    """Processes (ranks) per node."""
    gpus_per_node: Annotated[int, Field(ge=0)] | None = None
    """GPUs per node."""
    cpus_per_task: Annotated[int, Field(gt=0)] | None = None
    """CPU cores per process."""
    mem_gb: Annotated[float, Field(gt=0)] | None = None
    """Memory per node (GB)."""
    timeout_min: Annotated[int, Field(gt=0)] | None = None
    """Wall-clock limit per step (minutes)."""
    steps_per_job: Annotated[int, Field(gt=0)] | None = None
    """Steps of this stage packed into one job (array element)."""
    partition: str | None = None
    """Partition of this stage's jobs (default: the profile's)."""
    qos: str | None = None
    """QOS of this stage's jobs (default: the profile's)."""
    sbatch: dict[str, Any] = Field(default_factory=dict)
    """Extra submitit SlurmExecutor parameters of this stage's jobs (merged over the profile's)."""


class ClusterProfile(Strict):
    """One SLURM cluster: where jobs go and how big they are."""

    partition: str | None = None
    """Partition of every job (None: the cluster's default partition)."""
    account: str | None = None
    """Account jobs are charged to (sbatch --account)."""
    qos: str | None = None
    """Quality of service (sbatch --qos)."""
    constraint: str | None = None
    """Node features required (sbatch --constraint), e.g. a100|h100."""
    gpus_per_node: Annotated[int, Field(ge=0)] = 0
    """GPUs a node of the partition has; a stage asking for more is a config error."""
    max_array_size: Annotated[int, Field(gt=0)] = 1000
    """The cluster's MaxArraySize: larger arrays are split into several."""
    max_submitted_jobs: Annotated[int, Field(gt=1)] | None = None
    """Your limit of submitted jobs (MaxSubmitJobs; every array element counts): overrides what
    sacctmgr says, or fills it in where accounting cannot be read. A sweep above it runs in waves."""
    array_parallelism: Annotated[int, Field(gt=0)] = 256
    """Array throttle (%N): elements of one array running at once."""
    signal_delay_s: Annotated[int, Field(gt=0)] = 90
    """A job gets USR2 this long before its time limit: it checkpoints and is requeued."""
    max_requeues: Annotated[int, Field(ge=0)] = 3
    """Times a timed-out step is requeued (submitit's max_num_timeout); preemptions are unlimited."""
    oom_mem_factor: Annotated[float, Field(ge=1.0)] = 2.0
    """Memory of a step resubmitted after OUT_OF_MEMORY, relative to the attempt that ran out."""
    max_mem_gb: Annotated[float, Field(gt=0)] | None = None
    """Ceiling of those memory increases (GB per node)."""
    submit_interval_s: Annotated[float, Field(ge=0)] = 0.2
    """Pause between sbatch calls (rate limit on the controller)."""
    submit_retries: Annotated[int, Field(ge=0)] = 5
    """Retries of an sbatch that failed transiently (controller busy or unreachable)."""
    sbatch: dict[str, Any] = Field(default_factory=dict)
    """Extra submitit SlurmExecutor parameters of every job (exclude, comment, mail_type, ...)."""
    stages: dict[str, StageProfile] = Field(default_factory=dict)
    """Per-stage resources and overrides (keys: stage names)."""

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: dict[str, StageProfile]) -> dict[str, StageProfile]:
        return known_stages(stages)

    def resources_for(self, stage: str, sweep_resources: ResourcesConfig | None) -> ResourcesConfig:
        """Defaults <- this profile's stage entry <- the keys the sweep sets for the stage."""
        own = self.stages.get(stage, StageProfile())
        merged = {
            k: v for k, v in own.model_dump(exclude={"partition", "qos", "sbatch"}).items() if v is not None
        }
        if sweep_resources is not None:
            merged |= {k: getattr(sweep_resources, k) for k in sweep_resources.model_fields_set}
        return ResourcesConfig(**merged)


def find_profile(name: str, sweep_path: Path) -> Path | None:
    """slurm/<name>.yaml in the working directory or in the sweep file's directory or any
    directory above it; a name that is a path (contains / or ends in .yaml) is used as it is."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return Path(name) if Path(name).is_file() else None
    for root in (Path.cwd(), *Path(sweep_path).resolve().parents):
        p = root / "slurm" / f"{name}.yaml"
        if p.is_file():
            return p
    return None


def resolve_profile(cfg: SweepConfig, sweep_path: Path) -> tuple[SweepConfig, ClusterProfile]:
    """The sweep with its resources resolved against its profile, and the profile; the sweep's
    executor.profile becomes the profile file's absolute path, so sweep.resolved.yaml (what
    `cdhpc retry` launches) finds it from anywhere."""
    profile = load_profile(cfg, sweep_path)
    cfg = apply_profile(cfg, profile)
    if cfg.executor.profile is not None:
        path = str(find_profile(cfg.executor.profile, sweep_path).resolve())
        cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"profile": path})})
    return cfg, profile


PROFILE = "cluster profile"  # what ConfigError calls a profile file


def load_profile(cfg: SweepConfig, sweep_path: Path) -> ClusterProfile:
    """The sweep's cluster profile (built-in defaults when executor.profile is unset), checked
    against the sweep's stages. Raises ConfigError naming the profile file or the sweep key."""
    name = cfg.executor.profile
    if name is None:
        profile, path, lines = ClusterProfile(), sweep_path, {}
    else:
        path = find_profile(name, sweep_path)
        if path is None:
            known = sorted(p.stem for p in (Path.cwd() / "slurm").glob("*.yaml"))
            raise ConfigError(
                sweep_path,
                [
                    Issue(
                        ("executor", "profile"),
                        "no such cluster profile: looked for "
                        f"slurm/{name}.yaml in the working directory and above the sweep "
                        f"(profiles here: {', '.join(known) or 'none'})",
                        name,
                    )
                ],
            )
        try:
            raw, lines = load_yaml(path)
        except ConfigError as e:
            raise ConfigError(e.path, e.issues, PROFILE) from None
        issues = located(check_keys(raw), lines)  # before pydantic, whose messages print keys as they are
        if issues:
            raise ConfigError(path, issues, PROFILE)
        try:
            profile = ClusterProfile.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(path, format_pydantic_errors(e, ClusterProfile, lines, {}), PROFILE) from None
        issues = located(check_sbatch(profile) + check_values(profile), lines)
        if issues:
            raise ConfigError(path, issues, PROFILE)
    issues = check_sweep_values(cfg)
    if issues:
        raise ConfigError(sweep_path, issues)
    issues = located(check_against_sweep(profile, cfg), lines)
    if issues:
        raise ConfigError(path, issues, PROFILE if name is not None else "sweep")
    return profile


def located(issues: list[Issue], lines: dict) -> list[Issue]:
    """Issues with their YAML line, and keys that would break the message's line shown as repr."""
    return [dataclasses.replace(i.located(lines, {}), loc=tuple(map(safe_key, i.loc))) for i in issues]


def check_keys(raw: Any, loc: tuple = ()) -> list[Issue]:
    """Keys anywhere in the profile with a line break or another control character."""
    issues = []
    for key, value in raw.items() if isinstance(raw, dict) else ():
        if isinstance(key, str) and (problem := text_problem(key)):
            issues.append(
                Issue(
                    loc + (key,),
                    f"key {problem}; keys are names like partition or mail-type",
                    has_value=False,
                )
            )
        issues += check_keys(value, loc + (key,))
    return issues


def check_values(profile: ClusterProfile) -> list[Issue]:
    """Every value that reaches the sbatch script, against what SLURM accepts in its field."""
    top = {k: getattr(profile, k) for k in ("partition", "account", "qos", "constraint")}
    places: list[tuple[tuple, dict]] = [((), top), (("sbatch",), profile.sbatch)]
    for stage, sp in profile.stages.items():
        places += [
            (("stages", stage), {"partition": sp.partition, "qos": sp.qos}),
            (("stages", stage, "sbatch"), sp.sbatch),
        ]
    issues = []
    for loc, values in places:
        for key, value in values.items():
            if loc[-1:] == ("sbatch",) and key in OWN_PARAMETERS and key != "additional_parameters":
                continue  # check_sbatch says where those go
            if key == "additional_parameters":
                issues += check_additional(loc + (key,), value)
            elif value is not None and (
                problem := value_problem(rule := VALUE_RULES.get(key, SCALAR), value)
            ):
                issues.append(Issue(loc + (key,), f"{problem}; allowed: {rule.allowed}", value))
    return issues


def check_additional(loc: tuple, params: Any) -> list[Issue]:
    """additional_parameters: sbatch option names and one-line values."""
    if not isinstance(params, dict):
        return [
            Issue(loc, "must be a mapping of sbatch option names to values, e.g. {mail-type: END}", params)
        ]
    issues = []
    for key, value in params.items():
        if found := additional_problem(key, value):
            message, is_key = found
            issues.append(
                Issue(loc + (key,), f"key {message}" if is_key else message, value, has_value=not is_key)
            )
    return issues


def check_sweep_values(cfg: SweepConfig) -> list[Issue]:
    """Sweep values that reach the sbatch script as text: the workdir (in its log paths). The
    sweep name is checked by the schema and again in the job name; resources are numbers."""
    issues = []
    workdir = str(cfg.workdir.resolve())
    problem = text_problem(workdir)
    if problem is None and "%" in workdir:
        problem = "has %, which SLURM expands in log paths (%j: the job id)"
    if problem:
        issues.append(
            Issue(
                ("workdir",),
                f"{problem}; the workdir's path is in every job's sbatch script (its log "
                "paths): choose a path of printable characters without %",
                workdir,
            )
        )
    return issues


def check_sbatch(profile: ClusterProfile) -> list[Issue]:
    """Extra sbatch parameter names must be submitit's (the scheduler's own are set from resources)."""
    valid = sbatch_parameter_names()
    allowed = [n for n in valid if n not in OWN_PARAMETERS] + ["additional_parameters"]
    issues = []
    places = [(("sbatch",), profile.sbatch)] + [
        (("stages", s, "sbatch"), p.sbatch) for s, p in profile.stages.items()
    ]
    for loc, params in places:
        for key in params:
            if key in allowed:
                continue
            if key in OWN_PARAMETERS:
                msg = "set from the stage's resources and the DAG; use the profile's or the stage's own key"
            else:
                hint = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
                msg = (
                    f"not a submitit SlurmExecutor parameter{f'; did you mean {hint[0]!r}?' if hint else ''} "
                    f"(valid: {', '.join(allowed)}; anything else goes into additional_parameters)"
                )
            issues.append(Issue(loc + (key,), msg, has_value=False))
    return issues


START_S = 60  # a job's start (python, submitit, unpickling) before submitit's USR2 handler is in place


def check_against_sweep(profile: ClusterProfile, cfg: SweepConfig) -> list[Issue]:
    """Requests the cluster cannot meet: more GPUs per node than its nodes have, or a time limit
    so short that USR2 (checkpoint and requeue, `signal_delay_s` before it) comes as the job starts."""
    issues = []
    for stage in STAGES:
        res = profile.resources_for(stage, cfg.executor.resources.get(stage))
        if res.timeout_min * 60 <= profile.signal_delay_s + START_S:
            issues.append(
                Issue(
                    ("stages", stage, "timeout_min"),
                    f"a time limit of {res.timeout_min * 60} s is gone before the job works: USR2 "
                    f"comes signal_delay_s = {profile.signal_delay_s} s before it and a job needs "
                    f"~{START_S} s to start; give more than {(profile.signal_delay_s + START_S) // 60} "
                    f"min (here or in executor.resources.{stage}) or a smaller signal_delay_s",
                    res.timeout_min,
                )
            )
        if profile.gpus_per_node and res.gpus_per_node > profile.gpus_per_node:
            issues.append(
                Issue(
                    ("stages", stage, "gpus_per_node"),
                    f"asks for {res.gpus_per_node} GPUs per node; "
                    f"nodes of this profile have {profile.gpus_per_node} (gpus_per_node)",
                    res.gpus_per_node,
                )
            )
    return issues


def apply_profile(cfg: SweepConfig, profile: ClusterProfile) -> SweepConfig:
    """The sweep with every stage's resources resolved against the profile (what the planner,
    the dry-run and the scheduler then see)."""
    res = {stage: profile.resources_for(stage, cfg.executor.resources.get(stage)) for stage in STAGES}
    return cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"resources": res})})
