#!/usr/bin/env bash
# A private Slurm cluster of several nodes: slurmctld and munge on this machine, each node a
# container (Debian bookworm with slurmd and munge, built here with debootstrap and `docker
# import`, cached by tag) with its own address on a private Docker network. The directories named
# in KITT_SLURM_NODE_MOUNTS (space-separated) are mounted into every node at the same path: the
# shared directory of the runs. Each node has two GPUs as GRES on character devices, its own munged
# and its own /tmp and /var/lock.
#
#   KITT_SLURM_NODE_MOUNTS="/shared" scripts/slurm-nodes.sh start DIR [NODES=3]   # prints `export SLURM_CONF=…`
#   scripts/slurm-nodes.sh stop DIR
#   scripts/slurm-nodes.sh image                                                  # build the node image only
#
# Node names are n1…nN (containers kitt-slurm-<id>-nK, listed in DIR/nodes); `docker kill` or
# `docker network disconnect` of one is a node failure. Needs root.
set -euo pipefail
# shellcheck source=scripts/slurm-common.sh
. "$(dirname "$0")/slurm-common.sh"

# The tag names what the image holds: bump it when the package list changes.
image=kitt-local/slurm-node:bookworm-22.05-srun
cmd=${1:?usage: slurm-nodes.sh start|stop DIR [NODES] | image}

build_image() {
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null || {
    echo "slurm-nodes: debootstrap not found (Debian: debootstrap)" >&2
    exit 1
  }
  local root
  root=$(mktemp -d)
  # mktemp makes the directory 0700, which would be the node's `/`: package scripts that run as
  # another user (munge's postinst runs `su munge`) could not reach /bin/sh.
  chmod 0755 "$root"
  debootstrap --variant=minbase --include=slurmd,slurm-client,munge,procps,iproute2 bookworm "$root" \
    http://deb.debian.org/debian >"$root.log" 2>&1 || {
    tail -20 "$root/debootstrap/debootstrap.log" "$root.log" >&2 2>/dev/null || tail -20 "$root.log" >&2
    rm -rf "$root" "$root.log"
    exit 1
  }
  tar -C "$root" -c . | docker import - "$image" >/dev/null
  rm -rf "$root" "$root.log"
}

if [ "$cmd" = image ]; then
  build_image
  exit 0
fi
dir=${2:?usage: slurm-nodes.sh start|stop DIR [NODES]}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
id=$(printf '%s' "$dir" | sha256sum | cut -c1-8)
net=kitt-slurm-$id

stop() {
  for c in $(docker ps -aq --filter "label=kitt.slurm-cluster=$id"); do
    docker rm -f "$c" >/dev/null 2>&1 || true
  done
  docker network rm "$net" >/dev/null 2>&1 || true
  stop_pid_files "$dir"/run/slurmctld.pid "$dir"/run/munged.pid
}

case "$cmd" in
stop)
  stop
  exit 0
  ;;
start) ;;
*)
  echo "usage: slurm-nodes.sh start|stop DIR [NODES] | image" >&2
  exit 2
  ;;
esac

nodes=${3:-3}
build_image
stop
mkdir -p "$dir"/{etc,run,state,log,munge}
chmod 0700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$dir/munge/munge.key"

# A private network with a free /24 (the gateway, .1, is this machine: slurmctld's address).
subnet=
for i in $(seq 0 200); do
  candidate="10.$((200 + i / 250)).$((i % 250)).0/24"
  if docker network create --subnet "$candidate" --label "kitt.slurm-cluster=$id" "$net" >/dev/null 2>&1; then
    subnet=$candidate
    break
  fi
done
[ -n "$subnet" ] || {
  echo "slurm-nodes: no free private subnet for $net" >&2
  exit 1
}
prefix=${subnet%.0/24}
gateway=$prefix.1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
slurmd_port=6818

{
  cat <<EOF
ClusterName=kitt-nodes
SlurmctldHost=$(hostname -s)($gateway)
SlurmctldPort=$port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=/run/munge/munge.socket.2,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
EOF
  slurm_common_conf
  for n in $(seq 1 "$nodes"); do
    echo "NodeName=n$n NodeAddr=$prefix.$((10 + n)) CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN"
  done
  echo "PartitionName=gpu Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} >"$dir/etc/slurm.conf"
echo "Name=gpu File=/dev/kittgpu[0-1]" >"$dir/etc/gres.conf"

# The controller and a munged of its own on this machine. The nodes' slurm.conf names munge's
# standard socket (each node runs its munged); the controller's copy names this one's socket.
munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
sed "s|socket=/run/munge/munge.socket.2|socket=$dir/munge/munge.sock|" "$dir/etc/slurm.conf" >"$dir/etc/slurm-ctld.conf"
SLURM_CONF="$dir/etc/slurm-ctld.conf" slurmctld -c -i

mounts=()
for m in ${KITT_SLURM_NODE_MOUNTS:-}; do
  mounts+=(-v "$m:$m")
done
: >"$dir/nodes"
for n in $(seq 1 "$nodes"); do
  echo "kitt-slurm-$id-n$n" >>"$dir/nodes"
  docker run -d --name "kitt-slurm-$id-n$n" --hostname "n$n" --label "kitt.slurm-cluster=$id" \
    --network "$net" --ip "$prefix.$((10 + n))" \
    -v "$dir/etc:/etc/slurm:ro" -v "$dir/munge/munge.key:/etc/munge/munge.key.host:ro" "${mounts[@]}" \
    "$image" sh -c '
      set -e
      for i in 0 1; do mknod /dev/kittgpu$i c 1 3; done
      install -o munge -g munge -m 0400 /etc/munge/munge.key.host /etc/munge/munge.key
      mkdir -p /run/munge /var/spool/slurmd && chown munge:munge /run/munge
      su -s /bin/sh munge -c "munged --force"
      exec slurmd -D -N '"n$n"' -f /etc/slurm/slurm.conf
    ' >/dev/null
done

export SLURM_CONF="$dir/etc/slurm-ctld.conf"
for _ in $(seq 1 150); do
  ready=$(sinfo -h -o '%t' 2>/dev/null | grep -cE '^(idle|mix|alloc)$' || true)
  [ "$ready" = 1 ] && [ "$(sinfo -h -N -o '%t' | grep -cE '^(idle|mix|alloc)$')" = "$nodes" ] && break
  sleep 0.2
done
up=$(sinfo -h -N -o '%t' | grep -cE '^(idle|mix|alloc)$' || true)
if [ "$up" != "$nodes" ]; then
  echo "slurm-nodes: $up of $nodes nodes came up; logs in $dir/log and \`docker logs kitt-slurm-$id-n1\`" >&2
  sinfo -N >&2 || true
  tail -n 20 "$dir/log/slurmctld.log" >&2 || true
  exit 1
fi
echo "export SLURM_CONF=$dir/etc/slurm-ctld.conf"
