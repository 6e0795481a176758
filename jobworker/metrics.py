"""Prometheus metrics of one server: jobs, output, requests, authentication."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .jobs.records import JobRecord, JobStatus, memoryKilled

#: What C{generate_latest} writes: the text format 0.0.4, whatever the
#: installed prometheus_client's latest is (0.22 and later say 1.0.0:
#: the header followed the library, the document did not: contract round 39).
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# No C{*_created} series beside each counter and histogram (a gauge each,
# doubling the series, named nowhere: contract round 39).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Route labels: request paths with the job id folded, so labels stay few.
_ROUTES = [
    (re.compile(r"^/jobs$"), "/jobs"),
    (re.compile(r"^/jobs/[^/]+$"), "/jobs/{id}"),
    (re.compile(r"^/jobs/[^/]+/(status|stop|logs|stdin)$"), None),
    (re.compile(r"^/(healthz|metrics|openapi\.json|tokens|whoami|drain)$"), None),
    # The dashboard's files, one label for all (a name is anything asked).
    (re.compile(r"^(/ui(/.*)?|/)$"), "/ui/"),
]


def routeLabel(path: bytes) -> str:
    """C{/jobs/<uuid>/logs} -> C{/jobs/{id}/logs}; anything unknown -> C{other}."""
    text = path.split(b"?", 1)[0].decode("ascii", "replace")
    for pattern, label in _ROUTES:
        match = pattern.match(text)
        if match:
            if label is not None:
                return label
            return re.sub(r"^/jobs/[^/]+/", "/jobs/{id}/", text)
    return "other"


#: Method labels: those the API or a client may use; any other is C{other}
#: (a label per method sent would let a client make series without end).
_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def methodLabel(method: bytes | None) -> str:
    """C{b"POST"} -> C{POST}; an unknown or missing method -> C{other}."""
    if method is None:
        return "other"
    text = method.decode("ascii", "replace")
    return text if text in _METHODS else "other"


#: The statuses a job may have.
STATUSES = tuple(status.value for status in JobStatus)


#: Why a new job may be refused (C{jobworker_jobs_refused_total{reason}}).
REFUSAL_REASONS = (
    "queue_full",
    "user_queue_full",
    "create_rate",
    "draining",
    "shutting_down",
)


class _JobCounts(Collector):
    """Jobs by status, counted when scraped (from the store and the live table)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "jobworker_jobs", "Jobs known to the server, by status", labels=["status"]
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        # Every status, none at 0: a series that vanished left a graph a
        # gap and an "== 0" alert no data (operator round 37).
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(self._counts())
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


class _ExecutorUp(Collector):
    """Whether the executor can take jobs (1) or not (0), asked when scraped."""

    def __init__(self, up: Callable[[], tuple[str, bool]]) -> None:
        self._up = up

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "jobworker_executor_up",
            "Whether the executor can take jobs (Slurm: slurmctld answers)",
            labels=["executor"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        executor, up = self._up()
        family.add_metric([executor], 1 if up else 0)
        yield family


class _QueueLength(Collector):
    """Jobs waiting in the queue, per user, counted when scraped."""

    def __init__(self, byUser: Callable[[], dict[str, int]]) -> None:
        self._byUser = byUser
        #: The users whose queue was seen: read 0 once it is empty (the
        #: series vanished: operator round 37). As many as users queue.
        self._seen: set[str] = set()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "jobworker_queued_jobs",
            "Jobs waiting in the queue, by user",
            labels=["user"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        counts = self._byUser()
        self._seen.update(counts)
        for user in sorted(self._seen):
            family.add_metric([user], counts.get(user, 0))
        yield family


class _OutputThreads(Collector):
    """The threads that read heavy output streams, asked when scraped."""

    def __init__(self, state: Callable[[], tuple[int, int, int]]) -> None:
        self._state = state

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "jobworker_output_threads",
                "Threads reading heavy output streams: busy now, and the most "
                "(--output-threads)",
                labels=["state"],
            ),
            CounterMetricFamily(
                "jobworker_output_streams_pumped",
                "Output streams a thread took over from the main thread",
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        threads, pumped = self._families()
        busy, limit, started = self._state()
        threads.add_metric(["busy"], busy)
        threads.add_metric(["limit"], limit)
        pumped.add_metric([], started)
        yield threads
        yield pumped


class _SpawnerStarts(Collector):
    """How many job spawners were started, asked when scraped."""

    def __init__(self, starts: Callable[[], int]) -> None:
        self._starts = starts

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "jobworker_spawner_starts",
            "Job spawners started: the first, then one after each that died "
            "(the jobs it had forked were killed)",
        )

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        family.add_metric([], self._starts())
        yield family


class _StateFolder(Collector):
    """
    Whether the job store refuses writes, and the room left where it and the
    jobs' output are kept, asked when scraped (what /healthz says, in
    series an alert can follow before it comes to that).
    """

    def __init__(self, refusing: Callable[[], bool], folder: str) -> None:
        self._refusing = refusing
        self._folder = folder

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "jobworker_store_refusing_writes",
                "1 while the job store refuses writes (its last write failed: "
                "disk full, failing, read-only; new jobs are refused), else 0",
            ),
            GaugeMetricFamily(
                "jobworker_state_dir_free_bytes",
                "Bytes free to the server in the file system of its state "
                "directory (the store and the jobs' output)",
            ),
            GaugeMetricFamily(
                "jobworker_state_dir_free_inodes",
                "Inodes free to the server in the file system of its state "
                "directory (each job's output takes a few)",
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        refusing, freeBytes, freeInodes = self._families()
        refusing.add_metric([], 1 if self._refusing() else 0)
        yield refusing
        try:
            room = os.statvfs(self._folder)
        except OSError:
            # (Not there, or not readable now: no reading, rather than a 0
            # that would say it is full.)
            return
        freeBytes.add_metric([], room.f_bavail * room.f_frsize)
        freeInodes.add_metric([], room.f_favail)
        yield freeBytes
        yield freeInodes


class Metrics:
    """The server's metrics, in a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobsStarted = Counter(
            "jobworker_job_starts", "Jobs whose process was started", registry=r
        )
        self.spawnFailures = Counter(
            "jobworker_spawn_failures", "Jobs that could not be started", registry=r
        )
        self.startsDeferred = Counter(
            "jobworker_starts_deferred",
            "Starts put off: the server could not start a process then (a new "
            "job's 503; a queued job kept queued, counted at each try)",
            registry=r,
        )
        self.refused = Counter(
            "jobworker_jobs_refused",
            "New jobs refused by a limit or state of the server, by reason: "
            "queue_full (--max-queued), user_queue_full "
            "(--max-queued-per-user), create_rate (--create-rate), draining, "
            "shutting_down",
            ["reason"],
            registry=r,
        )
        self.stops = Counter("jobworker_job_stops", "Stop requests", registry=r)
        self.jobsEnded = Counter(
            "jobworker_jobs_ended", "Jobs that ended, by status", ["status"], registry=r
        )
        self.outputBytes = Counter(
            "jobworker_output_bytes",
            "Output bytes stored, by stream (counted when a job ends)",
            ["stream"],
            registry=r,
        )
        self.outputDropped = Counter(
            "jobworker_output_dropped_bytes",
            "Output bytes discarded past a job's --max-log-bytes, by stream "
            "(counted when a job ends)",
            ["stream"],
            registry=r,
        )
        self.outputLost = Counter(
            "jobworker_output_lost_bytes",
            "Output bytes that could not be written to disk (disk full, I/O "
            "error; counted when a job ends)",
            registry=r,
        )
        self.memoryKilled = Counter(
            "jobworker_jobs_memory_killed",
            "Jobs a process of which was killed at its memory limit "
            "(memory_bytes), whatever their end",
            registry=r,
        )
        self.requests = Counter(
            "jobworker_http_requests",
            "HTTP requests",
            ["route", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "jobworker_http_request_seconds",
            "HTTP request handling time (to the last byte; follows included)",
            ["route", "method"],
            registry=r,
        )
        self.pendingSeconds = Histogram(
            "jobworker_job_pending_seconds",
            "Time jobs waited in the queue before they started",
            buckets=(0.1, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.authFailures = Counter(
            "jobworker_auth_failures", "Failed authentications", registry=r
        )
        self.authThrottled = Counter(
            "jobworker_auth_throttled",
            "Authentications refused by the login throttle before any check "
            "(429: too many failed logins from the client or for the user)",
            registry=r,
        )
        self.auditFailures = Counter(
            "jobworker_audit_write_failures",
            "Audit events that could not be written to the audit log (they "
            "went to the server's log instead)",
            registry=r,
        )
        self.startSeconds = Histogram(
            "jobworker_job_start_seconds",
            "Time from a job's creation to its start (its process running), "
            "queued jobs included",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 60, 900, 3600),
            registry=r,
        )
        self.connectionsRefused = Counter(
            "jobworker_connections_refused",
            "Connections closed at once, by the cap that refused them "
            "(client: --max-connections-per-client; server: --max-connections); "
            "idle: kept connections closed at --max-connections to make room",
            ["cap"],
            registry=r,
        )
        #: 1 while an Admin's C{POST /drain} holds (the manager sets its
        #: function).
        self.draining = Gauge(
            "jobworker_draining",
            "1 while the server drains (an Admin's POST /drain: no new job is "
            "taken nor queued job started), else 0",
            registry=r,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)  # (0 from the start: alerts see the first)
        build = Gauge(
            "jobworker_build_info",
            "The running server's version (1; the version in its label)",
            ["version"],
            registry=r,
        )
        build.labels(__version__).set(1)
        self._requestChildren: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._endChildren: dict[str, tuple[Any, Any, Any]] = {}
        self._dropped = (
            self.outputDropped.labels("stdout"),
            self.outputDropped.labels("stderr"),
        )

    def watchJobs(self, counts: Callable[[], dict[str, int]]) -> None:
        """Report C{counts()} (jobs by status) at every scrape."""
        self.registry.register(_JobCounts(counts))

    def watchStateFolder(self, refusing: Callable[[], bool], folder: str) -> None:
        """
        Report C{refusing()} (the store refuses writes) and the room left in
        C{folder}'s file system at every scrape.
        """
        self.registry.register(_StateFolder(refusing, folder))

    def watchQueue(self, byUser: Callable[[], dict[str, int]]) -> None:
        """Report C{byUser()} (queued jobs per user) at every scrape."""
        self.registry.register(_QueueLength(byUser))

    def watchExecutor(self, up: Callable[[], tuple[str, bool]]) -> None:
        """Report C{up()} (executor name, up) as C{jobworker_executor_up}."""
        self.registry.register(_ExecutorUp(up))

    def watchOutputThreads(self, state: Callable[[], tuple[int, int, int]]) -> None:
        """Report C{state()} (busy, limit, streams taken in all) at every scrape."""
        self.registry.register(_OutputThreads(state))

    def watchSpawner(self, starts: Callable[[], int]) -> None:
        """Report C{starts()} (job spawners started) at every scrape."""
        self.registry.register(_SpawnerStarts(starts))

    def request(
        self, path: bytes, code: int, seconds: float, method: bytes | None = None
    ) -> None:
        """Count one finished request (by route, method and code: a create,
        a list and a bulk delete were one C{/jobs} series: operator round
        40)."""
        route = routeLabel(path)
        verb = methodLabel(method)
        key = (route, verb, code)
        children = self._requestChildren.get(key)
        if children is None:
            # labels() costs more than the count: looked up once per triple
            # (routes, methods and codes are few).
            children = self._requestChildren[key] = (
                self.requests.labels(route, verb, str(code)),
                self.latency.labels(route, verb),
            )
        children[0].inc()
        children[1].observe(seconds)

    def jobEnded(self, status: str, stdoutBytes: int = 0, stderrBytes: int = 0) -> None:
        """Count one ended job (by status) and its output."""
        children = self._endChildren.get(status)
        if children is None:
            children = self._endChildren[status] = (
                self.jobsEnded.labels(status),
                self.outputBytes.labels("stdout"),
                self.outputBytes.labels("stderr"),
            )
        children[0].inc()
        if stdoutBytes:
            children[1].inc(stdoutBytes)
        if stderrBytes:
            children[2].inc(stderrBytes)

    def jobRecordEnded(self, record: JobRecord) -> None:
        """
        Count one ended job by its record: as L{jobEnded}, and the output it
        lost or had dropped, and whether its memory limit killed a process.
        """
        self.jobEnded(record.status.value, record.stdout_bytes, record.stderr_bytes)
        if record.stdout_dropped:
            self._dropped[0].inc(record.stdout_dropped)
        if record.stderr_dropped:
            self._dropped[1].inc(record.stderr_dropped)
        if record.output_lost:
            self.outputLost.inc(record.output_lost)
        if memoryKilled(record.error):
            self.memoryKilled.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
