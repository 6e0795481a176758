"""One Deferred's outcome handed to another that may be done already."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def relay(source: Deferred[T], waiter: Deferred[T]) -> None:
    """
    C{source}'s outcome to C{waiter}, unless C{waiter} is done already (it
    was cancelled): C{chainDeferred} raised C{AlreadyCalledError} then, and
    it was logged (a C{?wait=} that timed out after its queued job started:
    a review; C{jw stop ID...} interrupted: session review 33).
    """

    def relayed(result: Any) -> None:
        if not waiter.called:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    source.addBoth(relayed)
