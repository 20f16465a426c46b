"""Cluster profiles: ``slurm/<name>.yaml``, what a SLURM cluster needs beyond the sweep itself.

A profile names the partition, account, qos and constraint every job gets, per-stage resources
(the sweep's own ``executor.resources`` override them key by key), the array throttle and
MaxArraySize, and extra sbatch parameters. Extra parameters use submitit's SlurmExecutor names,
checked against the signature submitit derives them from, so a misspelled name lists the valid
ones; ``additional_parameters`` passes anything else to sbatch unchanged.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator

from cdhpc import STAGES
from cdhpc.config import ResourcesConfig, Strict, SweepConfig, known_stages
from cdhpc.configio import ConfigError, Issue, format_pydantic_errors, load_yaml

# Parameters the scheduler sets itself from the step's resources and the DAG.
OWN_PARAMETERS = ("job_name", "partition", "time", "nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node",
                  "mem", "qos", "account", "constraint", "dependency", "array_parallelism", "setup",
                  "signal_delay_s", "additional_parameters")


def sbatch_parameter_names() -> list[str]:
    """Every parameter submitit's SlurmExecutor accepts (from its sbatch-string signature)."""
    from submitit.slurm.slurm import _get_default_parameters

    return sorted(_get_default_parameters())


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
        merged = {k: v for k, v in own.model_dump(exclude={"partition", "qos", "sbatch"}).items() if v is not None}
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


def load_profile(cfg: SweepConfig, sweep_path: Path) -> ClusterProfile:
    """The sweep's cluster profile (built-in defaults when executor.profile is unset), checked
    against the sweep's stages. Raises ConfigError naming the profile file or the sweep key."""
    name = cfg.executor.profile
    if name is None:
        profile, path = ClusterProfile(), sweep_path
    else:
        path = find_profile(name, sweep_path)
        if path is None:
            known = sorted(p.stem for p in (Path.cwd() / "slurm").glob("*.yaml"))
            raise ConfigError(sweep_path, [Issue(("executor", "profile"), "no such cluster profile: looked for "
                                                 f"slurm/{name}.yaml in the working directory and above the sweep "
                                                 f"(profiles here: {', '.join(known) or 'none'})", name)])
        raw, lines = load_yaml(path)
        try:
            profile = ClusterProfile.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(path, format_pydantic_errors(e, ClusterProfile, lines, {})) from None
        issues = [i.located(lines, {}) for i in check_sbatch(profile)]
        if issues:
            raise ConfigError(path, issues)
    issues = check_against_sweep(profile, cfg)
    if issues:
        raise ConfigError(path, issues)
    return profile


def check_sbatch(profile: ClusterProfile) -> list[Issue]:
    """Extra sbatch parameter names must be submitit's (the scheduler's own are set from resources)."""
    valid = sbatch_parameter_names()
    allowed = [n for n in valid if n not in OWN_PARAMETERS] + ["additional_parameters"]
    issues = []
    places = [(("sbatch",), profile.sbatch)] + [(("stages", s, "sbatch"), p.sbatch) for s, p in profile.stages.items()]
    for loc, params in places:
        for key in params:
            if key in allowed:
                continue
            if key in OWN_PARAMETERS:
                msg = "set from the stage's resources and the DAG; use the profile's or the stage's own key"
            else:
                hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
                msg = (f"not a submitit SlurmExecutor parameter{f'; did you mean {hint[0]!r}?' if hint else ''} "
                       f"(valid: {', '.join(allowed)}; anything else goes into additional_parameters)")
            issues.append(Issue(loc + (key,), msg, has_value=False))
    return issues


def check_against_sweep(profile: ClusterProfile, cfg: SweepConfig) -> list[Issue]:
    """Requests the cluster cannot meet: more GPUs per node than its nodes have."""
    issues = []
    for stage in STAGES:
        res = profile.resources_for(stage, cfg.executor.resources.get(stage))
        if profile.gpus_per_node and res.gpus_per_node > profile.gpus_per_node:
            issues.append(Issue(("stages", stage, "gpus_per_node"), f"asks for {res.gpus_per_node} GPUs per node; "
                                f"nodes of this profile have {profile.gpus_per_node} (gpus_per_node)", res.gpus_per_node))
    return issues


def apply_profile(cfg: SweepConfig, profile: ClusterProfile) -> SweepConfig:
    """The sweep with every stage's resources resolved against the profile (what the planner,
    the dry-run and the scheduler then see)."""
    res = {stage: profile.resources_for(stage, cfg.executor.resources.get(stage)) for stage in STAGES}
    return cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"resources": res})})
