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
