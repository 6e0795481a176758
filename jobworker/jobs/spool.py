"""Job output on disk: a spool file per stream, and producers that read it back."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from .dropbehind import DropBehind
from .folders import openOutput, privateFolder
from .order import OrderLog
from .pacing import Pacer

#: How much one read of a spool file sends at most.
READ_CHUNK = 256 * 1024
#: Seconds between tries to create an output file that could not be.
REOPEN_AFTER = 1.0


class Waiters:
    """Readers waiting for a file to grow, woken all at once."""

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(self) -> Deferred[None]:
        """A Deferred fired at the next L{wake} (cancelling it stops waiting)."""
        d: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        return d

    def wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


@dataclass(frozen=True)
class Handover:
    """What a spool gives the thread that takes its writes over (L{handOver})."""

    #: A duplicate of the spool's descriptor, the thread's to close.
    fd: int
    size: int
    dropped: int
    lost: int
    #: Bytes it may still write (-1: no cap).
    room: int


#: How long a failed write of a job's output keeps C{/healthz} degraded.
OUTPUT_TROUBLE_FOR = 30.0


class OutputTrouble:
    """
    When a job's output last could not be written (disk full, I/O error),
    and why: C{/healthz} said C{ok} while running jobs lost their output to
    a full state dir, until a store write happened to fail too (fault
    round 39). Told on the failures alone: nothing on the writes' way.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._last: tuple[float, str] | None = None

    def failed(self, error: str) -> None:
        """A write of output failed with C{error}, now."""
        self._last = (self._clock.seconds(), error)

    def recent(self, prefix: str = "job output is being lost: ") -> str | None:
        """Why output was lost within L{OUTPUT_TROUBLE_FOR} seconds, if it
        was (after C{prefix})."""
        last = self._last
        if last is None:
            return None
        now = self._clock.seconds()
        if now < last[0]:  # (a step back of the clock: from now on)
            last = self._last = (now, last[1])
        if now - last[0] < OUTPUT_TROUBLE_FOR:
            return prefix + last[1]
        self._last = None
        return None


class OutputSpool:
    """
    One output stream of one job, appended to a file as it arrives.

    Output is never held in memory and the writer is never blocked: readers
    read the file at their own pace and wait on L{whenGrown} for more. The
    file (and its folder) is created with the first byte: a job that prints
    nothing costs no file.

    @ivar size: bytes written to the file so far.
    @ivar dropped: bytes discarded because the spool reached C{maxBytes}.
    @ivar lost: bytes that could not be written (disk full, I/O error).
    @ivar closed: True once no more output will come.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        maxBytes: int | None = None,
        clock: IReactorTime | None = None,
        order: OrderLog | None = None,
        index: int = 0,
        dropBehind: DropBehind | None = None,
        trouble: OutputTrouble | None = None,
    ) -> None:
        self.path = path
        #: Told of each write that fails (L{OutputTrouble}).
        self._trouble = trouble
        #: Where switches between this job's streams are recorded, and this
        #: stream's number there (0 stdout, 1 stderr). It takes no more than
        #: the stream may: a job's output, order and all, stays within three
        #: times its cap, however often it switches.
        self.order = order
        if order is not None and maxBytes is not None:
            order.bound(maxBytes)
        self._index = index
        self._clock = clock
        self._wakeCall: IDelayedCall | None = None
        #: How much its readers may send while the job writes at full speed.
        self.pacer = Pacer(clock) if clock is not None else None
        self.size = 0
        self.dropped = 0
        self.lost = 0
        self.closed = False
        self._room = maxBytes if maxBytes is not None else -1
        self._fd: int | None = None
        #: The file could not be created; try again at this monotonic time.
        self._broken = False
        self._reopenAt = 0.0
        self._waiters = Waiters()
        #: What leaves the page cache, and the readers it must wait for:
        #: (reader, index of this spool among the reader's sources).
        self._dropBehind = dropBehind if dropBehind is not None else DropBehind(path)
        self._readers: list[tuple[Positioned, int]] = []

    def attach(self, reader: Positioned, index: int) -> None:
        """
        C{reader} reads this spool (its source C{index}): what it has yet to
        read stays in the page cache until L{detach}.
        """
        self._readers.append((reader, index))

    @property
    def followed(self) -> bool:
        """Does any reader read this spool while it is written?"""
        return bool(self._readers)

    def _positions(self) -> list[int]:
        return [reader.at(index) for reader, index in self._readers]

    def detach(self, reader: Positioned) -> None:
        """C{reader} reads no more."""
        self._readers = [entry for entry in self._readers if entry[0] is not reader]

    def _open(self) -> int | None:
        """
        The file, created at the first byte. If it cannot be (a full disk,
        no descriptor left), the output is lost until it can: tried again
        at most every L{REOPEN_AFTER} seconds, as a write that failed is
        tried again at the next (it was lost for the job's whole life).
        """
        if self._broken and time.monotonic() < self._reopenAt:
            return None
        try:
            privateFolder(os.path.dirname(self.path))
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            if not self._broken:
                self.log.error(
                    "cannot create {path}: {error}; output is being lost",
                    path=self.path,
                    error=e.strerror,
                )
            self._broken = True
            self._reopenAt = time.monotonic() + REOPEN_AFTER
            return None
        if self._broken:
            self._broken = False
            self.log.info(
                "created {path} at last: {lost} bytes were lost before",
                path=self.path,
                lost=self.lost,
            )
        return self._fd

    @property
    def full(self) -> bool:
        """It has taken all its cap allows: what comes is dropped."""
        return self._room == 0

    def write(self, data: bytes) -> None:
        """
        Append C{data}. Past the cap the rest is counted as dropped; on a disk
        error it is counted as lost. The writer never blocks or fails.
        """
        self._append(data)
        if self.pacer is not None:
            self.pacer.wrote(len(data))

    def _append(self, data: bytes) -> None:
        if self._room >= 0:
            if len(data) > self._room:
                self.dropped += len(data) - self._room
                data = data[: self._room]
            self._room -= len(data)
            if not data:
                return
        order = self.order
        if order is not None and order.last != self._index:
            for publish in order.beforeSwitch:
                publish()
            order.switch(self._index, self.size)
        fd = self._fd
        if fd is None and (self.closed or (fd := self._open()) is None):
            self.lost += len(data)
            if self._trouble is not None and not self.closed:
                self._trouble.failed("its file cannot be created")
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                self.size += written
                view = view[written:]
        except OSError as e:
            error = os.strerror(e.errno or errno.EIO)
            if not self.lost:
                self._losing(error)
            if self._trouble is not None:
                self._trouble.failed(error)
            self.lost += len(view)
        self._grown(fd)

    def _losing(self, error: str) -> None:
        """The first byte is lost: say so, once."""
        self.log.error(
            "cannot write output to {path}: {error}; output is being lost",
            path=self.path,
            error=error,
        )

    def _grown(self, fd: int) -> None:
        """The file grew to C{size}: the page cache's turn, then the readers'."""
        if self.size >= self._dropBehind.due:
            self._dropBehind.wrote(fd, self.size, self._positions())
        if self._waiters:
            self._wakeSoon()

    def handOver(self) -> Handover | None:
        """
        From now on a thread appends to the file and reports each growth
        (L{grew}); L{write} is not called until L{takeBack}. None if the
        file is not open (no byte yet, broken, or closed).
        """
        if self._fd is None or self.closed or self._broken:
            return None
        try:
            fd = os.dup(self._fd)
        except OSError:
            return None
        return Handover(fd, self.size, self.dropped, self.lost, self._room)

    def takeBack(self, room: int) -> None:
        """
        The thread that took the file over has stopped (the stream went
        quiet) with C{room} bytes left under the cap: L{write} goes on.
        """
        self._room = room

    def grew(self, size: int, dropped: int, lost: int, error: str | None) -> None:
        """
        The thread that took the file over (L{handOver}) has appended up
        to C{size}: the same bookkeeping as L{write}, without the write.
        """
        if self.closed:
            return
        if lost > self.lost:
            if not self.lost:
                self._losing(error or os.strerror(errno.EIO))
            if self._trouble is not None:
                self._trouble.failed(error or os.strerror(errno.EIO))
        self.dropped, self.lost = dropped, lost
        if size == self.size or self._fd is None:
            return
        order = self.order
        if order is not None and order.last != self._index:
            # No beforeSwitch here: the hooks are the pumps' own publishes.
            order.switch(self._index, self.size)
        self.size = size
        self._grown(self._fd)

    def close(self) -> None:
        """No more output will come: wake every reader one last time."""
        if self._fd is not None:
            self._dropBehind.sweep(self._fd, self.size, self._positions())
            os.close(self._fd)
            self._fd = None
        if self.order is not None:
            self.order.close()
        if self.pacer is not None:
            self.pacer.ended()
        self.closed = True
        self._wake()

    def whenGrown(self) -> Deferred[None]:
        """A Deferred that fires once more bytes arrive or the spool closes."""
        if self.closed:
            return succeed(None)
        return self._waiters.wait()

    def _wakeSoon(self) -> None:
        # With a clock, readers are woken once per reactor turn, not once per
        # 8 KiB read from the pipe: each wake then sends all that arrived.
        if self._clock is None:
            self._wake()
        elif self._wakeCall is None:
            self._wakeCall = self._clock.callLater(0, self._wake)

    def _wake(self) -> None:
        if self._wakeCall is not None:
            if self._wakeCall.active():
                self._wakeCall.cancel()
            self._wakeCall = None
        self._waiters.wake()


#: Bytes a tail search scans before it lets the reactor run other work.
TAIL_STEP = 1 << 20


def outputSize(path: str) -> int:
    """The size of a job's output file, as L{openOutput} would read it (a
    symlink's own: nothing of its target's)."""
    status = os.lstat(path)
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def tailOffset(path: str, size: int, lines: int, block: int = 64 * 1024) -> int:
    """
    The offset where the last C{lines} lines of the first C{size} bytes of a
    file begin, as C{tail -n}: a last line without a newline counts.
    """
    for found in tailSteps(path, size, lines, block):
        if found is not None:
            return found
    return 0


async def tailOffsetSoon(clock: IReactorTime, path: str, size: int, lines: int) -> int:
    """
    L{tailOffset} in steps of L{TAIL_STEP} bytes, letting the reactor serve
    others between steps: a tail of a huge file without newlines never
    stalls the server.
    """
    for found in tailSteps(path, size, lines):
        if found is not None:
            return found
        await deferLater(clock, 0, lambda: None)
    return 0


def tailSteps(
    path: str, size: int, lines: int, block: int = 64 * 1024
) -> Iterator[int | None]:
    """
    The search of L{tailOffset}: yields None after each L{TAIL_STEP} bytes
    scanned, then the offset. Newlines are counted a block at a time (in C:
    a block of them is not a Python step each), and the block that holds
    the answer is searched by halves.
    """
    if lines <= 0 or size == 0:
        yield size
        return
    scanned = 0
    with os.fdopen(openOutput(path), "rb") as f:
        end = size
        # A final newline ends the last line; it does not start another.
        if size:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                end -= 1
        position = end
        while position > 0:
            start = max(0, position - block)
            f.seek(start)
            chunk = f.read(position - start)
            count = chunk.count(b"\n")
            if count >= lines:
                # The newline before the last C{lines}: after it, C{lines}
                # of them are left; after the next byte, fewer.
                low, high = 0, len(chunk)
                while high - low > 1:
                    middle = (low + high) // 2
                    if chunk.count(b"\n", middle) >= lines:
                        low = middle
                    else:
                        high = middle
                yield start + low + 1
                return
            lines -= count
            position = start
            scanned += len(chunk)
            if scanned >= TAIL_STEP:
                scanned = 0
                yield None
    yield 0


class Positioned(Protocol):
    """A reader of one or more spools: where it is in each."""

    def at(self, index: int) -> int:
        """The next offset to read in source C{index}."""
        ...


class OutputSource(Protocol):
    """What a L{SpoolReader} reads: a live L{OutputSpool} or L{StoredOutput}."""

    @property
    def path(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def whenGrown(self) -> Deferred[None]: ...


class StoredOutput:
    """
    The output of a job that has ended: a file that will not grow. Its
    size is the record's, or the file's if that is less (a power cut
    after the record was stored, before the file's last pages were; the
    file removed by hand): what is there is served, and the log says so.
    """

    closed = True
    log = Logger()

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        if size:
            try:
                there = outputSize(path)
            except OSError:
                there = 0
            if there < size:
                self.log.warn(
                    "{path} holds {there} bytes, its record says {size}",
                    path=path,
                    there=there,
                    size=size,
                )
                self.size = there

    def whenGrown(self) -> Deferred[None]:
        """Already complete."""
        return succeed(None)


def pacerOf(source: OutputSource) -> Pacer | None:
    """The L{Pacer} of a live local spool (other sources have none)."""
    pacer: Pacer | None = getattr(source, "pacer", None)
    return pacer


class OutputUnreadable(OSError):
    """A job's output file cannot be read (gone, cut short, no descriptor
    left): a log response must fail, not end as if that were all."""


#: The errors of an open that say the server is short of something (file
#: descriptors, its own or the system's; memory), not that the file is bad.
SHORT_OF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def openToSend(path: str) -> int | None:
    """
    L{openOutput}, for a reader before it sends: None if the file cannot
    be opened for its own reasons (its first read fails then).

    @raise OutputUnreadable: the server is short of descriptors or memory.
    """
    try:
        return openOutput(path)
    except OSError as e:
        if e.errno in SHORT_OF:
            raise OutputUnreadable(e.errno, f"{e.strerror}: {path}") from None
        return None


@implementer(IPushProducer)
class FileProducer:
    """
    What the log readers share: a push producer that reads output files
    (opened at the first byte, closed at the end) to a consumer, respects
    its back-pressure, and, with nothing more to send yet, waits to be woken
    (no polling).

    L{done} fires when every byte was sent, or fails with L{CancelledError}
    if the transport stopped us first.
    """

    def __init__(self, consumer: IConsumer, sources: tuple[OutputSource, ...]) -> None:
        self._consumer = consumer
        self._sources = sources
        self._fds: list[int | None] = [None] * len(sources)
        #: Each source's L{Pacer}, if it is a live local spool.
        self._pacers = tuple(pacerOf(source) for source in sources)
        #: The live local spools, which keep what this reader has yet to read
        #: in the page cache while it reads (L{OutputSpool.attach}).
        self._attached = [
            (source, index)
            for index, source in enumerate(sources)
            if isinstance(source, OutputSpool) and not source.closed
        ]
        self._done = False
        #: L{open} was called (once is enough: a file it could not open
        #: is opened at its first read).
        self._opened = False
        self._paused = False
        self._waiting: Deferred[None] | None = None
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """
        Register with the consumer and start sending.

        @raise OutputUnreadable: the server is short of descriptors (or
            memory) to open the files with (L{SHORT_OF}), before anything
            is sent: a request to ask again, not a response broken off.
        """
        if self._done:
            return self.done
        self.open()
        self._consumer.registerProducer(self, True)
        for spool, index in self._attached:
            spool.attach(self, index)
        try:
            self._pump()
            if not self._done:
                # Send the headers now: a follower learns the stream is
                # open even before the job prints anything. (After the
                # first read: one that fails before anything was sent is
                # answered 503, not a connection cut: fault round 30.)
                self._consumer.write(b"")
        except BaseException:
            self._close()
            raise
        return self.done

    def _pump(self) -> None:
        """Send what there is; then L{_waitFor} more, or L{_finish}."""
        raise NotImplementedError

    def open(self) -> None:
        """
        Open the files before anything is sent (L{start} does, if not done
        already): kept open, a job deleted (or expired) while this is sent
        stays readable to the end. A file not there yet is opened at its
        first read, and a failure is reported there.

        @raise OutputUnreadable: the server is short of descriptors (or
            memory, L{SHORT_OF}); the reader is closed.
        """
        if self._opened:
            return
        self._opened = True
        try:
            for index, source in enumerate(self._sources):
                if source.size:
                    self._fds[index] = openToSend(source.path)
            self._openMore()
        except OutputUnreadable:
            self._close()
            raise

    def checkReadable(self) -> None:
        """
        Read the first byte each source has to send (once L{open}ed):
        one that cannot be read fails the request before anything is sent
        (an answer, not a cut connection: fault round 30).

        @raise OutputUnreadable: why; the reader is closed.
        """
        try:
            self._checkReadable()
        except OutputUnreadable:
            self._close()
            raise

    def _checkReadable(self) -> None:
        for index, source in enumerate(self._sources):
            at = self.at(index)
            if source.size <= at:
                continue
            try:
                fd = self._fds[index]
                if fd is None:
                    fd = self._fds[index] = openOutput(source.path)
                if not os.pread(fd, 1, at):
                    raise OutputUnreadable(
                        f"{source.path} ends at {at}, shorter than recorded"
                    )
            except OutputUnreadable:
                raise
            except OSError as e:
                why = f"{e.strerror}: {source.path}"
                raise OutputUnreadable(e.errno, why) from None

    def _openMore(self) -> None:
        """Open what else is read (with L{openToSend}) before anything is sent."""

    def at(self, index: int) -> int:
        """The next offset this reader reads in source C{index}."""
        raise NotImplementedError

    def _allowed(self, index: int, length: int) -> int:
        """
        How many of C{length} bytes of source C{index} to send now; with 0,
        the reader waits for its turn (the job presses: L{Pacer}).
        """
        pacer = self._pacers[index]
        if pacer is None:
            return length
        allowed = pacer.grant(length)
        if not allowed:
            self._waitFor(pacer.wait())
        return allowed

    def _read(self, index: int, path: str, offset: int, length: int) -> bytes:
        """
        Up to C{length} bytes of file C{index} at C{offset}. b"" when they
        cannot be read (an error, or a file shorter than recorded): then the
        reader has failed (L{OutputUnreadable}), and its caller stops.
        """
        try:
            fd = self._fds[index]
            if fd is None:
                fd = self._fds[index] = openOutput(path)
            data = os.pread(fd, length, offset)
        except OSError as e:
            self._fail(OutputUnreadable(e.errno, f"{e.strerror}: {path}"))
            return b""
        if not data:
            self._fail(
                OutputUnreadable(f"{path} ends at {offset}, shorter than recorded")
            )
        return data

    def _fail(self, error: OutputUnreadable) -> None:
        if self._close():
            self.done.errback(error)

    def _waitFor(self, grown: Deferred[None]) -> None:
        self._waiting = grown
        grown.addCallbacks(self._grown, lambda f: None)

    def _grown(self, _: None) -> None:
        self._waiting = None
        self._pump()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._waiting is None:
            self._pump()

    def stopProducing(self) -> None:
        if self._close():
            self.done.errback(CancelledError("log reader stopped"))

    def _finish(self) -> None:
        if self._close():
            self.done.callback(None)

    def _close(self) -> bool:
        if self._done:
            return False
        self._done = True
        for spool, _ in self._attached:
            spool.detach(self)
        for index, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[index] = None
        try:
            self._consumer.unregisterProducer()
        except AttributeError:  # the connection (channel) is already gone
            pass
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        return True


class SpoolReader(FileProducer):
    """
    Send a spool to a consumer (an HTTP response) from C{offset}; with
    C{follow}, keep sending until the spool closes, woken by the writer.
    """

    def __init__(
        self, spool: OutputSource, request: IConsumer, offset: int, follow: bool
    ) -> None:
        super().__init__(request, (spool,))
        self._spool = spool
        self._offset = offset
        self._follow = follow
        self._limit = spool.size

    def at(self, index: int) -> int:
        return self._offset

    def _pump(self) -> None:
        while not self._paused and not self._done:
            end = self._spool.size if self._follow else self._limit
            if self._offset < end:
                length = self._allowed(0, min(READ_CHUNK, end - self._offset))
                if not length:
                    return
                data = self._read(0, self._spool.path, self._offset, length)
                if not data:  # unreadable: the reader has failed
                    return
                self._offset += len(data)
                self._consumer.write(data)
            elif self._follow and not self._spool.closed:
                self._waitFor(self._spool.whenGrown())
                return
            else:
                self._finish()
                return
