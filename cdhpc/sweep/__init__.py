"""The sweep: the workdir layout (`workdir`), plan and keys (`plan`), receipts, job records, the
SQLite manifest, the workdir lock, step states. Imports `cdhpc.base` and `cdhpc.config` only
(docs/design.md §3)."""
