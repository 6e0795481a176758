"""
The data-path measurements with curl as the client (a C client, so the
server is what is measured): the bare Twisted TLS sender, a live follow and a
finished log of 1 GiB, and a job followed by many readers against the same
job alone. run.py turns the raw numbers into rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from common import BARE, CA, PASSWORDS, PYTHON, BenchError, Cleanup, Server, log


def curlArgv(url: str, user: str | None, output: str = "-") -> list[str]:
    argv = ["curl", "-sS", "--fail", "--tlsv1.3", "--cacert", CA, "-o", output]
    if user is not None:
        argv += ["-u", f"{user}:{PASSWORDS[user]}"]
    return [*argv, url]


def curlReceive(url: str, user: str | None = "alice") -> dict[str, Any]:
    """
    curl the URL into a pipe read here in 1 MiB reads: bytes, the time of
    the first body byte and of the end (the same reader for every side).
    """
    proc = subprocess.Popen(curlArgv(url, user), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    started = time.monotonic()
    first = 0.0
    received = 0
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            break
        if not received:
            first = time.monotonic()
        received += len(data)
    end = time.monotonic()
    proc.stdout.close()
    if proc.wait() != 0:
        raise BenchError(f"curl {url} exited {proc.returncode}")
    span = max(end - first, 1e-9)
    return {
        "started": started,
        "first": first,
        "end": end,
        "bytes": received,
        "rate_mb_s": received / 1e6 / span,
    }


def bareSend(cleanup: Cleanup, size: int) -> dict[str, Any]:
    """curl from the bare Twisted TLS sender (bare.py send)."""
    proc = cleanup.process(
        subprocess.Popen(
            [PYTHON, BARE, "send", "--bytes", str(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    assert proc.stdout is not None
    port = json.loads(proc.stdout.readline())["port"]
    got = curlReceive(f"https://localhost:{port}/", None)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"bare.py send failed: {err.decode()[-1000:]}")
    if got["bytes"] != size:
        raise BenchError(f"bare sender delivered {got['bytes']}, not {size}")
    got["sender"] = json.loads(out.splitlines()[-1])
    return got


def timedJob(size: int, delay: float) -> tuple[str, list[str]]:
    """
    A job that waits C{delay} s (for its followers to attach), then writes
    C{size} bytes with head and prints head's own start and end (ns) on
    stderr: the job's wall without the wait.
    """
    script = (
        f"sleep {delay}; t0=$(date +%s%N); head -c {size} /dev/zero; "
        't1=$(date +%s%N); echo "$t0 $t1" >&2'
    )
    return "sh", ["-c", script]


def jobWall(server: Server, jobId: str, size: int, delete: bool = True) -> float:
    """
    The job's own wall (as it printed it), once it completed; then delete
    it: its 1 GiB spool would otherwise be written back to disk during the
    next run, and slow that job (not what is measured).
    """
    client = server.client()
    try:
        final = client.waitEnded(jobId)
        if final["status"] != "COMPLETED" or final["stdout_bytes"] != size:
            raise BenchError(f"timed job ended {final}")
        status, _, body = client.request("GET", f"/jobs/{jobId}/logs?stream=stderr")
        if status != 200:
            raise BenchError(f"stderr log answered {status}")
        if delete:
            client.expect(200, "DELETE", f"/jobs/{jobId}")
    finally:
        client.close()
    t0, t1 = (int(v) for v in body.split())
    return (t1 - t0) / 1e9


def liveAndFinished(server: Server, size: int) -> dict[str, Any]:
    """One job followed live by curl, then its finished log read by curl."""
    client = server.client()
    try:
        command, args = timedJob(size, 1.0)
        job = client.create(command, *args)
    finally:
        client.close()
    base = f"https://localhost:{server.port}/jobs/{job['id']}/logs"
    live = curlReceive(base + "?follow=true")
    wall = jobWall(server, job["id"], size, delete=False)
    finished = curlReceive(base)
    deleteJob(server, job["id"])
    for got in (live, finished):
        if got["bytes"] != size:
            raise BenchError(f"curl got {got['bytes']} bytes, not {size}")
    return {"live": live, "finished": finished, "job_wall_s": wall}


def followedJob(server: Server, size: int, followers: int) -> dict[str, Any]:
    """
    The timed job with C{followers} curls following its stdout (to
    /dev/null): the job's own wall, and every follower's byte count.
    """
    client = server.client()
    try:
        command, args = timedJob(size, 1.5 if followers else 0.1)
        job = client.create(command, *args)
    finally:
        client.close()
    url = f"https://localhost:{server.port}/jobs/{job['id']}/logs?follow=true"
    procs = [
        subprocess.Popen(
            [*curlArgv(url, "alice", "/dev/null"), "-w", "%{size_download}"],
            stdout=subprocess.PIPE,
        )
        for _ in range(followers)
    ]
    started = time.monotonic()
    counts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise BenchError(f"follower curl exited {proc.returncode}")
        counts.append(int(out))
    caughtUp = time.monotonic() - started
    wall = jobWall(server, job["id"], size)
    wrong = [c for c in counts if c != size]
    if wrong:
        raise BenchError(f"followers got {wrong[:3]} bytes, not {size}")
    log(f"job wall {wall:.2f}s with {followers} followers (caught up {caughtUp:.1f}s)")
    return {"job_wall_s": wall, "followers": followers, "all_caught_up_s": caughtUp}


def unfollowedFinished(server: Server, size: int) -> dict[str, Any]:
    """A job nobody followed, then its finished log read by curl."""
    client = server.client()
    try:
        job = client.create("head", "-c", str(size), "/dev/zero")
        final = client.waitEnded(job["id"])
        if final["status"] != "COMPLETED" or final["stdout_bytes"] != size:
            raise BenchError(f"unfollowed job ended {final}")
    finally:
        client.close()
    got = curlReceive(f"https://localhost:{server.port}/jobs/{job['id']}/logs")
    deleteJob(server, job["id"])
    if got["bytes"] != size:
        raise BenchError(f"curl got {got['bytes']} bytes, not {size}")
    return got


def deleteJob(server: Server, jobId: str) -> None:
    """Delete an ended job and its output (its spool leaves the disk)."""
    client = server.client()
    try:
        client.expect(200, "DELETE", f"/jobs/{jobId}")
    finally:
        client.close()
