"""Failed-login throttling, per client address and per (user, address)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


@dataclass
class _Failures:
    count: int
    last: float


class LoginThrottle:
    """
    After C{threshold} failed logins from one address (or for one user from
    one address), further attempts are refused for a delay that doubles with
    each failure, up to C{maximum} seconds. Failures are forgotten after
    C{window} quiet seconds, and a success clears the (user, address) pair.

    Guessing one user's password from many addresses is throttled per user
    too, but gently (C{userThreshold} failures, delays up to C{userMaximum}
    seconds), and never from an address the user has logged in from before
    (within C{trustWindow}): an attacker cannot lock the real user out from
    their usual address at all, nor from a new one for long.
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
        self._entries: OrderedDict[tuple[str, ...], _Failures] = OrderedDict()
        #: (user, address) -> when the user last logged in from there.
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _keys(self, user: str, address: str) -> tuple[tuple[str, ...], ...]:
        if not user:
            return (("address", address), ("pair", user, address))
        return (("address", address), ("pair", user, address), ("user", user))

    def _delay(self, key: tuple[str, ...], failures: _Failures, now: float) -> float:
        threshold, maximum = self._threshold, self._maximum
        if key[0] == "user":
            threshold, maximum = self._userThreshold, self._userMaximum
        if failures.count < threshold:
            return 0.0
        exponent = min(failures.count - threshold, 30)
        delay = min(self._base * float(2**exponent), maximum)
        return max(0.0, failures.last + delay - now)

    def _isTrusted(self, user: str, address: str, now: float) -> bool:
        since = self._trusted.get((user, address))
        return since is not None and now - since <= self._trustWindow

    def retryAfter(self, user: str, address: str) -> float:
        """Seconds before this user may try again from this address (0: now)."""
        now = self._clock.seconds()
        wait = 0.0
        for key in self._keys(user, address):
            failures = self._entries.get(key)
            if failures is None:
                continue
            if now - failures.last > self._window:
                del self._entries[key]
                continue
            if key[0] == "user" and self._isTrusted(user, address, now):
                continue
            wait = max(wait, self._delay(key, failures, now))
        return wait

    def failed(self, user: str, address: str) -> None:
        """Count a failed login."""
        now = self._clock.seconds()
        for key in self._keys(user, address):
            failures = self._entries.get(key)
            if failures is None or now - failures.last > self._window:
                failures = self._entries[key] = _Failures(0, now)
            failures.count += 1
            failures.last = now
            self._entries.move_to_end(key)
        while len(self._entries) > self._maxEntries:
            self._entries.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        """
        A correct login clears the pair (not the address, nor the user:
        others may be guessing) and makes the address one the user is
        known to log in from.
        """
        self._entries.pop(("pair", user, address), None)
        self._trusted[(user, address)] = self._clock.seconds()
        self._trusted.move_to_end((user, address))
        while len(self._trusted) > self._maxEntries:
            self._trusted.popitem(last=False)
