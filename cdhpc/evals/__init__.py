"""Evaluation tasks (BabyLM 2025 suite + perplexity). The names are plain data so the config
validator can check them without importing torch."""

TASK_NAMES = (
    "blimp",
    "blimp_supplement",
    "ewok",
    "entity_tracking",
    "wug",
    "reading",
    "eye_tracking",
    "perplexity",
)
