"""The one way a live job ends, for every executor: recorded, logged, waiters woken."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .records import JobRecord, JobStatus


class Ending:
    """
    The end of one job: L{finish} writes how it ended into the record
    (exactly once: the record's state machine refuses a second end), logs
    it, and fires every L{whenEnded} waiter.
    """

    log = Logger()

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self._waiters: list[Deferred[JobRecord]] = []

    def whenEnded(self) -> Deferred[JobRecord]:
        """Fires with the record once the job has ended (now, if it has)."""
        if self.record.status.ended:
            return succeed(self.record)
        d: Deferred[JobRecord] = Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def finish(
        self,
        status: JobStatus,
        when: float,
        *,
        exit_code: int | None = None,
        signal: str | None = None,
        error: str | None = None,
        **context: Any,
    ) -> None:
        """End the job: record, log (with C{context}), wake the waiters."""
        record = self.record
        record.finish(status, when, exit_code=exit_code, signal=signal, error=error)
        # The text made here, once (a literal for the formatter: braces
        # doubled); the fields stay in the event for structured observers.
        # Twisted's formatter would parse the format and look up each field
        # at every job's end.
        text = (
            f"job {record.id} ended {status.value} (exit {exit_code}, signal {signal})"
        )
        self.log.info(
            text.replace("{", "{{").replace("}", "}}"),
            job=record.id,
            status=status.value,
            exit_code=exit_code,
            signal=signal,
            error=error,
            **context,
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(record)
