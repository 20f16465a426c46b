"""cdhpc: the contrastive-decoding synthetic-data study as one declarative sweep.

Glossary (the words of docs/design.md §1, used exactly everywhere in the code):

- sweep: one ``sweep.yaml``, one experiment, one work directory (``workdir``).
- step: one node of the sweep's DAG, a unit of work with a content key (a hash of its resolved
  spec and its inputs' keys). Runs as one SLURM job or one element of a job array.
- stage: the kind of a step: ``prepare``, ``tokenizer``, ``pretrain``, ``select``, ``generate``,
  ``corpus``, ``evaluate``, ``aggregate``.
- run: one training run (a model, a seed, a data mix); it produces checkpoints ``step_N``.
- method: a data recipe (``baseline``, ``no-contrast``, ``cd-early-500``, ...) with decoding keys.
- shard: one slice of a synthetic corpus, the output of one ``generate`` step.
- task: an evaluation benchmark (blimp, ewok, ..., perplexity). Never a job.
- receipt: the JSON a finished step writes last, next to its outputs.
- manifest: the SQLite database that indexes every step, receipt, checkpoint, shard and score.

Importing this package is cheap: torch, transformers and deepspeed are imported lazily inside the
functions that need them.
"""

import logging

__version__ = "0.1.0"

STAGES = ("prepare", "tokenizer", "pretrain", "select", "generate", "corpus", "evaluate", "aggregate")

logger = logging.getLogger("cdhpc")
