#!/bin/bash
# Slurm batch script: exec an exact argv (and optionally an exact env) read
# from NUL-separated files -- no shell interpretation of user data.
#
#   sbatch [...] exec-wrapper.sh [-C DIR] [-E ERR_FILE] ARGV_FILE [ENV_FILE]
#
# ARGV_FILE: argv[0]\0argv[1]\0...      ENV_FILE: NAME=value\0NAME2=value\0...
# (every element NUL-terminated: `printf '%s\0' "$@" > FILE` writes one;
#  python: b"".join(a.encode() + b"\0" for a in argv)).
# Both files are REMOVED as soon as they have been read, before anything
# else can fail: they may hold secrets (the job runs as their owner).
# -C DIR: cd to DIR (once the files are read) and fail (exit 126) if that
#   is impossible. Needed because sbatch --chdir=/missing does NOT fail the
#   job: slurmstepd logs "couldn't chdir ... going to /tmp instead" and runs
#   it in /tmp.
# -E ERR_FILE: the command's stderr (and this script's messages) go to
#   ERR_FILE (appended), so that Slurm's own messages (slurmstepd's
#   "*** JOB N CANCELLED ***") stay in sbatch's --error file, out of the
#   job's stderr.
# With ENV_FILE the command runs with exactly that environment (env -i)
# plus the variables Slurm gives every job: SLURM_* and TMPDIR (ENV_FILE's
# own values win); without it, it inherits the job environment (per sbatch
# --export).
# exec failure (command not found / not executable) -> exit 127 / 126 and a
# message on stderr (the job's --error file).
set -e
dir=
if [ "${1:-}" = "-C" ]; then
    dir=$2
    shift 2
fi
if [ "${1:-}" = "-E" ]; then
    exec 2>>"$2"
    shift 2
fi
mapfile -d '' -t argv < "$1"
if [ $# -ge 2 ]; then
    mapfile -d '' -t envv < "$2"
fi
rm -f -- "$@" || true
if [ -n "$dir" ]; then
    cd -- "$dir" || { echo "exec-wrapper: cannot chdir to $dir" >&2; exit 126; }
fi
[ ${#argv[@]} -gt 0 ] || { echo "exec-wrapper: empty argv in $1" >&2; exit 127; }
if [ $# -ge 2 ]; then
    case "${argv[0]}" in *=*)  # env(1) would take it as NAME=value
        echo "exec-wrapper: argv[0] may not contain '=' with an ENV_FILE" >&2
        exit 127 ;;
    esac
    slurmenv=()
    while IFS= read -r -d '' variable; do
        case "$variable" in SLURM_*=*|TMPDIR=*) slurmenv+=("$variable") ;; esac
    done < <(/usr/bin/env -0)
    exec /usr/bin/env -i "${slurmenv[@]}" "${envv[@]}" "${argv[@]}"
fi
exec "${argv[@]}"
