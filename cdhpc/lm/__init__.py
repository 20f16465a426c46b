"""The language-model library: tokenizer and token arrays (`data`), presets (`model`), the DeepSpeed
loop (`train`, `train_checkpoints`, `metrics`, `trackers`), the CD maths (`decoding`), the lockstep
sampler and resumable shards. Imports only `cdhpc.base` (docs/design.md §3)."""
