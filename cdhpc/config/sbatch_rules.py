"""What each value of a cluster profile that reaches the sbatch script may be: one `Rule` per
submitit parameter (`VALUE_RULES`; `SCALAR` for one a newer submitit adds), the rule for
``additional_parameters`` (an option name, no flag cdhpc sets itself), and the check every text
passes (one printable line: a line break would start a directive or a shell line of its own)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# Parameters the scheduler sets itself from the step's resources and the DAG.
OWN_PARAMETERS = (
    "job_name",
    "partition",
    "time",
    "nodes",
    "ntasks_per_node",
    "cpus_per_task",
    "gpus_per_node",
    "mem",
    "qos",
    "account",
    "constraint",
    "dependency",
    "array_parallelism",
    "setup",
    "signal_delay_s",
    "additional_parameters",
)


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
_MEM = Rule(
    "a size in MB or with a unit, like 4096, 4G or 512M",
    r"[0-9KMGTBkmgtb]",
    r"[0-9]+[KMGTkmgt]?[Bb]?",
    "size",
)
TEXT = Rule("printable text on one line (no line break, tab or other control character)")
# a parameter a newer submitit may add, with no rule here yet: a number, true/false, or one line of text
SCALAR = Rule("a number, true or false, or printable text on one line", kind="scalar")
VALUE_RULES: dict[str, Rule] = {
    "partition": Rule(
        "partition names (letters, digits, _ . + -), comma-separated, e.g. gpu or gpu,cpu",
        r"[A-Za-z0-9_.,+-]",
        rf"{_NAME}(,{_NAME})*",
    ),
    "qos": Rule(
        "QOS names (letters, digits, _ . + -), comma-separated", r"[A-Za-z0-9_.,+-]", rf"{_NAME}(,{_NAME})*"
    ),
    "account": Rule("an account name: letters, digits and _ . + -", r"[A-Za-z0-9_.+-]", _NAME),
    "constraint": Rule(
        "node features (letters, digits, _ . - :) joined by , & | ! * ( ) [ ], e.g. a100|h100",
        r"[A-Za-z0-9_.,:|&!*+()\[\]-]",
    ),
    "comment": TEXT,
    "exclude": _HOSTS,
    "nodelist": _HOSTS,
    "gres": Rule("generic resources like gpu:a100:2, comma-separated", r"[A-Za-z0-9_.,:-]"),
    "mail_type": Rule("event names like END,FAIL", r"[A-Za-z0-9_,]", r"\w+(,\w+)*"),
    "mail_user": Rule(
        "a user name or e-mail address", r"[A-Za-z0-9_.+@-]", r"[A-Za-z0-9_.+-]+(@[A-Za-z0-9.-]+)?"
    ),
    "wckey": Rule(
        "a WCKey: letters, digits and _ . : - (a leading * marks the default)",
        r"[A-Za-z0-9_.:*-]",
        r"\*?[A-Za-z0-9_.:-]+",
    ),
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
SCHEDULER_FLAGS = {
    "job-name",
    "array",
    "dependency",
    "kill-on-invalid-dep",
    "requeue",
    "output",
    "error",
    "open-mode",
    "signal",
    "time",
    "nodes",
    "ntasks-per-node",
    "cpus-per-task",
    "gpus-per-node",
    "mem",
    "partition",
    "qos",
    "account",
    "constraint",
}


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
        return (
            f"{problem or 'is not an sbatch option name'}; allowed: option names like mail-type "
            "(a letter, then letters, digits, _ and -)",
            True,
        )
    if key.replace("_", "-") in SCHEDULER_FLAGS:
        return (
            "is set by cdhpc from the stage's resources and the DAG; use the profile's own key "
            "(partition, qos, account, constraint, stages.<stage>.*)",
            True,
        )
    if value is True or _finite_number(value):
        return None
    if isinstance(value, str) and value and not text_problem(value):
        return None
    problem = text_problem(value) if isinstance(value, str) and value else "is not a value sbatch can take"
    return (
        f"{problem}; allowed: printable text on one line, a number, or true for an option without a value",
        False,
    )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def safe_key(key: Any) -> Any:
    """A key as an error message shows it: its repr when printing it would break the line."""
    return repr(key) if isinstance(key, str) and text_problem(key) else key
