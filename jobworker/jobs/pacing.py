"""Followers of a live spool never slow its job: their share of each reactor turn."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: A write of at least this much means the job's pipe held that much when it
#: was read: the job writes faster than the server reads, and its pipe may
#: fill while the reactor serves followers.
PRESSING = 256 * 1024
#: While the job presses, its followers together send about this much per
#: write (per reactor turn, since the pipe is read once a turn) ...
BUDGET = 1 << 20
#: ... each at least this much, however many they are: every follower
#: progresses, and catches up from the file once the job ends.
MIN_SHARE = 16 * 1024


class Pacer:
    """
    The share of the reactor that the followers of one spool may take.

    The job's pipe and its followers' connections share one reactor thread:
    while that thread encrypts for followers, the pipe is not read, and once
    it is full the job blocks. So while the job presses (its last read was at
    least L{PRESSING}), each follower sends at most L{share} bytes per write
    of the spool, then waits for the next reactor turn (L{nextTurn}). A turn
    that passed with no write means the job is no longer pressing: followers
    then send freely. Followers lag while the job runs at full speed, and
    catch up from the spool file; every byte still reaches each of them.

    @ivar writes: writes of the spool so far (one per pipe read, so one per
        reactor turn at most).
    @ivar pressing: whether the last write was at least L{PRESSING}.
    @ivar followers: live followers sharing L{BUDGET}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.writes = 0
        self.pressing = False
        self.followers = 0
        self._waiting: list[Deferred[None]] = []
        self._turnCall: IDelayedCall | None = None

    def wrote(self, size: int) -> None:
        """The spool took C{size} bytes from the job."""
        self.writes += 1
        self.pressing = size >= PRESSING

    def share(self) -> int:
        """Bytes one follower may send per write while the job presses."""
        return max(MIN_SHARE, BUDGET // max(1, self.followers))

    def nextTurn(self) -> Deferred[None]:
        """A Deferred fired at the next reactor turn (one timer for all)."""
        d: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        if self._turnCall is None:
            self._turnCall = self._clock.callLater(0, self._turn)
        return d

    def _turn(self) -> None:
        self._turnCall = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class Allowance:
    """
    One follower's account with the L{Pacer}s of the spools it reads: how
    much it may send now.
    """

    def __init__(self) -> None:
        self._shareOf = -1
        self._sent = 0
        self._waitedAt = -1

    def allowed(self, pacer: Pacer | None, wanted: int) -> int:
        """
        How many of C{wanted} bytes may be sent now: 0 means wait for
        C{pacer.nextTurn()}.
        """
        if pacer is None or not pacer.pressing:
            return wanted
        share = pacer.share()
        if pacer.writes != self._shareOf:
            self._shareOf = pacer.writes
            self._sent = 0
        elif self._sent >= share and self._waitedAt == pacer.writes:
            # A whole turn passed with no write: the job stopped pressing.
            return wanted
        left = share - self._sent
        if left <= 0:
            self._waitedAt = pacer.writes
            return 0
        return min(wanted, left)

    def sent(self, size: int) -> None:
        """C{size} bytes were sent."""
        self._sent += size
