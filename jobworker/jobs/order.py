"""The order file: which stream the output switched to, and where (one entry each)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from twisted.logger import Logger

_ENTRY = struct.Struct(">Q")
_STDERR_BIT = 1 << 63


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

    @ivar last: the stream index of the latest entry, or None.
    @ivar size: bytes written to the file.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        #: Called before a stream written by the reactor records a switch:
        #: the streams a thread reads publish what it has written so far.
        self.beforeSwitch: list[Callable[[], None]] = []
        self.last: int | None = None
        self.size = 0
        self._fd: int | None = None
        self._broken = False

    def switch(self, stream: int, offset: int) -> None:
        """Output continues on C{stream} (0 stdout, 1 stderr) at C{offset}."""
        self.last = stream
        if self._broken:
            return
        try:
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                self._fd = os.open(
                    self.path,
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o600,
                )
            self.size += os.write(self._fd, encodeEntry(stream, offset))
        except OSError as e:
            # Readers then see coarser runs, never lost or repeated bytes.
            self._broken = True
            self.log.error(
                "cannot record output order in {path}: {error}",
                path=self.path,
                error=os.strerror(e.errno or errno.EIO),
            )

    def close(self) -> None:
        """Close the file (a later switch opens it again, to append)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
