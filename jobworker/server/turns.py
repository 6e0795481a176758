"""
Heavy requests take turns: one a reactor turn, the connections polled between.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Turns:
    """
    One heavy step (a page of the job list: a store read and its JSON, up
    to tens of milliseconds) a reactor turn. Each step's cost is bounded,
    but requests that arrive together, one a connection, were all served in
    one turn: 60 listings of 1,000 jobs held every other client 3 s, a
    Reader's burst, again and again (attacker round 36). A step waits for
    its turn (L{take}): the first at once, each next one after the reactor
    has polled its connections again (a C{callLater(0)} made by a call runs
    in the next turn), so a burst costs the others one step at a time,
    never the sum.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._line: deque[Deferred[None]] = deque()
        #: The call that gives the next turn; None while no step has run
        #: since the last turn began.
        self._next: IDelayedCall | None = None

    def take(self) -> Deferred[None]:
        """
        Fires when the caller may run its step: at once if none has run
        this turn, else in a later turn, in the order asked. Cancelling it
        (the client went away) leaves the line.
        """
        if self._next is None:
            # Run now, from a connection's read most likely: the reactor's
            # calls come next, before its poll, so the next turn is the one
            # after that.
            self._next = self._clock.callLater(0, self._hop)
            return succeed(None)
        d: Deferred[None] = Deferred(self._line.remove)
        self._line.append(d)
        return d

    def _hop(self) -> None:
        self._next = self._clock.callLater(0, self._turn)

    def _turn(self) -> None:
        if not self._line:
            self._next = None
            return
        self._next = self._clock.callLater(0, self._turn)
        self._line.popleft().callback(None)

    def __len__(self) -> int:
        """How many steps wait for their turn."""
        return len(self._line)
