"""A job's pipes: output drained in large reads (widened once a stream is
heavy), the gate written at once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

from .stalls import Slot, StallWatch

#: F_SETPIPE_SZ (Linux), absent from older Pythons' fcntl module.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: What one read of a quiet stream asks for: the default pipe's capacity.
QUIET_READ = 64 * 1024
#: A heavy stream's pipe capacity and read size. 1 MiB is Linux's default
#: /proc/sys/fs/pipe-max-size, so the widening needs no privilege.
HEAVY = 1 << 20
#: Seconds a stream past its cap rests after a read that did not fill the
#: read: what it writes meanwhile is read (and dropped) at once after.
CAPPED_PACE = 0.05


class Capped(Protocol):
    """Where a stream's output goes: C{full} once it takes no more."""

    @property
    def full(self) -> bool: ...


def readSome(fd: int, size: int) -> bytes | Exception | None:
    """
    One non-blocking read of C{fd}, as a reactor's C{doRead} needs it: the
    bytes read; None when there are none yet; C{CONNECTION_DONE} at the
    end; C{CONNECTION_LOST} on an error.
    """
    try:
        data = os.read(fd, size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return CONNECTION_LOST
    return data if data else CONNECTION_DONE


class PipeDrain:
    """
    The C{doRead} of one of Twisted's process output readers: one read per
    wake-up, of up to a whole pipe.

    Twisted reads a child's pipe 8 KiB per reactor turn; a job printing a
    gigabyte then costs 131,072 turns of Python work. This reads 64 KiB (a
    default pipe's capacity) at a time, and the first time a read finds
    the pipe full, the stream is heavy: its pipe is widened to L{HEAVY} and
    read a whole pipe at a time. Only heavy writers pay for a large pipe
    (pipe pages are accounted per user; a quiet job keeps the default), and
    the job can write a whole pipe's worth while the reactor serves others.

    Past its cap (C{spool.full}) a stream's bytes are read only to be
    dropped: after a read that did not fill it, the stream rests
    L{CAPPED_PACE} seconds, so a job writing a few bytes at a time wakes
    the server at most 1 / L{CAPPED_PACE} times a second for it, not once
    a write. A full read is followed by the next at once (a heavy writer
    is not held back), but is not offered to a thread: one read a capped
    stream of small writes write by write (L{pump} gives such a stream
    back).
    """

    def __init__(
        self,
        reader: Any,
        heavy: Callable[[Any], bool] | None = None,
        spool: Capped | None = None,
        watch: Slot | None = None,
        stalled: Callable[[float], None] | None = None,
    ) -> None:
        """
        @param watch: where each read is shown while it is in progress (the
            reactor thread's L{Slot}), with C{stalled}, what kills the job if
            it holds the pipe's lock; None: not watched.
        """
        self._reader = reader
        self._watch = watch if stalled is not None else None
        self._stalled = stalled
        self._fd: int = reader.fileno()
        self._size = QUIET_READ
        #: Offered the reader once its stream turns heavy; True: a thread
        #: reads it from now on (L{pump}).
        self._heavy = heavy
        self._spool = spool

    def __call__(self) -> object:
        watch = self._watch
        size = self._size
        if watch is None:
            data = self._read(size)
        else:
            watch.reads += 1
            watch.stalled = self._stalled
            try:
                data = self._read(size)
            finally:
                watch.stalled = None
        if not isinstance(data, bytes):
            return data
        full = len(data) == size
        self._reader.dataReceived(data)
        capped = self._spool is not None and self._spool.full
        if full:
            if self._heavy is not None and not capped:
                # Offered at each full read: a stream declined (every thread
                # busy) or given back (quiet a while) is offered again; not
                # one past its cap (a thread would read it write by write).
                self._heavy(self._reader)
        elif capped:
            self._reader.stopReading()
            self._reader.reactor.callLater(CAPPED_PACE, self._resume)
        return None

    def _resume(self) -> None:
        reader = self._reader
        if not (reader.disconnected or reader.disconnecting):
            reader.startReading()

    def _read(self, size: int) -> object:
        """
        Read up to C{size} bytes; a full read of a quiet stream widens its
        pipe (L{_widen}), within the same watched call: the resize takes
        the pipe's lock as a read does, and a job holding it in a page
        fault held the reactor there unseen (attacker round 35).
        """
        data = readSome(self._fd, size)
        if size < HEAVY and isinstance(data, bytes) and len(data) == size:
            self._widen()
        return data

    def _widen(self) -> None:
        try:
            capacity = fcntl.fcntl(self._fd, F_SETPIPE_SZ, HEAVY)
        except OSError:  # over the user's pipe-page allowance: keep 64 KiB
            return
        self._size = max(self._size, min(capacity, HEAVY))


def drainInLargeReads(
    transport: object,
    heavy: Callable[[int, Any], bool] | None = None,
    spools: dict[int, Capped] | None = None,
    watch: StallWatch | None = None,
    stalled: Callable[[float], None] | None = None,
) -> None:
    """
    Give the output readers (fds 1 and 2) of a process transport made by
    C{reactor.spawnProcess} a L{PipeDrain}; C{heavy(fd, reader)} is offered
    each reader whose stream turns heavy; C{spools}, by fd, where each
    stream goes (paced past its cap); C{watch} sees each read, C{stalled}
    kills the job that holds one (L{StallWatch}). Writes to its stdin are
    watched alike. A transport without pipes (a test's fake) is left alone.
    """
    pipes = getattr(transport, "pipes", {})
    slot = watch.slot() if pipes and watch is not None and stalled else None
    for name in (1, 2):
        reader = pipes.get(name)
        if reader is not None:
            # Twisted's ProcessReader reads in its doRead; the reactor calls
            # the instance's attribute, so this replaces only that method.
            offer = None if heavy is None else partial(heavy, name)
            spool = None if spools is None else spools.get(name)
            reader.doRead = PipeDrain(reader, offer, spool, slot, stalled)
    writer = pipes.get(0)
    if writer is not None and slot is not None and stalled is not None:
        writer.doWrite = partial(_watchedWrite, writer.doWrite, slot, stalled)
    lost = getattr(transport, "childConnectionLost", None)
    if lost is not None and slot is not None and stalled is not None:
        # Twisted closes a pipe's end there (its readers' and writers' end,
        # C{closeStdin}'s), and a close takes the pipe's lock: a job that
        # held its stdin's in a slow page fault of its read froze the
        # reactor at the close, unseen (attacker round 37).
        transport.childConnectionLost = partial(  # type: ignore[attr-defined]
            _watchedWrite, lost, slot, stalled
        )


def _watchedWrite(
    doWrite: Callable[..., object],
    watch: Slot,
    stalled: Callable[[float], None],
    *args: object,
) -> object:
    """A stdin writer's C{doWrite} (or a pipe's close), shown to the watch
    while it runs."""
    previous = watch.stalled  # (a close from within a watched read)
    watch.reads += 1
    watch.stalled = stalled
    try:
        return doWrite(*args)
    finally:
        watch.stalled = previous


def writeAtOnce(transport: Any, childFD: int, data: bytes) -> None:
    """
    Write C{data} to a child's pipe now, in this reactor turn, rather than
    at the reactor's next pass over writable descriptors as
    C{writeToChild} does; what the pipe does not take goes through
    C{writeToChild}. For the start gate: written right after the spawn, the
    line is there before the launcher reads it, so the launcher never
    sleeps on the gate and waking it costs nothing. A transport without
    pipes (a test's fake) gets C{writeToChild}.
    """
    writer = getattr(transport, "pipes", {}).get(childFD)
    if writer is not None:
        try:
            written = os.write(writer.fileno(), data)  # non-blocking
        except BlockingIOError:
            written = 0
        except OSError:  # the child is gone: nothing more to say to it
            return
        data = data[written:]
    if data:
        transport.writeToChild(childFD, data)
