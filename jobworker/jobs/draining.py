"""
Draining: a server that takes no new job and starts no queued one while its
running jobs end, so that it can be restarted (an upgrade, a reboot) without
stopping any. An Admin's C{POST /drain} starts it, C{DELETE /drain} or a
restart ends it; queued jobs stay queued meanwhile (in the store: a restart
keeps them).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

#: The C{Retry-After} of a job refused while the server drains: the drain
#: lasts until its running jobs end and it is restarted, minutes as a rule.
DRAIN_RETRY_AFTER = 60


class Draining:
    """
    Whether the server drains, since when and at whose request, and who
    waits for its running jobs to be over.
    """

    log = Logger()

    def __init__(self) -> None:
        #: Who asked for the drain, when, and why if not an Admin's
        #: request (None: not draining).
        self.by: str | None = None
        self.since: float | None = None
        self.reason: str | None = None
        self._waiting: list[Deferred[None]] = []

    @property
    def on(self) -> bool:
        """Whether the server drains now."""
        return self.since is not None

    def start(
        self, by: str, when: float, running: int, reason: str | None = None
    ) -> bool:
        """
        Drain from now (C{running} jobs still hold their slots), at the
        request of C{by}, for C{reason} if not an Admin's request; False if
        it drains already (the first request's name and time are kept).
        """
        if self.since is not None:
            return False
        self.by, self.since, self.reason = by, when, reason
        self.log.info(
            "draining at the request of {user}{why}: no new job is taken nor "
            "queued job started; {running} jobs still running",
            user=by,
            why=f" ({reason})" if reason else "",
            running=running,
        )
        if running == 0:
            self.drained()
        return True

    def alsoBecause(self, reason: str) -> None:
        """A drain on (C{--drain}) has another reason too (a copy's)."""
        if self.since is not None:
            self.reason = f"{self.reason}; {reason}" if self.reason else reason

    def end(self, by: str) -> bool:
        """Drain no more; False if it did not drain. Waiters are answered."""
        if self.since is None:
            return False
        self.by = self.since = self.reason = None
        self.log.info("draining ended at the request of {user}", user=by)
        self._answer()
        return True

    def slotFreed(self, running: int) -> None:
        """A job gave its running slot back: C{running} are left."""
        if running == 0 and self.since is not None:
            self.drained()

    def drained(self) -> None:
        """The last running job is over (said once a drain)."""
        self.log.info(
            "drained: no job is running; the server may be restarted (queued "
            "jobs stay queued)"
        )
        self._answer()

    def whenDrained(self, running: int) -> Deferred[None]:
        """
        Fires once no job runs while the server drains, or once it drains
        no more; at once if either holds now.
        """
        if running == 0 or self.since is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiting.append(waiting)
        return waiting

    def _forget(self, waiting: Deferred[None]) -> None:
        if waiting in self._waiting:
            self._waiting.remove(waiting)

    def _answer(self) -> None:
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)
