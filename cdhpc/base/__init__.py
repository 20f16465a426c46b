"""Small helpers every package may import: atomic writes (`atomicio`), keys and seeds (`keys`), run
names and table labels (`names`), safe names and paths (`paths`), log levels (`verbosity`),
a job's signals (`jobsignals`).
They import nothing else from cdhpc (docs/design.md §3)."""
