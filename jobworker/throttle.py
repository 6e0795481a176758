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

    Keys never include only the user name: an attacker failing from one
    address cannot lock the real user out from another.
    """

    def __init__(
        self,
        clock: IReactorTime,
        threshold: int = 5,
        base: float = 1.0,
        maximum: float = 300.0,
        window: float = 900.0,
        maxEntries: int = 100_000,
    ) -> None:
        self._clock = clock
        self._threshold = threshold
        self._base = base
        self._maximum = maximum
        self._window = window
        self._maxEntries = maxEntries
        self._entries: OrderedDict[tuple[str, ...], _Failures] = OrderedDict()

    def _keys(self, user: str, address: str) -> tuple[tuple[str, ...], ...]:
        return (("address", address), ("pair", user, address))

    def _delay(self, failures: _Failures, now: float) -> float:
        if failures.count < self._threshold:
            return 0.0
        exponent = min(failures.count - self._threshold, 30)
        delay = min(self._base * float(2**exponent), self._maximum)
        return max(0.0, failures.last + delay - now)

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
            wait = max(wait, self._delay(failures, now))
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
        """A correct login clears the pair (not the address: others may be guessing)."""
        self._entries.pop(("pair", user, address), None)
