#!/usr/bin/env bash
# Bring up a one-node Slurm cluster on loopback for integration tests.
#
# Usage: up.sh STATE_DIR
#
# Idempotent: installs slurm-wlm + munge if missing, creates a munge key if
# missing, starts munged if not answering, writes STATE_DIR/slurm.conf,
# starts slurmctld + slurmd (pid/log/state files all inside STATE_DIR) unless
# they already run with the same config, and waits until the node is idle.
# Last line of stdout is always `SLURM_CONF=STATE_DIR/slurm.conf` on success.
# Clients must be run with that SLURM_CONF in their environment.
#
# Tunables (env): SLURM_UP_TIMEOUT (s, default 60), SLURM_CLUSTER_NAME
# (default ci), SLURMCTLD_PORT (6817), SLURMD_PORT (6818),
# SLURM_MESSAGE_TIMEOUT (s, default 10 = Slurm default; a client talking to a
# dead slurmctld fails after ~MessageTimeout-1 s, 2x that for job queries),
# SLURM_MIN_JOB_AGE (s, default 600: finished jobs stay visible to squeue/scontrol that long),
# SLURM_MAX_JOB_COUNT (default 30000: jobs slurmctld keeps at once),
# SLURM_CI_CGROUP=1: use proctrack/cgroup + task/cgroup (cgroup v1) so --mem
# is enforced and OUT_OF_MEMORY can happen (default: pgid/none, no cgroups).
# SLURM_CI_ACCOUNTS (default "jwalice jwbob"): Unix accounts (with homes)
# created if missing, that the tests map jobworker users to.
set -euo pipefail

die() { echo "up.sh: ERROR: $*" >&2; exit 1; }
log() { echo "up.sh: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 STATE_DIR"
mkdir -p "$1"
# Readable by the test accounts, whose sbatch and squeue read slurm.conf.
chmod 0755 "$1"
STATE_DIR=$(cd "$1" && pwd -P)
CONF="$STATE_DIR/slurm.conf"
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CLUSTER=${SLURM_CLUSTER_NAME:-ci}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
[ "$(id -u)" -eq 0 ] || die "must run as root"

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    log "installing slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    cand=$(apt-cache policy slurm-wlm 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
    fi
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 \
        || die "apt-get install slurm-wlm munge failed"
fi
command -v slurmctld >/dev/null || die "slurmctld still missing after install"

# ---------------------------------------------------------------- munge
MUNGE_KEY=/etc/munge/munge.key
if [ ! -s "$MUNGE_KEY" ]; then
    log "creating $MUNGE_KEY"
    install -d -m 0700 -o munge -g munge /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$MUNGE_KEY" --force >&2
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
fi
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    log "starting munged"
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0700 -o munge -g munge /var/lib/munge /var/log/munge
    # A stale socket/pid from a dead munged makes munged refuse to start.
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged >&2 || die "munged failed to start"
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged started but 'munge -n | unmunge' fails"
fi

# ---------------------------------------------------------------- accounts
# Jobs run as their owner's account: two of them, so tests can check that
# one cannot read or cancel the other's jobs.
for account in ${SLURM_CI_ACCOUNTS-jwalice jwbob}; do
    if ! getent passwd "$account" >/dev/null; then
        log "creating account $account"
        useradd --create-home --shell /bin/bash "$account" >&2 \
            || die "useradd $account failed"
    fi
done

# ---------------------------------------------------------------- config
NODE=$(hostname -s)
mkdir -p "$STATE_DIR"/{state,spool,log,run}
# `slurmd -C` prints e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1
# CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105" then "UpTime=...".
HW=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
case "$HW" in *CPUs=*RealMemory=*) ;; *) die "unexpected 'slurmd -C' output: $HW";; esac

if [ "${SLURM_CI_CGROUP:-0}" = 1 ]; then
    PROCTRACK=proctrack/cgroup; TASK=task/cgroup
    cat > "$STATE_DIR/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
EOF
else
    # pgid, not linuxproc: with linuxproc a child whose parent (the batch
    # script) exits is reparented to init, escapes tracking, survives the job.
    PROCTRACK=proctrack/pgid; TASK=task/none
    rm -f "$STATE_DIR/cgroup.conf"
fi

NEW_CONF=$(cat <<EOF
# Generated by slurm-ci/up.sh -- one-node loopback test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=$PROCTRACK
TaskPlugin=$TASK
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without DefMemPerCPU a job with no --mem is given ALL node memory, so only
# one such job runs at a time (the others pend with Reason=Resources).
DefMemPerCPU=100
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=1000
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/log/jobcomp.txt
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/slurmd-%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
MinJobAge=${SLURM_MIN_JOB_AGE:-600}
# Room for the poll benchmark's 10,000 foreign jobs (Slurm's default is 10000).
MaxJobCount=${SLURM_MAX_JOB_COUNT:-30000}
KillWait=2
# Reject at submit time jobs that can never run (e.g. -c > node CPUs);
# without it they are accepted and pend forever with Reason=PartitionConfig.
EnforcePartLimits=ALL
InactiveLimit=0
WaitTime=0
MessageTimeout=${SLURM_MESSAGE_TIMEOUT:-10}
SlurmctldTimeout=30
SlurmdTimeout=60
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
CTLD_PID="$STATE_DIR/run/slurmctld.pid"
SLURMD_PID="$STATE_DIR/run/slurmd.pid"

if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$NEW_CONF" ]; then
    :
else
    if pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; then
        log "config changed: restarting daemons"
        "$(dirname "$0")/down.sh" "$STATE_DIR" >&2
    fi
    printf '%s\n' "$NEW_CONF" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
fi
chmod 0644 "$CONF"
export SLURM_CONF="$CONF"

# ---------------------------------------------------------------- daemons
if ! pid_alive "$CTLD_PID"; then
    log "starting slurmctld"
    rm -f "$CTLD_PID"
    slurmctld -f "$CONF" >&2 || die "slurmctld failed; see $STATE_DIR/log/slurmctld.log"
fi
if ! pid_alive "$SLURMD_PID"; then
    log "starting slurmd"
    rm -f "$SLURMD_PID"
    slurmd -f "$CONF" >&2 || die "slurmd failed; see $STATE_DIR/log/slurmd.log"
fi

# The daemons write their pid files a moment after the starting command has
# returned (they fork first): wait for both before watching them.
for _ in $(seq 100); do
    [ -s "$CTLD_PID" ] && [ -s "$SLURMD_PID" ] && break
    sleep 0.1
done

# ---------------------------------------------------------------- wait idle
deadline=$((SECONDS + TIMEOUT))
state=""
while [ $SECONDS -lt $deadline ]; do
    pid_alive "$CTLD_PID" || die "slurmctld died; see $STATE_DIR/log/slurmctld.log"
    pid_alive "$SLURMD_PID" || die "slurmd died; see $STATE_DIR/log/slurmd.log"
    state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            log "node state '$state': resuming"
            scontrol update nodename="$NODE" state=resume >&2 2>/dev/null \
                || scontrol update nodename="$NODE" state=idle >&2 2>/dev/null || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $NODE not ready after ${TIMEOUT}s (state='$state'); see $STATE_DIR/log/" ;;
esac
log "node $NODE is $state"
echo "SLURM_CONF=$CONF"
