"""Large answers a user's clients have not read yet: bounded per user."""

from __future__ import annotations

from typing import Any

from ..errors import TooManyRequests
from .deadlines import unsent

#: Bytes of a user's large answers their clients have not read yet, at most.
UNREAD_PER_USER = 16 << 20
#: An answer this large is counted (a page of jobs: up to 4 MiB).
COUNTED = 64 << 10


class UnreadAnswers:
    """
    The connections a user's large answers were written to, and what of
    them their clients have not read yet (L{unsent}: in the server's
    buffers and the kernel's send queue).

    A Reader who sent C{GET /jobs?limit=1000} and never read the answer
    held its 4 MiB page in the server's memory for the idle timeout and
    more, 75 s, and connected again: 60 connections held 250 MiB, 400
    held 1.7 GB (attacker round 39). A large answer past
    L{UNREAD_PER_USER} of the user's unread ones is a C{429}: read them,
    or retry.
    """

    def __init__(self, most: int | None = None) -> None:
        self._most = UNREAD_PER_USER if most is None else most
        #: Per user: the channels of their large answers, maybe unread.
        self._channels: dict[str, dict[Any, None]] = {}

    def admit(self, user: str, channel: Any, size: int) -> None:
        """
        An answer of C{size} bytes to C{user}, on C{channel}: counted if it
        is large, refused if the user's unread ones leave no room for it.

        @raise TooManyRequests: no room for it.
        """
        channels = self._channels.get(user)
        if size < COUNTED and not channels:
            return
        held = 0
        if channels:
            for each in list(channels):
                left = _unread(each)
                if left:
                    held += left
                else:
                    del channels[each]
        if size >= COUNTED and held and held + size > self._most:
            raise TooManyRequests(
                f"{held} bytes of your earlier answers are not read by their "
                "clients yet: read them, or retry",
                retryAfter=1,
            )
        if size >= COUNTED:
            self._channels.setdefault(user, {})[channel] = None
        elif channels is not None and not channels:
            del self._channels[user]


def _unread(channel: Any) -> int:
    """What the client of C{channel} has not read yet (0 once closed)."""
    transport = getattr(channel, "transport", None)
    if transport is None or getattr(channel, "_closed", False):
        return 0
    return unsent(transport)
