#!/usr/bin/env bash
# Install (if missing) and start a one- or two-node SLURM with accounting on this machine (Debian
# 12, run as root, no systemd): munged, MariaDB, slurmdbd, slurmctld, one slurmd per node.
# Idempotent: packages are installed once, configs are rewritten only when their content changes
# (then the daemons that read them restart), running daemons are left alone. Exits non-zero, with
# the tail of the failing daemon's log, when a node is not up within CDHPC_SLURM_WAIT_S seconds.
#
#   start.sh [--nodes N]   N = 1: node localhost in partition debug (the default on a first start)
#                          N = 2: also node localhost2 (a second slurmd on this host, its own port
#                          and spool) and partition pair = both nodes, for multi-node jobs; debug
#                          keeps only localhost. Without --nodes, the node count of the running
#                          config is kept.
#
# Environment:
#   CDHPC_SLURM_NO_ACCOUNTING=1  slurm.conf without accounting storage; slurmdbd is stopped
#                                (sacct then answers "accounting storage is disabled").
#   CDHPC_SLURM_WAIT_S=60        bound on each wait (daemon ready, node idle), in seconds.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

readonly PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
readonly NO_ACCOUNTING=${CDHPC_SLURM_NO_ACCOUNTING:-0}
readonly WAIT_S=${CDHPC_SLURM_WAIT_S:-60}
readonly T_START=$EPOCHREALTIME

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# die_with_log MESSAGE LOGFILE...: the error, then the last lines of each log, then exit 1.
die_with_log() {
  local message=$1 logfile
  shift
  printf 'dev-cluster: ERROR: %s\n' "$message" >&2
  for logfile in "$@"; do
    [[ -r $logfile ]] || continue
    printf -- '----- last lines of %s -----\n' "$logfile" >&2
    tail -n 25 "$logfile" >&2
  done
  exit 1
}

# wait_ready PIDFILE COMM READY_FN: poll READY_FN every 0.25 s for up to $WAIT_S s; give up at
# once (return 2) when the daemon has been gone for 2 s, e.g. after a fatal config error.
wait_ready() {
  local pidfile=$1 comm=$2 ready_fn=$3 t0=${EPOCHREALTIME%.*} gone_since=""
  until "$ready_fn" >/dev/null 2>&1; do
    ((${EPOCHREALTIME%.*} - t0 < WAIT_S)) || return 1
    if pid_of "$pidfile" "$comm" >/dev/null; then
      gone_since=""
    elif [[ -z $gone_since ]]; then
      gone_since=${EPOCHREALTIME%.*}
    elif ((${EPOCHREALTIME%.*} - gone_since >= 2)); then
      return 2
    fi
    sleep 0.25
  done
}

packages_missing() {
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
      echo "$pkg"
  done
}

# install_packages: apt-get with a policy-rc.d that forbids package scripts to start services
# (there is no systemd; we start the daemons ourselves). Any previous policy-rc.d is restored.
install_packages() {
  local missing policy=/usr/sbin/policy-rc.d t0=$EPOCHREALTIME
  local backup=/usr/sbin/policy-rc.d.cdhpc-saved
  missing=$(packages_missing)
  [[ -z $missing ]] && return 0
  log "installing $(echo $missing) (apt-get; log: $LOG_DIR/apt.log) ..."
  [[ -e $policy ]] && mv -f "$policy" "$backup"
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  local rc=0
  {
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends "${PACKAGES[@]}"
  } >"$LOG_DIR/apt.log" 2>&1 || rc=$?
  rm -f "$policy"
  [[ -e $backup ]] && mv -f "$backup" "$policy"
  ((rc == 0)) || die_with_log "apt-get failed (exit $rc)" "$LOG_DIR/apt.log"
  log "installed in $(since "$t0") s"
}

prepare_dirs() {
  install -d -m 755 "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd "$CONF_DIR"
  local node
  for node in $(node_names); do install -d -m 755 "/var/spool/slurmd/$node"; done
  install -d -m 755 -o munge -g munge /run/munge
  install -d -m 700 -o munge -g munge /etc/munge
  local key=/etc/munge/munge.key
  if [[ ! -s $key ]]; then
    log "creating $key"
    head -c 1024 /dev/urandom >"$key"
  fi
  chown munge:munge "$key"
  chmod 400 "$key"
}

# node_line NAME ADDR PORT: this machine's hardware as `slurmd -C` sees it, renamed to NAME, reached
# on ADDR:PORT, with RealMemory at 90% of what it reports (a node that advertises all of it gets
# drained on registration). Debian's slurmd is built without multiple-slurmd support, which refuses
# two nodes with one host name or address: each node gets its own loopback address (127.0.0.N) and
# port. Two nodes both advertise the whole machine: a dev cluster oversubscribes.
node_line() {
  slurmd -C | awk -v node="$1" -v addr="$2" -v port="$3" 'NR == 1 {
    for (i = 1; i <= NF; i++) {
      if ($i ~ /^NodeName=/) $i = "NodeName=" node " NodeHostname=" node " NodeAddr=" addr " Port=" port
      else if ($i ~ /^RealMemory=/) { split($i, kv, "="); $i = "RealMemory=" int(kv[2] * 0.9) }
    }
    print $0 " State=UNKNOWN" }'
}

# node_names: the nodes of an N-node cluster ($NODES).
node_names() {
  echo "$NODE"
  ((NODES < 2)) || echo "$NODE2"
}

# resolve_node2: localhost2 must resolve, as every node name does on a real cluster (a multi-node
# job's rank 0 may run there, and its name is then MASTER_ADDR): one line in /etc/hosts.
resolve_node2() {
  getent hosts "$NODE2" | grep -q "^$NODE2_ADDR " && return 0
  grep -v "[[:space:]]$NODE2\([[:space:]]\|$\)" /etc/hosts >/etc/hosts.cdhpc-new || true
  printf '%s %s # cdhpc slurm/dev-cluster\n' "$NODE2_ADDR" "$NODE2" >>/etc/hosts.cdhpc-new
  cat /etc/hosts.cdhpc-new >/etc/hosts # in place: /etc/hosts may be a bind mount
  rm -f /etc/hosts.cdhpc-new
  log "added $NODE2 ($NODE2_ADDR) to /etc/hosts"
}

# configured_nodes: how many nodes the slurm.conf that start.sh wrote has (1 when there is none).
configured_nodes() {
  local conf=$CONF_DIR/slurm.conf n
  [[ -r $conf ]] && head -n 1 "$conf" | grep -qxF "$MARKER" || { echo 1; return; }
  n=$(grep -c '^NodeName=' "$conf" || true)
  echo "${n:-1}"
}

# render_slurm_conf NODE_LINES PARTITION_LINES
# Accounting enforces associations, limits and QOS, as a real cluster does: a QOS's
# MaxSubmitJobsPerUser refuses the sbatch that goes over it (tests set such limits with sacctmgr).
render_slurm_conf() {
  local storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations,limits,qos"
  [[ $NO_ACCOUNTING == 1 ]] && storage="AccountingStorageType=accounting_storage/none"
  cat <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID_PATTERN
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
EnforcePartLimits=ALL
MinJobAge=3600
MaxArraySize=1001
JobRequeue=1
KillWait=5
PropagatePrioProcess=1
InactiveLimit=0
JobAcctGatherType=jobacct_gather/linux
MailProg=/bin/true
$storage
$1
$2
EOF
}

# write_if_changed PATH MODE CONTENT: write only when the content differs; return 0 if written.
# Refuses to overwrite a file that this script did not write (a real cluster's config).
write_if_changed() {
  local path=$1 mode=$2 content=$3
  if [[ -e $path ]] && ! head -n 1 "$path" | grep -qxF "$MARKER"; then
    die "$path exists and was not written by start.sh; move it away to use the dev cluster"
  fi
  [[ -e $path && "$(cat "$path")" == "$content" ]] && return 1
  printf '%s\n' "$content" >"$path.tmp"
  chmod "$mode" "$path.tmp"
  mv -f "$path.tmp" "$path"
  log "wrote $path"
}

# render_slurmdbd_conf: keeps the database password of an existing slurmdbd.conf, else makes one.
render_slurmdbd_conf() {
  local pass
  pass=$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf" 2>/dev/null || true)
  [[ -n $pass ]] || pass=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  cat <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DBD_PID
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
}

# ensure_daemon NAME PIDFILE COMM LOGFILE START_FN READY_FN: start NAME unless it runs, then
# wait (bounded) until READY_FN succeeds; on failure print the logs' tails and exit 1. What the
# start command itself prints goes to $LOG_DIR/start-NAME.log (a config error, say).
ensure_daemon() {
  local name=$1 pidfile=$2 comm=$3 logfile=$4 start_fn=$5 ready_fn=$6 pid t0=$EPOCHREALTIME
  local start_log=$LOG_DIR/start-$1.log
  if pid=$(pid_of "$pidfile" "$comm"); then
    log "$name: running (pid $pid)"
  else
    # 9>&-: the daemons must not inherit the lock taken by take_lock
    "$start_fn" >"$start_log" 2>&1 9>&- ||
      die_with_log "$name failed to start" "$start_log" "$logfile"
  fi
  local rc=0
  wait_ready "$pidfile" "$comm" "$ready_fn" || rc=$?
  ((rc != 2)) || die_with_log "$name exited during start-up" "$start_log" "$logfile"
  ((rc == 0)) || die_with_log "$name not ready after $WAIT_S s" "$start_log" "$logfile"
  [[ -n ${pid:-} ]] || log "$name: started in $(since "$t0") s (pid $(pid_of "$pidfile" "$comm"))"
}

start_munged() { runuser -u munge -- /usr/sbin/munged; }
munged_ready() { munge -n </dev/null | unmunge; }

start_mariadb() {
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db || return 1
  fi
  install -d -m 755 -o mysql -g mysql /run/mysqld || return 1
  setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_SOCK" \
    --pid-file="$MYSQL_PID" --bind-address=127.0.0.1 --log-error="$LOG_DIR/mariadb.log" \
    </dev/null >>"$LOG_DIR/start-mariadb.log" 2>&1 &
}
mariadb_ready() { mariadb-admin --socket="$MYSQL_SOCK" ping && [[ -s $MYSQL_PID ]]; }

# start_slurmdbd: (re)creates the slurm database user with slurmdbd.conf's password, then starts.
start_slurmdbd() {
  local pass
  pass=$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf")
  mariadb --socket="$MYSQL_SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || return 1
  slurmdbd
}
slurmdbd_ready() { timeout 5 sacctmgr -n -P list cluster; }

start_slurmctld() { slurmctld; }
slurmctld_ready() { timeout 5 scontrol ping | grep -q ' is UP'; }
SLURMD_NODE=$NODE # the node ensure_daemon starts next (its start and ready functions take no arguments)
start_slurmd() { slurmd -N "$SLURMD_NODE"; }
slurmd_ready() { pid_of "$(slurmd_pid "$SLURMD_NODE")" slurmd; }

start_accounting() {
  if [[ $NO_ACCOUNTING == 1 ]]; then
    log "CDHPC_SLURM_NO_ACCOUNTING=1: accounting storage off, slurmdbd stopped"
    stop_daemon slurmdbd "$DBD_PID" slurmdbd
    return 0
  fi
  if write_if_changed "$CONF_DIR/slurmdbd.conf" 600 "$(render_slurmdbd_conf)"; then
    stop_daemon slurmdbd "$DBD_PID" slurmdbd # it reads its config only at start
  fi
  ensure_daemon mariadb "$MYSQL_PID" mariadbd "$LOG_DIR/mariadb.log" start_mariadb mariadb_ready
  ensure_daemon slurmdbd "$DBD_PID" slurmdbd "$LOG_DIR/slurmdbd.log" start_slurmdbd slurmdbd_ready
}

# wait_node_up NODE: bounded wait until the node accepts work (idle; mixed/allocated when jobs
# from an earlier session still run). A drained or down node fails at once with its reason.
wait_node_up() {
  local node=$1 deadline=$((${EPOCHREALTIME%.*} + WAIT_S)) state=""
  while ((${EPOCHREALTIME%.*} < deadline)); do
    state=$(timeout 5 sinfo -h -N -n "$node" -o %T 2>/dev/null | head -n 1) || state=""
    case $state in
      idle | mixed | allocated | completing) return 0 ;;
      drain* | draining | drained | fail*) break ;;
    esac
    sleep 0.25
  done
  timeout 5 scontrol show node "$node" >&2 || true
  die_with_log "node $node is '${state:-unknown}', not idle, after $WAIT_S s" \
    "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"
}

print_usage() {
  cat <<EOF
dev-cluster: $(sinfo -h -o '%P: %D node(s) %N %T' | paste -sd ';' | sed 's/;/; /g') \
(cluster $CLUSTER); ready in $(since "$T_START") s.
  try:    sinfo; sbatch --wrap 'hostname'; squeue; sacct -X
  tests:  python -m pytest -m slurm tests/test_slurm_cluster.py tests/test_slurm_sweep.py -q
  stop:   $HERE/stop.sh   (only slurmdbd, to test without accounting: stop.sh --dbd-only)
  logs:   $LOG_DIR/{slurmctld,slurmd,slurmdbd,mariadb}.log
EOF
}

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
  NODES=""
  while (($#)); do
    case $1 in
      --nodes) NODES=${2:-}; shift 2 || { usage >&2; die "--nodes needs a value (1 or 2)"; } ;;
      --nodes=*) NODES=${1#--nodes=}; shift ;;
      -h | --help) usage; return 0 ;;
      *) usage >&2; die "unknown argument '$1' (allowed: --nodes 1|2, --help)" ;;
    esac
  done
  [[ $EUID -eq 0 ]] || die "run as root: start.sh installs packages and starts daemons as root"
  install -d -m 755 "$LOG_DIR"
  take_lock
  [[ -n $NODES ]] || NODES=$(configured_nodes)
  [[ $NODES == 1 || $NODES == 2 ]] || die "--nodes $NODES: the dev cluster has 1 or 2 nodes"
  readonly NODES
  install_packages
  prepare_dirs
  local slurm_conf_changed=0 node nodes="" parts
  # localhost2's line first: slurmctld answers any lookup with the only node while that node is
  # called "localhost", so a second node read after it would be taken for a duplicate
  for node in $(node_names | sort -r); do
    local line addr=127.0.0.1 port=6818
    [[ $node == "$NODE2" ]] && addr=$NODE2_ADDR port=6820 # 6819 is slurmdbd's
    line=$(node_line "$node" "$addr" "$port") && [[ $line == NodeName=$node\ * ]] ||
      die "slurmd -C printed no node line (got '$line'); is slurmd installed?"
    nodes+="$line"$'\n'
  done
  ((NODES < 2)) || resolve_node2
  parts="PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"
  ((NODES < 2)) || parts+=$'\n'"PartitionName=$PARTITION2 Nodes=$NODE,$NODE2 MaxTime=INFINITE State=UP"
  if write_if_changed "$CONF_DIR/slurm.conf" 644 "$(render_slurm_conf "${nodes%$'\n'}" "$parts")"; then
    slurm_conf_changed=1
  fi
  ensure_daemon munged "$MUNGE_PID" munged /var/log/munge/munged.log start_munged munged_ready
  start_accounting
  if ((slurm_conf_changed)); then # node and accounting lines are read only at start
    stop_slurmds
    stop_daemon slurmctld "$CTLD_PID" slurmctld
  fi
  ensure_daemon slurmctld "$CTLD_PID" slurmctld "$LOG_DIR/slurmctld.log" \
    start_slurmctld slurmctld_ready
  for node in $(node_names); do
    SLURMD_NODE=$node
    ensure_daemon "slurmd-$node" "$(slurmd_pid "$node")" slurmd "$LOG_DIR/slurmd.log" start_slurmd slurmd_ready
  done
  for node in $(node_names); do wait_node_up "$node"; done
  print_usage
}

main "$@"
