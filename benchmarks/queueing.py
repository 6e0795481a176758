"""
The queue's figures (issue 18), each against a reference in the same run:

  overhead   N jobs of `true` with --max-running 4, all submitted at once and
             queued by the server, against the same jobs queued by hand (the
             client keeps 4 running and submits the next when one ends);
             goal: the queue adds < 10 % wall.
  fairness   alice submits M `sleep 0.05` jobs, then bob 1 (--max-running 4):
             how many of alice's jobs start between bob's submission and
             his start; goal: within 2 slot turnovers (<= 8 starts).
  scale      P PENDING jobs behind one running job (--max-running 1): POST
             /jobs latency p99 (goal < 10 ms), then the restart with all of
             them queued (goal < 2 s) and the server's RSS growth (goal
             < 64 MiB).

    python benchmarks/queueing.py [--jobs 10000] [--alice 1000] [--pending 100000]
                               [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Cleanup, Client, Server, log, percentile

FAST = ("--create-rate=1000000", "--max-log-streams=100000")


def wait(client: Client, jobIds: list[str], timeout: float = 3600) -> None:
    """Until every job has ended (one long poll per job, in order)."""
    deadline = time.monotonic() + timeout
    for jobId in jobIds:
        while True:
            job = client.expect(200, "GET", f"/jobs/{jobId}?wait=60")
            if job["status"] not in ("RUNNING", "PENDING"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {jobId} still {job['status']}")


def overhead(cleanup: Cleanup, work: str, jobs: int) -> dict[str, Any]:
    server = Server(
        cleanup,
        work,
        "queue",
        extra=("--max-running=4", "--max-queued=1000000", *FAST),
    ).start()
    client = server.client()
    started = time.monotonic()
    ids = [client.create("true")["id"] for _ in range(jobs)]
    wait(client, ids)
    queued = time.monotonic() - started
    server.stop()
    server = Server(cleanup, work, "byhand", extra=("--max-running=4", *FAST)).start()
    client = server.client()
    started = time.monotonic()
    running: list[str] = []
    for _ in range(jobs):
        while len(running) >= 4:
            job = client.expect(200, "GET", f"/jobs/{running[0]}?wait=60")
            if job["status"] not in ("RUNNING", "PENDING"):
                running.pop(0)
        running.append(client.create("true")["id"])
    wait(client, running)
    byHand = time.monotonic() - started
    server.stop()
    return {
        "jobs": jobs,
        "queued_wall_s": round(queued, 2),
        "by_hand_wall_s": round(byHand, 2),
        "ratio": round(queued / byHand, 3),
        "goal": "< 1.10",
    }


def fairness(cleanup: Cleanup, work: str, alice: int) -> dict[str, Any]:
    server = Server(
        cleanup,
        work,
        "fair",
        extra=("--max-running=4", "--max-queued=1000000", *FAST),
    ).start()
    a, b = server.client("alice"), server.client("ada")
    ids = [a.create("sleep", "0.05")["id"] for _ in range(alice)]
    created = b.create("true")
    bobs = created["id"]
    submitted = _epoch(created["created_at"])  # when the server took it
    wait(b, [bobs])
    bobStart = b.expect(200, "GET", f"/jobs/{bobs}")["started_at"]
    starts = []
    for jobId in ids:
        job = a.expect(200, "GET", f"/jobs/{jobId}")
        if job["started_at"]:
            starts.append(job["started_at"])
    between = sum(1 for s in starts if _epoch(s) >= submitted and s < bobStart)
    server.stop()
    return {
        "alice_jobs": alice,
        "alice_starts_before_bob": between,
        "slot_turnovers": round(between / 4, 2),
        "goal": "<= 2 turnovers",
    }


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def scale(cleanup: Cleanup, work: str, pending: int) -> dict[str, Any]:
    state = os.path.join(work, "state-scale")
    extra = (
        "--max-running=1",
        "--max-queued=10000000",
        "--max-queued-per-user=10000000",
    )
    server = Server(cleanup, work, "scale", stateDir=state, extra=(*extra, *FAST))
    server.start()
    client = server.client()
    client.create("sleep", "3600")
    before = server.rss()["VmRSS"]
    latencies = []
    for _ in range(pending):
        asked = time.monotonic()
        status, _ = client.json("POST", "/jobs", {"command": "true"})
        latencies.append(time.monotonic() - asked)
        if status != 201:
            raise RuntimeError(f"POST /jobs answered {status}")
    grown = server.rss()["VmRSS"] - before
    server.stop()
    again = Server(cleanup, work, "scale2", stateDir=state, extra=(*extra, *FAST))
    again.start()
    startup = again.startup
    again.stop()
    return {
        "pending": pending,
        "post_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "post_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "rss_growth_mib": round(grown / 1024, 1),
        "restart_s": round(startup, 2),
        "goals": "p99 < 10 ms, restart < 2 s, RSS < 64 MiB",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--alice", type=int, default=1_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument(
        "--only",
        default="overhead,fairness,scale",
        help="comma-separated parts to run (default: all three)",
    )
    options = parser.parse_args()
    if options.smoke:
        options.jobs, options.alice, options.pending = 40, 40, 200
    cleanup = Cleanup()
    try:
        work = cleanup.tempdir()
        parts = {
            "overhead": lambda: overhead(cleanup, work, options.jobs),
            "fairness": lambda: fairness(cleanup, work, options.alice),
            "scale": lambda: scale(cleanup, work, options.pending),
        }
        results = {
            name: run()
            for name, run in parts.items()
            if name in options.only.split(",")
        }
    finally:
        cleanup.run()
    log(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
