#!/usr/bin/env bash
# The Slurm integration tests (tox -e slurm): start a one-node Slurm cluster
# on loopback (up.sh: installs slurm-wlm and munge if missing), run
# tests.test_slurm and tests.test_slurmafter against it, stop it; then a
# two-node cluster in network namespaces (nodes2.sh), run
# tests.test_slurmnodes against it, stop it. Where Slurm cannot be installed
# the tests are skipped and say why; a cluster that installs but does not
# start fails the run.
#
#   bash slurm-ci/run-tests.sh [PYTHON]
set -uo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
state=${JW_SLURM_STATE:-/tmp/jobworker-slurm-ci}
log="$state.up.log"
# A fresh job completion log each run: the tests read it (a job that ended
# while jobworker was down), and Slurm 22.05's sacct --completion crashes on a
# log holding a job name with a newline (test_forgedNameForgesNothing makes
# one), so one run's log must not reach the next.
rm -f "$state/log/jobcomp.txt"
if SLURM_MESSAGE_TIMEOUT=2 bash slurm-ci/up.sh "$state" >"$log" 2>&1; then
    export SLURM_CONF="$state/slurm.conf" JW_SLURM_CI_STATE="$state"
    # The tests' --slurm-output-dir: below folders the test accounts
    # (jwalice, jwbob) can traverse, wherever this checkout lives.
    export JW_SLURM_OUTPUT="$state/output"
    install -d -m 0755 "$JW_SLURM_OUTPUT"
    started=yes
elif ! command -v slurmctld >/dev/null 2>&1; then
    export JW_SLURM_UNAVAILABLE="Slurm could not be installed here ($(tail -n 1 "$log"))"
    started=
else
    echo "slurm-ci: Slurm is installed but the test cluster did not start:" >&2
    cat "$log" >&2
    exit 1
fi
"$python" -m twisted.trial --reporter=verbose tests.test_slurm tests.test_slurmafter
status=$?
if [ -n "$started" ]; then
    bash slurm-ci/down.sh "$state" >/dev/null 2>&1 || true
fi
[ -n "$started" ] || exit "$status"

# The two-node cluster (nodes2.sh: two slurmd in network namespaces of their
# own), after the one-node one is down (same ports).
state2=${JW_SLURM_NODES_STATE:-/tmp/jobworker-slurm-ci2}
if ! bash slurm-ci/nodes2.sh up "$state2" >"$state2.up.log" 2>&1; then
    echo "slurm-ci: the two-node test cluster did not start:" >&2
    cat "$state2.up.log" >&2
    bash slurm-ci/nodes2.sh down "$state2" >/dev/null 2>&1 || true
    exit 1
fi
export SLURM_CONF="$state2/slurm.conf" JW_SLURM_NODES_STATE="$state2"
export JW_SLURM_OUTPUT="$state2/output"
install -d -m 0755 "$JW_SLURM_OUTPUT"
"$python" -m twisted.trial --reporter=verbose tests.test_slurmnodes
status2=$?
bash slurm-ci/nodes2.sh down "$state2" >/dev/null 2>&1 || true
[ "$status" -ne 0 ] && exit "$status"
exit "$status2"
