"""
What the last SIGHUP made of each file the server reads again: a reload
that was refused keeps the old users, certificate or client CAs in force,
and says so in C{/healthz} and C{/metrics} until one succeeds (it was in
the log alone: a removed user kept access with the probe and every metric
unchanged: operator round 39). The served certificate's end is a metric
too, for an alert before clients refuse it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .selfcert import datesProblem, outOfDates

#: The files a SIGHUP reads again, by their label.
FILES = ("users", "certificate", "client_ca", "audit_log", "token_key")

#: Each, in words (the reason of C{/healthz}).
_NAMES = {
    "users": "the users file",
    "certificate": "the TLS certificate",
    "client_ca": "the client CA file",
    "audit_log": "the audit log",
    "token_key": "the token key",
}


class Reloads(Collector):
    """
    The outcome of each file's last reload, and how many of each there
    were; a collector of C{/metrics} (C{jobworker_reload_failed},
    C{jobworker_reloads_total}, C{jobworker_certificate_expiry_timestamp_seconds}).
    """

    def __init__(self) -> None:
        #: Why each file's last reload was refused (absent: it was not).
        self._refused: dict[str, str] = {}
        self._counts: dict[tuple[str, str], int] = {
            (name, result): 0 for name in FILES for result in ("ok", "failed")
        }
        #: When the served certificate is valid, if known.
        self.certificateDates: tuple[datetime, datetime] | None = None
        #: When the server's own CA is valid, if it serves one (L{caProblem}).
        self.caDates: tuple[datetime, datetime] | None = None

    def succeeded(self, name: str) -> None:
        """C{name}'s reload is in force."""
        self._refused.pop(name, None)
        self._counts[name, "ok"] += 1

    def failed(self, name: str, why: str) -> None:
        """C{name}'s reload was refused, for C{why}: the old one stays."""
        self._refused[name] = why
        self._counts[name, "failed"] += 1

    def refused(self) -> str | None:
        """The files whose last reload was refused, and why, in words; and
        the server's own CA out of its dates."""
        said = [
            f"{_NAMES[name]} was not reloaded (the one before is in force): {why}"
            for name, why in sorted(self._refused.items())
        ]
        for problem in (self.caProblem(), self.certificateProblem()):
            if problem is not None:
                said.append(problem)
        return "; ".join(said) or None

    def certificateProblem(self) -> str | None:
        """
        Why every client refuses the served certificate now, if it does: it
        is not valid yet (made while the clock was ahead: a probe that does
        not check certificates was told "ok" while every client was
        refused, fault round 41) or has expired.
        """
        if self.certificateDates is None:
            return None
        when = outOfDates(*self.certificateDates)
        if when is None:
            return None
        return (
            f"the TLS certificate served {when}: every client refuses it (the "
            "clock was wrong when it was made, or is wrong now); a SIGHUP "
            "reloads it (the server's own is made anew)"
        )

    def caProblem(self) -> str | None:
        """Why every client refuses the server's own CA now, if it does."""
        if self.caDates is None:
            return None
        return datesProblem(*self.caDates)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        failed, total, ends = self._families()
        for name in FILES:
            failed.add_metric([name], 1 if name in self._refused else 0)
            for result in ("ok", "failed"):
                total.add_metric([name, result], self._counts[name, result])
        yield failed
        yield total
        if self.certificateDates is not None:
            ends.add_metric([], self.certificateDates[1].timestamp())
            yield ends

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "jobworker_reload_failed",
                "Whether the last SIGHUP reload of a file was refused (1: the "
                "one before is still in force), by file",
                labels=["file"],
            ),
            CounterMetricFamily(
                "jobworker_reloads",
                "SIGHUP reloads of each file, by result",
                labels=["file", "result"],
            ),
            GaugeMetricFamily(
                "jobworker_certificate_expiry_timestamp_seconds",
                "When the TLS certificate served ends (Unix time)",
            ),
        )
