"""The order file: which stream the output switched to, and where (one entry each)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from twisted.logger import Logger

from .folders import privateFolder

_ENTRY = struct.Struct(">Q")
_STDERR_BIT = 1 << 63
#: No cap: more than any file holds.
_UNBOUNDED = 1 << 63


def encodeEntry(stream: int, offset: int) -> bytes:
    """One order entry: the stream (top bit) and its offset."""
    return _ENTRY.pack((_STDERR_BIT if stream else 0) | offset)


def decodeEntries(data: bytes) -> list[tuple[int, int]]:
    """(stream, offset) of each whole entry in C{data}."""
    whole = len(data) - len(data) % _ENTRY.size
    return [
        (1 if value & _STDERR_BIT else 0, value & (_STDERR_BIT - 1))
        for (value,) in _ENTRY.iter_unpack(data[:whole])
    ]


class OrderLog:
    """
    The order file of a running job, written at each stream switch.

    It takes at most the bytes given to L{bound} (the job's cap on each
    stream), so a job switching streams at every byte cannot make it 8
    times its output. Past that no entry is written: readers then send the
    bytes no entry places after those placed (L{jobworker.jobs.combined}),
    coarser order, never a lost or repeated byte, as when a write failed.

    Each entry is written at L{size}, its own offset (pwrite), not
    appended: should the file be cut by hand while the job runs, later
    entries still land where they belong, past a hole that reads as entries
    placing nothing (stdout at 0), not at its start as if they were the
    first ones (a reader then skipped the output before them).

    @ivar last: the stream index of the latest switch, or None.
    @ivar size: bytes written to the file.
    @ivar full: True once a switch was left out for want of room.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        #: Called before a stream written by the reactor records a switch:
        #: the streams a thread reads publish what it has written so far.
        self.beforeSwitch: list[Callable[[], None]] = []
        self.last: int | None = None
        self.size = 0
        self.full = False
        #: The size at which entries stop: the cap, or 0 once a write failed
        #: (one comparison per switch for both).
        self._stopAt = _UNBOUNDED
        self._fd: int | None = None
        self._broken = False

    def bound(self, maxBytes: int) -> None:
        """
        Take at most C{maxBytes} (the least of those given), in whole
        entries, and at least one: where the output starts is always
        recorded (a live reader with no entry waits for the job's end).
        """
        stopAt = max(_ENTRY.size, maxBytes - maxBytes % _ENTRY.size)
        self._stopAt = min(self._stopAt, stopAt)

    def switch(self, stream: int, offset: int) -> None:
        """Output continues on C{stream} (0 stdout, 1 stderr) at C{offset}."""
        self.last = stream
        if self.size >= self._stopAt:
            self._leftOut()
            return
        try:
            if self._fd is None:
                privateFolder(os.path.dirname(self.path))
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            self.size += os.pwrite(self._fd, encodeEntry(stream, offset), self.size)
        except OSError as e:
            # Readers then see coarser runs, never lost or repeated bytes.
            self._broken = True
            self._stopAt = 0
            self.log.error(
                "cannot record output order in {path}: {error}",
                path=self.path,
                error=os.strerror(e.errno or errno.EIO),
            )

    @property
    def coarse(self) -> bool:
        """A switch was left out (the file full, or a write failed): bytes
        no entry places are placed by each reader as it sees them."""
        return self.full or self._broken

    def _leftOut(self) -> None:
        """A switch was not recorded: if for want of room, say so once."""
        if not self.full and not self._broken:
            self.full = True
            self.log.info(
                "{path} is full ({size} bytes): the output's order is coarser "
                "from here, no byte is lost",
                path=self.path,
                size=self.size,
            )

    def close(self) -> None:
        """Close the file (a later switch opens it again, to write on)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
