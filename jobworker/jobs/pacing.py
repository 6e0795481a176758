"""Followers of a live spool never slow its job: their share of the reactor."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: A job that wrote at least PRESSING bytes within QUIET seconds, and wrote
#: again less than QUIET seconds ago, presses: it writes fast enough (25 MB/s
#: and more) that its pipe may fill while the reactor serves readers. (Not
#: "its last read was large": pacing makes turns short and reads small.)
PRESSING = 256 * 1024
QUIET = 0.01
#: While the job presses, its followers together may send one byte for
#: every SHARE bytes it writes ...
SHARE = 4
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
    is full the job blocks. So while the job presses (L{PRESSING}), its readers
    together send one byte for every L{SHARE} it writes, in L{GRANT}s, in
    turn: a reader denied a grant waits for the next reactor turn
    (L{nextTurn}), and readers that got nothing this write are woken before
    those that did. Readers lag while the job runs at full speed and catch
    up from the spool file; every byte still reaches each of them.

    @ivar pressing: whether the job is writing faster than it is read.
    @ivar writes: writes of the spool so far.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.writes = 0
        #: The current window of QUIET seconds: its start and bytes; whether
        #: the window before it was heavy; the last write.
        self._windowStart = -QUIET
        self._windowBytes = 0
        self._heavyBefore = False
        self._lastWrite: float | None = None
        self._credit = 0
        self._starved: list[Deferred[None]] = []
        self._served: list[Deferred[None]] = []
        self._turnCall: IDelayedCall | None = None

    @property
    def pressing(self) -> bool:
        return (
            self._lastWrite is not None
            and self._clock.seconds() - self._lastWrite < QUIET
            and (self._heavyBefore or self._windowBytes >= PRESSING)
        )

    def wrote(self, size: int) -> None:
        """The spool took C{size} bytes from the job."""
        self.writes += 1
        now = self._lastWrite = self._clock.seconds()
        if now - self._windowStart >= QUIET:
            self._heavyBefore = (
                self._windowBytes >= PRESSING and now - self._windowStart < 2 * QUIET
            )
            self._windowStart = now
            self._windowBytes = 0
        self._windowBytes += size
        self._credit = min(MAX_CREDIT, self._credit + size // SHARE)

    def ended(self) -> None:
        """The job's stream closed: nothing presses any more."""
        self._lastWrite = None

    def grant(self, wanted: int) -> int:
        """Up to C{wanted} bytes to send now; 0 until more credit comes."""
        if not self.pressing:
            return wanted
        granted = min(wanted, GRANT)
        if self._credit < granted:
            return 0
        self._credit -= granted
        return granted

    def nextTurn(self, served: bool) -> Deferred[None]:
        """
        A Deferred fired at the next reactor turn (one timer for all);
        readers C{served} during this write are woken after the others.
        """
        waiting = self._served if served else self._starved
        d: Deferred[None] = Deferred(lambda d: self._forget(waiting, d))
        waiting.append(d)
        if self._turnCall is None:
            self._turnCall = self._clock.callLater(0, self._turn)
        return d

    @staticmethod
    def _forget(waiting: list[Deferred[None]], d: Deferred[None]) -> None:
        if d in waiting:
            waiting.remove(d)

    def _turn(self) -> None:
        self._turnCall = None
        waiting = self._starved + self._served
        self._starved, self._served = [], []
        for d in waiting:
            d.callback(None)


class Allowance:
    """One reader's account with the L{Pacer}s of the spools it reads."""

    def __init__(self) -> None:
        self._servedAt = -1

    def allowed(self, pacer: Pacer | None, wanted: int) -> int:
        """How many of C{wanted} bytes to send now: 0 means wait (L{wait})."""
        if pacer is None:
            return wanted
        granted = pacer.grant(wanted)
        if granted:
            self._servedAt = pacer.writes
        return granted

    def wait(self, pacer: Pacer) -> Deferred[None]:
        """The next turn, at this reader's place in line."""
        return pacer.nextTurn(self._servedAt == pacer.writes)
