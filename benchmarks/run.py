"""
The jobworker benchmark suite: every figure beside a reference measured in the
same run, one table, and the raw numbers as JSON.

    python benchmarks/run.py            full run (several minutes), writes
                                        benchmarks/results/latest.json
    python benchmarks/run.py --smoke    tiny sizes (< 60 s) to keep the suite
                                        working; exits non-zero if anything broke
    python benchmarks/run.py --commit HEAD
                                        measure a commit (git archive snapshot),
                                        not the working tree others may be editing
    python benchmarks/run.py --only ingest,fanout --profile DIR
                                        some scenarios, each server under cProfile
                                        (DIR/<scenario>.pstats and .txt)

Each scenario starts its own server (`twistd -n --pidfile= jobworker --tls
--port=0 ...`, TLS on loopback, a fresh state dir, RLIMIT_NOFILE raised to
65536 in a preexec_fn). Load comes from separate processes (loadgen.py, one
keep-alive connection each) so clients share no GIL; references are bare
Twisted scripts (bare.py) and a throwaway sshd (sshd.py). Everything made is
removed at the end. A missed goal is reported as MISSED (exit status 0);
anything that breaks (a wrong byte count, a request error, a leftover
process) makes the exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import pstats
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datapath
import store_scale
from common import (
    BARE_SPAWNER,
    HERE,
    MB,
    PYTHON,
    ROOT,
    SERVER_NOFILE,
    BenchError,
    Cleanup,
    MiB,
    Server,
    Workers,
    busyFraction,
    inSessions,
    jwCommand,
    jwEnvironment,
    log,
    machineBusySeconds,
    nofileLimit,
    processes,
    resetPeakRSS,
    runBare,
    summary,
    timed,
)
from sshd import SSHUnavailable, ThrowawaySSHD

RESULTS = os.path.join(HERE, "results")


@dataclass(frozen=True)
class Settings:
    start_rate_s: float
    latency_samples: int
    ingest_bytes: int
    follow_bytes: int
    follow_runs: int
    fanout_bytes: int
    fanout_followers: int
    request_s: float
    request_rounds: int
    cli_runs: int
    concurrency_jobs: int
    store_jobs: int
    store_samples: int
    clients: int = 8


FULL = Settings(
    start_rate_s=10.0,
    latency_samples=200,
    ingest_bytes=1 << 30,
    follow_bytes=1 << 30,
    follow_runs=3,
    fanout_bytes=256 * MiB,
    fanout_followers=32,
    request_s=5.0,
    request_rounds=3,
    cli_runs=10,
    concurrency_jobs=1000,
    store_jobs=100_000,
    store_samples=50,
)
SMOKE = Settings(
    start_rate_s=1.0,
    latency_samples=10,
    ingest_bytes=32 * MiB,
    follow_bytes=16 * MiB,
    follow_runs=1,
    fanout_bytes=16 * MiB,
    fanout_followers=4,
    request_s=1.0,
    request_rounds=1,
    cli_runs=2,
    concurrency_jobs=50,
    store_jobs=2000,
    store_samples=10,
    clients=4,
)


@dataclass
class Row:
    key: str
    measure: str
    value: str
    reference: str
    ratio: float | None
    goal: str
    result: str


def judged(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def mbps(value: float) -> str:
    return f"{value:.0f} MB/s"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def humanBytes(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / MiB:g} MiB"


class Context:
    def __init__(
        self, settings: Settings, profileDir: str | None, serverArgs: tuple[str, ...]
    ) -> None:
        self.settings = settings
        self.serverArgs = serverArgs
        self.cleanup = Cleanup()
        self.workdir = self.cleanup.tempdir()
        self.profileDir = profileDir
        self._sshd: ThrowawaySSHD | None = None
        self.sshError: str | None = None
        self.nofile = "?"

    def server(
        self, name: str, warm: bool = True, options: tuple[str, ...] = ()
    ) -> Server:
        profile = None
        if self.profileDir is not None:
            profile = os.path.join(self.profileDir, f"{name}.pstats")
        # Every load generator connects from 127.0.0.1: lift the per-client
        # connection cap (a defence against abuse, not what is measured here).
        # Likewise the per-user creation rate: every load is one user.
        extra = (
            "--max-connections-per-client=100000",
            "--create-rate=1000000",
            *self.serverArgs,
            *options,
        )
        server = Server(
            self.cleanup, self.workdir, name, profile=profile, extra=extra
        ).start()
        self.nofile = nofileLimit(server.pid)
        if warm:  # pay bcrypt once, before anything is measured
            client = server.client()
            client.expect(200, "GET", "/jobs?limit=1")
            client.close()
        return server

    def stop(self, server: Server) -> float:
        took = server.stop()
        # Remove the job output now: dirty pages of gigabytes of spool files
        # would otherwise be written back (and throttle writers) later.
        shutil.rmtree(server.stateDir, ignore_errors=True)
        errors = server.logErrors()
        if server.profile is not None and os.path.exists(server.profile):
            writeProfileSummary(server.profile)
        if errors:
            raise BenchError(f"server logged errors: {errors[:3]}")
        return took

    def ssh(self) -> ThrowawaySSHD | None:
        if self._sshd is None and self.sshError is None:
            try:
                self._sshd = ThrowawaySSHD(self.cleanup).start()
            except SSHUnavailable as e:
                self.sshError = str(e)
                log(f"ssh unavailable: {e}")
        return self._sshd


def writeProfileSummary(path: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    out.write("== by own time ==\n")
    stats.sort_stats("tottime").print_stats(30)
    out.write("== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(45)
    with open(path.removesuffix(".pstats") + ".txt", "w", encoding="utf-8") as f:
        f.write(out.getvalue())
    log(f"profile: {path} (summary in .txt)")


def waitQuiet(limit: float, threshold: float = 0.15) -> tuple[float, list[str]]:
    """Wait (up to C{limit} s) until other work leaves the CPUs mostly idle."""
    deadline = time.monotonic() + limit
    busy, top = busyFraction()
    announced = False
    while busy > threshold and time.monotonic() < deadline:
        if not announced:
            log(
                f"machine {busy:.0%} busy with other work ({', '.join(top)}): "
                f"waiting up to {limit:.0f}s"
            )
            announced = True
        busy, top = busyFraction(1.0)
    return busy, top


def window(results: list[dict[str, Any]]) -> float:
    return max(r["end"] for r in results) - min(r["start"] for r in results)


def repeatLoad(
    ctx: Context, server: Server, config: dict[str, Any], n: int
) -> dict[str, Any]:
    """n workers repeating one request for settings.request_s; aggregate."""
    workers = Workers(ctx.cleanup, n, {"mode": "repeat", "port": server.port, **config})
    cpu0 = server.cpu()
    busy0, wall0 = machineBusySeconds(), time.monotonic()
    workers.go()
    results = workers.results()
    cpu = server.cpu() - cpu0
    busy, wall = machineBusySeconds() - busy0, time.monotonic() - wall0
    errors = [e for r in results for e in r["errors"]]
    if errors:
        raise BenchError(f"{config['method']} {config['path']}: {errors[:3]}")
    latencies = [x for r in results for x in r["latencies"]]
    total = sum(r["count"] for r in results)
    span = window(results)
    return {
        "requests": total,
        "window_s": span,
        "rate": total / span,
        "latency": summary(latencies),
        "server_cpu_util": cpu / span,
        "client_cpu_s": sum(r["cpu"] for r in results),
        # Every process of the machine, from the go to the last result:
        # the server, its jobs, the clients, the kernel's threads.
        "server_cpu_s": cpu,
        "machine_cpu_s": busy,
        "machine_wall_s": wall,
    }


# -- 1. job start rate ---------------------------------------------------------


def measureStartRate(
    ctx: Context, name: str, options: tuple[str, ...] = ()
) -> dict[str, Any]:
    """POST /jobs of `true` from the clients on a server of its own; the
    newest job must have COMPLETED (the jobs really ran)."""
    s = ctx.settings
    server = ctx.server(name, options=options)
    try:
        result = repeatLoad(
            ctx,
            server,
            {
                "method": "POST",
                "path": "/jobs",
                "body": {"command": "true", "args": []},
                "expect": 201,
                "duration": s.start_rate_s,
            },
            s.clients,
        )
        client = server.client()
        page = client.expect(200, "GET", "/jobs?limit=1")
        newest = client.waitEnded(page["jobs"][0]["id"])
        if newest["status"] != "COMPLETED":
            raise BenchError(f"a `true` job ended {newest['status']} ({name})")
        client.close()
    finally:
        ctx.stop(server)
    return result


def startRate(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    api = measureStartRate(ctx, "start_rate")
    # The second goal: the same load with no cgroups at all.
    noCgroups = measureStartRate(ctx, "start_rate_cgroups_off", ("--cgroups=off",))
    duration = str(s.start_rate_s)
    inflight = str(s.clients)
    raw = runBare("spawn", "--duration", duration, "--inflight", inflight)
    rawSetsid = runBare(
        "spawn", "--duration", duration, "--inflight", inflight, "--wrap", "setsid"
    )
    rawGate = runBare(
        "spawn", "--duration", duration, "--inflight", inflight, "--wrap", "gate"
    )
    rawSandbox = (
        runBare(
            "spawn", "--duration", duration, "--inflight", inflight, "--wrap", "sandbox"
        )
        if os.getuid() == 0
        else None
    )
    rawLauncher = None
    if os.getuid() == 0:
        try:
            rawLauncher = runBare(
                "spawn",
                "--duration",
                duration,
                "--inflight",
                inflight,
                "--wrap",
                "launcher",
            )
        except BenchError as e:
            # A commit from before the launcher, or no C compiler here.
            log(f"start_rate: no bare launcher row ({str(e).splitlines()[-1]})")
    rawSpawner = (
        runBare(
            "--duration",
            duration,
            "--inflight",
            inflight,
            "--sandbox",
            script=BARE_SPAWNER,
        )
        if os.getuid() == 0
        else None
    )
    ratio = api["rate"] / raw["rate"]
    cpus = os.cpu_count() or 1
    rows = [
        Row(
            "1",
            f"job start rate: POST /jobs `true`, {s.clients} keep-alive clients",
            f"{api['rate']:.0f} jobs/s",
            f"bare reactor.spawnProcess(true), {s.clients} in flight: "
            f"{raw['rate']:.0f} jobs/s",
            ratio,
            ">= 0.50",
            judged(ratio >= 0.5),
        ),
        Row(
            "1o",
            f"job start rate with --cgroups off, {s.clients} keep-alive clients",
            f"{noCgroups['rate']:.0f} jobs/s",
            f"bare reactor.spawnProcess(true): {raw['rate']:.0f} jobs/s",
            noCgroups["rate"] / raw["rate"],
            ">= 0.70",
            judged(noCgroups["rate"] / raw["rate"] >= 0.7),
        ),
        *(
            Row(
                "1c",
                f"  (info) CPU per started job{label}: the machine's busy time "
                "(server, jobs, clients, kernel) / jobs",
                f"{result['machine_cpu_s'] / result['requests'] * 1e3:.2f} ms",
                f"the server's own: "
                f"{result['server_cpu_s'] / result['requests'] * 1e3:.2f} ms; "
                f"{cpus} CPUs "
                f"{result['machine_cpu_s'] / result['machine_wall_s'] / cpus:.0%}"
                " busy",
                None,
                "-",
                "info",
            )
            for label, result in (("", api), (", --cgroups off", noCgroups))
        ),
        Row(
            "1i",
            "  (info) bare spawnProcess of `setsid true` (what a job execs)",
            f"{rawSetsid['rate']:.0f} jobs/s",
            f"bare `true`: {raw['rate']:.0f} jobs/s",
            rawSetsid["rate"] / raw["rate"],
            "-",
            "info",
        ),
    ]
    rows.append(
        Row(
            "1i",
            "  (info) bare spawnProcess of `sh -c 'exec \"$@\"' setsid true` "
            "(a job's chain with cgroups)",
            f"{rawGate['rate']:.0f} jobs/s",
            f"bare `true`: {raw['rate']:.0f} jobs/s",
            rawGate["rate"] / raw["rate"],
            "-",
            "info",
        )
    )
    if rawSandbox is not None:
        rows.append(
            Row(
                "1i",
                "  (info) bare spawnProcess of a sandboxed job's chain (setsid "
                "unshare sh+mount setpriv env true)",
                f"{rawSandbox['rate']:.0f} jobs/s",
                f"bare `true`: {raw['rate']:.0f} jobs/s",
                rawSandbox["rate"] / raw["rate"],
                "-",
                "info",
            )
        )
    if rawLauncher is not None:
        rows.append(
            Row(
                "1i",
                "  (info) bare spawnProcess of the job launcher doing the same "
                "(setsid unshare mount setresuid in one process, true)",
                f"{rawLauncher['rate']:.0f} jobs/s",
                f"bare `true`: {raw['rate']:.0f} jobs/s",
                rawLauncher["rate"] / raw["rate"],
                "-",
                "info",
            )
        )
    if rawSpawner is not None:
        if rawSpawner["failed"]:
            raise BenchError(
                f"bare spawner: {rawSpawner['failed']} jobs failed (wait statuses "
                f"{rawSpawner.get('failed_statuses')})"
            )
        rows.append(
            Row(
                "1i",
                "  (info) bare long-lived spawner: fork, then setsid, unshare, "
                "tmpfs, setresuid in-process, one exec (bare_spawner.py)",
                f"{rawSpawner['rate']:.0f} jobs/s",
                f"bare `true`: {raw['rate']:.0f} jobs/s",
                rawSpawner["rate"] / raw["rate"],
                "-",
                "info",
            )
        )
    return rows, {
        "api": api,
        "api_cgroups_off": noCgroups,
        "bare": raw,
        "bare_setsid": rawSetsid,
        "bare_gate_chain": rawGate,
        "bare_sandbox_chain": rawSandbox,
        "bare_sandbox_launcher": rawLauncher,
        "bare_spawner_sandbox": rawSpawner,
    }


# -- 1d. start rate by identity mode -------------------------------------------


def startRateByIdentity(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """
    The start rate of jobs under each identity mode, side by side in one run:
    a dynamic uid per job (the default as root: a lock, a mount and IPC
    namespace, private /proc and tmpfs folders) against today's shared
    identity (--run-as nobody), and root jobs (--allow-root-jobs) for scale.
    """
    s = ctx.settings
    if os.getuid() != 0:
        return [
            Row(
                "1d",
                "start rate, dynamic identities vs shared --run-as",
                "-",
                "-",
                None,
                ">= 0.77",
                "skipped: identities need root",
            )
        ], {}
    modes = {
        "dynamic": (),
        "shared": ("--run-as=nobody",),
        "root": ("--allow-root-jobs",),
    }
    rates: dict[str, dict[str, Any]] = {}
    for mode, options in modes.items():
        rates[mode] = measureStartRate(ctx, f"start_rate_{mode}", options)
    dynamic, shared, root = (rates[m]["rate"] for m in ("dynamic", "shared", "root"))
    ratio = dynamic / shared
    rows = [
        Row(
            "1d",
            f"start rate, dynamic uid per job (default as root), {s.clients} clients",
            f"{dynamic:.0f} jobs/s",
            f"shared identity (--run-as nobody), same run: {shared:.0f} jobs/s",
            ratio,
            ">= 0.77 (within 1.3x)",
            judged(ratio >= 1 / 1.3),
        ),
        Row(
            "1d",
            "  (info) shared identity against root jobs (--allow-root-jobs)",
            f"{shared:.0f} jobs/s",
            f"root jobs, no sandbox: {root:.0f} jobs/s",
            shared / root,
            "-",
            "info",
        ),
    ]
    return rows, {"rates": rates}


# -- 2. job start latency ------------------------------------------------------


def startLatency(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    n = ctx.settings.latency_samples
    server = ctx.server("start_latency")
    try:
        client = server.client()
        noop = []
        for _ in range(n):
            sent = time.monotonic()
            status, _, _ = client.request("GET", "/no-such-route")
            noop.append(time.monotonic() - sent)
            if status != 404:
                raise BenchError(f"GET /no-such-route answered {status}")
        running: list[float] = []
        completed: list[float] = []
        polls = 0
        for _ in range(n):
            sent = time.monotonic()
            job = client.create("true")
            answered = time.monotonic()
            if job["status"] != "RUNNING":
                raise BenchError(f"POST /jobs answered a {job['status']} job")
            while True:
                state = client.expect(200, "GET", f"/jobs/{job['id']}")["status"]
                polls += 1
                if state != "RUNNING":
                    break
            seen = time.monotonic()
            if state != "COMPLETED":
                raise BenchError(f"`true` ended {state}")
            running.append(answered - sent)
            completed.append(seen - sent)
        client.close()
    finally:
        ctx.stop(server)
    bare = runBare("latency", "--samples", str(n))
    raw = {
        "post_to_running": summary(running),
        "post_to_completed_visible": summary(completed),
        "status_polls": polls,
        "noop_roundtrip": summary(noop),
        "bare_spawn_to_exit": summary(bare["samples"]),
    }
    rows = []
    for p in ("p50", "p99"):
        rows.append(
            Row(
                "2",
                f"start latency {p}: POST /jobs -> response (RUNNING), 1 client",
                ms(raw["post_to_running"][p]),
                f"no-op GET /no-such-route round trip {p}: "
                f"{ms(raw['noop_roundtrip'][p])}",
                raw["post_to_running"][p] / raw["noop_roundtrip"][p],
                "-",
                "info",
            )
        )
    for p in ("p50", "p99"):
        rows.append(
            Row(
                "2",
                f"start latency {p}: POST /jobs -> COMPLETED visible (GET poll)",
                ms(raw["post_to_completed_visible"][p]),
                f"bare spawnProcess(true) -> processEnded {p}: "
                f"{ms(raw['bare_spawn_to_exit'][p])}",
                raw["post_to_completed_visible"][p] / raw["bare_spawn_to_exit"][p],
                "-",
                "info",
            )
        )
    return rows, raw


# -- 3. output ingest -----------------------------------------------------------


#: How many more jobs of the ingest's size one server takes in a row,
#: keeping their output, for row 3s (a server that has been running).
INGEST_AGAIN = 4


def ingestOne(server: Server, client: Any, size: int) -> float:
    """Seconds for one job printing C{size} bytes to be COMPLETED, all kept."""
    started = time.monotonic()
    job = client.create("head", "-c", str(size), "/dev/zero")
    # An (empty) stderr follow ends exactly when the job has ended and its
    # output is closed: no polling load on the server while it ingests.
    status, _response, _ = client.request(
        "GET", f"/jobs/{job['id']}/logs?stream=stderr&follow=true"
    )
    elapsed = time.monotonic() - started
    if status != 200:
        raise BenchError(f"stderr follow answered {status}")
    final = client.expect(200, "GET", f"/jobs/{job['id']}")
    onDisk = os.path.getsize(os.path.join(server.stateDir, "jobs", job["id"], "stdout"))
    if final["status"] != "COMPLETED" or final["stdout_bytes"] != size:
        raise BenchError(f"ingest job ended {final}")
    if onDisk != size:
        raise BenchError(f"{onDisk} bytes on disk, not {size}")
    return elapsed


def ingest(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    size = ctx.settings.ingest_bytes
    server = ctx.server("ingest")
    try:
        client = server.client()
        rssBefore = server.rss()["VmRSS"]
        peakReset = resetPeakRSS(server.pid)
        cpu0 = server.cpu()
        elapsed = ingestOne(server, client, size)
        cpu = server.cpu() - cpu0
        peak = server.rss()["VmHWM"]
        # The same again and again, every output kept: what a server that
        # has been running a while sees (its spools fill the page cache).
        again = [ingestOne(server, client, size) for _ in range(INGEST_AGAIN)]
        client.close()
    finally:
        ctx.stop(server)
    bare = runBare("ingest", "--bytes", str(size))
    scratch = os.path.join(ctx.workdir, "bare-ingest.out")
    bareWrite = runBare("ingest", "--bytes", str(size), "--write", scratch)
    os.unlink(scratch)
    if bare["bytes"] != size or bareWrite["written"] != size:
        raise BenchError("bare ingest lost bytes")
    rate = size / MB / elapsed
    ratio = rate / bare["rate_mb_s"]
    raw = {
        "bytes": size,
        "elapsed_s": elapsed,
        "rate_mb_s": rate,
        "server_cpu_util": cpu / elapsed,
        "rss_before_kib": rssBefore,
        "peak_rss_kib": peak,
        "peak_rss_reset": peakReset,
        "bare_discard": bare,
        "bare_write_to_file": bareWrite,
        "again_elapsed_s": again,
    }
    lastRate = size / MB / again[-1]
    rows = [
        Row(
            "3",
            f"output ingest: {humanBytes(size)} stdout -> COMPLETED, all on disk",
            mbps(rate),
            f"bare ProcessProtocol discarding it: {mbps(bare['rate_mb_s'])}",
            ratio,
            ">= 0.80",
            judged(ratio >= 0.8),
        ),
        Row(
            "3i",
            "  (info) same, bare ProcessProtocol appending to a file",
            mbps(rate),
            f"bare, writing a file: {mbps(bareWrite['rate_mb_s'])}",
            rate / bareWrite["rate_mb_s"],
            "-",
            "info",
        ),
        Row(
            "3s",
            f"  (info) the same job {INGEST_AGAIN} more times on the same server, "
            f"every output kept: the last one",
            mbps(lastRate),
            f"bare ProcessProtocol discarding it: {mbps(bare['rate_mb_s'])}",
            lastRate / bare["rate_mb_s"],
            "-",
            "info",
        ),
        Row(
            "3",
            "server peak RSS (VmHWM) during the ingest",
            mib(peak),
            f"RSS before: {mib(rssBefore)}",
            None,
            "-",
            "info",
        ),
    ]
    return rows, raw


# -- 4. follow throughput ----------------------------------------------------


def followThroughput(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    size = s.follow_bytes
    sshd = ctx.ssh()
    server = ctx.server("follow")
    jw = jwCommand()
    env = jwEnvironment(server.port)
    command = ["head", "-c", str(size), "/dev/zero"]
    jwTimes: list[float] = []
    sharedTimes: list[float] = []
    sshTimes: list[float] = []
    # jobworker keeps every byte in a file on the server as it sends it;
    # ssh keeps nothing. The same ssh run with `tee` to a file on the server
    # shows what keeping costs here (info).
    kept = os.path.join(ctx.workdir, "ssh-kept.out")
    keptTimes: list[float] = []
    try:
        for _ in range(s.follow_runs):
            jwTimes.append(timed([*jw, "exec", "--follow", "--", *command], env))
            # stdout and stderr to one place: jw follows the combined stream.
            sharedTimes.append(
                timed([*jw, "exec", "--follow", "--", *command], env, shared=True)
            )
            if sshd is not None:
                sshTimes.append(timed(sshd.argv(" ".join(command))))
                keeping = " ".join(command) + f" | tee {shlex.quote(kept)}"
                keptTimes.append(timed(sshd.argv(keeping)))
                # A pipeline's status is tee's: check what head gave it.
                if os.path.getsize(kept) != size:
                    raise BenchError(f"ssh ... | tee kept {os.path.getsize(kept)} B")
                os.unlink(kept)
        client = server.client()
        page = client.expect(200, "GET", f"/jobs?limit={2 * s.follow_runs}")
        for job in page["jobs"]:
            if job["status"] != "COMPLETED" or job["stdout_bytes"] != size:
                raise BenchError(f"followed job ended {job}")
        client.close()
    finally:
        ctx.stop(server)
    jwWall = statistics.median(jwTimes)
    sharedWall = statistics.median(sharedTimes)
    raw: dict[str, Any] = {
        "bytes": size,
        "jw_wall_s": jwTimes,
        "jw_mb_s": size / MB / jwWall,
        "jw_shared_wall_s": sharedTimes,
    }
    value = f"{jwWall:.2f} s, {mbps(size / MB / jwWall)}"
    measure = f"follow: jw exec --follow -- head -c {humanBytes(size)}, median"
    if sshd is None:
        raw["ssh"] = ctx.sshError
        return [
            Row(
                "4",
                measure,
                value,
                "ssh unavailable",
                None,
                ">= 1.00",
                "ssh unavailable",
            )
        ], raw
    sshWall = statistics.median(sshTimes)
    keptWall = statistics.median(keptTimes)
    raw.update(
        ssh_wall_s=sshTimes,
        ssh_mb_s=size / MB / sshWall,
        ssh=sshd.version,
        ssh_kept_wall_s=keptTimes,
    )
    ratio = sshWall / jwWall  # speed ratio: jw MB/s over ssh MB/s
    return [
        Row(
            "4",
            measure,
            value,
            f"ssh localhost 'head -c ...': {sshWall:.2f} s, "
            f"{mbps(size / MB / sshWall)}",
            ratio,
            ">= 1.00",
            judged(ratio >= 1.0),
        ),
        Row(
            "4m",
            "  (info) the same with jw's stdout and stderr to one place (2>&1: "
            "the combined stream, framed)",
            f"{sharedWall:.2f} s, {mbps(size / MB / sharedWall)}",
            f"ssh: {sshWall:.2f} s",
            sshWall / sharedWall,
            "-",
            "info",
        ),
        Row(
            "4i",
            "  (info) the same, ssh keeping the output in a file on the server "
            "as jobworker does (piped through `tee FILE`)",
            f"jw: {jwWall:.2f} s",
            f"ssh, through tee: {keptWall:.2f} s, {mbps(size / MB / keptWall)}",
            keptWall / jwWall,
            "-",
            "info",
        ),
    ], raw


# -- 5. fan-out ------------------------------------------------------------------


def fanout(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    size = s.fanout_bytes
    server = ctx.server("fanout")
    raw: dict[str, Any] = {"bytes": size}
    try:
        client = server.client()
        for n in (1, s.fanout_followers):
            workers = Workers(ctx.cleanup, n, {"mode": "follow", "port": server.port})
            rssBefore = server.rss()["VmRSS"]
            resetPeakRSS(server.pid)
            # The job waits a moment so every follower is attached before the
            # first byte: the followers stream live output, then catch up.
            job = client.create("sh", "-c", f"sleep 1; exec head -c {size} /dev/zero")
            cpu0 = server.cpu()
            workers.go([{"path": f"/jobs/{job['id']}/logs?follow=true"}] * n)
            results = workers.results()
            cpu = server.cpu() - cpu0
            peak = server.rss()["VmHWM"]
            wrong = [r["bytes"] for r in results if r["bytes"] != size]
            if wrong:
                raise BenchError(f"followers got {wrong[:3]} bytes, not {size}")
            final = client.expect(200, "GET", f"/jobs/{job['id']}")
            if final["status"] != "COMPLETED":
                raise BenchError(f"fan-out job ended {final['status']}")
            span = max(r["end"] for r in results) - min(r["first"] for r in results)
            raw[str(n)] = {
                "followers": n,
                "window_s": span,
                "aggregate_mb_s": n * size / MB / span,
                "rss_before_kib": rssBefore,
                "peak_rss_kib": peak,
                "rss_growth_kib": peak - rssBefore,
                "server_cpu_s": cpu,
                "per_follower_s": [r["end"] - r["first"] for r in results],
                "followers_cpu_s": sum(r["cpu"] for r in results),
            }
        client.close()
    finally:
        ctx.stop(server)
    one, many = raw["1"], raw[str(s.fanout_followers)]
    ratio = many["aggregate_mb_s"] / one["aggregate_mb_s"]
    growth = many["rss_growth_kib"]
    n = s.fanout_followers
    return [
        Row(
            "5",
            f"fan-out: {n} followers of one {humanBytes(size)} job, aggregate",
            mbps(many["aggregate_mb_s"]),
            f"1 follower: {mbps(one['aggregate_mb_s'])}",
            ratio,
            ">= 0.80",
            judged(ratio >= 0.8),
        ),
        Row(
            "5",
            f"fan-out: server RSS growth with {n} followers (VmHWM - RSS before)",
            mib(growth),
            f"1 follower: {mib(one['rss_growth_kib'])}",
            None,
            "< 64 MiB",
            judged(growth < 64 * 1024),
        ),
    ], raw


# -- 4c, 5j. the data path to curl (issue 16) ----------------------------------


def followCurl(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """Live follow and finished log to curl, beside the bare TLS sender; best of 3."""
    s = ctx.settings
    size = s.follow_bytes
    raw: dict[str, Any] = {"bytes": size, "bare": [], "runs": []}
    server = ctx.server("follow_curl")
    try:
        for _ in range(s.follow_runs):
            raw["bare"].append(datapath.bareSend(ctx.cleanup, size))
            raw["runs"].append(datapath.liveAndFinished(server, size))
        raw["unfollowed"] = [
            datapath.unfollowedFinished(server, size) for _ in range(s.follow_runs)
        ]
    finally:
        ctx.stop(server)
    bare = max(r["rate_mb_s"] for r in raw["bare"])
    live = max(r["live"]["rate_mb_s"] for r in raw["runs"])
    done = max(r["finished"]["rate_mb_s"] for r in raw["runs"])
    unfollowed = max(r["rate_mb_s"] for r in raw["unfollowed"])
    reference = f"bare Twisted TLS sender (1 MiB writes): {mbps(bare)}"
    return [
        Row(
            "4c",
            f"live follow of a {humanBytes(size)} job to curl, best of {s.follow_runs}",
            mbps(live),
            reference,
            live / bare,
            ">= 0.55",
            judged(live / bare >= 0.55),
        ),
        Row(
            "4f",
            f"finished {humanBytes(size)} log to curl, best of {s.follow_runs}",
            mbps(done),
            reference,
            done / bare,
            ">= 0.60",
            judged(done / bare >= 0.60),
        ),
        Row(
            "4u",
            f"  (info) the same, the log of a job nobody followed (its spool "
            f"handed all but its newest 32 MiB back to the kernel: read from disk), "
            f"best of {s.follow_runs}",
            mbps(unfollowed),
            reference,
            unfollowed / bare,
            "-",
            "info",
        ),
    ], raw


def followersJob(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """
    The job's own wall (head's, timed inside the job) with 16 live curl
    followers against the same job alone, alternating, best of each.
    """
    s = ctx.settings
    size = s.follow_bytes
    n = min(16, s.fanout_followers)
    raw: dict[str, Any] = {"bytes": size, "alone": [], "followed": []}
    server = ctx.server("followers_job")
    try:
        for _ in range(s.follow_runs):
            raw["alone"].append(datapath.followedJob(server, size, 0))
            raw["followed"].append(datapath.followedJob(server, size, n))
    finally:
        ctx.stop(server)
    alone = min(r["job_wall_s"] for r in raw["alone"])
    followed = min(r["job_wall_s"] for r in raw["followed"])
    ratio = followed / alone
    return [
        Row(
            "5j",
            f"{humanBytes(size)} job with {n} live curl followers: job wall "
            f"(all got every byte), best of {s.follow_runs}",
            f"{followed:.2f} s",
            f"same job alone: {alone:.2f} s",
            ratio,
            "<= 1.5",
            judged(ratio <= 1.5),
        )
    ], raw


# -- 6. request rate -------------------------------------------------------------


def requestRate(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    server = ctx.server("request_rate")
    rounds: list[dict[str, Any]] = []
    try:
        client = server.client()
        job = client.create("true")
        client.waitEnded(job["id"])
        client.close()
        for _ in range(s.request_rounds):
            noop = repeatLoad(
                ctx,
                server,
                {
                    "method": "GET",
                    "path": "/no-such-route",
                    "expect": 404,
                    "duration": s.request_s,
                    "user": None,
                },
                s.clients,
            )
            auth = repeatLoad(
                ctx,
                server,
                {
                    "method": "GET",
                    "path": f"/jobs/{job['id']}",
                    "expect": 200,
                    "duration": s.request_s,
                },
                s.clients,
            )
            rounds.append({"noop": noop, "auth": auth})
    finally:
        ctx.stop(server)

    def total(kind: str) -> float:
        requests = sum(r[kind]["requests"] for r in rounds)
        return requests / sum(r[kind]["window_s"] for r in rounds)

    authRate, noopRate = total("auth"), total("noop")
    ratio = authRate / noopRate
    return [
        Row(
            "6",
            f"request rate: GET /jobs/{{id}} with Basic auth, {s.clients} clients",
            f"{authRate:.0f} req/s",
            f"no-op (unauthenticated GET /no-such-route, JSON 404): "
            f"{noopRate:.0f} req/s",
            ratio,
            ">= 0.80",
            judged(ratio >= 0.8),
        )
    ], {"rounds": rounds, "auth_rate": authRate, "noop_rate": noopRate}


# -- 7. CLI round trip -----------------------------------------------------------


def cliRoundTrip(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    sshd = ctx.ssh()
    server = ctx.server("cli")
    jw = jwCommand()
    env = jwEnvironment(server.port)
    times: dict[str, list[float]] = {"status": [], "exec": [], "ssh": []}
    try:
        client = server.client()
        job = client.create("true")
        client.waitEnded(job["id"])
        client.close()
        status = [*jw, "status", job["id"]]
        execute = [*jw, "exec", "--follow", "--", "true"]
        timed(status, env)  # warm the page cache, not measured
        if sshd is not None:
            timed(sshd.argv("true"))
        for _ in range(s.cli_runs):
            times["status"].append(timed(status, env))
            times["exec"].append(timed(execute, env))
            if sshd is not None:
                times["ssh"].append(timed(sshd.argv("true")))
    finally:
        ctx.stop(server)
    # Floors of a Python client: the interpreter, and importing jw's modules.
    # Same environment as jw (no PYTHONDONTWRITEBYTECODE games).
    floors = {
        "python_startup_s": statistics.median(
            timed([PYTHON, "-c", "pass"], env) for _ in range(5)
        ),
        "import_jobworker_cli_s": statistics.median(
            timed([PYTHON, "-c", "import jobworker.client.cli"], env) for _ in range(5)
        ),
    }
    raw: dict[str, Any] = {**{k: v for k, v in times.items() if v}, **floors}
    rows = []
    for key, label, goal in (
        ("status", "CLI: jw status ID, median wall", 0.40),
        ("exec", "CLI: jw exec --follow -- true, median wall", 0.50),
    ):
        value = statistics.median(times[key])
        if sshd is None:
            rows.append(
                Row(
                    "7",
                    label,
                    ms(value),
                    "ssh unavailable",
                    None,
                    f"<= {goal:.2f}",
                    "ssh unavailable",
                )
            )
            continue
        ref = statistics.median(times["ssh"])
        rows.append(
            Row(
                "7",
                label,
                ms(value),
                f"ssh localhost true: {ms(ref)}",
                value / ref,
                f"<= {goal:.2f}",
                judged(value <= goal * ref),
            )
        )
    rows.append(
        Row(
            "7i",
            "  (info) python -c 'import jobworker.client.cli' (jw's floor)",
            ms(floors["import_jobworker_cli_s"]),
            f"python -c pass: {ms(floors['python_startup_s'])}",
            None,
            "-",
            "info",
        )
    )
    if sshd is None:
        raw["ssh"] = ctx.sshError
    return rows, raw


# -- 8. concurrency ---------------------------------------------------------------


def split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def concurrency(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    n = s.concurrency_jobs
    server = ctx.server("concurrency")
    raw: dict[str, Any] = {"jobs": n, "server_nofile": nofileLimit(server.pid)}
    try:
        client = server.client()
        # Reference: status latency of one running job on an idle server.
        probe = client.create("sleep", "60")
        idle = []
        for _ in range(200 if n >= 1000 else 20):
            sent = time.monotonic()
            client.expect(200, "GET", f"/jobs/{probe['id']}")
            idle.append(time.monotonic() - sent)
        client.expect(200, "POST", f"/jobs/{probe['id']}/stop")
        rssIdle = server.rss()["VmRSS"]

        # Start n jobs from s.clients processes.
        body = {"command": "sleep", "args": ["60"]}
        creators = Workers(ctx.cleanup, s.clients, {"mode": "ops", "port": server.port})
        started = time.monotonic()
        creators.go(split([["POST", "/jobs", body]] * n, s.clients))
        created = creators.results()
        createdIn = time.monotonic() - started
        server.noteJobs()
        jobs = [res for r in created for res in r["results"]]
        bad = [j for j in jobs if j[0] != 201 or j[2]["status"] != "RUNNING"]
        if bad:
            raise BenchError(f"{len(bad)} creations failed: {bad[:3]}")
        ids = [j[2]["id"] for j in jobs]
        pids = {j[2]["pid"] for j in jobs}
        alive = {pid for pid, _, _, _ in processes()}
        if not pids <= alive:
            raise BenchError(f"{len(pids - alive)} job processes are not alive")
        listed = client.expect(200, "GET", "/jobs?status=RUNNING&limit=1000")
        listedIds = {j["id"] for j in listed["jobs"]}
        running = len(set(ids) & listedIds)

        # Status latency while they all run, one client.
        latencies = []
        for jobId in ids:
            sent = time.monotonic()
            job = client.expect(200, "GET", f"/jobs/{jobId}")
            latencies.append(time.monotonic() - sent)
            if job["status"] != "RUNNING":
                raise BenchError(f"job {jobId} is {job['status']}, not RUNNING")
        rssRunning = server.rss()["VmRSS"]

        # Stop them all concurrently: s.clients processes x 8 connections.
        stoppers = Workers(
            ctx.cleanup,
            s.clients,
            {"mode": "ops", "port": server.port, "threads": 8},
        )
        payload = split([["POST", f"/jobs/{i}/stop", None] for i in ids], s.clients)
        started = time.monotonic()
        stoppers.go(payload)
        stopped = stoppers.results()
        allStopped = max(r["end"] for r in stopped) - started
        answers = [res for r in stopped for res in r["results"]]
        bad = [a for a in answers if a[0] != 200 or a[2]["status"] != "STOPPED"]
        if bad:
            raise BenchError(f"{len(bad)} stops failed: {bad[:3]}")
        deadline = time.monotonic() + 60
        while inSessions(pids) and time.monotonic() < deadline:
            time.sleep(0.005)
        noneLeft = time.monotonic() - started
        leftovers = inSessions(pids)
        stopLatency = [a[1] for a in answers]
        client.close()
    finally:
        ctx.stop(server)
    raw.update(
        create_s=createdIn,
        create_rate=n / createdIn,
        running=running,
        status_latency=summary(latencies),
        idle_status_latency=summary(idle),
        rss_idle_kib=rssIdle,
        rss_running_kib=rssRunning,
        stop_all_s=allStopped,
        none_left_s=noneLeft,
        stop_request_latency=summary(stopLatency),
        leftover_processes=len(leftovers),
    )
    if leftovers:
        raise BenchError(f"{len(leftovers)} job processes left after stop")
    return [
        Row(
            "8",
            f"concurrency: {n} x `sleep 60` started (8 clients), all RUNNING",
            f"{running}/{n} RUNNING",
            f"started in {raw['create_s']:.1f} s ({raw['create_rate']:.0f} jobs/s)",
            None,
            "all RUNNING",
            judged(running == n),
        ),
        Row(
            "8",
            f"concurrency: GET /jobs/{{id}} p99 while {n} run (p50 "
            f"{ms(raw['status_latency']['p50'])})",
            ms(raw["status_latency"]["p99"]),
            f"1 job running: p99 {ms(raw['idle_status_latency']['p99'])}",
            raw["status_latency"]["p99"] / raw["idle_status_latency"]["p99"],
            "-",
            "info",
        ),
        Row(
            "8",
            f"concurrency: server RSS with {n} running",
            mib(rssRunning),
            f"idle: {mib(rssIdle)}",
            rssRunning / rssIdle,
            "-",
            "info",
        ),
        Row(
            "8",
            f"concurrency: stop all {n} (64 concurrent POST stop) -> all "
            "STOPPED / no process left",
            f"{allStopped:.2f} s / {noneLeft:.2f} s",
            f"{len(leftovers)} processes left",
            None,
            "none left",
            judged(not leftovers),
        ),
    ], raw


# -- 9. store scale ----------------------------------------------------------------


def storeScale(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    s = ctx.settings
    profile = None
    if ctx.profileDir is not None:
        profile = os.path.join(ctx.profileDir, "store.pstats")
    raw = store_scale.measure(
        ctx.cleanup,
        ctx.workdir,
        s.store_jobs,
        s.store_samples,
        profile,
        ctx.serverArgs,
    )
    if profile is not None and os.path.exists(profile):
        writeProfileSummary(profile)
    empty, full = raw["empty"], raw["full"]
    n = f"{s.store_jobs // 1000}k" if s.store_jobs >= 1000 else str(s.store_jobs)
    growth = full["rss_kib"] - empty["rss_kib"]
    rows = [
        Row(
            "9",
            f"store: start-up with {n} ended jobs (exec -> listening)",
            f"{full['startup_s']:.2f} s",
            f"empty store: {empty['startup_s']:.2f} s",
            full["startup_s"] / empty["startup_s"],
            "< 2 s",
            judged(full["startup_s"] < 2.0),
        )
    ]
    for key, label, goal in (
        ("first_page", "GET /jobs first page", True),
        ("failed_page", "GET /jobs?status=FAILED&limit=100", False),
        ("deep_page", f"GET /jobs?cursor={full['deep_cursor']} (deep)", False),
    ):
        for p in ("p50", "p99"):
            rows.append(
                Row(
                    "9",
                    f"store: {label} {p}, {n} jobs",
                    ms(full[key][p]),
                    f"empty store: {ms(empty[key][p])}",
                    full[key][p] / empty[key][p],
                    "< 50 ms" if goal else "-",
                    judged(full[key][p] < 0.05) if goal else "info",
                )
            )
    rows.append(
        Row(
            "9",
            f"store: server RSS with {n} ended jobs (after the same requests)",
            mib(full["rss_kib"]),
            f"empty store: {mib(empty['rss_kib'])}",
            full["rss_kib"] / empty["rss_kib"],
            "growth < 10 MiB",
            judged(growth < 10 * 1024),
        )
    )
    return rows, raw


SCENARIOS: dict[str, Callable[[Context], tuple[list[Row], dict[str, Any]]]] = {
    "start_rate": startRate,
    "start_rate_identity": startRateByIdentity,
    "start_latency": startLatency,
    "ingest": ingest,
    "follow": followThroughput,
    "fanout": fanout,
    "follow_curl": followCurl,
    "followers_job": followersJob,
    "request_rate": requestRate,
    "cli": cliRoundTrip,
    "concurrency": concurrency,
    "store": storeScale,
}


# -- the machine, the table ---------------------------------------------------------


def machine() -> dict[str, Any]:
    def first(path: str, prefix: str) -> str:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith(prefix):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    import OpenSSL

    import twisted

    try:
        import treq

        treqVersion = treq.__version__
    except Exception:
        treqVersion = "?"
    memKiB = first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "ram_gib": round(int(memKiB) / (1 << 20), 1) if memKiB.isdigit() else "?",
        "kernel": platform.release(),
        "os": osName(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "treq": treqVersion,
        "openssl": ssl.OPENSSL_VERSION,
        "pyopenssl": OpenSSL.__version__,
        "tmp_fs": filesystemOf(os.path.realpath(os.environ.get("TMPDIR", "/tmp"))),
    }


def osName() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "?"


def codeDigest(root: str) -> str:
    """A digest of the server's code (jobworker/, twisted/plugins/) under root."""
    digest = hashlib.sha256()
    for top in ("jobworker", os.path.join("twisted", "plugins")):
        for directory, dirs, files in sorted(os.walk(os.path.join(root, top))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".py", ".json", ".yaml")):
                    path = os.path.join(directory, name)
                    digest.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
    return digest.hexdigest()[:16]


def gitState(commit: str | None) -> dict[str, Any]:
    """The code measured: a commit snapshot, or the working tree and its state."""
    if commit is not None:
        return {"commit": git("rev-parse", "--short", commit), "snapshot": True}
    dirty = git("status", "--porcelain", "--", "jobworker", "twisted")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "snapshot": False,
        "jobworker_uncommitted": [line[3:] for line in dirty.splitlines()],
    }


def snapshot(cleanup: Cleanup, commit: str) -> str:
    """Extract C{commit} (git archive) into a temp dir; return its path."""
    directory = cleanup.tempdir("jwbench-code-")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(f"run.py: git archive {commit}: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
    return directory


def filesystemOf(path: str) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if path.startswith(mount) and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return f"{kind} ({best})"


def table(rows: list[Row]) -> str:
    headers = [
        "#",
        "measure",
        "jobworker",
        "reference (same run)",
        "ratio",
        "goal",
        "result",
    ]
    cells = [
        [
            r.key,
            r.measure,
            r.value,
            r.reference,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.goal,
            r.result,
        ]
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [headers, *cells]) for i in range(7)]
    lines = []

    def line(values: list[str]) -> str:
        return (
            "| " + " | ".join(v.ljust(widths[i]) for i, v in enumerate(values)) + " |"
        )

    lines.append(line(headers))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend(line(c) for c in cells)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, < 60 s")
    parser.add_argument("--only", help="comma-separated scenarios to run")
    parser.add_argument("--profile", metavar="DIR", help="run servers under cProfile")
    parser.add_argument("--out", help="JSON results file (default: see below)")
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="measure this commit (a git archive snapshot) instead of the "
        "working tree, e.g. --commit HEAD while others edit jobworker/",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before each scenario, wait up to SECONDS for the machine to be "
        "under 15%% busy (default: 180 for a full run, 0 with --smoke)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra twistd jobworker option for every server (repeatable), "
        "e.g. --server-arg=--cgroups=off",
    )
    parser.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="repeats of the follow scenarios (default: 3, 1 with --smoke)",
    )
    args = parser.parse_args()
    settings = SMOKE if args.smoke else FULL
    if args.runs is not None:
        settings = dataclasses.replace(settings, follow_runs=args.runs)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.smoke else 180.0
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(names) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    partial = args.smoke or args.only or args.profile
    out = args.out or os.path.join(
        RESULTS,
        "smoke.json" if args.smoke else "partial.json" if partial else "latest.json",
    )
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    # SIGTERM / SIGHUP end the run through the same cleanup as Ctrl-C.
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    ctx = Context(settings, args.profile, tuple(args.server_arg))
    codeRoot = ROOT
    if args.commit is not None:
        # Measure a fixed commit, untouched by edits made while the suite runs:
        # every server, jw and the store fill import jobworker from it.
        codeRoot = snapshot(ctx.cleanup, args.commit)
        log(f"measuring commit {git('rev-parse', '--short', args.commit)}")
    # Every server, jw and the store fill import jobworker from the code the
    # results name (the working tree, or the snapshot), not from whatever
    # build of it the virtualenv holds.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [codeRoot, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path.insert(0, codeRoot)
    measured = gitState(args.commit)
    digestBefore = codeDigest(codeRoot)
    began = time.monotonic()
    rows: list[Row] = []
    results: dict[str, Any] = {}
    failures: list[str] = []
    busy: dict[str, float] = {}
    try:
        for name in names:
            background, backgroundTop = waitQuiet(args.wait_quiet)
            log(f"{name}: running (machine {background:.0%} busy before it)")
            t0 = time.monotonic()
            try:
                scenarioRows, raw = SCENARIOS[name](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                detail = "".join(traceback.format_exception_only(type(e), e)).strip()
                log(f"{name}: BROKE: {detail}")
                if not isinstance(e, BenchError):
                    traceback.print_exc()
                failures.append(f"{name}: {detail}")
                rows.append(
                    Row(
                        "!",
                        f"{name} broke: {detail[:80]}",
                        "-",
                        "-",
                        None,
                        "-",
                        "ERROR",
                    )
                )
                results[name] = {"error": detail}
                continue
            raw["scenario_s"] = time.monotonic() - t0
            after, afterTop = busyFraction()
            raw["background_cpu_before"] = background
            raw["background_top_before"] = backgroundTop
            raw["background_cpu_after"] = after
            raw["background_top_after"] = afterTop
            busy[name] = max(background, after)
            log(f"{name}: done in {raw['scenario_s']:.1f}s")
            rows.extend(scenarioRows)
            results[name] = raw
    except KeyboardInterrupt:
        failures.append("interrupted")
        log("interrupted: cleaning up")
    finally:
        forced = ctx.cleanup.run()
        for line in forced:
            log(f"cleanup: {line}")
    if args.commit is None and codeDigest(codeRoot) != digestBefore:
        print(
            "WARNING: jobworker/ changed while the suite ran: figures mix two "
            "versions of the code (use --commit to measure a fixed commit)"
        )
        measured["changed_during_run"] = True
    if forced and not failures:
        failures.append(f"cleanup had to force: {forced}")
    text = table(rows)
    print(text)
    missed = [r for r in rows if r.result == "MISSED"]
    print()
    print(
        f"{len([r for r in rows if r.result == 'met'])} goals met, "
        f"{len(missed)} MISSED"
        + (f": {', '.join(sorted({r.key for r in missed}))}" if missed else "")
        + f"; server RLIMIT_NOFILE soft/hard {ctx.nofile} (raised in a preexec_fn "
        f"towards {SERVER_NOFILE}, capped by the hard limit); "
        f"wall {time.monotonic() - began:.0f} s"
    )
    noisy = {k: v for k, v in busy.items() if v > 0.15}
    if noisy:
        print(
            "NOTE: the machine was busy with other work around "
            + ", ".join(f"{k} ({v:.0%})" for k, v in noisy.items())
            + ": those figures are less reliable"
        )
    if ctx.sshError:
        print(f"ssh unavailable: {ctx.sshError}")
    for failure in failures:
        print(f"BROKE: {failure}")
    document = {
        "suite": "jobworker benchmarks",
        "command": "python benchmarks/run.py" + " ".join(["", *sys.argv[1:]]),
        "mode": "smoke" if args.smoke else "full",
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": time.monotonic() - began,
        "machine": machine(),
        "code": measured,
        "server_args": list(args.server_arg),
        "settings": asdict(settings),
        "server_nofile": ctx.nofile,
        "ssh_unavailable": ctx.sshError,
        "rows": [asdict(r) for r in rows],
        "table": text,
        "scenarios": results,
        "failures": failures,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
    log(f"raw numbers: {os.path.relpath(out)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
