"""
A spool's output leaves the page cache behind its live readers.

Without this, every byte a job prints stays in the page cache until memory
runs short: a job printing 100 GB pushes out the rest of the machine's
cache (other jobs' files, the store), and each new gigabyte is written into
pages the machine has not used lately (on a VM whose free memory goes back
to the host, each of those pages costs a fault on first use: 2.5 s of system
time per GiB on the development machine, against 0.3 s for pages just
freed).

So once a spool has grown by L{STEP} bytes, the pages behind both its
newest L{KEEP} bytes and every reader attached to it are handed back
(C{posix_fadvise(DONTNEED)}): the kernel starts writing them to disk and
drops those already written, and the next writes reuse them. Each call
reaches back L{RECHECK} bytes, so pages still being written at one call
are dropped at a later one. A reader that falls behind keeps what it has
yet to read in the cache; readers that come later read from the disk.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.logger import Logger

#: The newest output of each spool that always stays in the cache (new
#: followers, C{tail=N}).
KEEP = 32 << 20
#: How much a spool grows between two calls (one system call per STEP).
STEP = 8 << 20
#: How far back each call reaches, for pages that were still being written.
RECHECK = 128 << 20
#: L{DropBehind.due} of a file that keeps its cache.
NEVER = sys.maxsize
#: The page size the ranges are rounded to.
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class DropBehind:
    """
    When and what one spool file hands back to the kernel.

    @ivar dropped: the end of the range given to the kernel so far.
    @ivar due: the size at which the spool calls L{wrote} next (L{NEVER}: never).
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        advise: Callable[[int, int, int, int], None] = os.posix_fadvise,
    ) -> None:
        self._path = path
        self._advise = advise
        self.due = KEEP + STEP
        self.dropped = 0

    def wrote(self, fd: int, size: int, readers: list[int]) -> None:
        """
        The spool (open as C{fd}) is C{size} bytes long (at least L{due})
        and its readers are at C{readers}: drop what is behind them all.
        """
        self.due = size + STEP
        floor = min([size - KEEP, *readers])
        floor -= floor % PAGE
        start = max(0, min(self.dropped, floor) - RECHECK)
        if floor <= start:
            return
        try:
            self._advise(fd, start, floor - start, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            # Not a regular file system (a pipe, a FIFO): keep the cache.
            self.due = NEVER
            self.log.info(
                "{path}: output stays in the page cache ({error})",
                path=self._path,
                error=e.strerror,
            )
            return
        self.dropped = max(self.dropped, floor)
