"""The user interface: the launcher command (`launch`), status snapshot and views (`status`,
`overview`, `steptable`, `partial`, `training`), the terminal UI (`tui`, `tui_screens`), cancel/retry
(`actions`), `--dry-run` and GPU-hour estimates (`dryrun`, `estimate`, `gpufigures`), progress bars,
`cdhpc export/report` (`export`). Only the CLI and entry modules import it (docs/design.md §3)."""
