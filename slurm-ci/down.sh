#!/usr/bin/env bash
# Stop the one-node test cluster started by up.sh.
#
# Usage: down.sh STATE_DIR [--keep-jobs]
#
# By default all jobs are cancelled first (scancel, then a short wait) so no
# slurmstepd / job processes are left behind. With --keep-jobs the jobs are
# left running (slurmstepd survives slurmd/slurmctld; a later up.sh with the
# same STATE_DIR re-attaches to them).
# slurmd and slurmctld are stopped via the pid files in STATE_DIR/run
# (SIGTERM, then SIGKILL after 15 s). munged is left running on purpose: it
# is a machine-wide service shared by any other Slurm instance, and up.sh
# only starts it when it is not answering. State (STATE_DIR/state) is kept,
# so jobs are remembered across down/up; rm -rf STATE_DIR for a clean slate.
set -uo pipefail

die() { echo "down.sh: ERROR: $*" >&2; exit 1; }
log() { echo "down.sh: $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 STATE_DIR [--keep-jobs]"
[ -d "$1" ] || { log "no such dir $1: nothing to do"; exit 0; }
STATE_DIR=$(cd "$1" && pwd -P)
KEEP_JOBS=0
[ "${2:-}" = "--keep-jobs" ] && KEEP_JOBS=1
export SLURM_CONF="$STATE_DIR/slurm.conf"

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ $KEEP_JOBS -eq 0 ] && pid_alive "$STATE_DIR/run/slurmctld.pid" \
   && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    log "cancelling all jobs"
    scancel --full --signal=KILL $(squeue -h -o %i) 2>/dev/null || true
    scancel $(squeue -h -o %i) 2>/dev/null || true
    for _ in $(seq 40); do
        [ -z "$(squeue -h -t running,completing,suspended -o %i 2>/dev/null)" ] && break
        sleep 0.25
    done
fi

stop() {  # name pidfile
    local name=$1 pf=$2 pid
    if ! pid_alive "$pf"; then rm -f "$pf"; return 0; fi
    pid=$(cat "$pf")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit after 15s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        sleep 0.2
    fi
    rm -f "$pf"
}
stop slurmd "$STATE_DIR/run/slurmd.pid"
stop slurmctld "$STATE_DIR/run/slurmctld.pid"
log "stopped"
