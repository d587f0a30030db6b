#!/usr/bin/env bash
# A private single-host Slurm cluster from Debian's slurm-wlm (22.05) and munge, for kitt's Slurm
# tests and for trying the Slurm executor on one machine. Everything lives under DIR: its own munge
# socket and key, its own ports, state, spool and logs; nothing of the machine's Slurm is touched.
#
#   scripts/slurm-cluster.sh start DIR [CTLD_PORT SLURMD_PORT]   # prints `export SLURM_CONF=…`
#   scripts/slurm-cluster.sh stop DIR
#
# The node has two GPUs as GRES (`gpu:2`), two character devices under DIR/dev: slurmd binds
# nothing on regular files. Short timeouts make node failure and requeue take seconds:
# SlurmdTimeout=10, ReturnToService=2, MinJobAge=2, credentials expire after 5 s. Needs root
# (slurmd runs jobs as their submitting user).
set -euo pipefail
# shellcheck source=scripts/slurm-common.sh
. "$(dirname "$0")/slurm-common.sh"

cmd=${1:?usage: slurm-cluster.sh start|stop DIR [CTLD_PORT SLURMD_PORT]}
dir=${2:?usage: slurm-cluster.sh start|stop DIR [CTLD_PORT SLURMD_PORT]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
  stop_pid_files "$dir"/run/slurmd.pid "$dir"/run/slurmctld.pid "$dir"/run/munged.pid
}

case "$cmd" in
stop)
  stop
  exit 0
  ;;
start) ;;
*)
  echo "usage: slurm-cluster.sh start|stop DIR [CTLD_PORT SLURMD_PORT]" >&2
  exit 2
  ;;
esac

for bin in slurmctld slurmd munged sbatch squeue scontrol; do
  command -v "$bin" >/dev/null || {
    echo "slurm-cluster: $bin not found; install Debian's slurmd slurmctld slurm-client munge" >&2
    exit 1
  }
done

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
ctld_port=${3:-$(free_port)}
slurmd_port=${4:-$(free_port)}
node=$(hostname -s)

stop
mkdir -p "$dir"/{etc,run,state,spool,log,dev,munge}
chmod 0700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$dir/munge/munge.key"
for i in 0 1; do
  [ -c "$dir/dev/gpu$i" ] || mknod "$dir/dev/gpu$i" c 1 3
done

# The machine's own resources, so that slurmd does not drain the node for a mismatch.
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=kitt-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
EOF
slurm_common_conf >>"$dir/etc/slurm.conf"
cat >>"$dir/etc/slurm.conf" <<EOF
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
cat >"$dir/etc/gres.conf" <<EOF
NodeName=$node Name=gpu File=$dir/dev/gpu[0-1]
EOF

munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
export SLURM_CONF="$dir/etc/slurm.conf"
# -c: a clean start (no jobs from an earlier cluster in this directory); -i: ignore stale state.
slurmctld -c -i
slurmd

# Ready when the node takes jobs.
for _ in $(seq 1 100); do
  state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
  case "$state" in idle | mix | alloc) break ;; esac
  sleep 0.2
done
case "$state" in
idle | mix | alloc) ;;
*)
  echo "slurm-cluster: node $node is not ready (state '${state:-?}'); logs in $dir/log" >&2
  tail -n 20 "$dir"/log/*.log >&2 || true
  exit 1
  ;;
esac
echo "export SLURM_CONF=$dir/etc/slurm.conf"
