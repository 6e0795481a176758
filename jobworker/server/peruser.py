"""What each user holds of a server-wide resource, at most so many a user."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import TooManyRequests


class PerUser:
    """
    How many of C{what} (log streams, connections) each user holds, and
    at most C{limit} a user: one user may not take what the server has of
    it for everyone.
    """

    def __init__(self, limit: int, what: str, advice: str = "") -> None:
        self.limit = limit
        self._what = what
        self._advice = advice
        self._held: Counter[str] = Counter()

    def check(self, user: str) -> None:
        """
        @raise TooManyRequests: C{user} holds L{limit} already.
        """
        held = self._held[user]
        if held >= self.limit:
            raise TooManyRequests(
                f"you hold {held} {self._what}, the most one user may"
                + (f": {self._advice}" if self._advice else ""),
                retryAfter=1,
            )

    def take(self, user: str) -> None:
        """One more of C{user}'s (L{check}ed first: L{TooManyRequests})."""
        self.check(user)
        self.add(user)

    def add(self, user: str) -> None:
        """One more of C{user}'s, unchecked (checked before, elsewhere)."""
        self._held[user] += 1

    def release(self, user: str) -> None:
        """One of C{user}'s is let go."""
        self._held[user] -= 1
        if self._held[user] <= 0:
            del self._held[user]

    @contextmanager
    def holding(self, user: str) -> Iterator[None]:
        """One more of C{user}'s while it lasts (L{take}, then L{release})."""
        self.take(user)
        try:
            yield
        finally:
            self.release(user)
