"""Executors: run a plan's steps locally (`scheduler`) or on SLURM (`slurm`, `sbatch`,
`slurm_limits`, `waves`, `launch_slurm`). Import the sweep, the config and `jobs`; never the UI
(docs/design.md §3, §7)."""
