"""
Issue 14, finding 5: one user cannot exhaust the server: memory and reactor
time per request are bounded, and each user gets a fair share of streams,
running jobs and job creations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.errors import BadRequest, TooManyRequests
from jobworker.executors.local.executor import localJobManager
from jobworker.executors.local.sandbox import jobOomScore
from jobworker.jobs.combined import CombinedReader, StoredOrder
from jobworker.jobs.manager import JobManager
from jobworker.jobs.order import encodeEntry
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.spool import StoredOutput, tailOffsetSoon, tailSteps
from jobworker.jobs.validation import MAX_JOB_DATA, parseJobRequest

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import LiveServer, rssKiB, sharedPath, sleep


class Sink:
    """A consumer that takes everything at once."""

    def __init__(self) -> None:
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        pass


class CombinedMemoryTests(SynchronousTestCase):
    def test_orderFileReadIncrementally(self) -> None:
        """A reader of a 200,000-entry order file never holds more than a
        few thousand entries (it used to load them all, per request)."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        entries = 200_000
        with open(os.path.join(folder, "stdout"), "wb") as f:
            f.write(b"o" * (entries // 2))
        with open(os.path.join(folder, "stderr"), "wb") as f:
            f.write(b"e" * (entries // 2))
        with open(os.path.join(folder, "order"), "wb") as f:
            f.write(b"".join(encodeEntry(n % 2, n // 2) for n in range(entries)))
        streams = (
            StoredOutput(os.path.join(folder, "stdout"), entries // 2),
            StoredOutput(os.path.join(folder, "stderr"), entries // 2),
        )
        got: list[bytes] = []
        most = 0
        reader = CombinedReader(
            streams,
            StoredOrder(os.path.join(folder, "order")),
            Sink(),  # type: ignore[arg-type]
            lambda stream, data: got.append(data),
        )
        original = reader._readOrder

        def watched() -> None:
            nonlocal most
            original()
            most = max(most, len(reader._entries))

        reader._readOrder = watched  # type: ignore[method-assign]
        self.successResultOf(reader.start())
        self.assertEqual(b"".join(got), b"oe" * (entries // 2))
        self.assertLess(most, 5000)


class TailTests(SynchronousTestCase):
    def test_hugeTailSearchYields(self) -> None:
        """A tail search over megabytes without newlines lets the reactor run."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"x" * (5 << 20))
        clock = Clock()
        d = tailOffsetSoon(clock, path, 5 << 20, 10)
        from twisted.internet.defer import ensureDeferred

        found = ensureDeferred(d)
        self.assertNoResult(found)
        for _ in range(10):
            clock.advance(0)
        self.assertEqual(self.successResultOf(found), 0)


class NewlineTailTests(SynchronousTestCase):
    """
    A C{?tail=} search's cost was one Python step per newline: on 2 MB of
    empty lines one C{tail=1000000} request held the server's thread for
    about 100 ms between two yields, and a Developer asking it from 32
    connections held every other user's requests for seconds (attacker
    round 6). Newlines are now counted a block at a time (in C), and only
    the block holding the answer is searched, by halves.
    """

    def path(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def steps(self, path: str, size: int, lines: int) -> tuple[int, int]:
        """The offset L{tailSteps} finds, and how many lines of it ran."""
        ran = 0

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            nonlocal ran
            if event == "line":
                ran += 1
            return tracer

        def calls(frame: Any, event: str, arg: Any) -> Any:
            return tracer if frame.f_code is tailSteps.__code__ else None

        sys.settrace(calls)
        try:
            found = [step for step in tailSteps(path, size, lines) if step is not None]
        finally:
            sys.settrace(None)
        return found[-1], ran

    def test_newlinesCostNoPythonStepEach(self) -> None:
        content = b"\n" * (2 * 1000 * 1000)
        path = self.path(content)
        offset, ran = self.steps(path, len(content), 1000 * 1000)
        self.assertEqual(offset, 1000 * 1000)
        self.assertLess(ran, 5000)

    def test_sameAnswers(self) -> None:
        """Whatever the lines' lengths and the block, the offset of the
        last C{lines} lines, as C{tail -n} reads them."""
        content = b"".join(b"x" * (i % 7) + b"\n" for i in range(3000)) + b"end"
        path = self.path(content)
        for lines in (1, 2, 3, 10, 999, 2999, 3000, 3001, 5000):
            for block in (1, 5, 64, 4096, 64 * 1024):
                kept = b"\n".join(content.split(b"\n")[-lines:])
                found = list(tailSteps(path, len(content), lines, block))[-1]
                self.assertEqual(content[found:], kept, (lines, block))
        ended = content + b"\n"
        path = self.path(ended)
        for lines in (1, 2, 3001):
            found = list(tailSteps(path, len(ended), lines, 100))[-1]
            self.assertEqual(
                ended[found:], b"\n".join(content.split(b"\n")[-lines:]) + b"\n"
            )


class ManagerFairnessTests(SynchronousTestCase):
    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()

    def manager(self, **policy: Any) -> JobManager:
        manager = localJobManager(
            self.reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            GroupKiller(),
            policy=JobPolicy(**policy),
        )
        self.addCleanup(manager.close)
        return manager

    def test_createRatePerUser(self) -> None:
        """Past the burst one user gets 429 with Retry-After; others do not."""
        manager = self.manager(createRate=2.0)
        request = parseJobRequest(b'{"command": "true"}')
        for _ in range(4):
            manager.create(request, "bob")
        error = self.assertRaises(TooManyRequests, manager.create, request, "bob")
        self.assertGreaterEqual(error.retryAfter, 1)
        manager.create(request, "alice")
        self.reactor.advance(0.5)
        manager.create(request, "bob")

    def test_createRateAfterTheClockWentBack(self) -> None:
        """
        The system clock stepped back an hour: bob's bucket does not owe
        that hour (every create was a 429 with Retry-After 3600 until the
        clock caught up); it keeps the tokens it had.
        """
        manager = self.manager(createRate=2.0)
        request = parseJobRequest(b'{"command": "true"}')
        manager.create(request, "bob")
        self.reactor.rightNow -= 3600
        manager.create(request, "bob")
        for _ in range(2):
            manager.create(request, "bob")
        error = self.assertRaises(TooManyRequests, manager.create, request, "bob")
        self.assertEqual(error.retryAfter, 1)

    def test_runningPerUser(self) -> None:
        """
        --max-running-per-user: bob's third job waits in the queue (issue 18);
        alice's runs; past --max-queued-per-user it is 429.
        """
        manager = self.manager(maxRunningPerUser=2, maxQueuedPerUser=1)
        request = parseJobRequest(b'{"command": "sleep", "args": ["9"]}')
        manager.create(request, "bob")
        manager.create(request, "bob")
        third = manager.create(request, "bob")
        self.assertEqual(third.status.value, "PENDING")
        self.assertRaises(TooManyRequests, manager.create, request, "bob")
        self.assertEqual(manager.create(request, "alice").status.value, "RUNNING")

    def test_limitsAboveTheMachineRefused(self) -> None:
        """memory_bytes of 10**15 is 400 even with no --max-memory."""
        from jobworker.executors.local import cgroups

        if os.getuid() != 0 or cgroups.detect() is None:
            # Without cgroups every limit is refused anyway.
            manager = self.manager()
        else:
            manager = localJobManager(
                self.reactor,
                os.path.abspath(self.mktemp()),
                5.0,
                GroupKiller(),
                cgroups=cgroups.detect(),
            )
            self.addCleanup(manager.close)
        request = parseJobRequest(
            b'{"command": "true", "limits": {"memory_bytes": 1000000000000000}}'
        )
        self.assertRaises(BadRequest, manager.create, request, "bob")
        request = parseJobRequest(
            b'{"command": "true", "limits": {"cpu_millicores": 100000000}}'
        )
        self.assertRaises(BadRequest, manager.create, request, "bob")


class RequestSizeTests(SynchronousTestCase):
    def test_jobDataBounded(self) -> None:
        """args and env together over the bound: 400."""
        big = "x" * (MAX_JOB_DATA // 2)
        body = json.dumps({"command": "true", "args": [big], "env": {"A": big}})
        self.assertRaises(BadRequest, parseJobRequest, body.encode())
        fine = json.dumps({"command": "true", "args": ["x" * 1000]})
        parseJobRequest(fine.encode())


class LiveExhaustionTests(TestCase):
    timeout = 120

    async def test_listResponseBoundedInBytes(self) -> None:
        """Big jobs: a page stops early (bounded bytes) and paging loses none."""
        server = LiveServer(self, "--create-rate=1000")
        arg = "a" * 30000
        ids = set()
        for _ in range(160):
            job = await server.createJob("true", arg)
            ids.add(job["id"])
        seen: set[str] = set()
        cursor = None
        pages = 0
        while True:
            path = "/jobs?limit=1000" + (f"&cursor={cursor}" if cursor else "")
            response = await server.request("GET", path, "ada")
            body = await treq.content(response)
            self.assertLessEqual(len(body), (4 << 20) + 64 * 1024)
            page = json.loads(body)
            seen.update(job["id"] for job in page["jobs"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, ids)
        self.assertGreater(pages, 1)

    async def test_logStreamsShared(self) -> None:
        """One user holding their share of streams: others still follow."""
        server = LiveServer(self, "--max-log-streams=8")
        bobs = await server.createJob("sleep", "30", user="bob")
        alices = await server.createJob("sh", "-c", "echo hi; sleep 30")
        follows = [
            server.request("GET", f"/jobs/{bobs['id']}/logs?follow=true", "bob")
            for _ in range(2)
        ]
        responses = [await d for d in follows]
        third = await server.request(
            "GET", f"/jobs/{bobs['id']}/logs?follow=true", "bob"
        )
        self.assertEqual(third.code, 429)
        mine = await server.request(
            "GET", f"/jobs/{alices['id']}/logs?follow=false", "alice"
        )
        self.assertEqual(mine.code, 200)
        await treq.content(mine)
        for job, user in ((bobs, "bob"), (alices, "alice")):
            await server.json("POST", f"/jobs/{job['id']}/stop", user)
        for response in responses:  # they end with the job
            await treq.content(response)

    async def test_hostileCombinedRequestsBounded(self) -> None:
        """
        Ten combined requests on a job with a huge order file: the server's
        memory grows less than 64 MiB, and /healthz keeps answering.
        """
        script = sharedPath(self)
        with open(script, "w") as f:
            f.write(
                "import os\n"
                "for i in range(150000):\n"
                "    os.write(1, b'o'); os.write(2, b'e')\n"
            )
        server = LiveServer(self)
        job = await server.createJob("python3", script)
        ended = await server.waitEnded(job["id"], timeout=60)
        self.assertEqual(ended["status"], "COMPLETED", ended)
        before = rssKiB(os.getpid())
        pending = [
            server.request(
                "GET", f"/jobs/{job['id']}/logs?stream=combined&follow=false", "alice"
            )
            for _ in range(10)
        ]
        worst = 0.0
        for _ in range(10):
            started = time.monotonic()
            health = await server.request("GET", "/healthz", None)
            await treq.content(health)
            worst = max(worst, time.monotonic() - started)
            await sleep(0.01)
        bodies = [await treq.content(await d) for d in pending]
        grown = (rssKiB(os.getpid()) - before) / 1024
        print(
            f"\nFIGURES combined x10: rss +{grown:.1f} MiB, "
            f"healthz worst {worst * 1000:.0f} ms (one reactor for client and server)"
        )
        for body in bodies:
            self.assertEqual(len(body), 300000)
        self.assertLess(grown, 64)


class SeparateServerTests(SynchronousTestCase):
    """
    The same attack against twistd in its own process, measured from
    outside: ten combined readers of a job with a 300,000-entry order file,
    and /healthz p99 meanwhile.
    """

    timeout = 120

    def test_healthzStaysQuick(self) -> None:
        from .faults.harness import Twistd

        if os.getuid() != 0:
            from twisted.trial.unittest import SkipTest

            raise SkipTest("the jobs write through the sandbox: needs root")
        script = sharedPath(self)
        with open(script, "w") as f:
            f.write(
                "import os\n"
                "for i in range(150000):\n"
                "    os.write(1, b'o'); os.write(2, b'e')\n"
            )
        server = Twistd(self, os.path.realpath(self.mktemp())).start()
        job = server.request(
            "POST", "/jobs", body={"command": "python3", "args": [script]}
        ).json()
        deadline = time.monotonic() + 60
        while server.request("GET", f"/jobs/{job['id']}").json()["status"] == "RUNNING":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        # Best of three rounds: another process may load this machine for
        # one round; the old code stalled the reactor every time (seconds).
        # The bound tells a stall from a busy machine (the figure itself, a
        # few ms when quiet, is printed, and belongs to the benchmarks): 50 ms
        # quiet here, 100-240 ms beside 8 busy loops, up to 320 ms beside 12.
        best = float("inf")
        for _ in range(3):
            p99, sizes = self.attack(server, job["id"])
            self.assertEqual(sizes, [300000] * 50)
            best = min(best, p99)
            if best < 1.0:
                break
        print(
            f"\nFIGURES separate server, 10 combined readers: healthz p99 "
            f"{best * 1000:.1f} ms (best of up to 3 rounds)"
        )
        self.assertLess(best, 1.0)

    def attack(self, server: Any, jobId: str) -> tuple[float, list[int]]:
        """Ten combined readers (5 reads each); /healthz p99 meanwhile."""
        import threading

        sizes: list[int] = []

        def read() -> None:
            for _ in range(5):
                got = server.request(
                    "GET", f"/jobs/{jobId}/logs?stream=combined&follow=false"
                )
                sizes.append(len(got.body))

        readers = [threading.Thread(target=read) for _ in range(10)]
        health = server.connection(10)
        health.request("GET", "/healthz")
        health.getresponse().read()
        for reader in readers:
            reader.start()
        samples = []
        while any(r.is_alive() for r in readers) or len(samples) < 50:
            started = time.monotonic()
            health.request("GET", "/healthz")
            health.getresponse().read()
            samples.append(time.monotonic() - started)
            time.sleep(0.005)
        for reader in readers:
            reader.join()
        health.close()
        samples.sort()
        return samples[int(len(samples) * 0.99) - 1], sizes


#: The checkout this test runs from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DescriptorShareTests(SynchronousTestCase):
    """L{descriptors}: half the limit for connections, half for jobs."""

    def test_caps(self) -> None:
        from jobworker.server import descriptors

        self.assertEqual(descriptors.connectionCap(1024, soft=1024), 512 - 64)
        self.assertEqual(descriptors.connectionCap(100, soft=1024), 100)
        self.assertEqual(descriptors.jobsCap(None, soft=1024), 512 // 9)
        self.assertEqual(descriptors.jobsCap(10, soft=1024), 10)
        self.assertEqual(descriptors.jobsCap(None, soft=65536), 32768 // 9)

    def test_raisedTowardsTheHardLimit(self) -> None:
        """A server given 256 soft, 4,096 hard runs with 4,096."""
        import subprocess
        import sys

        script = (
            "import resource; from jobworker.server import descriptors; "
            "print(descriptors.raiseSoftLimit(), "
            "resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
        )
        out = subprocess.run(
            ["prlimit", "--nofile=256:4096", sys.executable, "-c", script],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": ROOT},
        ).stdout
        self.assertEqual(out.split(), [b"(256,", b"4096)", b"4096"])


class JobsDescriptorCapTests(TestCase):
    """
    A user's running jobs held every descriptor of the server (9 each:
    pipes, output files, a pidfd, a uid lock, the gate's read end): no one
    could connect, not even an admin. Jobs past their half of the
    descriptor limit now wait
    in the queue, and connections keep theirs.
    """

    timeout = 120

    async def test_jobsQueueBeyondTheirHalf(self) -> None:
        from .twistd import Twistd

        server = await Twistd(self).start(prefix=("prlimit", "--nofile=256:256"))
        self.assertIn("at most 14 jobs run at once", server.protocol.log())
        jobs = [await server.createJob("sleep", "30", user="bob") for _ in range(15)]
        self.assertEqual([job["status"] for job in jobs[:14]], ["RUNNING"] * 14)
        self.assertEqual(jobs[14]["status"], "PENDING")
        # Everyone else still gets in.
        code, _ = await server.json("GET", "/jobs", "ada")
        self.assertEqual(code, 200)
        code, _ = await server.json("POST", f"/jobs/{jobs[0]['id']}/stop", "bob")
        self.assertEqual(code, 200)
        record = await server.waitEnded(jobs[0]["id"])
        self.assertEqual(record["status"], "STOPPED")


class JobsKeepTheDescriptorLimitTests(TestCase):
    """
    The server raises its own soft C{RLIMIT_NOFILE} (to hold connections
    and jobs' pipes), but a job gets the soft limit the server was started
    with: 65,536 breaks a job's C{select()} past descriptor 1,023 and makes
    every "close all descriptors" loop 64 times longer (systemd keeps 1,024
    soft for services' children for these reasons). The hard limit is left
    as it is, so a job may still raise its own.
    """

    timeout = 120

    async def assertJobLimits(self, *options: str) -> None:
        from .twistd import Twistd

        server = await Twistd(self).start(
            *options, prefix=("prlimit", "--nofile=256:4096")
        )
        self.assertIn("raised from 256 to 4096", server.protocol.log())
        job = await server.createJob("sh", "-c", "ulimit -Sn; ulimit -Hn; env")
        record = await server.waitEnded(job["id"])
        self.assertEqual(record["status"], "COMPLETED", record)
        output = await server.logs(job["id"])
        self.assertEqual(output.splitlines()[:2], [b"256", b"4096"])
        # The limit comes through the root stages' environment, never the job's.
        self.assertIn(b"PATH=", output)
        self.assertNotIn(b"JOBWORKER", output)

    async def test_spawner(self) -> None:
        """The default: the launcher, forked by the spawner (root), or the
        gate shell (not root)."""
        await self.assertJobLimits()

    async def test_launcherExec(self) -> None:
        """The launcher, spawned by the server for each job."""
        if os.getuid() != 0:
            raise SkipTest("the launcher is for a root server only")
        await self.assertJobLimits("--launcher=exec")

    async def test_execChain(self) -> None:
        """The exec chain (setsid, unshare, sh, setpriv, env)."""
        if os.getuid() != 0:
            raise SkipTest("the exec chain is for a root server only")
        await self.assertJobLimits("--launcher=off")

    async def test_unsandboxed(self) -> None:
        """A job run as root (--allow-root-jobs): only the gate shell."""
        if os.getuid() != 0:
            raise SkipTest("--allow-root-jobs needs a root server")
        await self.assertJobLimits("--allow-root-jobs")


def canLowerOomScore() -> bool:
    """Whether this process may start one with a negative oom_score_adj
    (CAP_SYS_RESOURCE: some containers' root lacks it)."""
    done = subprocess.run(
        ["choom", "-n", "-500", "--", "true"], capture_output=True, check=False
    )
    return done.returncode == 0


class JobsAreNotBeyondTheOomKillerTests(TestCase):
    """
    A job inherited the server's C{oom_score_adj}: under systemd's
    C{OOMScoreAdjust=-1000} (common for a service that must survive) every
    job was immune to the OOM killer, its own cgroup's memory limit
    included (a job over it hangs instead of being killed). Jobs now start
    with 0 when the server's is below, or with C{--job-oom-score-adj}, in
    each of the four start paths; never through the job's environment.
    """

    timeout = 120

    async def assertJobScore(self, expected: int, *options: str) -> None:
        from .twistd import Twistd

        prefix: tuple[str, ...] = ()
        if "--job-oom-score-adj=700" not in options:
            if not canLowerOomScore():
                raise SkipTest(
                    "this machine's root may not lower an oom_score_adj "
                    "(no CAP_SYS_RESOURCE): --job-oom-score-adj is tested instead"
                )
            prefix = ("choom", "-n", "-900", "--")
        server = await Twistd(self).start(*options, prefix=prefix)
        job = await server.createJob("sh", "-c", "cat /proc/self/oom_score_adj; env")
        record = await server.waitEnded(job["id"])
        self.assertEqual(record["status"], "COMPLETED", record)
        output = await server.logs(job["id"])
        self.assertEqual(output.splitlines()[0], str(expected).encode())
        self.assertNotIn(b"JOBWORKER", output)

    async def test_spawner(self) -> None:
        await self.assertJobScore(700, "--job-oom-score-adj=700")

    async def test_launcherExec(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("the launcher is for a root server only")
        await self.assertJobScore(700, "--job-oom-score-adj=700", "--launcher=exec")

    async def test_execChain(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("the exec chain is for a root server only")
        await self.assertJobScore(700, "--job-oom-score-adj=700", "--launcher=off")

    async def test_unsandboxed(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("--allow-root-jobs needs a root server")
        await self.assertJobScore(700, "--job-oom-score-adj=700", "--allow-root-jobs")

    async def test_protectedServer(self) -> None:
        """The default, under a server at -900: jobs at 0."""
        await self.assertJobScore(0)

    def test_scoreTheServerMayNotSetRefused(self) -> None:
        """
        A score below the floor of the server's own (set by a privileged
        hand: systemd's OOMScoreAdjust=), where the server may not lower it
        (no CAP_SYS_RESOURCE), failed every job (exit 125): the server
        refuses to start instead, saying why (a review). (No machine here
        can set such a floor: the child's answer is given.)
        """
        from jobworker.server.options import Options
        from jobworker.server.startup import StartupError
        from jobworker.server.tap import _jobOomScore

        options = Options()
        options.parseOptions(["--tls", "--job-oom-score-adj=100"])
        asked: list[int] = []

        def refuses(score: int) -> bool:
            asked.append(score)
            return False

        error = self.assertRaises(
            StartupError, _jobOomScore, options, own=500, canSet=refuses
        )
        self.assertEqual(asked, [100])
        self.assertIn("below the server's own oom_score_adj (500)", str(error))
        self.assertEqual(_jobOomScore(options, own=500, canSet=lambda s: True), 100)
        self.assertEqual(_jobOomScore(options, own=50, canSet=refuses), 100)
        self.assertEqual(asked, [100])  # raising is never tried: always allowed

    def test_defaultScore(self) -> None:
        self.assertEqual(jobOomScore(-1000), 0)
        self.assertEqual(jobOomScore(-1), 0)
        self.assertIsNone(jobOomScore(0))
        self.assertIsNone(jobOomScore(300))
