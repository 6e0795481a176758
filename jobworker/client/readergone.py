"""
Whether the reader of C{jw}'s stdout has gone while jw follows a job: C{jw
logs -f ID | grep -m1 ready}, where grep exits at its line and the job
(a server) then says nothing for hours. A write would fail with C{EPIPE},
but none comes; jw held the pipeline until the job wrote again (new user
round 40). The write end of a pipe reports C{POLLERR} once its read end has
closed, and a socket C{POLLHUP} once its peer has: a thread waits for that
(as coreutils C{tail -f} does) and breaks off the follow's streams, whose
reads then fail as a write to stdout would (L{readerGone}). Standard
library only.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import threading

from .workers import startThread


def watchedOutput(fd: int) -> bool:
    """
    Whether C{fd} (jw's stdout) is a pipe or a socket: what a reader may
    leave while jw has nothing to write. A terminal or a file has none.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def readerGone() -> BrokenPipeError:
    """What a follow broken off for its reader's going fails with: as a write."""
    return BrokenPipeError(errno.EPIPE, "stdout's reader has gone")


class ReaderWatch:
    """
    A pipe or socket (jw's stdout: L{watchedOutput}) watched, in a daemon
    thread, for its reader's going; the sockets being read meanwhile
    (L{reading}) are then shut down, so that the reads blocked on them end
    at once. Nothing is done per piece of output: the thread sleeps in one
    C{poll} for the follow's life.

    @ivar gone: whether the reader has gone (set once, by the thread).
    """

    def __init__(self, fd: int) -> None:
        self.gone = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        startThread(self._watch, fd)

    def _watch(self, fd: int) -> None:
        poll = select.poll()
        # Events 0: only those always reported (POLLERR, POLLHUP, POLLNVAL),
        # not writability, which a pipe with room has all the time.
        poll.register(fd, 0)
        while True:
            for _, revents in poll.poll():
                if revents & select.POLLNVAL:
                    return  # (not a descriptor any more: nothing to watch)
                if revents & (select.POLLERR | select.POLLHUP):
                    self._broken()
                    return

    def _broken(self) -> None:
        with self._lock:
            self.gone = True
            for sock in self._socks:
                try:
                    # The socket's own shutdown, as _Peers breaks a stream:
                    # SSLSocket.shutdown would drop the TLS state under the
                    # thread reading.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # closed by its end meanwhile

    def reading(self, sock: socket.socket) -> None:
        """
        A follow's stream is read on C{sock} from now on: shut down if the
        reader goes (until L{done}).

        @raise BrokenPipeError: the reader has gone already.
        """
        with self._lock:
            if self.gone:
                raise readerGone()
            self._socks.add(sock)

    def done(self, sock: socket.socket) -> None:
        """C{sock} is read no more: forgotten before it may be closed."""
        with self._lock:
            self._socks.discard(sock)
