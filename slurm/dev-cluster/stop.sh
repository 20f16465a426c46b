#!/usr/bin/env bash
# Stop the daemons that start.sh started (every slurmd, slurmctld, slurmdbd, MariaDB, munged), each
# through its pid file. Idempotent: a daemon that is not running is skipped. Job state, the
# accounting database and the configs stay, so start.sh brings the same cluster back.
#
#   stop.sh               stop everything
#   stop.sh --dbd-only    stop only slurmdbd: slurmctld keeps scheduling, sacct fails until
#                         start.sh restarts slurmdbd, then the queued records flow in
#   stop.sh --cancel-jobs scancel active jobs first (bounded wait); otherwise running jobs keep
#                         running under slurmstepd after slurmd stops, and are listed
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# cancel_jobs: scancel every active job, then wait up to 30 s for them to leave the active states.
cancel_jobs() {
  local ids i
  ids=$(active_jobs | awk '{print $1}')
  [[ -n $ids ]] || return 0
  log "cancelling $(echo $ids)"
  # shellcheck disable=SC2086
  timeout 10 scancel $ids || true
  for ((i = 0; i < 120; i++)); do
    [[ -z $(active_jobs) ]] && return 0
    sleep 0.25
  done
  log "jobs still active after 30 s: $(active_jobs | tr '\n' ' ')"
}

main() {
  local dbd_only=0 cancel=0 arg
  for arg in "$@"; do
    case $arg in
      --dbd-only) dbd_only=1 ;;
      --cancel-jobs) cancel=1 ;;
      -h | --help) usage; return 0 ;;
      *) usage >&2; die "unknown argument '$arg' (allowed: --dbd-only, --cancel-jobs, --help)" ;;
    esac
  done
  [[ $EUID -eq 0 ]] || die "run as root: the daemons run as root or munge"
  take_lock
  if ((dbd_only)); then
    stop_daemon slurmdbd "$DBD_PID" slurmdbd
    return 0
  fi
  ((cancel)) && cancel_jobs
  local left
  left=$(active_jobs)
  [[ -z $left ]] || log "active jobs keep running without slurmd (use --cancel-jobs): $(echo $left)"
  stop_slurmds
  stop_daemon slurmctld "$CTLD_PID" slurmctld
  stop_daemon slurmdbd "$DBD_PID" slurmdbd
  stop_daemon mariadb "$MYSQL_PID" mariadbd
  stop_daemon munged "$MUNGE_PID" munged
}

main "$@"
