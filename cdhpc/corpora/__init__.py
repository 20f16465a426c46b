"""Corpora: the TinyBabyLM builder (`tinybabylm`) and the toy corpus and eval sets (`toy`).
Imports only `cdhpc.base` (docs/design.md §3)."""
