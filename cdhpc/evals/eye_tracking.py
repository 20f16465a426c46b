"""Eye tracking: the reading CSV's four first-fixation/first-pass/go-past/right-bound times;
score = mean over them of the surprisal delta-R^2. Surprisal rules (official per-piece, or joint)
and the official output files: cdhpc.evals.reading; the statistics: cdhpc.evals.regression."""

from __future__ import annotations

from cdhpc.evals.reading import REQUIRED_EYE
from cdhpc.evals.task import Task

VERSION = "eye_tracking-2025.2"  # 2: official per-piece scoring by default

TASK = Task(
    "eye_tracking",
    VERSION,
    "reading",
    "full_eval/reading",
    "fast_eval/reading",
    "reading_data.csv",
    REQUIRED_EYE,
    metric="delta_r2",
)
