"""
A spool's output leaves the page cache behind its live readers.

Without this, every byte a job prints stays in the page cache until memory
runs short: a job printing 100 GB pushes out the rest of the machine's
cache (other jobs' files, the store), and each new gigabyte is written into
pages the machine has not used lately (on a VM whose free memory goes back
to the host, each of those pages costs a fault on first use: 2.5 s of system
time per GiB on the development machine, against 0.3 s for pages just
freed).

So once a spool has grown by C{step} bytes, the pages behind both its
newest C{keep} bytes and every reader attached to it are handed back
(C{posix_fadvise(DONTNEED)}): the kernel starts writing them to disk and
drops those already written, and the next writes reuse them. Each call
reaches back C{recheck} bytes, so pages still being written at one call
are dropped at a later one, and covers at most L{MOST} bytes, so a reader
that catches up does not make one huge call. A reader that falls behind
keeps what it has yet to read in the cache; readers that come later read
from the disk.

The call starts the write-back, which may wait for the disk: it runs in a
thread (C{runInThread}, the server's thread pool), one at a time per
spool, on a descriptor of its own, so the reactor never waits for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import NoThread

#: The newest output of each spool that always stays in the cache (new
#: followers, C{tail=N}).
KEEP = 32 << 20
#: How much a spool grows between two calls.
STEP = 8 << 20
#: How far back each call reaches, for pages that were still being written.
RECHECK = 128 << 20
#: The most one call covers (the next steps go on from there).
MOST = 512 << 20
#: L{DropBehind.due} of a file that keeps its cache.
NEVER = sys.maxsize
#: The page size the ranges are rounded to.
PAGE = os.sysconf("SC_PAGE_SIZE")

Advise = Callable[[int, int, int, int], None]
RunInThread = Callable[..., Deferred[Any]]


class DropBehind:
    """
    When and what one spool file hands back to the kernel.

    @ivar due: the size at which the spool calls L{wrote} next (L{NEVER}:
        never).
    @ivar dropped: where the last range given to the kernel ended.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        runInThread: RunInThread | None = None,
        advise: Advise = os.posix_fadvise,
        keep: int = KEEP,
        step: int = STEP,
        recheck: int = RECHECK,
    ) -> None:
        self._path = path
        self._runInThread = runInThread
        self._advise = advise
        self._keep = keep
        self._step = step
        self._recheck = recheck
        self.due = keep + step
        self.dropped = 0
        self._busy = False

    def wrote(self, fd: int, size: int, readers: list[int]) -> None:
        """
        The spool (open as C{fd}) is C{size} bytes long (at least L{due})
        and its readers are at C{readers}: drop what is behind them all.
        """
        self.due = size + self._step
        self.sweep(fd, size, readers)

    def sweep(self, fd: int, size: int, readers: list[int]) -> None:
        """Give the kernel what is behind the newest output and C{readers}."""
        if self._busy or self.due == NEVER:
            return  # the call before is still running; the next step goes on
        floor = min([size - self._keep, *readers])
        floor -= floor % PAGE
        # A reader that came late reads old output back into the cache:
        # follow it from where it is.
        self.dropped = min(self.dropped, max(0, floor))
        start = max(0, self.dropped - self._recheck)
        end = min(floor, start + MOST)
        if end <= start:
            return
        # The call gets a descriptor of its own: the spool may close its
        # own while the call runs in a thread.
        try:
            own = os.dup(fd)
        except OSError:
            return
        if self._runInThread is None:
            try:
                self._advised(self._adviseAndClose(own, start, end))
            except OSError as e:
                self._failed(e)
            return
        self._busy = True
        running = self._runInThread(self._adviseAndClose, own, start, end)
        running.addCallbacks(self._advised, lambda f: self._notRun(f, own))
        running.addBoth(self._idle)

    def _adviseAndClose(self, fd: int, start: int, end: int) -> int:
        """The call itself (in a thread, if there is one); C{end} once done."""
        try:
            self._advise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return end

    def _advised(self, end: int) -> None:
        self.dropped = end

    def _failed(self, error: object) -> None:
        # Not a regular file system (a pipe, a FIFO): keep the cache.
        self.due = NEVER
        self.log.warn(
            "{path}: cannot hand the output's pages back to the kernel "
            "({error}); they stay in the page cache",
            path=self._path,
            error=getattr(error, "strerror", None) or repr(error),
        )

    def _notRun(self, failure: Failure, fd: int) -> None:
        if failure.check(NoThread):
            # The call never ran (no thread to be had): its descriptor is
            # still open, and the next chunk tries again.
            os.close(fd)
            return
        self._failed(failure.value)

    def _idle(self, result: object) -> None:
        self._busy = False
