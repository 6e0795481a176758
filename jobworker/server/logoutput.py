"""
The server's log output that never holds the reactor up.

twistd writes the server's log (C{twistd -n}: to its stdout, a pipe to
journald, a terminal, a shell's pipe) from the reactor's thread. When the
reader stops reading (journald stalled, a terminal's Ctrl-S, a pipe to a
stopped program), the pipe fills and that C{write} blocks: every request,
stop, timeout and job end waited with it, and SIGTERM was not handled
either (fault round 30). L{UnblockedOutput} takes the lines in memory, up
to L{MAX_PENDING} bytes, and a thread of its own writes them out; what
comes while that much waits is dropped, and said (how much) once the
reader reads again.
"""

from __future__ import annotations

import atexit
import os
import select
import stat
import sys
import threading
import time
from typing import Any, TextIO

from twisted.internet.interfaces import IReactorCore

#: Bytes of log lines kept while the log's reader does not read.
MAX_PENDING = 4 * 1024 * 1024

#: Seconds the process's exit waits for what is pending to be written.
EXIT_WAIT = 2.0


class UnblockedOutput:
    """
    A text stream (C{write}, C{flush}) over a file descriptor, for log
    lines: C{write} never waits on the descriptor's reader. A thread
    writes what is pending, in order.
    """

    def __init__(self, fd: int, encoding: str = "utf-8") -> None:
        self._fd = fd
        self.encoding = encoding
        self._pending = bytearray()
        self._dropped = 0
        self._said = 0
        self._closed = False
        #: Once the reactor has stopped (L{finishing}): until when a write
        #: waits for its line to be written (twistd's last lines come
        #: then, and it ends by its own SIGTERM: no exit handler runs).
        self._until: float | None = None
        self._ready = threading.Condition()
        self._writer = threading.Thread(
            target=self._write, name="jobworker-log-output", daemon=True
        )
        self._writer.start()

    def write(self, text: str) -> int:
        line = data = text.encode(self.encoding, "backslashreplace")
        with self._ready:
            if self._closed:
                return len(text)
            if self._dropped > self._said:
                # The first line taken after some were dropped: where they
                # were, how much.
                data = (
                    f"jobworker: {self._dropped - self._said} bytes of log "
                    "lines were dropped here: the log's reader did not read "
                    "them\n"
                ).encode("ascii") + line
            if len(self._pending) + len(data) > MAX_PENDING:
                self._dropped += len(line)
                return len(text)
            self._said = self._dropped
            self._pending += data
            self._ready.notify_all()
            if self._until is not None:
                left = self._until - time.monotonic()
                while self._pending and left > 0:
                    self._ready.wait(left)
                    left = self._until - time.monotonic()
        return len(text)

    def finishing(self) -> None:
        """
        The reactor has stopped: from now on each write waits for what is
        pending to be written, until L{EXIT_WAIT} seconds from now.
        """
        with self._ready:
            self._until = time.monotonic() + EXIT_WAIT

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can."""

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    @property
    def dropped(self) -> int:
        """Bytes of log lines dropped so far (their reader did not read)."""
        return self._dropped

    def close(self, wait: float = EXIT_WAIT) -> None:
        """
        Write what is pending, waiting C{wait} seconds at most (the
        process exits: a reader that does not read must not keep it).
        """
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._writer.join(wait)

    def _write(self) -> None:
        """The thread: write what is pending, in order, as it comes."""
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending and self._closed:
                    return
                chunk = bytes(self._pending[:65536])
            try:
                written = os.write(self._fd, chunk)
            except InterruptedError:
                continue
            except BlockingIOError:
                # Made non-blocking by another holder of the descriptor:
                # waited for here all the same (poll), never dropped.
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError:
                # The reader is gone (EPIPE) or the descriptor broke: the
                # lines have nowhere to go.
                with self._ready:
                    self._pending.clear()
                    self._ready.notify_all()
                    if self._closed:
                        return
                continue
            with self._ready:
                del self._pending[:written]
                if not self._pending:
                    self._ready.notify_all()  # (a write that waits for it)


def blocks(stream: Any) -> bool:
    """
    Might a write to C{stream} wait on its reader (a pipe, a socket, a
    terminal, a FIFO), not only on a disk? A regular file's, or one with
    no descriptor, is written as before.
    """
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISBLK(mode))


def unblockStandardOutput(reactor: IReactorCore) -> UnblockedOutput | None:
    """
    Replace C{sys.stdout} (where C{twistd -n} sends the log once it
    starts) with an L{UnblockedOutput} over its descriptor, if a write to
    it might wait on a reader; written out (for L{EXIT_WAIT} at most) once
    the reactor has stopped, and as the process exits.
    """
    current: TextIO = sys.stdout
    if isinstance(current, UnblockedOutput) or not blocks(current):
        return None
    try:
        current.flush()
    except (OSError, ValueError):
        pass
    output = UnblockedOutput(current.fileno(), current.encoding or "utf-8")
    sys.stdout = output
    reactor.addSystemEventTrigger("after", "shutdown", output.finishing)
    atexit.register(output.close)
    return output
