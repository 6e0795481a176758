"""
Failed-login throttling, per client address, per (user, address) and per
user; an address counts as its client (L{clientKey}: all of loopback is one,
an IPv6 address is its /64), and an IPv6 client's /48 is throttled too, past
L{NETWORK_FACTOR} times the failures.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ..peers import clientKey, networkKey

#: An IPv6 client's /48 is throttled past this many times the failures
#: one address (its /64) may have.
NETWORK_FACTOR = 8


@dataclass
class _Failures:
    count: float = 0
    last: float = 0.0
    #: Attempts begun (their bcrypt check running) and not yet finished.
    pending: int = 0


class LoginThrottle:
    """
    After C{threshold} failed logins from one address (or for one user from
    one address), further attempts are refused for a delay that doubles with
    each failure, up to C{maximum} seconds. Failures are forgotten after
    C{window} quiet seconds, and a success clears the (user, address) pair.

    A password check counts from the moment it begins (L{begin}), before
    bcrypt runs, until it is finished (L{finish}): checks in flight count
    as failures, so N concurrent guesses from one address get at most
    C{threshold} bcrypt checks at a time. An attempt held back by checks in
    flight alone (not by failures) waits for one of them to end
    (L{whenACheckEnds}), at most C{maxWaiting} of a client's at a time:
    different users logging in at once from one address (a dozen after a
    restart) were refused "too many failed logins" with none failed.

    Guessing one user's password from many addresses is throttled per user
    too, but gently (C{userThreshold} failures, delays up to C{userMaximum}
    seconds). From an address where the user has logged in within
    C{trustWindow}, neither the per-user nor the per-address throttle
    applies to that user (only the (user, address) pair does): an attacker
    cannot lock the real user out from their usual address by guessing
    other names, nor from a new one for long.
    """

    def __init__(
        self,
        clock: IReactorTime,
        threshold: int = 5,
        base: float = 1.0,
        maximum: float = 300.0,
        window: float = 900.0,
        maxEntries: int = 100_000,
        userThreshold: int | None = None,
        userMaximum: float = 30.0,
        trustWindow: float = 30 * 86400.0,
        maxWaiting: int = 32,
    ) -> None:
        self._clock = clock
        self._threshold = threshold
        self._base = base
        self._maximum = maximum
        self._window = window
        self._maxEntries = maxEntries
        self._userThreshold = userThreshold or 4 * threshold
        self._userMaximum = userMaximum
        self._trustWindow = trustWindow
        self._maxWaiting = maxWaiting
        #: Attempts waiting for a check in flight to end (L{whenACheckEnds}),
        #: by client and by user: only a check of the same client or user
        #: changes what holds them back (waking every one at every end, each
        #: looking through all the others, was quadratic in the waiters).
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self._waitersOf: dict[str, list[Deferred[None]]] = {}
        self._entries: OrderedDict[tuple[str, ...], _Failures] = OrderedDict()
        #: (user, address) -> when the user last logged in from there.
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: (kind, client) -> when its refusals were last reported, and those
        #: since.
        self._refusals: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def _keys(
        self, user: str, address: str, guess: bool = True
    ) -> tuple[tuple[str, ...], ...]:
        network = networkKey(address) if guess else None
        address = clientKey(address)
        keys: tuple[tuple[str, ...], ...] = (
            ("address", address),
            ("pair", user, address),
        )
        if user:
            keys += (("user", user),)
        if network is not None:
            # An IPv6 client's /48 too, more gently: a new /64 every 4
            # guesses (a /56 holds 256 of them), with random user names,
            # kept every password check busy and both CPUs on bcrypt
            # (attacker round 40).
            keys += (("network", network),)
        return keys

    def _delay(
        self,
        key: tuple[str, ...],
        failures: _Failures,
        now: float,
        pending: bool = True,
    ) -> float:
        threshold, maximum = self._threshold, self._maximum
        if key[0] == "user":
            threshold, maximum = self._userThreshold, self._userMaximum
        elif key[0] == "network":
            # Its failures alone (its checks in flight hold back only
            # attempts of their own client or user, which their ends wake),
            # leaking away, and the gentle user's maximum: a /64 of the
            # /48, or the site's own mistyped passwords, kept every login
            # of it refused (session review 40).
            threshold = self._threshold * NETWORK_FACTOR
            maximum = self._userMaximum
            pending = False
        count = self._counted(key, failures, now)
        count += failures.pending if pending else 0
        if count < threshold:
            return 0.0
        exponent = min(int(count - threshold), 30)
        delay = min(self._base * float(2**exponent), maximum)
        # An attempt in flight is a failure happening now; a failure "in
        # the future" (the clock stepped back) is one happening now too,
        # never a wait as long as the step.
        last = now if pending and failures.pending else min(failures.last, now)
        return max(0.0, last + delay - now)

    def _isTrusted(self, user: str, address: str, now: float) -> bool:
        since = self._trusted.get((user, clientKey(address)))
        return since is not None and now - since <= self._trustWindow

    def _wait(
        self,
        user: str,
        address: str,
        now: float,
        trusting: bool = True,
        pending: bool = True,
    ) -> float:
        trusted = trusting and bool(user) and self._isTrusted(user, address, now)
        wait = 0.0
        for key in self._keys(user, address):
            failures = self._entries.get(key)
            if failures is None:
                continue
            if now - failures.last > self._window:
                if not failures.pending:
                    del self._entries[key]
                    continue
                failures.count = 0
            if trusted and key[0] != "pair":
                continue
            wait = max(wait, self._delay(key, failures, now, pending))
        return wait

    def _entry(self, key: tuple[str, ...]) -> _Failures:
        failures = self._entries.get(key)
        if failures is None:
            failures = self._entries[key] = _Failures()
        self._entries.move_to_end(key)
        return failures

    def _evict(self) -> None:
        while len(self._entries) > self._maxEntries:
            self._entries.popitem(last=False)

    @property
    def clock(self) -> IReactorTime:
        """The clock the throttle counts time by."""
        return self._clock

    def retryAfter(self, user: str, address: str) -> float:
        """Seconds before this user may try again from this address (0: now)."""
        return self._wait(user, address, self._clock.seconds())

    def retryAfterUntrusted(self, user: str, address: str) -> float:
        """
        L{retryAfter} for a user who never logged in from this address, for
        its failures (checks in flight hold an attempt back, never refuse it).
        """
        return self._wait(
            user, address, self._clock.seconds(), trusting=False, pending=False
        )

    def heldByChecksAlone(self, user: str, address: str) -> float:
        """
        The wait of an attempt that would go ahead but for the checks in
        flight (they are not failures yet), or 0. Counted as if the user had
        never logged in from this address, so that a user who has waits
        too: one let through at once beside everyone else waiting told, by
        the time its answer took, which names log in from there.
        """
        now = self._clock.seconds()
        if self._wait(user, address, now, trusting=False, pending=False) > 0:
            return 0.0
        return self._wait(user, address, now, trusting=False)

    def whenACheckEnds(self, user: str, address: str) -> Deferred[None] | None:
        """
        A Deferred that fires when a check L{begin} let go ahead for the
        same client or user ends (then ask again), for an attempt
        L{heldByChecksAlone}; None if C{maxWaiting} of this client's
        already wait (refuse it).
        """
        client = clientKey(address)
        mine = [d for d in self._waiters.get(client, ()) if not d.called]
        if len(mine) >= self._maxWaiting:
            return None

        def cancel(d: Deferred[None]) -> None:
            for waiters, key in ((self._waiters, client), (self._waitersOf, user)):
                listed = waiters.get(key)
                if listed is not None and d in listed:
                    listed.remove(d)
                    if not listed:
                        del waiters[key]

        def woken(result: None) -> None:
            # Out of both lists once it fires: woken through its client's,
            # it stayed in its user name's, one entry per name an
            # unauthenticated client tried, for good (code review 35).
            cancel(waiter)
            return result

        waiter: Deferred[None] = Deferred(cancel)
        waiter.addCallback(woken)
        mine.append(waiter)
        self._waiters[client] = mine
        if user:
            theirs = self._waitersOf.setdefault(user, [])
            if len(theirs) >= 2 * self._maxWaiting:
                theirs[:] = [d for d in theirs if not d.called]
            theirs.append(waiter)
        return waiter

    def _checkEnded(self, user: str, address: str) -> None:
        """Let the attempts waiting on this client or user ask again."""
        woken = self._waiters.pop(clientKey(address), [])
        if user:
            woken += self._waitersOf.pop(user, [])
        for waiter in woken:
            if not waiter.called:
                waiter.callback(None)

    def refused(
        self, address: str, every: float = 60.0, kind: str = "throttled"
    ) -> int | None:
        """
        Count an attempt from C{address} refused (for its wait; C{kind}
        says what refused it). Refusals are reported (audited) at most once
        C{every} seconds per client and kind, so a client cannot write
        without end by being refused. (A client's last refusals are reported
        by L{overdue}.)

        @return: the refusals to report now (this one, and those not
            reported since the last report), or None: not yet.
        """
        key = (kind, clientKey(address))
        now = self._clock.seconds()
        last, count = self._refusals.pop(key, (None, 0))
        count += 1
        # (A wall clock stepped back: reported, not held until it is
        # caught up again; review round 33.)
        if last is not None and 0 <= now - last < every:
            self._refusals[key] = (last, count)
            return None
        self._refusals[key] = (now, 0)
        while len(self._refusals) > self._maxEntries:
            self._refusals.popitem(last=False)
        return count

    def overdue(self, every: float = 60.0) -> list[tuple[str, str, int]]:
        """
        The refusals not reported C{every} seconds after the last report
        (a client that stopped being refused): (kind, client, count) each,
        the client as L{clientKey} has it. Each is reported once; the
        client's next refusal is reported at once.
        """
        now = self._clock.seconds()
        due = []
        for key, (last, count) in list(self._refusals.items()):
            if not 0 <= now - last < every:
                del self._refusals[key]
                if count:
                    due.append((key[0], key[1], count))
        return due

    def begin(self, user: str, address: str) -> float:
        """
        Begin a password check for C{user} from C{address}, before it runs.

        @return: 0 if it may go ahead: it then counts as a failure until
            L{finish}ed (call that exactly once, whatever happens). Otherwise
            the seconds to wait; nothing is counted.
        """
        wait = self.retryAfter(user, address)
        if wait > 0:
            return wait
        for key in self._keys(user, address):
            self._entry(key).pending += 1
        self._evict()
        return 0.0

    def finish(self, user: str, address: str, succeeded: bool | None) -> None:
        """
        End a check L{begin} let go ahead: a success, a failure, or (None)
        neither: the server could not run it (no thread), nothing counted.
        """
        for key in self._keys(user, address):
            failures = self._entries.get(key)
            if failures is not None and failures.pending > 0:
                failures.pending -= 1
        if succeeded:
            self.succeeded(user, address)
        elif succeeded is not None:
            self.failed(user, address)
        if self._waiters or self._waitersOf:
            self._checkEnded(user, address)

    def failed(self, user: str, address: str, guess: bool = True) -> None:
        """
        Count a failed login (one that L{begin} did not begin: see L{finish}).

        @param guess: it was a password's (a token or a certificate refused,
            one HMAC or nothing to check, is no guess: an IPv6 client's /48
            does not count it, or made-up tokens from a new /64 each kept
            every untrusted password login of the /48 refused: attacker
            round 41).
        """
        now = self._clock.seconds()
        for key in self._keys(user, address, guess):
            failures = self._entry(key)
            if now - failures.last > self._window:
                failures.count = 0
            failures.count = self._counted(key, failures, now) + 1
            failures.last = now
        self._evict()

    def _counted(self, key: tuple[str, ...], failures: _Failures, now: float) -> float:
        """
        The failures C{key} has now: as counted, but a /48's (the network
        key's), which leak away, one in the window's share of its threshold
        (22.5 s at the defaults): a site's mistypes, one every few minutes,
        never add up to it.
        """
        if key[0] != "network":
            return failures.count
        leak = self._window / (self._threshold * NETWORK_FACTOR)
        return max(0.0, failures.count - max(0.0, now - failures.last) / leak)

    def succeeded(self, user: str, address: str) -> None:
        """
        A correct login clears the pair's failures (not the address's, nor
        the user's: others may be guessing) and makes the address one the
        user is known to log in from.
        """
        address = clientKey(address)
        pair = ("pair", user, address)
        failures = self._entries.get(pair)
        if failures is not None:
            if failures.pending:
                failures.count = 0
            else:
                del self._entries[pair]
        self._trusted[(user, address)] = self._clock.seconds()
        self._trusted.move_to_end((user, address))
        while len(self._trusted) > self._maxEntries:
            self._trusted.popitem(last=False)
