# Paths and process helpers shared by start.sh and stop.sh (sourced, never run on its own).
# Every daemon is found through its pid file and checked by its command name, so the scripts
# only ever signal the processes they started, never "anything called slurmd".

readonly LOG_DIR=/var/log/slurm
readonly CONF_DIR=/etc/slurm
readonly NODE=localhost
readonly NODE2=localhost2 # --nodes 2: a second slurmd on this host (slurmd -N localhost2, port 6820)
readonly NODE2_ADDR=127.0.0.2
readonly PARTITION=debug
readonly PARTITION2=pair # --nodes 2: both nodes, for multi-node jobs; debug keeps only $NODE
readonly CLUSTER=cdhpc
readonly LOCK_FILE=/run/cdhpc-dev-cluster.lock
readonly MARKER="# Written by cdhpc slurm/dev-cluster/start.sh; edit that script, not this file."
readonly MUNGE_PID=/run/munge/munged.pid
readonly MYSQL_PID=/run/mysqld/mysqld.pid
readonly MYSQL_SOCK=/run/mysqld/mysqld.sock
readonly DBD_PID=/run/slurmdbd.pid
readonly CTLD_PID=/run/slurmctld.pid
readonly SLURMD_PID_PATTERN=/run/slurmd-%n.pid # one per node: slurmd puts its node name for %n
readonly OLD_SLURMD_PID=/run/slurmd.pid       # before --nodes existed

# slurmd_pid NODE: the pid file of that node's slurmd.
slurmd_pid() { echo "${SLURMD_PID_PATTERN//%n/$1}"; }

log() { printf 'dev-cluster: %s\n' "$*"; }

die() {
  printf 'dev-cluster: ERROR: %s\n' "$*" >&2
  exit 1
}

# take_lock: serialise start.sh/stop.sh runs by several people on one machine (waits up to 120 s).
take_lock() {
  exec 9>"$LOCK_FILE"
  flock -w 120 9 || die "another start.sh/stop.sh holds $LOCK_FILE for over 120 s"
}

# pid_of PIDFILE COMM: print the pid if PIDFILE names a live (not zombie) process called COMM.
pid_of() {
  local pidfile=$1 comm=$2 pid state
  [[ -r $pidfile ]] || return 1
  pid=$(tr -dc '0-9' 2>/dev/null <"$pidfile")
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z ]] || return 1
  echo "$pid"
}

# stop_daemon NAME PIDFILE COMM: SIGTERM, wait up to 20 s, then SIGKILL; no-op if not running.
stop_daemon() {
  local name=$1 pidfile=$2 comm=$3 pid i
  if ! pid=$(pid_of "$pidfile" "$comm"); then
    log "$name: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    if ! pid_of "$pidfile" "$comm" >/dev/null; then
      log "$name: stopped (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  log "$name: pid $pid still alive after 20 s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# stop_slurmds: every slurmd this script started, whatever node count it ran with.
stop_slurmds() {
  local pidfile
  for pidfile in "$OLD_SLURMD_PID" /run/slurmd-*.pid; do
    [[ -e $pidfile ]] && stop_daemon "slurmd ($(basename "$pidfile" .pid))" "$pidfile" slurmd
  done
  return 0
}

# active_jobs: ids and states of jobs that are pending, running, suspended or completing.
active_jobs() {
  command -v squeue >/dev/null || return 0
  timeout 10 squeue -h -t PD,R,S,CG -o '%i %T' 2>/dev/null || true
}
