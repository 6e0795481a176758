"""
The standard-library client of C{jw} (L{jobworker.client.quick}) and the
commands that run on it, checked over real TLS against a live server.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import signal
import ssl
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.portforward import (
    ProxyClient,
    ProxyClientFactory,
    ProxyFactory,
    ProxyServer,
)
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.bodies import bodyPieces
from jobworker.client.errors import ClientError
from jobworker.client.quick import TIMEOUT, QuickClient, drive, tlsContext
from jobworker.tlserrors import TLSConfigError

from .support import CA, JW, JWAssertions, LiveServer, jwEnvironment


class TrustTests(SynchronousTestCase):
    """The server is verified as the Twisted client verifies it."""

    def test_onlyTheConfiguredCA(self) -> None:
        """
        The context trusts the CA file it is given and nothing else (not
        the system's CAs, which ssl.create_default_context would load
        too); it checks the host name and refuses below TLS 1.3.
        """
        context = tlsContext(CA)
        with open(CA, encoding="ascii") as f:
            expected = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertEqual(context.get_ca_certs(binary_form=True), [expected])
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
        self.assertTrue(context.check_hostname)
        self.assertEqual(context.minimum_version, ssl.TLSVersion.TLSv1_3)

    def test_aFileThatIsNotPEM(self) -> None:
        """
        A CA file that is not text (random bytes, a README with accents) is
        "holds no PEM certificate" (exit 2), not an unexpected TypeError;
        a PEM file with a non-ASCII comment before its certificate is used.
        """
        for content in (bytes(range(256)), "Société générale\n".encode()):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            error = self.assertRaises(TLSConfigError, tlsContext, path)
            self.assertEqual(str(error), f"{path} holds no PEM certificate")
        path = self.mktemp()
        with open(CA, "rb") as f:
            pem = f.read()
        with open(path, "wb") as f:
            f.write("# Autorité de certification\n".encode() + pem)
        self.assertEqual(len(tlsContext(path).get_ca_certs()), 1)


class _Response:
    """The little of an C{HTTPResponse} that L{bodyPieces} reads."""

    def __init__(self, raw: bytes, chunked: bool, length: int | None = None) -> None:
        self.fp = io.BufferedReader(io.BytesIO(raw), 8)  # type: ignore[arg-type]
        self.chunked = chunked
        self.length = length


class BodyTests(SynchronousTestCase):
    """Response bodies read into one buffer (L{bodyPieces})."""

    def body(self, response: _Response, size: int = 5) -> bytes:
        pieces = bodyPieces(response, bytearray(size))  # type: ignore[arg-type]
        return b"".join(bytes(piece) for piece in pieces)

    def test_chunked(self) -> None:
        """Chunks of any size (bigger than the buffer too), extensions, trailers."""
        raw = b"3\r\nabc\r\nc;x=y\r\nhello world!\r\n0\r\nTrailer: 1\r\n\r\nNEXT"
        response = _Response(raw, chunked=True)
        self.assertEqual(self.body(response), b"abchello world!")
        self.assertEqual(response.fp.read(), b"NEXT")  # not one byte further

    def test_lengthAndToTheEnd(self) -> None:
        """A Content-Length body stops at its length; without one, at the end."""
        response = _Response(b"0123456789NEXT", chunked=False, length=10)
        self.assertEqual(self.body(response, 4), b"0123456789")
        self.assertEqual(response.fp.read(), b"NEXT")
        self.assertEqual(
            self.body(_Response(b"all of it", chunked=False)), b"all of it"
        )

    def test_cutShort(self) -> None:
        """A body that ends early, or a chunk size that is not one, is an error."""
        for raw in (b"a\r\nabc", b"3\r\nabc\r\n", b"3\r\nabcXY", b"zz\r\nabc"):
            with self.assertRaises((http.client.IncompleteRead, ValueError)):
                self.body(_Response(raw, chunked=True))
        with self.assertRaises(http.client.IncompleteRead):
            self.body(_Response(b"short", chunked=False, length=10))

    def test_onlyHexSizes(self) -> None:
        """
        A size with a sign, 0x, _ or spaces inside is refused before any byte
        of the chunk is handed on (int() took -3 and passed garbage on).
        """
        for size in (b"-3", b"+3", b"0x3", b"1_0", b" 3", b"", b"1" * 17):
            got: list[bytes] = []
            pieces = bodyPieces(
                _Response(size + b"\r\nabcdefghij\r\n0\r\n\r\n", chunked=True),  # type: ignore[arg-type]
                bytearray(5),
            )
            with self.assertRaises(ValueError, msg=size):
                for piece in pieces:
                    got.append(bytes(piece))
            self.assertEqual(got, [], size)


def seq(last: int) -> bytes:
    """What C{seq 1 LAST} prints."""
    return "".join(f"{n}\n" for n in range(1, last + 1)).encode("ascii")


def runBlocking(
    argv: list[str], env: dict[str, str], merged: bool = False
) -> Deferred[subprocess.CompletedProcess[bytes]]:
    """
    Run C{argv} in a thread (the live server needs the reactor meanwhile),
    stdin empty; C{merged}: its stderr on the same pipe as its stdout (2>&1),
    else apart.
    """
    return deferToThread(
        subprocess.run,
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        timeout=120,
    )


def importedPackages(importtime: bytes) -> set[str]:
    """The top-level packages a C{python -X importtime} run's stderr names."""
    names = set()
    for line in importtime.decode("utf-8", "replace").splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


class _CuttingClient(ProxyClient):
    """The relay's side towards the server: counts what it hands back."""

    carried = 0

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.carried += len(data)
        assert self.peer is not None
        proxy = self.peer.factory
        assert isinstance(proxy, CuttingProxy)
        if self.carried >= proxy.after and proxy.cuts > 0:
            proxy.cuts -= 1
            self.carried = -(1 << 62)  # this connection is cut once
            self.peer.transport.abortConnection()
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _CuttingClientFactory(ProxyClientFactory):
    protocol = _CuttingClient


class _CuttingServer(ProxyServer):
    clientProtocolFactory = _CuttingClientFactory


class CuttingProxy(ProxyFactory):
    """
    A TCP relay to a server (TLS passes through it untouched) that cuts
    any connection once it has carried C{after} bytes to the client, until
    it has cut C{cuts} of them: a network that drops long streams.
    """

    protocol = _CuttingServer

    def __init__(self, port: int, after: int, cuts: int) -> None:
        super().__init__("127.0.0.1", port)
        self.after = after
        self.cuts = cuts

    def listen(self, testCase: TestCase) -> str:
        """Listen on loopback until the test ends; the server URL through it."""
        listening = reactor.listenTCP(0, self, interface="127.0.0.1")  # type: ignore[attr-defined]
        testCase.addCleanup(listening.stopListening)
        return f"https://localhost:{listening.getHost().port}"


class _OutageServer(ProxyServer):
    """A relayed connection: refused at once while its proxy is down."""

    def connectionMade(self) -> None:
        proxy = self.factory
        assert isinstance(proxy, OutageProxy)
        if proxy.down:
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        proxy.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason: object = None) -> None:
        proxy = self.factory
        assert isinstance(proxy, OutageProxy)
        proxy.open.discard(self)
        super().connectionLost(reason)  # type: ignore[arg-type]


class OutageProxy(CuttingProxy):
    """
    A TCP relay to a server that can go down (L{outage}): every connection
    cut, new ones refused, for a while; then a way through again.
    """

    protocol = _OutageServer

    def __init__(self, port: int) -> None:
        super().__init__(port, after=1 << 62, cuts=0)
        self.down = False
        self.open: set[ProxyServer] = set()
        self._back: Any = None

    def listen(self, testCase: TestCase) -> str:
        testCase.addCleanup(self._cancel)
        return super().listen(testCase)

    def _cancel(self) -> None:
        if self._back is not None and self._back.active():
            self._back.cancel()

    def outage(self, seconds: float) -> None:
        self.down = True
        for link in list(self.open):
            link.transport.abortConnection()  # type: ignore[attr-defined]
        self._back = reactor.callLater(  # type: ignore[attr-defined]
            seconds, setattr, self, "down", False
        )


class PrefixTests(TestCase):
    """A server URL's path is the API's prefix (a reverse proxy's)."""

    async def test_thePathIsSent(self) -> None:
        """
        Every request goes to the URL's path + the route: through a proxy
        that serves the API under /api/, jw works as the Twisted client did
        (the standard-library client dropped the path). Here the server
        itself has no /api/, so the prefix shows as its 404.
        """
        server = LiveServer(self)

        def listed(url: str) -> int:
            client = QuickClient(url, tlsContext(CA), "alice", "alice-pass")
            try:
                drive(client.listJobs())
            except ClientError as e:
                return e.status or 0
            finally:
                drive(client.close())
            return 200

        self.assertEqual(await deferToThread(listed, server.url + "/"), 200)
        self.assertEqual(await deferToThread(listed, server.url + "/api/"), 404)


class StdinTimeoutTests(TestCase):
    async def test_connectionKeepsItsTimeout(self) -> None:
        """
        A write at an offset waits for its answer the stall bound, then
        asks for the job and sends it again; once answered, its connection
        keeps the usual TIMEOUT for the requests after it (it kept the
        stall bound: a later request failed after 60 s, saying 300 s; a
        review).
        """
        server = LiveServer(self)
        job = await server.createJob("cat", stdin=True)

        def timeouts() -> tuple[float | None, float | None]:
            client = QuickClient(server.url, tlsContext(CA), "alice", "alice-pass")
            try:
                drive(client.sendStdin(job["id"], b"x", offset=0))
                after = client._connection.sock.gettimeout()
                drive(client.sendStdin(job["id"], b"", eof=True, offset=1))
                return after, client._stall
            finally:
                drive(client.close())

        after, stall = await deferToThread(timeouts)
        self.assertEqual(after, TIMEOUT)
        self.assertNotEqual(stall, TIMEOUT)


class FollowTests(JWAssertions, TestCase):
    """
    C{jw exec --follow}, C{jw logs -f} and C{jw wait} as the real C{jw}
    runs them, on the standard library, against a live server.
    """

    async def test_noTwistedImported(self) -> None:
        """
        Following (both streams apart, or in order to one place), logs -f
        and wait import neither Twisted, treq nor pyOpenSSL.
        """
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        trace = [sys.executable, "-X", "importtime", JW]
        runs = [
            await runBlocking([*trace, "exec", "--follow", "--", "true"], env),
            await runBlocking([*trace, "exec", "-f", "--", "true"], env, merged=True),
        ]
        jobId = (await server.createJob("echo", "hi"))["id"]
        await server.waitEnded(jobId)
        runs.append(await runBlocking([*trace, "logs", "-f", jobId], env))
        runs.append(await runBlocking([*trace, "wait", jobId], env))
        for run in runs:
            self.assertEqual(run.returncode, 0, run.stderr or run.stdout)
            # Merged, the trace is in stdout.
            imported = importedPackages((run.stderr or b"") + run.stdout)
            self.assertIn("jobworker", imported)
            self.assertEqual(imported & {"twisted", "treq", "OpenSSL"}, set())

    async def test_streamsApart(self) -> None:
        """
        Written to different places, the job's stdout and stderr reach
        jw's own byte for byte (a megabyte: many reads), and jw exits with
        the job's code.
        """
        server = LiveServer(self)
        result = await runBlocking(
            [JW, "exec", "-f", "--", "sh", "-c", "seq 1 150000; seq 1 900 >&2; exit 7"],
            jwEnvironment(server.url),
        )
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertEqual(result.stdout, seq(150000))
        started, rest = result.stderr.split(b"\n", 1)
        self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started$")
        self.assertEqual(rest, seq(900))

    async def test_followsAJobQueuedLongerThanTheRequestTimeout(self) -> None:
        """
        A followed job may wait in the queue for hours: no answer comes
        until it starts, and that is not a dead connection. jw, its request
        timeout cut to 0.3 s here (5 retries of it with their pauses take
        4.5 s), follows a job queued for 6 s, both ways.
        """
        server = LiveServer(self, "--max-running=1")
        jw = (
            "import sys; import jobworker.client.quick as q; q.TIMEOUT = 0.3; "
            "from jobworker.client.cli import main; sys.argv[0] = 'jw'; main()"
        )
        for merged in (True, False):
            first = await server.createJob("sleep", "6")
            result = await runBlocking(
                [
                    *(sys.executable, "-c", jw, "exec", "--after", first["id"]),
                    *("-f", "--", "sh", "-c", "echo out; echo err >&2"),
                ],
                jwEnvironment(server.url),
                merged=merged,
            )
            output = result.stdout + (result.stderr or b"")
            self.assertEqual(result.returncode, 0, output)
            self.assertIn(b"out\n", result.stdout)
            self.assertIn(b"err\n", output)
            self.assertNotIn(b"broke off", output)

    async def test_orderToOnePlace(self) -> None:
        """Written to one place (2>&1), the output is in the job's order."""
        server = LiveServer(self)
        script = "echo out1; sleep 0.3; echo err1 >&2; sleep 0.3; echo out2; exit 4"
        result = await runBlocking(
            [JW, "exec", "-f", "--", "sh", "-c", script],
            jwEnvironment(server.url),
            merged=True,
        )
        self.assertEqual(result.returncode, 4, result.stdout)
        started, rest = result.stdout.split(b"\n", 1)
        self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started$")
        self.assertEqual(rest, b"out1\nerr1\nout2\n")

    async def test_resumesAfterDroppedConnections(self) -> None:
        """
        When the network drops the stream (twice, mid-body), jw reconnects
        and resumes where it was: every byte once, in order, for the
        ordered stream (Last-Event-ID) and the two raw ones (offsets).
        """
        server = LiveServer(self)
        script = "echo start >&2; sleep 0.3; seq 1 150000; sleep 0.3; echo end >&2"
        for merged in (True, False):
            proxy = CuttingProxy(server.port, after=64 * 1024, cuts=2)
            result = await runBlocking(
                [JW, "exec", "-f", "--", "sh", "-c", script],
                jwEnvironment(proxy.listen(self)),
                merged=merged,
            )
            self.assertEqual(proxy.cuts, 0, "the proxy did not cut")
            self.assertEqual(result.returncode, 0, result.stderr or result.stdout)
            if merged:
                started, rest = result.stdout.split(b"\n", 1)
                self.assertEqual(rest, b"start\n" + seq(150000) + b"end\n")
            else:
                started, rest = result.stderr.split(b"\n", 1)
                self.assertEqual(rest, b"start\nend\n")
                self.assertEqual(result.stdout, seq(150000))
            self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started$")

    async def closedStdout(self, server: LiveServer, script: str) -> tuple[str, bytes]:
        """
        C{jw exec -f -- sh -c script}, its stdout closed after the first
        line: the job's id and jw's stderr, once jw exited with the
        SIGPIPE status and the job was stopped by alice.
        """
        read, write = os.pipe()
        process = subprocess.Popen(
            [JW, "exec", "-f", "--", "sh", "-c", script],
            env=jwEnvironment(server.url),
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
        )
        os.close(write)
        self.addCleanup(process.kill)
        with os.fdopen(read, "rb") as reader:
            self.assertEqual(await deferToThread(reader.readline), b"y\n")
        code = await deferToThread(process.wait, 60)
        assert process.stderr is not None
        err = process.stderr.read()
        self.assertEqual(code, 141, err)
        jobId = err.split()[2].decode()
        job = await server.waitEnded(jobId)
        self.assertEqual((job["status"], job["stopped_by"]), ("STOPPED", "alice"))
        return jobId, err

    async def test_aClosedStdoutStopsTheJob(self) -> None:
        """
        jw exec -f ... | head: once our reader is gone, the job is stopped
        and jw exits with the SIGPIPE status, as over ssh the remote command
        dies at its next write; it ran on, unread, for ever.
        """
        server = LiveServer(self)
        jobId, err = await self.closedStdout(
            server, "while :; do echo y; sleep 0.01; done"
        )
        self.assertIn(f"jw: stdout closed: stopping job {jobId}".encode(), err)
        self.assertNotIn(b"Traceback", err)

    async def test_stdinAfterTheServerClosedAnIdleConnection(self) -> None:
        """
        jw exec -i: a pause in jw's stdin longer than the server's idle
        timeout (the feeder's kept-alive connection closed meanwhile): the
        next chunk goes on a new connection. It went on the closed one,
        failed, and the rest of stdin was lost (the job never got its end
        of file: with -f, jw waited for ever).
        """
        server = LiveServer(self, "--idle-timeout=1")
        process = subprocess.Popen(
            [JW, "exec", "-i", "-f", "--", "sh", "-c", "cat; echo saw-eof"],
            env=jwEnvironment(server.url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(process.kill)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"line1\n")
        process.stdin.flush()
        self.assertEqual(await deferToThread(process.stdout.readline), b"line1\n")
        await deferLater(reactor, 2.5, lambda: None)  # type: ignore[arg-type]
        process.stdin.write(b"line2\n")
        process.stdin.close()
        out = await deferToThread(process.stdout.read)
        code = await deferToThread(process.wait, 60)
        assert process.stderr is not None
        err = process.stderr.read()
        self.assertEqual(out, b"line2\nsaw-eof\n", err)
        self.assertEqual(code, 0, err)

    def jwThroughAProxy(
        self, *argv: str
    ) -> tuple[LiveServer, OutageProxy, subprocess.Popen[bytes]]:
        """
        A server, an L{OutageProxy} to it, and C{jw argv} running through
        it with C{JW_KEEPALIVE=1}, its three streams pipes (killed at the
        test's end).
        """
        server = LiveServer(self)
        proxy = OutageProxy(server.port)
        url = proxy.listen(self)
        process = subprocess.Popen(
            [JW, *argv],
            env=jwEnvironment(url, JW_KEEPALIVE="1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(process.kill)
        return server, proxy, process

    async def feedThrough(
        self, payload: bytes, command: str, outage: float | None = None
    ) -> tuple[bytes, int, bytes]:
        """
        C{jw exec -i -f -- sh -c command} through an L{OutageProxy}, with
        C{JW_KEEPALIVE=1} (a stall bound of 20 s), fed C{payload}; an
        C{outage} seconds long 2 s in, if given. jw's stdout, exit status
        and stderr, or a failure if it does not end in 60 s.
        """
        _, proxy, process = self.jwThroughAProxy(
            "exec", "-i", "-f", "--", "sh", "-c", command
        )
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None

        def feed() -> None:
            assert process.stdin is not None
            process.stdin.write(payload)
            process.stdin.close()

        feeding = deferToThread(feed)
        if outage is not None:
            await deferLater(reactor, 2, lambda: None)  # type: ignore[arg-type]
            proxy.outage(outage)
        try:
            out = await deferToThread(process.stdout.read).addTimeout(60, reactor)
        except defer.TimeoutError:
            process.kill()  # its stdin's end never sent: the job waits for it
            self.fail(f"no end in 60 s: {process.stderr.read()!r}")
        code = await deferToThread(process.wait, 60)
        await feeding
        return out, code, process.stderr.read()

    async def test_stdinThroughAnOutageWhileAWriteWaits(self) -> None:
        """
        jw exec -i -f into a job that reads its stdin only after 4 s: of
        400,000 bytes one write waits for room when a 1 s outage cuts every
        connection, that write's answer with them. jw sends it again at its
        offset once the server answers, and the job gets every byte once.
        The rest of stdin was dropped ("jw: stdin: ...": a POST is not sent
        twice, for fear of feeding the job a chunk twice), and the job
        waited for its end for ever.
        """
        payload = bytes(range(256)) * 1563
        out, code, err = await self.feedThrough(payload, "sleep 4; sha256sum", 1)
        self.assertEqual(out, f"{hashlib.sha256(payload).hexdigest()}  -\n".encode())
        self.assertEqual(code, 0, err)

    async def test_stdinToAJobThatReadsLate(self) -> None:
        """
        A job that reads its stdin only after 25 s: the write waiting for
        room is not answered in jw's stall bound (20 s here), so jw asks
        for the job, then sends it again at its offset; the server takes
        none of it twice. (jw gave up on a write unanswered in 300 s, and
        the rest of stdin was lost.)
        """
        payload = bytes(range(256)) * 1563
        out, code, err = await self.feedThrough(payload, "sleep 25; sha256sum")
        self.assertEqual(out, f"{hashlib.sha256(payload).hexdigest()}  -\n".encode())
        self.assertEqual(code, 0, err)

    async def stdinThroughAnOutage(
        self, seconds: str, meanwhile: Any = None
    ) -> tuple[str, int, bytes]:
        """
        C{jw exec -i -- sleep seconds} through an L{OutageProxy}, its stdin
        open with nothing written; a 14 s outage a second after it started
        (C{meanwhile(server, jobId)} is awaited then): the job's id, jw's
        exit status and its stderr.
        """
        server, proxy, process = self.jwThroughAProxy(
            "exec", "-i", "--", "sleep", seconds
        )
        assert process.stdout is not None and process.stderr is not None
        jobId = (await deferToThread(process.stdout.readline)).decode().strip()
        await deferLater(reactor, 1, lambda: None)  # type: ignore[arg-type]
        proxy.outage(14)
        if meanwhile is not None:
            await meanwhile(server, jobId)
        try:
            code = await deferToThread(process.wait, 50)
        except subprocess.TimeoutExpired:
            self.fail("jw still waits on its stdin 50 s after the outage")
        return jobId, code, process.stderr.read()

    async def test_stdinLeftOnceTheJobEndedAfterAnOutage(self) -> None:
        """
        jw exec -i (no -f), its stdin open with nothing written: an outage
        longer than the long poll's resumptions (12 s) while the job runs,
        then the way back; the job ends, and jw stops waiting on its stdin
        and says so. It waited for ever: once the long poll had given up,
        nothing watched the job's end.
        """
        jobId, code, err = await self.stdinThroughAnOutage("18")
        self.assertEqual(code, 0, err)
        self.assertIn(
            f"jw: job {jobId} exited with code 0 before jw's stdin ended".encode(),
            err,
        )

    async def test_stdinLeftOnceTheJobWasDeletedDuringAnOutage(self) -> None:
        """
        As L{test_stdinLeftOnceTheJobEndedAfterAnOutage}, the job ended and
        deleted during the outage: jw says so in one line, non-zero, and
        stops waiting on its stdin (it waited for ever: a watch refused,
        404, was taken for one still running; a review).
        """

        async def delete(server: LiveServer, jobId: str) -> None:
            await server.waitEnded(jobId)
            code, _ = await server.json("DELETE", f"/jobs/{jobId}")
            self.assertEqual(code, 200)

        _, code, err = await self.stdinThroughAnOutage("3", delete)
        self.assertNotIn(code, (0, None), err)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertNotIn(b"Traceback", err)

    async def test_aClosedStdoutStopsTheJobAfterAnIdleWhile(self) -> None:
        """
        As L{test_aClosedStdoutStopsTheJob}, when jw's first connection
        has been idle longer than the server's idle timeout: the stop
        goes on a new one. It went on the closed one, failed ("could not
        stop job"), and the job ran on, unread.
        """
        server = LiveServer(self, "--idle-timeout=1")
        _, err = await self.closedStdout(
            server, "echo y; sleep 3; while :; do echo y; sleep 0.01; done"
        )
        self.assertNotIn(b"could not stop", err)

    async def test_interruptsStopThenDetach(self) -> None:
        """
        SIGINT stops the followed job (exit 130, STOPPED: test_cli); with a
        job that ignores TERM, SIGTERM starts the stop (with TERM: the
        signal jw got) and a SIGHUP stops following, exit 143 (the first
        signal's, as a shell's), saying a stop was asked for: the job is still
        running until its grace ends (it said "left job running").
        """
        server = LiveServer(self, grace=8.0)
        process = subprocess.Popen(
            [JW, "exec", "-f", "--", "sh", "-c", 'trap "" TERM; echo ready; sleep 300'],
            env=jwEnvironment(server.url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(process.kill)
        assert process.stdout is not None and process.stderr is not None
        started = await deferToThread(process.stderr.readline)
        self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started\n$")
        jobId = started.split()[2].decode()
        self.assertEqual(await deferToThread(process.stdout.readline), b"ready\n")
        process.send_signal(signal.SIGTERM)
        stopping = await deferToThread(process.stderr.readline)
        self.assertIn(b"SIGTERM: stopping job", stopping)
        self.assertIn(b"with TERM", stopping)
        process.send_signal(signal.SIGHUP)
        code = await deferToThread(process.wait, 60)
        err = process.stderr.read()
        self.assertEqual(code, 143, err)
        self.assertIn(f"SIGHUP: no longer following job {jobId}".encode(), err)
        self.assertIn(b"a stop was asked for", err)
        self.assertIn(f"jw status {jobId}".encode(), err)
        self.assertNotIn(b"Traceback", err)
        self.assertEqual(server.manager.record(jobId).status.value, "RUNNING")


class FailureWordsTests(SynchronousTestCase):
    """
    What jw says of a connection that failed names what to do: the CA
    file of a server run with another state dir, and the port jw dialled
    when the URL names none (443, where jobworker's default is 8443).
    """

    def test_noPortNamed(self) -> None:
        from twisted.internet.error import ConnectionRefusedError as Refused

        from jobworker.client.netfailures import describeConnectionFailure
        from jobworker.client.quick import describe

        for words in (
            describe("https://host", ConnectionRefusedError()),
            describeConnectionFailure("https://host", Refused()),
        ):
            self.assertIn("port 443", words)
            self.assertIn("8443", words)
        self.assertNotIn("443", describe("https://host:9000", ConnectionRefusedError()))

    def test_notTrustedSaysWhereTheCAIs(self) -> None:
        import ssl

        from jobworker.client.quick import describe

        error = ssl.SSLCertVerificationError(1, "certificate verify failed")
        self.assertIn("tls/ca.pem", describe("https://host:8443", error))
