# Sourced by scripts/slurm-cluster.sh and scripts/slurm-nodes.sh: what their test clusters share.

# The slurm.conf lines both clusters use: plugins that need no cgroups or database, and timeouts
# short enough that node failure, requeue holds and job ageing take seconds (SlurmdTimeout=10,
# MinJobAge=2, credentials that expire after 5 s, so a requeued job is held about 5 s).
slurm_common_conf() {
  cat <<EOF2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdTimeout=10
MinJobAge=2
KillWait=30
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MessageTimeout=5
GresTypes=gpu
EOF2
}

# Stops the daemons whose pid files are given (TERM, then waits up to 5 s) and removes the files.
stop_pid_files() {
  local pidfile alive
  for pidfile in "$@"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    alive=0
    for pidfile in "$@"; do
      [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  rm -f "$@"
}
