"""Results: bootstrap statistics (`stats`, `meanmax`), predictions to vectors (`aggregate`), the
paper table (`report`) and its figures (`figures`). Imports only `cdhpc.base` (docs/design.md §3)."""
