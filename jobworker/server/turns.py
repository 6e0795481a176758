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
    its turn (L{take}): the first at once, each next one in a reactor call
    of its own (a C{callLater(0)} made by a call runs after the next poll
    of the connections), so a burst costs the others one step at a time
    (two at its start: the first runs in a poll, the second in the calls
    right after it), never the sum. The users whose steps wait take turns
    (the first come first within one user's): another user's step waits
    for one of the burst's at most, not for all of it (a line for everyone
    kept a user's one listing behind a Reader's burst 3.8 s: the verifier
    of attacker round 36).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: Per user, the steps waiting, in the order asked; and the users
        #: with steps waiting, in turn order.
        self._lines: dict[str, deque[Deferred[None]]] = {}
        self._order: deque[str] = deque()
        #: The call that gives the next turn; None while no step has run
        #: since the last turn began.
        self._next: IDelayedCall | None = None
        self._closed = False

    def take(self, who: str = "") -> Deferred[None]:
        """
        Fires when C{who}'s step may run: at once if none has run this
        turn, else in a later turn, the users waiting in turn. Cancelling
        it (the client went away) leaves the line.
        """
        if self._closed:
            return succeed(None)
        if self._next is None:
            self._next = self._clock.callLater(0, self._turn)
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._leave(who, d))
        line = self._lines.get(who)
        if line is None:
            line = self._lines[who] = deque()
            self._order.append(who)
        line.append(d)
        return d

    def _leave(self, who: str, d: Deferred[None]) -> None:
        line = self._lines.get(who)
        if line is None or d not in line:
            return
        line.remove(d)
        if not line:
            del self._lines[who]
            self._order.remove(who)
        if not self._lines and self._next is not None and self._next.active():
            # (Nothing left to give a turn to: no call stays behind, as
            # when every client of a burst went away.)
            self._next.cancel()
            self._next = None

    def _turn(self) -> None:
        if not self._order:
            self._next = None
            return
        self._next = self._clock.callLater(0, self._turn)
        who = self._order.popleft()
        line = self._lines[who]
        d = line.popleft()
        if line:
            self._order.append(who)
        else:
            del self._lines[who]
        d.callback(None)

    def close(self) -> None:
        """
        The server stops: every step waiting runs now, and any later one at
        once (no call of this stays behind the server).
        """
        self._closed = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        lines, self._lines = self._lines, {}
        self._order.clear()
        for line in lines.values():
            for d in line:
                d.callback(None)

    def __len__(self) -> int:
        """How many steps wait for their turn."""
        return sum(len(line) for line in self._lines.values())
