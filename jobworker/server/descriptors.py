"""
The server's descriptors, shared out: half for connections, half for jobs.

Connections past the half are closed before TLS (L{connectionCap}); jobs
past theirs wait in the queue (L{jobsCap}). Without the jobs' half, one
user's running jobs (pipes, output files, a pidfd and a uid lock each)
held every descriptor, and then no one could connect, not even an admin.
"""

from __future__ import annotations

import resource

#: The soft limit the server raises itself to, when the hard one allows.
MOST_DESCRIPTORS = 65536

#: Descriptors kept out of both halves, for the server's own files (the
#: store, its logs, the audit log, epoll, the spawner's socket, cgroup files).
RESERVED = 64

#: Descriptors a running job may hold in the server: its pipes (stdout,
#: stderr, stdin and the gate's, and the gate's read end that tells whether
#: the job passed it, should its spawner die), its two output files and its
#: order file, a pidfd, its uid's lock, and one spare.
PER_JOB = 9

#: Descriptors a log stream holds besides its connection: a combined read's
#: stdout, stderr and order file. Uncounted, one user's followers took the
#: jobs' half, and another user's job lost its output (fault round 8).
PER_STREAM = 3


def softLimit() -> int | None:
    """The soft C{RLIMIT_NOFILE} (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raiseSoftLimit(most: int = MOST_DESCRIPTORS) -> tuple[int | None, int | None]:
    """
    Raise the soft C{RLIMIT_NOFILE} towards C{most}, as far as the hard
    limit allows (systemd gives services 1,024 soft, 524,288 hard): the
    reactor uses epoll, which has no limit of its own on descriptors.

    @return: the soft limit before and after (None: no limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None, None
    target = most if hard == resource.RLIM_INFINITY else min(most, hard)
    if target <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, target


def connectionCap(wanted: int, soft: int | None = None, streams: int = 0) -> int:
    """
    The cap on connections in all: C{wanted}, but at most half the
    server's descriptor limit (soft C{RLIMIT_NOFILE}, or C{soft}), less
    L{RESERVED} and the files of C{streams} log streams (L{PER_STREAM}).
    """
    soft = softLimit() if soft is None else soft
    if soft is None:
        return wanted
    return max(1, min(wanted, soft // 2 - RESERVED - PER_STREAM * streams))


def logStreamsCap(wanted: int, soft: int | None = None) -> int:
    """
    The cap on log streams in all: C{wanted}, but at most what the
    connections' half holds (see L{connectionCap}) at 1 + L{PER_STREAM}
    descriptors each.
    """
    soft = softLimit() if soft is None else soft
    if soft is None:
        return wanted
    return max(1, min(wanted, (soft // 2 - RESERVED) // (1 + PER_STREAM)))


def jobsCap(wanted: int | None, soft: int | None = None) -> int | None:
    """
    The cap on jobs running at once: C{wanted} (None: none asked for), but
    at most what the jobs' half of the descriptor limit holds, L{PER_JOB}
    each. None: no cap at all (no descriptor limit, none asked for).
    """
    soft = softLimit() if soft is None else soft
    if soft is None:
        return wanted
    most = max(1, (soft // 2) // PER_JOB)
    return most if wanted is None else min(wanted, most)
