"""Followers of a live spool never slow its job: their share of the reactor."""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: A job that wrote at least PRESSING bytes within QUIET seconds, and wrote
#: again less than QUIET seconds ago, presses: it writes fast enough (25 MB/s
#: and more) that its pipe may fill while the reactor serves readers. (Not
#: "its last read was large": pacing makes turns short and reads small.)
PRESSING = 256 * 1024
QUIET = 0.01
#: While the job presses, its followers together may send one byte for
#: every SHARE bytes it writes (16 held 16 followers' job wall at 1.41-1.80x
#: alone on the development machine, 64 at 1.18-1.39x; BENCHMARKS.md) ...
SHARE = 64
#: ... in grants of this much (one large TLS write each, to one follower
#: at a time: a send's cost is mostly per write, not per byte) ...
GRANT = 256 * 1024
#: ... and credit never piles up beyond this.
MAX_CREDIT = 2 * GRANT


class Pacer:
    """
    How much the readers of one spool may send while its job presses.

    The job's pipe and its readers' connections share one reactor thread,
    and on a small machine the readers' clients share the CPUs with the job:
    while the server encrypts for readers the pipe is not read, and once it
    is full the job blocks. So while the job presses (L{PRESSING}), its
    readers together send one byte for every L{SHARE} it writes, in
    L{GRANT}s. A reader denied a grant waits in line (L{wait}), costing
    nothing per turn: each write wakes only as many readers as its credit
    pays for, first come first served, and everyone is woken once the job
    stops pressing or ends. Readers lag while the job runs at full speed and
    catch up from the spool file; every byte still reaches each of them.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: The current window of QUIET seconds: its start and bytes; whether
        #: the window before it was heavy; the last write.
        self._windowStart = -QUIET
        self._windowBytes = 0
        self._heavyBefore = False
        self._lastWrite: float | None = None
        self._credit = 0
        self._line: deque[Deferred[None]] = deque()
        self._releaseCall: IDelayedCall | None = None

    @property
    def pressing(self) -> bool:
        """Whether the job writes fast enough to be paced for (L{PRESSING})."""
        return (
            self._lastWrite is not None
            and 0 <= self._clock.seconds() - self._lastWrite < QUIET
            and (self._heavyBefore or self._windowBytes >= PRESSING)
        )

    def wrote(self, size: int) -> None:
        """The spool took C{size} bytes from the job."""
        now = self._lastWrite = self._clock.seconds()
        # (A wall clock stepped back rolls the window too: it grew for ever,
        # and a job writing 20 kB/s was paced as pressing; review round 33.)
        if not 0 <= now - self._windowStart < QUIET:
            self._heavyBefore = (
                self._windowBytes >= PRESSING
                and 0 <= now - self._windowStart < 2 * QUIET
            )
            self._windowStart = now
            self._windowBytes = 0
        self._windowBytes += size
        self._credit = min(MAX_CREDIT, self._credit + size // SHARE)
        if self._line:
            if not self.pressing:
                self._wakeAll()
            else:
                for _ in range(min(len(self._line), self._credit // GRANT)):
                    self._line.popleft().callback(None)

    def ended(self) -> None:
        """The job's stream closed: nothing presses any more."""
        self._lastWrite = None
        self._wakeAll()

    def grant(self, wanted: int) -> int:
        """Up to C{wanted} bytes to send now; 0 until more credit comes."""
        if not self.pressing:
            return wanted
        granted = min(wanted, GRANT)
        if self._credit < granted:
            return 0
        self._credit -= granted
        return granted

    def wait(self) -> Deferred[None]:
        """
        A Deferred fired when there is credit for this reader (or the job
        no longer presses); cancelling it leaves the line.
        """
        d: Deferred[None] = Deferred(self._line.remove)
        self._line.append(d)
        if self._releaseCall is None:
            self._releaseCall = self._clock.callLater(QUIET, self._release)
        return d

    def _release(self) -> None:
        # The job may have stopped writing: then nothing else wakes the line.
        self._releaseCall = None
        if not self.pressing:
            self._wakeAll()
        elif self._line:
            self._releaseCall = self._clock.callLater(QUIET, self._release)

    def _wakeAll(self) -> None:
        line, self._line = self._line, deque()
        if self._releaseCall is not None and self._releaseCall.active():
            self._releaseCall.cancel()
        self._releaseCall = None
        for d in line:
            d.callback(None)
