"""The one way a live job ends, for every executor: recorded, logged, waiters woken."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .records import JobRecord, JobStatus

#: How far a job's end time may fall behind its start's wall time plus the
#: time elapsed since (L{elapsedSeconds}) before it is taken for a step
#: back of the wall clock: 5 seconds, plus a slew's most (NTP slews the
#: clock by at most 500 ppm; twice that is allowed). The steps that matter
#: are minutes or hours; 5 s keeps tests on a fake wall clock (their
#: elapsed clock is the real one) clear of it on a slow machine.
STEP_SLACK = 5.0
SLEW_MOST = 0.001


def elapsedSeconds() -> float:
    """
    Seconds from some fixed point, on a clock no step of the wall clock
    moves: C{CLOCK_BOOTTIME}, which counts a suspend too (the wall clock
    does, and so must what stands in for it), or C{time.monotonic}.
    """
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class Ending:
    """
    The end of one job: L{finish} writes how it ended into the record
    (exactly once: the record's state machine refuses a second end), logs
    it, and fires every L{whenEnded} waiter.
    """

    log = Logger()

    def __init__(
        self, record: JobRecord, elapsed: Callable[[], float] = elapsedSeconds
    ) -> None:
        """
        @param elapsed: a clock no step of the wall clock moves, by which
            an end time is checked against the start's (L{started}).
        """
        self.record = record
        self._waiters: list[Deferred[JobRecord]] = []
        self._elapsed = elapsed
        #: The start's wall time and elapsed time (L{started}).
        self._anchor: tuple[float, float] | None = None

    def started(self, wall: float) -> None:
        """The job started at C{wall}, by the wall clock, which is now."""
        self._anchor = (wall, self._elapsed())

    def _endTime(self, when: float, told: bool = False) -> float:
        """
        C{when}, the wall clock at the end, unless a step back of that clock
        since the start put it earlier than the start plus the time elapsed
        since: then that (retention counts from the end time, and took the
        job for older than it was). Never before the start (a smaller step
        back past it: the start plus the time elapsed). C{told}: C{when} is
        not the clock's but what another told (Slurm's end time): only
        never before the start.
        """
        steady = None
        if self._anchor is not None and not told:
            wall, then = self._anchor
            since = self._elapsed() - then
            steady = wall + since
            if when < steady - STEP_SLACK - SLEW_MOST * since:
                when = steady
        started = self.record.started_at
        if started is not None and when < started:
            # A step back smaller than the slack, past the start: the time
            # elapsed since, not none (fault round 31).
            when = started if steady is None else max(started, steady)
        return when

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
        told: bool = False,
        **context: Any,
    ) -> None:
        """End the job: record, log (with C{context}), wake the waiters;
        C{told}: see L{_endTime}."""
        record = self.record
        when = self._endTime(when, told)
        record.finish(status, when, exit_code=exit_code, signal=signal, error=error)
        # The text made here, once (a literal for the formatter: braces
        # doubled); the fields stay in the event for structured observers.
        # Twisted's formatter would parse the format and look up each field
        # at every job's end.
        # With why, where the job's record says (a command not found, a
        # timeout, the memory limit): the log said the exit alone, and the
        # reason was in the store, gone with the job (operator round 41).
        text = (
            f"job {record.id} ended {status.value} (exit {exit_code}, signal {signal})"
            + (f": {error}" if error else "")
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
