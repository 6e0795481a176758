"""
Store scale: the server with 100,000 ended jobs in its store, against the same
server with an empty store, in one run.

Fills a state dir's store directly through jobworker.jobs.store.JobStore (public
insert() inside one manual transaction), starts the real server on it and
measures: start-up (process start to the listening line), GET /jobs first
page p50/p99 (after one warm-up request that pays bcrypt), GET
/jobs?status=FAILED&limit=100, a deep cursor page, and the server's RSS.

    python benchmarks/store_scale.py [--jobs 100000] [--samples 50]

run.py calls measure() as its last scenario; run on its own this prints a
short summary and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import BenchError, Cleanup, Server, log, summary


def fill(stateDir: str, jobs: int) -> dict[str, Any]:
    """Write C{jobs} ended job records into C{stateDir}'s store, in one go."""
    from jobworker.jobs.records import JobRecord, JobStatus
    from jobworker.jobs.store import JobStore

    os.makedirs(stateDir, mode=0o700, exist_ok=True)
    started = time.monotonic()
    store = JobStore(os.path.join(stateDir, "jobs.sqlite3"))
    base = time.time() - jobs * 0.5 - 3600
    counts = {s.value: 0 for s in JobStatus}
    store._db.execute("BEGIN")
    try:
        for i in range(jobs):
            kind = i % 10
            created = base + i * 0.5
            record = JobRecord(
                id=str(uuid.uuid4()),
                command="sh",
                args=["-c", f"make test TARGET={i}"],
                owner=("alice", "bob", "ada")[i % 3],
                created_at=created,
                pid=10_000 + i % 50_000,
                started_at=created + 0.002,
                ended_at=created + 0.25,
                stdout_bytes=4096 + i % 1000,
                stderr_bytes=i % 7,
            )
            if kind < 7:
                record.status, record.exit_code = JobStatus.COMPLETED, 0
            elif kind < 9:
                record.status, record.exit_code = JobStatus.FAILED, 1
                record.error = "exited with code 1"
            else:
                record.status, record.signal = JobStatus.STOPPED, "SIGTERM"
                record.stopped_by = "alice"
            counts[record.status.value] += 1
            store.insert(record)
        store._db.execute("COMMIT")
    except BaseException:
        store._db.execute("ROLLBACK")
        raise
    finally:
        stored = store.count()
        store.close()
    if stored != jobs:
        raise BenchError(f"store holds {stored} jobs, not {jobs}")
    size = sum(
        os.path.getsize(os.path.join(stateDir, name))
        for name in os.listdir(stateDir)
        if name.startswith("jobs.sqlite3")
    )
    return {
        "jobs": jobs,
        "by_status": counts,
        "fill_s": time.monotonic() - started,
        "db_bytes": size,
    }


def _timedGets(client: Any, path: str, samples: int) -> tuple[list[float], Any]:
    latencies = []
    value: Any = None
    for _ in range(samples):
        sent = time.monotonic()
        value = client.expect(200, "GET", path)
        latencies.append(time.monotonic() - sent)
    return latencies, value


def measureServer(
    cleanup: Cleanup,
    workdir: str,
    label: str,
    stateDir: str,
    jobs: int,
    samples: int,
    profile: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Start the server on C{stateDir}, measure, stop it."""
    server = Server(
        cleanup, workdir, f"store-{label}", stateDir, profile, extra
    ).start()
    try:
        result: dict[str, Any] = {"startup_s": server.startup}
        result["rss_after_start_kib"] = server.rss()["VmRSS"]
        client = server.client()
        sent = time.monotonic()
        client.expect(200, "GET", "/jobs")
        result["warmup_s"] = time.monotonic() - sent  # pays bcrypt once
        first, page = _timedGets(client, "/jobs", samples)
        expected = min(100, jobs)
        if len(page["jobs"]) != expected:
            raise BenchError(f"first page has {len(page['jobs'])} jobs, not {expected}")
        failed, page = _timedGets(client, "/jobs?status=FAILED&limit=100", samples)
        if jobs and (
            not page["jobs"] or {j["status"] for j in page["jobs"]} != {"FAILED"}
        ):
            raise BenchError("status=FAILED page is wrong")
        # Deep: the page just past 90% of the list (only 10% of jobs are older).
        cursor = max(1, jobs // 10)
        deep, page = _timedGets(client, f"/jobs?cursor={cursor}", samples)
        if len(page["jobs"]) != min(100, cursor - 1):
            raise BenchError(f"deep page has {len(page['jobs'])} jobs")
        deepFailed, page = _timedGets(
            client, f"/jobs?status=FAILED&limit=100&cursor={cursor}", samples
        )
        result.update(
            first_page=summary(first),
            failed_page=summary(failed),
            deep_page=summary(deep),
            deep_failed_page=summary(deepFailed),
            deep_cursor=cursor,
        )
        status = server.rss()
        result["rss_kib"] = status["VmRSS"]
        result["peak_rss_kib"] = status["VmHWM"]
        client.close()
        errors = server.logErrors()
        if errors:
            raise BenchError(f"server logged errors: {errors[:3]}")
    finally:
        server.stop()
    return result


def measure(
    cleanup: Cleanup,
    workdir: str,
    jobs: int = 100_000,
    samples: int = 50,
    profile: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Empty store, then a store of C{jobs} ended jobs: both measured."""
    emptyDir = os.path.join(workdir, "store-empty")
    fullDir = os.path.join(workdir, "store-full")
    os.makedirs(emptyDir, mode=0o700)
    log(f"store: filling a store with {jobs} ended jobs")
    filled = fill(fullDir, jobs)
    log(f"store: filled in {filled['fill_s']:.1f}s ({filled['db_bytes'] / 1e6:.0f} MB)")
    empty = measureServer(cleanup, workdir, "empty", emptyDir, 0, samples, None, extra)
    full = measureServer(
        cleanup, workdir, "full", fullDir, jobs, samples, profile, extra
    )
    return {"fill": filled, "empty": empty, "full": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--profile", help="run the full-store server under cProfile")
    args = parser.parse_args()
    cleanup = Cleanup()
    try:
        workdir = cleanup.tempdir()
        result = measure(cleanup, workdir, args.jobs, args.samples, args.profile)
    finally:
        forced = cleanup.run()
    for line in forced:
        log(f"cleanup: {line}")
    empty, full = result["empty"], result["full"]
    print(f"{'':32}{'empty store':>14}{f'{args.jobs} jobs':>14}")
    for label, key in (
        ("start-up (s)", "startup_s"),
        ("RSS (MiB)", "rss_kib"),
    ):
        scale = 1 / 1024 if key.endswith("kib") else 1
        print(f"{label:32}{empty[key] * scale:14.3f}{full[key] * scale:14.3f}")
    for label, key in (
        ("GET /jobs", "first_page"),
        ("status=FAILED&limit=100", "failed_page"),
        ("deep cursor page", "deep_page"),
        ("FAILED + deep cursor", "deep_failed_page"),
    ):
        for p in ("p50", "p99"):
            print(
                f"{label + ' ' + p + ' (ms)':32}"
                f"{empty[key][p] * 1e3:14.2f}{full[key][p] * 1e3:14.2f}"
            )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
