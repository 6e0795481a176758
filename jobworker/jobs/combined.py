"""
stdout and stderr together, in the order they arrived.

Each stream is spooled to its own file (see L{jobworker.jobs.spool}); an order
file next to them records the switch points: one 8-byte entry each time the
job's output switches from one stream to the other, saying which stream
continues and at which of its offsets. A job that writes to one stream only
costs one entry; ingest pays one comparison per chunk.

Run I{k} of the combined output is entry I{k}'s stream from its offset up
to that stream's next entry (always I{k+2}: entries alternate), or to the
stream's current size. Every byte of both files is in exactly one run, so a
combined reader delivers every byte once, even from a partial order file.

A damaged order file (cut by hand, a hole, entries lost) may leave bytes
that no run covers: a reader sends them with the next run of their stream,
or after the last entry, coarser order but no byte lost; and should it ever
end short of what it was to send, it fails (the response is cut) rather
than ending as though that were all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger

from .folders import openOutput
from .order import _ENTRY, decodeEntries
from .spool import (
    READ_CHUNK,
    FileProducer,
    OutputSource,
    OutputUnreadable,
    openToSend,
    outputSize,
)
from .validation import MAX_INT64, boundedInteger

#: The streams by index, as entries and readers number them.
STREAMS = ("stdout", "stderr")
#: Order entries read at a time (32 KiB), and how many must be ahead of the
#: run being sent (a run ends at the next entry of its stream: two ahead).
ORDER_CHUNK = 4096 * 8
ORDER_LOOKAHEAD = 2
#: Runs the combined readers together send in a turn of the reactor
#: (L{TurnBudget}) before they let it serve others.
RUNS_PER_TURN = 256
#: A run shorter than this is sliced out of a read of this many bytes of
#: its stream (one C{pread} for many runs, not one each).
READ_AHEAD = 16 * 1024


class TurnBudget:
    """
    The runs all combined readers of a server may send before they let the
    reactor serve others (L{RUNS_PER_TURN}); a reader that finds none left
    waits for the next turn, behind the readers that waited before it.
    Each had a budget of its own: 40 readers of a job that switched streams
    at every byte took 0.4-0.7 s of each turn, and every other request
    waited that long (attacker round 30).
    """

    def __init__(self, clock: IReactorTime, runs: int = RUNS_PER_TURN) -> None:
        self._clock = clock
        self._runs = runs
        self._left = runs
        self._waiting: list[Deferred[None]] = []
        self._refill: IDelayedCall | None = None

    def take(self) -> Deferred[None] | None:
        """One run: None if it may be sent now, else when it may."""
        if self._left > 0:
            self._left -= 1
            return None
        waiting: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        if self._refill is None:
            self._refill = self._clock.callLater(0, self._fill)
        return waiting

    def _fill(self) -> None:
        """A new turn: the budget again, to the readers in the order they
        waited (each that spends it all waits again, behind the rest)."""
        self._refill = None
        self._left = self._runs
        while self._left > 0 and self._waiting:
            self._waiting.pop(0).callback(None)
        if self._waiting and self._refill is None:
            self._refill = self._clock.callLater(0, self._fill)


class OrderSource(Protocol):
    """What a L{CombinedReader} reads the order from."""

    path: str
    size: int


class StoredOrder:
    """The order file of an ended job (absent: stdout first, then stderr)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.size = outputSize(path)
        except OSError:
            self.size = 0


def parseCombinedId(text: str) -> tuple[int, int] | None:
    """
    The (stdout, stderr) offsets of a combined C{Last-Event-ID}
    (C{combined:<stdout offset>:<stderr offset>}), or None if it is not one.
    """
    name, _, rest = text.partition(":")
    first, _, second = rest.partition(":")
    if name != "combined":
        return None
    offsets = [boundedInteger(number, 0, MAX_INT64) for number in (first, second)]
    if offsets[0] is None or offsets[1] is None:
        return None
    return offsets[0], offsets[1]


def combinedId(position: list[int]) -> str:
    """The event id after delivering up to C{position}."""
    return f"combined:{position[0]}:{position[1]}"


class Unsound(Exception):
    """The order file is not as the server writes it, where it was read."""


class OrderIndex:
    """
    The entries of an order file read where needed (C{pread}), to find
    where a combined read starts (L{start}) in a few reads.

    @ivar count: whole entries in the file's first C{size} bytes.
    """

    def __init__(self, fd: int, size: int, streamSize: Callable[[int], int]) -> None:
        self._fd = fd
        self.count = size // _ENTRY.size
        self._streamSize = streamSize

    def start(
        self, position: list[int], skip: int
    ) -> tuple[int, list[int], int] | None:
        """
        (the run to start at, the streams' offsets there, combined bytes
        still to pass over) for a read from C{position} passing over C{skip}
        combined bytes; None to walk from the first entry instead (an order
        file too short to gain anything, or not sound where it was read).
        """
        if self.count < 3:
            return None
        try:
            if os.lseek(self._fd, 0, os.SEEK_HOLE) < self.count * _ENTRY.size:
                return None  # a hole: cut and written past (not the server's doing)
            if position == [0, 0]:
                return self._byCombinedOffset(skip)
            return self._byPosition(position), list(position), skip
        except Unsound:
            return None

    def _entries(self, first: int, count: int) -> list[tuple[int, int]]:
        """Entries C{first} to C{first + count} (fewer at the end)."""
        count = min(count, self.count - first)
        data = os.pread(self._fd, count * _ENTRY.size, first * _ENTRY.size)
        entries = decodeEntries(data)
        if len(entries) < count:
            raise Unsound()  # shorter than it was
        return entries

    def _runEnd(self, run: int) -> tuple[int, int]:
        """(the stream of run C{run}, the offset where it ends)."""
        entries = self._entries(run, 3)
        stream = entries[0][0]
        if len(entries) > 1 and entries[1][0] == stream:
            raise Unsound()
        if len(entries) > 2:
            if entries[2][0] != stream or entries[2][1] < entries[0][1]:
                raise Unsound()
            return stream, entries[2][1]
        return stream, self._streamSize(stream)

    def _byPosition(self, position: list[int]) -> int:
        """
        The first run with bytes past C{position} (the last run, if none
        has: a walk stops there too).
        """
        first = self.count - 1
        for parity in (0, 1):
            # Runs parity, parity + 2, ...: one stream's, in its order.
            low, high = 0, (self.count - parity + 1) // 2
            while low < high:
                middle = (low + high) // 2
                stream, end = self._runEnd(parity + 2 * middle)
                if position[stream] >= end:
                    low = middle + 1
                else:
                    high = middle
            first = min(first, parity + 2 * low)
        return first

    def _before(self, run: int) -> tuple[int, list[int]]:
        """
        The combined bytes before run C{run}, and each stream's offset
        there: its own entry's, and the other's next entry's (where the
        other stream's run before it ends).
        """
        entries = self._entries(run, 2)
        stream, offset = entries[0]
        if len(entries) > 1:
            other, otherOffset = entries[1]
            if other == stream:
                raise Unsound()
        else:
            other, otherOffset = 1 - stream, self._streamSize(1 - stream)
        position = [0, 0]
        position[stream], position[other] = offset, otherOffset
        return offset + otherOffset, position

    def _byCombinedOffset(self, skip: int) -> tuple[int, list[int], int]:
        """The last run that starts at or before combined byte C{skip}."""
        if self._before(0)[0] != 0:
            raise Unsound()
        low, high = 0, self.count - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self._before(middle)[0] <= skip:
                low = middle
            else:
                high = middle - 1
        before, position = self._before(low)
        stream, end = self._runEnd(low)
        # Into the run itself: passed over by offset, not read and dropped.
        into = min(skip - before, max(0, end - position[stream]))
        position[stream] += into
        return low, position, skip - before - into


class CombinedReader(FileProducer):
    """
    Send both streams of a job, interleaved in arrival order, to
    C{sink(streamIndex, data)}, from C{position} (bytes of each stream
    already delivered), passing over the first C{skip} combined bytes, with
    the consumer's back-pressure; with C{follow}, until both streams close.
    """

    log = Logger()

    def __init__(
        self,
        streams: tuple[OutputSource, OutputSource],
        order: OrderSource,
        consumer: IConsumer,
        sink: Callable[[int, bytes], None],
        position: tuple[int, int] = (0, 0),
        follow: bool = False,
        skip: int = 0,
        clock: IReactorTime | None = None,
        budget: TurnBudget | None = None,
        unordered: bool = False,
    ) -> None:
        """
        @param budget: the server's L{TurnBudget}, which the reader's runs
            are taken from (a job that switched streams at every byte has
            a run per byte); with only a C{clock}, one of its own.
        @param unordered: the job keeps no order file (a Slurm job):
            followed, each stream's growth is sent as it is seen, not all
            of it once both streams are closed (Slurm round 31).
        """
        super().__init__(consumer, streams)
        if budget is None and clock is not None:
            budget = TurnBudget(clock)
        self._budget = budget
        #: What was last read ahead of each stream: its offset, its bytes.
        self._ahead: list[tuple[int, bytes]] = [(0, b""), (0, b"")]
        self._streams = streams
        self._order = order
        self._sink = sink
        self.position = list(position)
        self._follow = follow
        self._unordered = unordered
        #: Combined bytes still to pass over before sending (C{?offset=}).
        self._skip = skip
        self._entries: list[tuple[int, int]] = []
        self._orderRead = 0
        self._run = 0
        self._limits = [s.size for s in streams]
        #: A reader of the output as it is now reads the order file as it
        #: was then too (entries written since cover bytes past the sizes).
        self._orderLimit = order.size
        self._orderFd: int | None = None
        #: The order file ended before its recorded size where it was last
        #: read (cut by hand): read as exhausted there.
        self._orderEnded = False
        self._orderEndLogged = False

    def at(self, index: int) -> int:
        return self.position[index]

    def _openMore(self) -> None:
        # The order file too (kept open: a job deleted while this is sent
        # stays readable); a missing one is no order, as at its first read.
        self._orderFd = openToSend(self._order.path)
        if self._skip or self.position != [0, 0]:
            self._seek()

    def _orderSize(self) -> int:
        size = self._order.size
        return size if self._follow else min(size, self._orderLimit)

    def _orderExhausted(self) -> bool:
        """Has every whole entry of the order file been read?"""
        return self._orderEnded or self._orderSize() - self._orderRead < _ENTRY.size

    def _readOrder(self) -> None:
        if self._orderEnded and self._follow:
            # A live job's order file cut by hand gets entries again at its
            # next switch (past a hole): look again.
            self._orderEnded = False
        if not self._orderExhausted():
            if len(self._entries) - self._run > ORDER_LOOKAHEAD:
                # Enough entries ahead: memory stays constant per reader,
                # however long the order file grows.
                return
            self._readEntries()
            if not self._orderEnded:
                return
        if not self._entries and (
            self._closed() or not self._follow or self._unordered
        ):
            # No order file, or not one whole entry (a Slurm job, a job
            # from before it existed, a silent one, a file cut short):
            # all of stdout, then all of stderr. Safe for a snapshot
            # (sizes fixed at the start) or once both streams are
            # closed; a follower of a live job waits for that, unless
            # its job keeps no order (then what each stream has past
            # the other's run is placed as it is seen: _unrecorded).
            self._entries = [(0, 0), (1, 0)]

    def _seek(self) -> None:
        """
        Start at the first run not yet delivered, found by bisection of the
        order file, not by a walk from its first entry: a read that starts
        part-way (a resume by position, C{tail=}, C{offset=}) costs a few
        reads of the order file however many times the job switched streams
        (a walk over a million entries took seconds of the server's loop).

        What is skipped is exactly what the walk would have passed over,
        for an order file the server wrote: its entries alternate between
        the streams, and each stream's offsets never decrease, so "this run
        was delivered" holds for a stream's first runs and not after. An
        order file that does not look so where the bisection reads it (a
        hole, entries cut out by hand) is walked from its start, as before.
        """
        if self._orderFd is None:
            return  # no order file (yet): nothing to pass over
        try:
            found = OrderIndex(self._orderFd, self._orderSize(), self._size).start(
                self.position, self._skip
            )
        except OSError:
            return  # the walk reads it, and says what is wrong
        if found is not None:
            run, position, skip = found
            self._orderRead = run * _ENTRY.size
            self.position = position
            self._skip = skip

    def _readEntries(self) -> None:
        """Read the next entries of the order file (a chunk at most)."""
        try:
            if self._orderFd is None:
                # Kept open: a job deleted while this is sent stays readable.
                self._orderFd = openOutput(self._order.path)
            wanted = min(self._orderSize() - self._orderRead, ORDER_CHUNK)
            data = os.pread(self._orderFd, wanted, self._orderRead)
        except OSError as e:
            # Without the order the rest cannot be interleaved: a broken
            # end, not a clean one that leaves output out.
            self._fail(OutputUnreadable(e.errno, f"{e.strerror}: {self._order.path}"))
            return
        entries = decodeEntries(data)
        self._orderRead += len(entries) * _ENTRY.size
        self._entries.extend(entries)
        if len(data) < wanted:
            # Shorter than its recorded size (cut by hand while the job
            # ran): no entry will come from past here, so the bytes none
            # placed are sent after the others (L{_unrecorded}). Waiting
            # for entries that never come ended the reader short of its
            # sizes, and the response short of its Content-Length.
            self._orderEnded = True
            if not self._orderEndLogged:
                self._orderEndLogged = True
                self.log.warn(
                    "{path} ends at {end}, short of the {size} bytes recorded: "
                    "the output's order is coarser from there, no byte is lost",
                    path=self._order.path,
                    end=self._orderRead + len(data) - len(entries) * _ENTRY.size,
                    size=self._orderSize(),
                )

    def _close(self) -> bool:
        if self._orderFd is not None:
            os.close(self._orderFd)
            self._orderFd = None
        return super()._close()

    def _closed(self) -> bool:
        return all(s.closed for s in self._streams)

    def _size(self, stream: int) -> int:
        return self._streams[stream].size if self._follow else self._limits[stream]

    def _pump(self) -> None:
        budget = self._budget
        while not self._paused and not self._done:
            if budget is not None:
                turn = budget.take()
                if turn is not None:
                    self._waitFor(turn)
                    return
            self._readOrder()
            if self._done:
                return
            entries, k = self._entries, self._run
            if k >= len(entries):
                if self._follow and not self._closed():
                    self._wait()
                    return
                self._end()
                return
            stream = entries[k][0]
            following = next(
                (o for s, o in entries[k + 1 : k + 3] if s == stream), None
            )
            end = following if following is not None else self._size(stream)
            if not self._follow:
                end = min(end, self._limits[stream])  # the sizes it announced
            elif self._streams[stream].closed:
                # Not past an ended stream's end: its file cut short (a
                # power cut), the next entry lies past it (fault round 37).
                end = min(end, self._streams[stream].size)
            # From where the stream was read to, not from the entry's start:
            # in a sound order file they are one (a run ends where its
            # stream's next begins), in a damaged one (cut, entries lost)
            # bytes no entry places lie between, and are sent now, not
            # skipped.
            offset = self.position[stream]
            if offset < end:
                source = self._streams[stream]
                length = self._allowed(stream, min(READ_CHUNK, end - offset))
                if not length:
                    return
                data = self._readAhead(stream, source.path, offset, length, end)
                if not data:  # unreadable: the reader has failed
                    return
                self.position[stream] = offset + len(data)
                if self._skip:
                    skipped = min(self._skip, len(data))
                    self._skip -= skipped
                    data = data[skipped:]
                    if not data:
                        continue
                self._sink(stream, data)
            elif k + 1 < len(entries):
                self._run += 1  # a later entry exists: this run is complete
                if self._run > 64:  # drop what no reader will look at again
                    del self._entries[: self._run - 2]
                    self._run = 2
            elif self._unrecorded(1 - stream):
                # Bytes of the other stream past where it was read, and no
                # entry to place them (the order file cut short, or a write
                # of it failed): read them next, coarser order but no byte
                # lost. (Healthy, an entry is always written first.)
                entries.append((1 - stream, self.position[1 - stream]))
            elif self._follow and not self._closed():
                self._wait()
                return
            else:
                self._end()
                return

    def _readAhead(
        self, stream: int, path: str, offset: int, length: int, end: int
    ) -> bytes:
        """
        L{_read}; a short run out of what was read ahead of its stream (up
        to L{READ_AHEAD} bytes, within what the stream has now): a job that
        switched streams at every byte cost a C{pread} a byte.
        """
        start, ahead = self._ahead[stream]
        at = offset - start
        if 0 <= at and at + length <= len(ahead):
            return ahead[at : at + length]
        if length >= READ_AHEAD:
            return self._read(stream, path, offset, length)
        size = max(end, self._size(stream))
        ahead = self._read(stream, path, offset, min(READ_AHEAD, size - offset))
        self._ahead[stream] = (offset, ahead)
        return ahead[:length]

    def _end(self) -> None:
        """
        Finish, once every byte there was to send is sent; else fail, so
        the response is cut: ending it short of the sizes announced (its
        Content-Length) left the client waiting for the rest.
        """
        short = [
            f"{STREAMS[index]} at {self.position[index]} of {self._size(index)}"
            for index in (0, 1)
            if self.position[index] < self._size(index)
        ]
        if short:
            self._fail(
                OutputUnreadable(
                    f"{self._order.path} places not every byte: {', '.join(short)}"
                )
            )
            return
        self._finish()

    def _unrecorded(self, stream: int) -> bool:
        """Has C{stream} bytes no order entry will place?"""
        return self._orderExhausted() and self._size(stream) > self.position[stream]

    def _wait(self) -> None:
        waiting: Deferred[None] = Deferred(lambda _: self._cancelWaits(pending))
        pending = [s.whenGrown() for s in self._streams if not s.closed]

        def grown(_: object) -> None:
            self._cancelWaits(pending)
            if not waiting.called:
                waiting.callback(None)

        for d in pending:
            d.addCallbacks(grown, lambda f: None)
        if not waiting.called:
            self._waitFor(waiting)

    @staticmethod
    def _cancelWaits(pending: list[Deferred[None]]) -> None:
        for d in pending:
            if not d.called:
                d.cancel()
