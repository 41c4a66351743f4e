#!/bin/bash
# Starts a one-node Slurm cluster in the Slurm test's container (tests/tests/slurm.rs;
# the image is docker/slurm-image.sh's): munged, slurmctld and slurmd, as root, with
# no systemd and no cgroups. The node has GPUS generic-resource GPUs, /dev/nvidia0..
# made here as device nodes nothing opens: Slurm only needs them to exist to bind
# them to jobs, and sets CUDA_VISIBLE_DEVICES for each job from them. Returns once
# the node is idle (ready for jobs).
#
#   start.sh [GPUS]    (default 4)
set -euo pipefail
GPUS=${1:-4}
host=$(hostname -s)
say() { echo "start.sh: $*" >&2; }

# --- munge: a key of this container's own --------------------------------------------
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged

# --- GPUs: device nodes for gres.conf (NVIDIA's major number, 195) -------------------
last=$((GPUS - 1))
for i in $(seq 0 "$last"); do
    [ -e "/dev/nvidia$i" ] || mknod "/dev/nvidia$i" c 195 "$i"
done

# --- Slurm -------------------------------------------------------------------------------
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
# proctrack/linuxproc and task/none: no cgroups (and no cgroup.conf, so slurmd uses
# none). select/cons_tres binds GPUs per job; config_overrides lets the node declare
# more CPUs than the container has, so two jobs fit whatever the host's core count.
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=lemtest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
KillWait=10
MinJobAge=600
NodeName=$host CPUs=8 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
cat >/etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=$host Name=gpu File=/dev/nvidia[0-$last]
CONF
slurmctld
slurmd
for _ in $(seq 100); do
    if [ "$(sinfo -h -n "$host" -o %T 2>/dev/null)" = idle ]; then
        say "slurm is up: node $host idle with $GPUS GPU(s)"
        exit 0
    fi
    sleep 0.2
done
say "the node did not become idle within 20 s"
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
