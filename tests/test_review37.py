"""
Defects found in the thirty-seventh session's rounds and reviews, each with
a test that failed against the code before its fix.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import generate_latest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.http import _ChunkedTransferDecoder
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from jobworker.certificates import (
    certificateBuilder,
    keyPEM,
    keyUsage,
    leafCertificate,
    newKey,
)
from jobworker.executors.local.pipes import drainInLargeReads
from jobworker.executors.local.process import OOM_ERROR, OOM_MAYBE_ERROR
from jobworker.executors.local.stalls import Slot, StallWatch
from jobworker.executors.slurm.documents import SlurmError, SlurmState, parseAccounting
from jobworker.executors.slurm.outcomes import outcomeOf, ranIn
from jobworker.jobs.combined import CombinedReader
from jobworker.jobs.records import JobStatus
from jobworker.jobs.spool import StoredOutput
from jobworker.jobs.stopping import StopRequest
from jobworker.metrics import Metrics
from jobworker.server import tap
from jobworker.server.deadlines import channelWithDeadlines
from jobworker.server.options import Options
from jobworker.server.services import UsersReloadService
from jobworker.server.startup import StartupError

from . import test_slurmunit
from .support import CA, LiveServer, sleep, writePEM
from .test_auditflood import audit as auditLines
from .test_combined import bigJob
from .test_contract import RecordingConsumer
from .test_faults7_config import CERT, KEY
from .test_launcher import requireRoot
from .test_mtls import (
    KeptConnectionTests,
    MutualTLSTests,
    certificateOf,
    shortLived,
    writePair,
)
from .test_review34 import pageFile
from .test_review35 import SlurmCase
from .test_slurmunit import state

MiB = 1 << 20


class TimeoutOfANamespaceInitTests(TestCase):
    """
    Code review 37: under C{--isolate pid} without the launcher, the command
    is its namespace's PID 1, which the kernel sends no signal it has no
    handler for (but KILL). The stop's look took the TERM as one that would
    end it: a command that ran on past its timeout and exited 0 in the
    grace was taken to have ended on its own as the timeout came, and ended
    COMPLETED.
    """

    timeout = 120

    async def check(self, *options: str) -> None:
        requireRoot()
        server = LiveServer(self, "--isolate=pid", *options, grace=3.0)
        job = await server.createJob("/bin/sleep", "2", timeout_seconds=1)
        ended = await server.waitEnded(job["id"], 60)
        self.assertEqual(
            (ended["status"], ended["error"]), ("FAILED", "timed out after 1 second")
        )

    def test_execChain(self) -> object:
        return self.check("--launcher=off")

    def test_launcher(self) -> object:
        return self.check()


class StdinClosedUnderAPidNamespaceTests(TestCase):
    """
    Code review 37: under a PID namespace the launcher that made it (and
    waits for its init) kept the job's stdin open: a job that closed its
    stdin had writes to it answered 200 "written", the bytes going nowhere,
    and 429 for ever once the pipe was full, never the 409 a job without
    the namespace gets. (The exec chain's C{unshare --fork} holds it the
    same way: not mended, README.)
    """

    timeout = 120

    async def check(self, *options: str) -> None:
        requireRoot()
        server = LiveServer(self, *options)
        job = await server.createJob(
            "/bin/sh", "-c", "exec 0<&-; echo closed; sleep 30", stdin=True
        )
        for _ in range(100):  # (the job says when it has closed its stdin)
            response = await server.request("GET", f"/jobs/{job['id']}/logs", "alice")
            if b"closed" in await treq.content(response):
                break
            await sleep(0.1)
        codes = []
        for _ in range(12):  # 12 x 8 KiB: more than a 64 KiB pipe holds
            code, _body = await server.sendStdin(job["id"], b"x" * 8192, eof=False)
            codes.append(code)
            if code == 409:
                break
            await sleep(0.05)
        await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )
        await server.waitEnded(job["id"])
        self.assertEqual(codes[-1], 409, codes)

    def test_noNamespace(self) -> object:
        return self.check()

    def test_launcherPidNamespace(self) -> object:
        return self.check("--isolate=pid")


class OutOfMemoryUnderTheExecChainTests(TestCase):
    """
    Code review 37: under C{--isolate pid} without the launcher,
    C{unshare --fork} reports a command killed by a signal as exit status
    1: a command killed at its memory limit was "exited with code 1".
    """

    timeout = 120

    async def check(self, expected: str, *options: str) -> None:
        requireRoot()
        server = LiveServer(self, "--isolate=pid", *options)
        job = await server.createJob(
            "/usr/bin/tail", "/dev/zero", limits={"memory_bytes": 64 * MiB}
        )
        ended = await server.waitEnded(job["id"], 60)
        self.assertEqual(ended["status"], "FAILED")
        self.assertEqual(ended["error"], expected)

    def test_execChain(self) -> object:
        return self.check(OOM_MAYBE_ERROR, "--launcher=off")

    def test_launcher(self) -> object:
        return self.check(OOM_ERROR)


class FollowedOutputCutShortTests(SynchronousTestCase):
    """
    Fault round 37: an ended job whose stdout file is shorter than its
    record (a power cut that kept the record and the order file, not the
    file's last pages): read once, its combined output was what is there;
    followed (what the web page always asks), the reader read past the
    file's end and failed, and the connection was cut with nothing sent.
    An ended stream's runs end at its size, followed or not.
    """

    def read(self, follow: bool) -> tuple[CombinedReader, list[bytes]]:
        streams, order, _ = bigJob(self.mktemp(), 200)
        os.truncate(streams[0].path, 60)  # stdout: 100 bytes recorded
        cut = (StoredOutput(streams[0].path, 100), streams[1])
        got: list[bytes] = []
        clock = Clock()
        reader = CombinedReader(
            cut,
            order,
            RecordingConsumer(),  # type: ignore[arg-type]
            lambda stream, data: got.append(data),
            follow=follow,
            clock=clock,
        )
        reader.start()
        for _ in range(100):
            clock.advance(0.1)
        return reader, got

    def test_followedAsReadOnce(self) -> None:
        _once, expected = self.read(follow=False)
        followed, got = self.read(follow=True)
        self.assertTrue(followed.done.called)
        self.assertIsNone(self.successResultOf(followed.done))
        self.assertEqual(b"".join(got), b"".join(expected))
        self.assertEqual(b"".join(got), b"oe" * 60 + b"e" * 40)


class _Slow(Resource):
    """Answers GET only when told (a request in progress); POST at once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.waiting.append(request)
        return NOT_DONE_YET

    def render_POST(self, request: Any) -> bytes:
        return b"posted"


class DribbledRecordsTests(SynchronousTestCase):
    """
    Attacker round 37: bytes sent one a TLS record cost the server's thread
    the square of their number. Behind a request in progress (a Reader's
    long poll), Twisted summed every record kept at each new one (16 KiB of
    them: 2.2 s a connection, C{/healthz} held 15.9 s by ten); a header
    line's records were each appended to the whole line and the line
    searched again (no credentials; up to C{--max-header-bytes}, 1 MiB);
    a chunked body's trailer, up to 64 KiB that no cap counted, was
    searched again at each record. The records behind a request are kept in
    one growing buffer, a line's until its end comes (or it passes the
    cap), and a trailer over 1 KiB is refused.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slow = _Slow()
        root = Resource()
        root.putChild(b"ok", Data(b"fine", "text/plain"))
        root.putChild(b"slow", self.slow)
        site = Site(root, reactor=self.clock)  # type: ignore[no-untyped-call]
        site.protocol = channelWithDeadlines(10.0, 30.0, 4096)  # type: ignore[method-assign, assignment]
        self.channel = site.buildProtocol(None)  # type: ignore[no-untyped-call]
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def dribble(self, data: bytes) -> None:
        for i in range(len(data)):
            self.channel.dataReceived(data[i : i + 1])

    def test_behindARequestInProgress(self) -> None:
        self.channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(self.slow.waiting), 1)
        pad = b"a" * 3000
        self.dribble(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Pad: " + pad + b"\r\n\r\n")
        self.assertLessEqual(len(self.channel._dataBuffer), 2)
        request = self.slow.waiting.pop()
        request.write(b"slow done")
        request.finish()
        self.clock.advance(0)
        answers = self.transport.value()
        self.assertIn(b"slow done", answers)
        self.assertTrue(answers.endswith(b"fine"), answers[-200:])

    def test_bufferedBehindARequestStillBounded(self) -> None:
        """Past 16 KiB behind a request in progress, reading pauses."""
        self.channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.transport.producerState, "producing")
        self.channel.dataReceived(b"x" * 10_000)
        self.assertEqual(self.transport.producerState, "producing")
        self.channel.dataReceived(b"x" * 10_000)
        self.assertEqual(self.transport.producerState, "paused")

    def test_aLineDribbled(self) -> None:
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nX-Pad: ")
        self.dribble(b"a" * 3000)
        self.assertLess(len(self.channel._buffer), 100)
        self.dribble(b"\r\nHost: x\r\n\r\n")
        self.assertTrue(self.transport.value().endswith(b"fine"))

    def test_bareLineFeedsDribbled(self) -> None:
        """Session review 37: a record of a bare LF ended no line here, but
        had Twisted search the whole line again."""
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nX-Pad: ")
        self.dribble(b"a\n" * 1500)
        self.assertLess(len(self.channel._buffer), 100)
        self.dribble(b"\r\nHost: x\r\n\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 400 "))

    def test_crlfAcrossRecords(self) -> None:
        """A CR at the end of one record and its LF in the next end a line."""
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r")
        self.channel.dataReceived(b"\nHost: x\r")
        self.channel.dataReceived(b"\n\r")
        self.channel.dataReceived(b"\n")
        self.assertTrue(self.transport.value().endswith(b"fine"))

    def test_idleTimerRestartedByEachByte(self) -> None:
        """Session review 37: a line held here did not restart Twisted's idle
        timer: a request line dribbled within the header deadline was cut
        at the idle timeout, unanswered."""
        self.channel.setTimeout(3)
        for _ in range(16):
            self.channel.dataReceived(b"G")
            self.clock.advance(0.5)
        self.assertFalse(self.transport.disconnecting)
        self.channel.dataReceived(b"ET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertNotIn(b"fine", self.transport.value())  # (GGG...ET: no method)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 "))

    def test_trailerCapRelied(self) -> None:
        """The decoder's cap the channel sets is still Twisted's name."""
        decoder = _ChunkedTransferDecoder(lambda data: None, lambda rest: None)
        self.assertTrue(hasattr(decoder, "_maxTrailerHeadersSize"))

    def test_aLineDribbledPastTheCap(self) -> None:
        self.channel.dataReceived(b"GET /ok HTTP/1.1\r\nX-Pad: ")
        self.dribble(b"a" * 4100)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 431 "))

    def test_trailerCapped(self) -> None:
        self.channel.dataReceived(
            b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\nX-Trailer: "
        )
        self.assertEqual(self.transport.value(), b"")
        self.dribble(b"t" * 1100)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 400 "))

    def test_smallTrailerTaken(self) -> None:
        self.channel.dataReceived(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        self.assertTrue(self.transport.value().endswith(b"posted"))


class LongHostRefusedFirstTests(TestCase):
    """
    Attacker round 37: a Host of 8,000 non-ASCII letters was IDNA-encoded
    before it was refused, 21 ms of the server's thread a request, no
    credentials needed. One longer than a host name can be is refused
    first.
    """

    timeout = 60

    async def test_longHost(self) -> None:
        server = LiveServer(self)
        for host in ("é" * 8000, "a" * 400):
            response = await server.request(
                "GET", "/healthz", None, headers={b"host": [host.encode()]}
            )
            body = json.loads(await treq.content(response))
            self.assertEqual(
                (response.code, body),
                (400, {"error": "the Host header is longer than a host name can be"}),
            )
        code, _ = await server.json("GET", "/healthz", None)
        self.assertEqual(code, 200)


#: A job whose output switches stream 1,200 times, a millisecond apart (more
#: than an order file of 4 KiB holds: 512), then says "done" and waits.
SWITCHING = """
import os, time
for i in range(600):
    os.write(1, b"o%03d" % i)
    time.sleep(0.001)
    os.write(2, b"e%03d" % i)
    time.sleep(0.001)
os.write(1, b"done")
time.sleep(30)
"""


class CombinedOffsetWithoutAFullOrderTests(TestCase):
    """
    Output review 37: once a running job's order file left a switch out
    (full at its cap, or a write failed), a live reader places the bytes no
    entry places as it sees them and a later one otherwise: a raw combined
    read resumed by C{offset=} repeated some bytes and lost others. Refused
    then, as for a running Slurm job; resuming by each stream's position
    (frames, C{Last-Event-ID}) is exact.
    """

    timeout = 60

    async def test_offsetRefusedOnceTheOrderIsCoarse(self) -> None:
        server = LiveServer(self, "--max-log-bytes=4096")
        job = await server.createJob("/usr/bin/python3", "-c", SWITCHING)
        path = f"/jobs/{job['id']}/logs?stream=combined&offset=10"
        for _ in range(100):
            response = await server.request("GET", f"/jobs/{job['id']}/logs", "alice")
            if b"done" in await treq.content(response):
                break
            await sleep(0.1)
        response = await server.request("GET", path, "alice")
        body = await treq.content(response)
        self.assertEqual(response.code, 400, body[:200])
        self.assertIn("no offset with stream=combined", json.loads(body)["error"])
        await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )
        await server.waitEnded(job["id"])
        response = await server.request("GET", path, "alice")
        self.assertEqual(response.code, 200)  # (ended: one order for every reader)
        await treq.content(response)

    async def test_offsetTakenWhileTheOrderIsWhole(self) -> None:
        server = LiveServer(self)
        job = await server.createJob(
            "/bin/sh", "-c", "echo o; echo e >&2; echo done; sleep 30"
        )
        for _ in range(100):
            response = await server.request("GET", f"/jobs/{job['id']}/logs", "alice")
            if b"done" in await treq.content(response):
                break
            await sleep(0.1)
        logs = f"/jobs/{job['id']}/logs?stream=combined"
        whole = await treq.content(await server.request("GET", logs, "alice"))
        response = await server.request("GET", logs + "&offset=2", "alice")
        self.assertEqual(response.code, 200)
        self.assertEqual(await treq.content(response), whole[2:])
        await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )
        await server.waitEnded(job["id"])


class NoShellHintForATildeTests(TestCase):
    """
    New user round 37: C{jw exec -- '~/bin/deploy.sh'} (ssh's habit: its
    shell expands the C{~}) was refused "not found" with no word that no
    shell reads the command; a C{~} inside a name is no shell's.
    """

    timeout = 60

    async def test_tildeFirst(self) -> None:
        server = LiveServer(self)
        for command, hinted in (("~/bin/deploy-jw37.sh", True), ("a~b-jw37", False)):
            code, body = await server.json(
                "POST", "/jobs", "alice", {"command": command}
            )
            if code == 201:
                body = await server.waitEnded(body["id"])
            self.assertIn("not found", body["error"])
            self.assertEqual("no shell reads it" in body["error"], hinted, body)


class CompletionLogNoNodeTests(SynchronousTestCase):
    """
    Slurm round 37: the job completion log (C{sacct -c}, what a cluster
    without slurmdbd keeps) writes a job that never ran with the node
    C{(null)}: a queued job cancelled and purged while the server was down
    read as run, cancelled from outside, with a start time and the node
    "(null)"; an C{--after-ok} job Slurm cancelled for its dependency, too.
    """

    def test_nullIsNoNode(self) -> None:
        fields = ["140", "CANCELLED by 0", "0:0", "(null)", "1796027633", "1796027630"]
        job = parseAccounting("TK".join([*fields, "jobworker-q"]) + "\n", "TK")["140"][
            0
        ]
        self.assertIsNone(job.node)
        self.assertFalse(ranIn(job))
        outcome = outcomeOf(job, False, None, ran=ranIn(job))
        self.assertEqual(
            outcome.error, "never ran: Slurm ended it CANCELLED while queued"
        )


class NodeFailKeepsTheStatusTests(SynchronousTestCase):
    """
    Slurm round 37: a job ended NODE_FAIL lost the exit status Slurm kept
    (9:0, 0:15): no code, no signal, C{jw wait} exited 255. Kept, as at a
    time limit or a preemption.
    """

    def test_kept(self) -> None:
        for code, number, expected in ((9, 0, (9, None)), (0, 15, (None, "SIGTERM"))):
            node = SlurmState("NODE_FAIL", "NodeDown", code, number, "n1", None, "j")
            got = outcomeOf(node, False, None)
            self.assertEqual(
                (got.status, got.exitCode, got.signal), (JobStatus.FAILED, *expected)
            )
            self.assertIn("its node n1 failed", got.error or "")


class SlurmCancelStoredTests(SlurmCase):
    """
    Slurm round 37: a stop sent as a cancel (a KILL, a queued job's stop, a
    suspended job's) was not stored: a restart before Slurm ended the job
    (KillWait and clean-up: seconds) read it as cancelled from outside,
    FAILED, C{stopped_by} lost. Stored once the cancel is sent.
    """

    def test_killStored(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice", StopRequest(signal.SIGKILL))
        self.reactor.advance(0)
        self.assertEqual(self.commands.cancels, ["101"])
        stored = self.stored(record.id)
        self.assertEqual((stored.stopped_by, stored.stop_signal), ("alice", "SIGKILL"))

    def test_queuedStopStored(self) -> None:
        record = self.submit("sleep", "100")
        self.manager.stop(record.id, "alice")
        self.reactor.advance(0)
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertEqual(self.stored(record.id).stopped_by, "alice")

    def test_suspendedStopStored(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.commands.nowSays = {"101": state("SUSPENDED")}
        self.manager.stop(record.id, "alice")
        self.reactor.advance(0)
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertEqual(self.stored(record.id).stopped_by, "alice")

    def restart(self) -> None:
        self.manager.close()
        self.executor = test_slurmunit.ExecutorTests.makeExecutor(self)  # type: ignore[arg-type]
        self.manager = self.makeManager()
        self.manager.recover()

    def test_restartBeforeSlurmEndedIt(self) -> None:
        """
        Session review 37: stored without its time, the stop was sent again
        at the restart; Slurm refused the cancel of the job it had ended
        meanwhile, and the stop was forgotten: FAILED, cancelled from
        outside.
        """
        for queued in (False, True):
            record = self.submit("sleep", "100")
            slurmId = record.slurm_job_id
            assert slurmId is not None
            if not queued:
                self.poll({slurmId: state("RUNNING")})
            self.manager.stop(record.id, "alice", StopRequest(signal.SIGKILL))
            self.reactor.advance(0)
            ended = state("CANCELLED", 0, 0 if queued else 9)
            self.commands.nowSays = {slurmId: ended}
            self.commands.failCancels = SlurmError(
                "scancel: Kill job error: Job/step already completing or completed"
            )
            self.restart()
            self.reactor.advance(1.0)
            self.commands.polls[-1].callback({slurmId: ended})
            self.reactor.advance(1.0)
            final = self.manager.record(record.id)
            self.assertEqual(
                (final.status, final.stopped_by), (JobStatus.STOPPED, "alice")
            )
            self.commands.failCancels = None
            self.commands.nowSays = None


class DefaultLimitsWithoutCgroupsTests(SynchronousTestCase):
    """
    Operator round 37: with cgroups off (C{--cgroups off}, or none here),
    C{--default-memory}, C{--default-pids} and C{--default-cpu} were taken
    and not applied: a job held 150 MiB under a 64M default, its record's
    limits null. The server refuses to start, naming them.
    """

    def options(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--tls", f"--cert={CERT}", f"--key={KEY}", *argv])
        return options

    def test_refused(self) -> None:
        options = self.options(
            "--cgroups=off", "--default-memory=64M", "--default-pids=16"
        )
        error = self.assertRaises(StartupError, tap._cgroups, options, False)
        self.assertIn("--default-memory, --default-pids", str(error))
        self.assertIn("cgroups are off", str(error))

    def test_withoutDefaults(self) -> None:
        self.assertIsNone(tap._cgroups(self.options("--cgroups=off"), False))


class OperatorOptionsTests(SynchronousTestCase):
    """
    Operator round 37: Slurm's options were taken without a word by the
    local executor (a forgotten C{--executor slurm} ran every job on this
    host); C{--slurm-max-nodes} over 1048576 was refused as "must be at
    least 1"; C{--tmp-size} had no bound (178 PiB for every job's tmpfs).
    """

    def refused(self, *argv: str) -> str:
        options = Options()
        error = self.assertRaises(
            UsageError,
            options.parseOptions,
            ["--tls", f"--cert={CERT}", f"--key={KEY}", *argv],
        )
        return str(error)

    def test_slurmOptionsNeedSlurm(self) -> None:
        for argv in ("--slurm-poll=5", "--slurm-partition=gpu", "--slurm-max-nodes=4"):
            name = argv.split("=")[0]
            self.assertEqual(self.refused(argv), f"{name} needs --executor slurm")

    def test_maxNodesRange(self) -> None:
        message = self.refused(
            "--executor=slurm",
            f"--slurm-output-dir={self.mktemp()}",
            "--slurm-max-nodes=99999999",
        )
        self.assertEqual(message, "--slurm-max-nodes must be from 1 to 1048576")

    def test_tmpSizeBounded(self) -> None:
        self.assertIn(
            "over this machine's memory",
            self.refused("--tmp-size=99999999999999999999999"),
        )


class NewStateDirSaidTests(SynchronousTestCase):
    """
    Operator round 37: a C{--state-dir} that did not exist was made, parents
    and all, without a word: a mistyped one started an empty server, its
    jobs seemingly gone. Its making is logged; an existing one's is not.
    """

    def test_said(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "a", "state")
        with capturedLogs() as events:
            tap._stateDir(path)
            tap._stateDir(path)
        said = [e for e in events if "made: a new, empty one" in e["log_format"]]
        self.assertEqual(len(said), 1)
        self.assertEqual(said[0]["path"], path)
        self.assertTrue(os.path.isdir(path))


class QueuedLongPollAtShutdownTests(TestCase):
    """
    Operator round 37: at shutdown a long poll (C{GET /jobs/ID?wait=N}) on a
    queued job got no answer at all ("Empty reply from server"): its job
    stays queued for the next start, and nothing ended its wait. It is
    answered with the job as it is, as at the end of its wait.
    """

    timeout = 60

    async def test_answered(self) -> None:
        server = LiveServer(self, "--max-running=1")
        await server.createJob("sleep", "30")
        queued = await server.createJob("true")
        polled = ensureDeferred(server.json("GET", f"/jobs/{queued['id']}?wait=30"))
        await sleep(0.5)
        self.assertFalse(polled.called)
        await server.stop()
        code, body = await polled
        self.assertEqual((code, body["status"]), (200, "PENDING"))


class MetricsSeriesKeptAtZeroTests(SynchronousTestCase):
    """
    Operator round 37: C{jobworker_jobs{status}} and
    C{jobworker_queued_jobs{user}} series vanished when their count went to
    none, instead of reading 0: a graph had a gap, an C{== 0} alert rule no
    data. Every status is exported; a user's queue, once seen, reads 0.
    """

    def test_zeros(self) -> None:
        metrics = Metrics()
        counts = {"RUNNING": 2}
        queued = {"alice": 3}
        metrics.watchJobs(lambda: dict(counts))
        metrics.watchQueue(lambda: dict(queued))
        text = generate_latest(metrics.registry).decode()
        self.assertIn('jobworker_jobs{status="RUNNING"} 2.0', text)
        self.assertIn('jobworker_jobs{status="PENDING"} 0.0', text)
        self.assertIn('jobworker_queued_jobs{user="alice"} 3.0', text)
        counts.clear()
        queued.clear()
        text = generate_latest(metrics.registry).decode()
        for status in ("PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED"):
            self.assertIn(f'jobworker_jobs{{status="{status}"}} 0.0', text)
        self.assertIn('jobworker_queued_jobs{user="alice"} 0.0', text)


def bmpStringCertificate(directory: str, name: str) -> tuple[str, str]:
    """A client certificate by the development CA whose common name is
    C{name} as a BMPString (UTF-16BE): (cert path, key path)."""
    return certificateOf(
        directory,
        "bmp",
        x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, name, _type=_ASN1Type.BMPString)]
        ),
    )


class CommonNameDecodedTests(TestCase):
    """
    Auth review 37: a certificate's common name was read as its raw bytes
    in UTF-8: a BMPString (UTF-16BE) "\\u7269\\u7461", whose bytes spell
    "rita", logged in as rita. The name is decoded as its type says.
    """

    timeout = 60
    client = MutualTLSTests.client
    ask = MutualTLSTests.ask

    async def test_bmpStringNotAnotherUser(self) -> None:
        server = LiveServer(self, f"--client-ca={CA}")
        pair = bmpStringCertificate(self.mktemp(), "\u7269\u7461")
        code, body = await self.ask(server, pair, path="/jobs")
        self.assertEqual(code, 401, body)
        pair = bmpStringCertificate(self.mktemp(), "alice")
        code, body = await self.ask(server, pair, path="/jobs")
        self.assertEqual(code, 200, body)

    async def test_twoNamesAudited(self) -> None:
        """Late review 37: each name as it is (the first was said twice)."""
        server = LiveServer(self, f"--client-ca={CA}")
        names = [x509.NameAttribute(NameOID.COMMON_NAME, n) for n in ("alice", "rita")]
        pair = certificateOf(self.mktemp(), "two", x509.Name(names))
        code, body = await self.ask(server, pair, path="/jobs")
        self.assertEqual(code, 401, body)
        failures = auditLines(server, "auth.failure")
        self.assertEqual([e["user"] for e in failures], ["alice,rita"])


class RefusedCertificateAuditedByNameTests(TestCase):
    """
    Auth review 37: a verified certificate refused for its expiry (or its
    CA removed) was audited as user "": the name it bears is known, as a
    refused token's is.
    """

    timeout = 60
    kept = KeptConnectionTests.kept
    ask = KeptConnectionTests.ask

    async def test_expiredNamed(self) -> None:
        server = LiveServer(self, f"--client-ca={CA}")
        pair = shortLived(os.path.abspath(self.mktemp()), "alice", 3)
        with open(pair[0], "rb") as f:
            ends = x509.load_pem_x509_certificate(f.read()).not_valid_after_utc
        http = self.kept(pair)
        code, _ = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual(code, 200)
        await sleep(ends.timestamp() - time.time() + 1.5)
        code, _ = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual(code, 401)
        with open(os.path.join(server.stateDir, "audit.log")) as f:
            lines = [json.loads(line) for line in f]
        failures = [e for e in lines if e.get("event") == "auth.failure"]
        self.assertEqual([e["user"] for e in failures], ["alice"], failures)


class DeniedAccessNamesTheJobTests(TestCase):
    """
    Auth review 37: an C{access.denied} line named neither the job nor the
    permission refused (README: "each with ... the job"). They are named;
    refusals of other jobs within the minute are still one line's count (a
    job id in a refused request is the sender's word: one line each would
    be a flood).
    """

    timeout = 60

    async def test_named(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("sleep", "30")
        for jobId in (job["id"], "00000000-0000-4000-8000-000000000000"):
            code, _ = await server.json("POST", f"/jobs/{jobId}/stop", "rita")
            self.assertEqual(code, 403)
        lines = auditLines(server, "access.denied")
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(
            (lines[0]["job"], lines[0]["permission"]), (job["id"], "jobs.stop")
        )
        await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"signal": "KILL"}
        )
        await server.waitEnded(job["id"])


class TokenTiedToTheVerifiedRootTests(TestCase):
    """
    Auth review 37: a client certificate's token was tied to the first CA of
    C{--client-ca} up its chain, an intermediate: with the root removed
    from the bundle and the server reloaded, the certificate was refused
    in the handshake, and its token went on creating jobs. It is tied to
    the root the handshake verified it by.
    """

    timeout = 60
    kept = KeptConnectionTests.kept

    def chain(self, directory: str) -> tuple[str, bytes, bytes, tuple[str, str]]:
        """A root, an intermediate, bob's certificate by the intermediate:
        (the bundle's path, the intermediate's PEM, the root's, bob's pair
        with the intermediate in his chain)."""

        def name(text: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

        rootKey = newKey()
        root = (
            certificateBuilder(name("root R"), name("root R"), rootKey.public_key(), 30)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(keyUsage(True), True)
            .sign(rootKey, hashes.SHA256())  # type: ignore[arg-type]
        )
        middleKey = newKey()
        middle = (
            certificateBuilder(
                name("intermediate I"), root.subject, middleKey.public_key(), 30
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(keyUsage(True), True)
            .sign(rootKey, hashes.SHA256())  # type: ignore[arg-type]
        )
        bobKey = newKey()
        bob = leafCertificate(
            "bob",
            middle,
            middleKey,
            bobKey.public_key(),
            30,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        os.makedirs(directory)
        pem = serialization.Encoding.PEM
        bundle = os.path.join(directory, "bundle.pem")
        writePEM(bundle, middle.public_bytes(pem) + root.public_bytes(pem))
        pair = writePair(
            directory,
            "bob",
            (bob.public_bytes(pem) + middle.public_bytes(pem), keyPEM(bobKey)),
        )
        return bundle, middle.public_bytes(pem), root.public_bytes(pem), pair

    async def removed(self, keep: str, leafAlone: bool = False) -> None:
        """bob's token, then the bundle left with only C{keep} ("middle" or
        "root") and the server reloaded: the token is refused."""
        bundle, middle, root, pair = self.chain(os.path.abspath(self.mktemp()))
        if leafAlone:  # (bob sends his certificate without the intermediate)
            with open(pair[0], "rb") as f:
                leaf = x509.load_pem_x509_certificates(f.read())[0]
            writePEM(pair[0], leaf.public_bytes(serialization.Encoding.PEM))
        server = LiveServer(self, f"--client-ca={bundle}")
        http = self.kept(pair)
        response = await http.request(
            "POST",
            server.url + "/tokens",
            headers={b"content-type": [b"application/json"]},
        )
        token = json.loads(await treq.content(response))["token"]
        self.assertEqual(response.code, 201)
        writePEM(bundle, middle if keep == "middle" else root)
        reload = next(s for s in server.service if isinstance(s, UsersReloadService))
        await reload.hangUp()
        response = await server.http.request(
            "GET",
            server.url + "/whoami",
            headers={b"authorization": [f"Bearer {token}".encode()]},
        )
        await treq.content(response)
        self.assertEqual(response.code, 401)

    def test_rootRemoved(self) -> object:
        return self.removed("middle")

    def test_intermediateRemoved(self) -> object:
        """Late review 37: tied to the root alone, a token outlived the
        removal of the intermediate its certificate was verified through."""
        return self.removed("root", leafAlone=True)


class _ClosingTransport:
    """A process transport's pipes and close, as drainInLargeReads sees them."""

    def __init__(self, seen: list[object], slot: Slot) -> None:
        self.pipes = {0: self}  # (its stdin's writer: a doWrite)
        self._seen = seen
        self._slot = slot

    def doWrite(self) -> None:
        pass

    def childConnectionLost(self, childFD: int, reason: object) -> None:
        self._seen.append((childFD, self._slot.stalled))


class PipeCloseWatchedTests(SynchronousTestCase):
    """
    Attacker round 37 (the job's side): a job held its stdin pipe's lock in
    a read whose copy faulted slowly (its memory map kept busy by another
    of its threads' C{mprotect}s, no disk rate needed), and the server's
    close of that pipe, on the reactor's thread, waited with it: 13.8 s of
    C{/healthz} for 2 GiB, unseen by the stall watch, which watched reads
    and writes only. Twisted's close of a pipe's end is watched too.
    """

    def test_closeInsideTheWatch(self) -> None:
        watch = StallWatch(waiting=lambda tid: False, now=lambda: 0.0, watching=False)
        slot = watch.slot()  # (this thread's, as the drain's)
        killer: list[float] = []
        seen: list[object] = []
        transport = _ClosingTransport(seen, slot)
        drainInLargeReads(transport, watch=watch, stalled=killer.append)
        transport.childConnectionLost(0, None)
        self.assertEqual(seen, [(0, killer.append)])
        self.assertIsNone(slot.stalled)


#: A job's script: says "ready", then reads its stdin into a page of FILE
#: not in memory (a private map): the copy's fault, at the job's own I/O
#: limit, holds the pipe's lock.
STDIN_HOLD = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
prot = mmap.PROT_READ | mmap.PROT_WRITE
pages = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=prot)
pages.madvise(mmap.MADV_RANDOM)
os.write(1, b"ready\\n")
os.readv(0, [memoryview(pages)[16 << 20 : (16 << 20) + 4096]])
"""


class StdinCloseHeldTests(TestCase):
    """
    Attacker round 37, for real: a job reads its stdin into a page read in
    at its own C{io_read_bps} of 1, holding the pipe's lock; the close of
    its stdin (an end of file sent) waited with it on the reactor's
    thread, every request too. The job is killed once the close has waited
    a second, and ends FAILED saying why; the server answers again.
    """

    timeout = 60

    async def test_holderKilled(self) -> None:
        requireRoot()
        server = LiveServer(self, "--min-io-bps=1", "--allow-io-bps")
        path = pageFile(self, STDIN_HOLD, b"x")
        code, job = await server.json(
            "POST",
            "/jobs",
            "alice",
            {
                "command": "/usr/bin/python3",
                "args": ["-c", STDIN_HOLD, path],
                "limits": {"io_read_bps": 1},
                "stdin": True,
            },
        )
        if code == 400 and "io_read_bps" in job.get("error", ""):
            raise SkipTest(f"no I/O limits here: {job['error']}")
        self.assertEqual(code, 201, job)
        for _ in range(100):
            response = await server.request("GET", f"/jobs/{job['id']}/logs", "alice")
            if b"ready" in await treq.content(response):
                break
            await sleep(0.1)
        code, _ = await server.sendStdin(job["id"], b"x", eof=False)
        self.assertEqual(code, 200)
        await sleep(0.5)
        await server.sendStdin(job["id"], b"", eof=True)
        ended = await server.waitEnded(job["id"], timeout=15)
        self.assertEqual(ended["status"], "FAILED", ended)
        self.assertIn("held its output or input pipe's lock", ended["error"])
        code, health = await server.json("GET", "/healthz", "ada")
        self.assertEqual(code, 200, health)
