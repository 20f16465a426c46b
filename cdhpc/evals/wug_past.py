"""WUG past tense (`wug_past`, Weissweiler et al. 2023): nonce verbs in the past tense, records as
wug_adj's (tab-separated candidate sentences, the human `ratio` of candidate 0); UID "wug_past".
Always Spearman's rho, as the official pipeline reports it (see cdhpc.evals.wug)."""

from __future__ import annotations

from cdhpc.evals.task import Task
from cdhpc.evals.wug import parser

VERSION = "wug_past-2025.1"

TASK = Task(
    "wug_past",
    VERSION,
    "choice",
    "full_eval/wug_past_tense",
    "fast_eval/wug_past_tense",
    "*.jsonl",
    ("sentences", "ratio"),
    parser("wug_past"),
    metric="spearman",
)
