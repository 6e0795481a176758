"""
TCP keepalive for long-lived connections: a peer that vanished without a
word (a dropped link, a sleeping laptop, a NAT that forgot the connection)
is noticed by the kernel, not waited for for ever.

Used by jw (its follows may be silent for hours) and by the server (a
follower that vanished would hold its log-stream slot for ever). Standard
library only: jw's short commands import it.
"""

from __future__ import annotations

import socket

#: Probes sent to a silent peer before the connection is given up.
PROBES = 3

#: The most seconds of silence allowed before probing: Linux's
#: MAX_TCP_KEEPIDLE (about 9 hours).
MOST = 32767


def keepAlive(sock: socket.socket, seconds: int, userTimeout: bool = True) -> None:
    """
    After C{seconds} of silence, probe the peer every C{seconds // 3} (at
    least 1) seconds, L{PROBES} times; unanswered, the connection fails
    with C{ETIMEDOUT}. A dead peer is so noticed in about twice C{seconds};
    a live, silent one costs a few bytes per C{seconds}.

    @param userTimeout: also fail a connection attempt, or data left
        unacknowledged, after as long (C{TCP_USER_TIMEOUT}, in ms). Not for
        a sender: a live reader that stops reading for a while (a paused
        pager) keeps its window closed, and would be cut.
    """
    interval = max(1, seconds // PROBES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES)
    if userTimeout:
        sock.setsockopt(
            socket.IPPROTO_TCP,
            socket.TCP_USER_TIMEOUT,
            (seconds + interval * PROBES) * 1000,
        )


def parseSeconds(text: str, what: str) -> int:
    """
    Whole seconds from 1 to L{MOST}.

    @raise ValueError: anything else, saying which setting (C{what}).
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MOST:
        raise ValueError(f"{what} must be whole seconds from 1 to {MOST}: {text!r}")
    return value
