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
break or another control character. `cdhpc.executors.sbatch.check_sbatch_script` checks the rendered script
again before sbatch sees it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator

from cdhpc import STAGES
from cdhpc.config.sections import ResourcesConfig, Strict, known_stages
from cdhpc.config import SweepConfig
from cdhpc.config.yamlio import ConfigError, Issue, format_pydantic_errors, load_yaml

# Parameters the scheduler sets itself from the step's resources and the DAG.
OWN_PARAMETERS = ("job_name", "partition", "time", "nodes", "ntasks_per_node", "cpus_per_task", "gpus_per_node",
                  "mem", "qos", "account", "constraint", "dependency", "array_parallelism", "setup",
                  "signal_delay_s", "additional_parameters")


def sbatch_parameter_names() -> list[str]:
    """Every parameter submitit's SlurmExecutor accepts (from its sbatch-string signature)."""
    from cdhpc.base.thirdparty import sbatch_parameter_defaults

    return sorted(sbatch_parameter_defaults())


# ----------------------------------------------------------------------------- value rules
@dataclass(frozen=True)
class Rule:
    """What one field of the sbatch script accepts: text of `chars` in the form `form` (a full
    match; None: printable text on one line), or a bool, int or list of one-line texts."""

    allowed: str  # in words, for the error message
    chars: str | None = None  # a regex character class
    form: str | None = None
    kind: str = "str"  # str | size | int | bool | exclusive | list | scalar


_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+-]*"
_HOSTS = Rule("host names or ranges like node[01-04], comma-separated", r"[A-Za-z0-9_.,\[\]-]")
_MEM = Rule("a size in MB or with a unit, like 4096, 4G or 512M", r"[0-9KMGTBkmgtb]", r"[0-9]+[KMGTkmgt]?[Bb]?", "size")
TEXT = Rule("printable text on one line (no line break, tab or other control character)")
# a parameter a newer submitit may add, with no rule here yet: a number, true/false, or one line of text
SCALAR = Rule("a number, true or false, or printable text on one line", kind="scalar")
VALUE_RULES: dict[str, Rule] = {
    "partition": Rule("partition names (letters, digits, _ . + -), comma-separated, e.g. gpu or gpu,cpu",
                      r"[A-Za-z0-9_.,+-]", rf"{_NAME}(,{_NAME})*"),
    "qos": Rule("QOS names (letters, digits, _ . + -), comma-separated", r"[A-Za-z0-9_.,+-]", rf"{_NAME}(,{_NAME})*"),
    "account": Rule("an account name: letters, digits and _ . + -", r"[A-Za-z0-9_.+-]", _NAME),
    "constraint": Rule("node features (letters, digits, _ . - :) joined by , & | ! * ( ) [ ], e.g. a100|h100",
                       r"[A-Za-z0-9_.,:|&!*+()\[\]-]"),
    "comment": TEXT,
    "exclude": _HOSTS,
    "nodelist": _HOSTS,
    "gres": Rule("generic resources like gpu:a100:2, comma-separated", r"[A-Za-z0-9_.,:-]"),
    "mail_type": Rule("event names like END,FAIL", r"[A-Za-z0-9_,]", r"\w+(,\w+)*"),
    "mail_user": Rule("a user name or e-mail address", r"[A-Za-z0-9_.+@-]", r"[A-Za-z0-9_.+-]+(@[A-Za-z0-9.-]+)?"),
    "wckey": Rule("a WCKey: letters, digits and _ . : - (a leading * marks the default)", r"[A-Za-z0-9_.:*-]",
                  r"\*?[A-Za-z0-9_.:-]+"),
    "mem_per_cpu": _MEM,
    "mem_per_gpu": _MEM,
    "cpus_per_gpu": Rule("a positive integer", kind="int"),
    "gpus_per_task": Rule("a positive integer", kind="int"),
    "num_gpus": Rule("a positive integer", kind="int"),
    "stderr_to_stdout": Rule("true or false", kind="bool"),
    "use_srun": Rule("true or false", kind="bool"),
    "exclusive": Rule("true, false, user, mcs or topo", kind="exclusive"),
    "teardown": Rule("a list of shell commands, each one line of printable text", kind="list"),
    "srun_args": Rule("a list of srun arguments, each printable text on one line", kind="list"),
}
ADDITIONAL_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# sbatch options cdhpc and submitit set themselves (job name, array, edges, logs, requeue, resources):
# a second value in additional_parameters would replace theirs without a word
SCHEDULER_FLAGS = {"job-name", "array", "dependency", "kill-on-invalid-dep", "requeue", "output", "error",
                   "open-mode", "signal", "time", "nodes", "ntasks-per-node", "cpus-per-task", "gpus-per-node",
                   "mem", "partition", "qos", "account", "constraint"}


def text_problem(value: str) -> str | None:
    """Why `value` cannot be one line of the sbatch script (None: it can)."""
    if "\n" in value or "\r" in value:
        return "has a line break (in the sbatch script it would end the line and start a new one)"
    bad = next((c for c in value if not c.isprintable()), None)
    return None if bad is None else f"has the control (non-printable) character {bad!r}"


def value_problem(rule: Rule, value: Any) -> str | None:
    """Why `value` is not what `rule` allows (None: it is)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if rule.kind == "int":
        return None if is_int and value > 0 else "is not a positive integer"
    if rule.kind == "bool" or (rule.kind == "exclusive" and not isinstance(value, str)):
        return None if isinstance(value, bool) else "is not true or false"
    if rule.kind == "exclusive":
        return None if value in ("user", "mcs", "topo") else "is not an allowed value"
    if rule.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "is not a list of strings"
        return next((f"item {i} {p}" for i, v in enumerate(value) if (p := text_problem(v))), None)
    if rule.kind == "scalar" and (isinstance(value, bool) or _finite_number(value)):
        return None
    if rule.kind == "size" and is_int and value > 0:
        return None
    if not isinstance(value, str):
        return "is not text"
    if problem := text_problem(value):
        return problem
    if rule.chars is not None:
        bad = sorted({c for c in value if not re.fullmatch(rule.chars, c)})
        if bad or not value:
            return f"has {' '.join(map(repr, bad))}, not allowed here" if bad else "is empty"
    if rule.form is not None and not re.fullmatch(rule.form, value):
        return "is not in that form"
    return None


def additional_problem(key: Any, value: Any) -> tuple[str, bool] | None:
    """Why an additional_parameters entry cannot be an ``#SBATCH --key=value`` line, and whether
    the problem is the key (True) or the value."""
    if not isinstance(key, str) or not ADDITIONAL_KEY.fullmatch(key):
        problem = text_problem(key) if isinstance(key, str) else None
        return (f"{problem or 'is not an sbatch option name'}; allowed: option names like mail-type "
                "(a letter, then letters, digits, _ and -)", True)
    if key.replace("_", "-") in SCHEDULER_FLAGS:
        return ("is set by cdhpc from the stage's resources and the DAG; use the profile's own key "
                "(partition, qos, account, constraint, stages.<stage>.*)", True)
    if value is True or _finite_number(value):
        return None
    if isinstance(value, str) and value and not text_problem(value):
        return None
    problem = text_problem(value) if isinstance(value, str) and value else "is not a value sbatch can take"
    return (f"{problem}; allowed: printable text on one line, a number, or true for an option without a value", False)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def safe_key(key: Any) -> Any:
    """A key as an error message shows it: its repr when printing it would break the line."""
    return repr(key) if isinstance(key, str) and text_problem(key) else key


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


PROFILE = "cluster profile"  # what ConfigError calls a profile file


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
    issues = check_against_sweep(profile, cfg)
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
            issues.append(Issue(loc + (key,), f"key {problem}; keys are names like partition or mail-type",
                                has_value=False))
        issues += check_keys(value, loc + (key,))
    return issues


def check_values(profile: ClusterProfile) -> list[Issue]:
    """Every value that reaches the sbatch script, against what SLURM accepts in its field."""
    top = {k: getattr(profile, k) for k in ("partition", "account", "qos", "constraint")}
    places: list[tuple[tuple, dict]] = [((), top), (("sbatch",), profile.sbatch)]
    for stage, sp in profile.stages.items():
        places += [(("stages", stage), {"partition": sp.partition, "qos": sp.qos}),
                   (("stages", stage, "sbatch"), sp.sbatch)]
    issues = []
    for loc, values in places:
        for key, value in values.items():
            if loc[-1:] == ("sbatch",) and key in OWN_PARAMETERS and key != "additional_parameters":
                continue  # check_sbatch says where those go
            if key == "additional_parameters":
                issues += check_additional(loc + (key,), value)
            elif value is not None and (problem := value_problem(rule := VALUE_RULES.get(key, SCALAR), value)):
                issues.append(Issue(loc + (key,), f"{problem}; allowed: {rule.allowed}", value))
    return issues


def check_additional(loc: tuple, params: Any) -> list[Issue]:
    """additional_parameters: sbatch option names and one-line values."""
    if not isinstance(params, dict):
        return [Issue(loc, "must be a mapping of sbatch option names to values, e.g. {mail-type: END}", params)]
    issues = []
    for key, value in params.items():
        if found := additional_problem(key, value):
            message, is_key = found
            issues.append(Issue(loc + (key,), f"key {message}" if is_key else message, value, has_value=not is_key))
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
        issues.append(Issue(("workdir",), f"{problem}; the workdir's path is in every job's sbatch script (its log "
                            "paths): choose a path of printable characters without %", workdir))
    return issues


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
                hint = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
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
