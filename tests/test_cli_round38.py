"""
What the thirty-eighth session's new user found in jw.

Completion of a job id (C{jw _ids}) froze the user's shell for a minute
against a server that took the connection but never answered; the
dashboard's URL, or any URL whose path has no jobworker API, got verbs
blaming something else ("not found", "server answered 405", a query
parameter jw itself sent); C{jw logs --tail N} downloaded and held a whole
extra line of each stream (a 300 MB progress bar held to print C{done});
an IPv6 zone in the server URL was said with a Python repr; C{jw logs
--offset} past any server's range went to the server for its 400.
"""

from __future__ import annotations

import io
import os
import random
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client import calls
from jobworker.client.calls import errorFor
from jobworker.client.follow import LastLines
from jobworker.client.streams import Streams
from jobworker.jobs import validation

from . import test_cli_round37
from .support import CERT, JW, KEY, JWAssertions, LiveServer, jwEnvironment
from .test_cli_exec_defects import BOUND, GRACE
from .test_cli_memory import SERVER, MemoryCLITestCase
from .test_cli_round33 import UNKNOWN, SubprocessJW


class _Unanswered:
    """
    A client whose listing never comes (a server that took the request and
    is wedged): C{jw _ids}'s only request.
    """

    def __init__(self) -> None:
        self.asked: Deferred[Any] = Deferred()

    def listJobs(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self.asked

    async def close(self) -> None:
        pass


class IdsDeadlineTests(MemoryCLITestCase):
    """
    C{jw _ids} (the completion scripts' TAB on a job id) gives up after 2 s
    in all, printing nothing: it waited for the TLS handshake's bound, 2 x
    JW_KEEPALIVE (60 s), the user's shell frozen meanwhile (new user round
    38).
    """

    def test_givesUp(self) -> None:
        client = _Unanswered()
        run = self.start("_ids", connect=lambda *args, **kwargs: client)
        assert run.done is not None
        self.reactor.advance(1.9)
        self.assertNoResult(run.done)
        self.reactor.advance(0.2)
        self.assertEqual(self.finish(run), (b"", b"", 1))
        self.assertTrue(client.asked.called)  # cancelled: nothing left waiting

    def test_answered(self) -> None:
        """An answer within the deadline is shown, as before."""
        jobId = self.execId("true")
        self.assertEqual(self.jw("_ids"), (f"{jobId}\n".encode(), b"", 0))


class IdsDeadlineProcessTests(SubprocessJW, SynchronousTestCase):
    """
    The same, with the installed jw: a port that takes the connection but
    never shakes hands, and a server that shakes hands but never answers.
    Each is bounded by the test's 15 s (it took 60 s).
    """

    def test_noHandshake(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel takes the connection; no one answers
        server = f"https://localhost:{listener.getsockname()[1]}"
        self.assertEqual(self.jw("_ids", JW_SERVER=server), (b"", b"", 1))

    def test_noAnswer(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        held: list[socket.socket] = []

        def shakeHands() -> None:
            try:
                connection, _ = listener.accept()
                held.append(context.wrap_socket(connection, server_side=True))
            except OSError:
                pass  # closed at cleanup

        thread = threading.Thread(target=shakeHands, daemon=True)
        thread.start()
        self.addCleanup(lambda: [c.close() for c in held])
        server = f"https://localhost:{listener.getsockname()[1]}"
        self.assertEqual(self.jw("_ids", JW_SERVER=server), (b"", b"", 1))
        thread.join(BOUND)
        self.assertEqual(len(held), 1)  # the handshake was done


#: Another whole job id no server has.
OTHER = "00000000-0000-4000-8000-000000000001"

#: Every verb that sends a request, with the arguments it needs.
REQUESTING = (
    ("list",),
    ("status", UNKNOWN),
    ("exec", "--", "true"),
    ("stop", UNKNOWN),
    ("rm", UNKNOWN),
    ("wait", UNKNOWN),
    ("logs", UNKNOWN),
    ("clean",),
    ("login",),
    # Several ids: said once, not as each id's failure.
    ("status", UNKNOWN, OTHER),
    ("stop", UNKNOWN, OTHER),
    ("rm", UNKNOWN, OTHER),
)


class WrongPathTests(MemoryCLITestCase):
    """
    A server URL whose path has no jobworker API (the server answers its
    routing errors: 404 "no such route", 405 "method not allowed") is said
    to be one, in one line, by every verb: it was "not found: no such
    route", "server answered 405" (new user round 38).
    """

    def test_said(self) -> None:
        url = SERVER + "/api"
        for argv in REQUESTING:
            result = self.jw(*argv, JW_SERVER=url)
            self.assertOneLineFailure(
                result,
                f"jw: no jobworker API at {url} (".encode(),
                b"is it the right URL? A jobworker server's API is at its root "
                b"(https://localhost:8443); /ui/ is its web dashboard\n",
            )
            self.assertEqual(result[2], 1, argv)

    def test_errorFor(self) -> None:
        for code, body in (
            (404, b'{"error": "no such route"}'),
            (405, b'{"error": "method not allowed"}'),
        ):
            error = errorFor(code, body, None, "/jobs", server="https://h:1/x")
            self.assertTrue(
                str(error).startswith("no jobworker API at https://h:1/x ("), error
            )
            self.assertIn("(https://h:1)", str(error))
            self.assertEqual(error.status, code)

    def test_otherNotFound(self) -> None:
        """A job that is not found is said as before."""
        error = errorFor(404, b'{"error": "no such job"}', None, f"/jobs/{UNKNOWN}")
        self.assertEqual(str(error), f"not found: no job {UNKNOWN}")


class WrongPathProcessTests(JWAssertions, TestCase):
    """The same, with the installed jw (its standard-library client too)."""

    async def test_said(self) -> None:
        # (No job runs; the range is this round's, apart from other tests'.)
        server = LiveServer(self, "--dynamic-uids=77000-77999", grace=GRACE)
        url = server.url + "/nothere/"
        environ = jwEnvironment(url, XDG_CONFIG_HOME=os.path.abspath(self.mktemp()))
        for argv in REQUESTING:
            done = await deferToThread(
                subprocess.run,
                [JW, *argv],
                env=environ,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=BOUND,
                check=False,
            )
            result = (done.stdout, done.stderr, done.returncode)
            self.assertOneLineFailure(
                result,
                f"jw: no jobworker API at {url.rstrip('/')} (".encode(),
                f"A jobworker server's API is at its root ({server.url});".encode(),
            )
            self.assertEqual(done.returncode, 1, argv)


class DashboardURLTests(SubprocessJW, JWAssertions, SynchronousTestCase):
    """
    The dashboard's URL given as the server (the one URL a browser user
    has) is refused before anything is sent, saying where the API is: every
    verb got another error, C{jw list} one about a query parameter jw sent
    (new user round 38). No server listens at it here.
    """

    def test_refused(self) -> None:
        for url in (
            "https://localhost:1/ui",
            "https://localhost:1/ui/",
            "https://localhost:1/proxy/ui/",
        ):
            for argv in (("list",), ("status", UNKNOWN), ("login",)):
                result = self.jw(*argv, JW_SERVER=url)
                self.assertOneLineFailure(
                    result,
                    f"{url} is the web dashboard's URL".encode(),
                    f"the API is at {url.rstrip('/')[: -len('/ui')]}".encode(),
                )
                self.assertEqual(result[2], 2, (url, argv))

    def test_otherPaths(self) -> None:
        """A path that is not the dashboard's is taken (a proxy's prefix)."""
        for url in ("https://localhost:1/uid", "https://localhost:1/ui/api"):
            _out, err, code = self.jw("list", JW_SERVER=url)
            self.assertEqual(code, 1, err)
            self.assertIn(b"connection refused", err)


class TailCostTests(MemoryCLITestCase):
    """
    C{jw logs --tail N} asks for each stream's last N lines, and for one
    more only when the order of the two needs it: it asked for N + 1 of
    each always, and downloaded and held a whole line it did not print (a
    300 MB progress bar, to print C{done}: new user round 38).
    """

    LONG = 300_000

    written = test_cli_round37.TailAcrossStreamsTests.written

    def counted(self, *argv: str) -> tuple[tuple[bytes, bytes, int], list[int]]:
        """C{jw ARGV}'s result, and the bytes of each log answer it read."""
        received: list[int] = []

        def connect(*args: Any, **kwargs: Any) -> Any:
            client = self.connect(*args, **kwargs)
            events = client.events

            async def counting(jobId: str, sink: Any, *rest: Any, **named: Any) -> Any:
                received.append(0)

                def counted(data: bytes) -> None:
                    received[-1] += len(data)
                    sink(data)

                return await events(jobId, counted, *rest, **named)

            client.events = counting  # type: ignore[method-assign]
            return client

        return self.jw(*argv, connect=connect), received

    def test_longLineNotRead(self) -> None:
        jobId = self.written((0, b"#" * self.LONG + b"\r\n"), (0, b"done\n"))
        result, received = self.counted("logs", "--tail", "1", jobId)
        self.assertEqual(result, (b"done\n", b"", 0))
        self.assertEqual(len(received), 1)
        self.assertLess(received[0], 1000)

    def test_longLineOfTheOtherStream(self) -> None:
        """A long line of stderr before stdout's last: not read either."""
        jobId = self.written(
            (1, b"#" * self.LONG + b"\n"), (1, b"warning\n"), (0, b"done\n")
        )
        result, received = self.counted("logs", "--tail", "1", jobId)
        self.assertEqual(result, (b"done\n", b"", 0))
        self.assertEqual(len(received), 1)
        self.assertLess(received[0], 1000)

    def test_extraLineWhenNeeded(self) -> None:
        """
        A line of one stream left unfinished before the other's last lines
        (round 37's case): asked again, one line more of each, to be right.
        """
        jobId = self.written((0, b"xyz"), (1, b"e1\n"), (1, b"e2\n"))
        result, received = self.counted("logs", "--tail", "1", jobId)
        self.assertEqual(result, (b"", b"e2\n", 0))
        self.assertEqual(len(received), 2)
        result, received = self.counted("logs", "--tail", "2", jobId)
        self.assertEqual(result, (b"xyz", b"e1\ne2\n", 0))

    def test_everythingSent(self) -> None:
        """Both streams whole in the first answer: never asked again."""
        jobId = self.written((0, b"a\n"), (1, b"b\n"), (0, b"c"))
        for tail, shown in (
            ("1", (b"c", b"")),
            ("2", (b"c", b"b\n")),
            ("5", (b"a\nc", b"b\n")),
        ):
            result, received = self.counted("logs", "--tail", tail, jobId)
            self.assertEqual(result, (*shown, 0), tail)
            self.assertEqual(len(received), 1, tail)


def _tailStart(data: bytes, count: int) -> int:
    """Where the server's tail of C{count} lines of one stream begins."""
    if count == 0:
        return len(data)
    starts = [0] + [i + 1 for i, byte in enumerate(data[:-1]) if byte == 10]
    return starts[-count] if count <= len(starts) else 0


def _shown(last: LastLines) -> list[bytes]:
    shown = [io.BytesIO(), io.BytesIO()]
    last.release([shown[0].write, shown[1].write])
    return [f.getvalue() for f in shown]


class LastLinesWholeTests(SynchronousTestCase):
    """
    L{LastLines.whole} says the lines kept are the last only when they are:
    against the lines kept of all the output, for many interleavings of
    the two streams, each cut as the server's tail of C{count} lines cuts
    it (and with one line more of each, as before, always right).
    """

    PIECES = (b"a", b"\n", b"ab", b"a\n", b"\na", b"a\nb")

    def kept(
        self, pieces: list[tuple[int, bytes]], count: int, asked: int
    ) -> tuple[bool, list[bytes]]:
        streams = [b"".join(d for i, d in pieces if i == s) for s in (0, 1)]
        starts = [_tailStart(data, asked) for data in streams]
        last = LastLines(count)
        last.startsAt(starts)
        position = [0, 0]
        for index, data in pieces:
            begins, position[index] = position[index], position[index] + len(data)
            if position[index] > starts[index]:
                last.add(index, data[max(0, starts[index] - begins) :])
        return last.whole(), _shown(last)

    def test_whole(self) -> None:
        chosen = random.Random(38)
        said = 0
        for _ in range(5000):
            pieces = [
                (chosen.randint(0, 1), chosen.choice(self.PIECES))
                for _ in range(chosen.randint(1, 6))
            ]
            count = chosen.randint(0, 4)
            everything = LastLines(count)
            everything.startsAt([0, 0])
            for index, data in pieces:
                everything.add(index, data)
            truth = _shown(everything)
            whole, kept = self.kept(pieces, count, count)
            if whole:
                said += 1
                self.assertEqual(kept, truth, (pieces, count))
            self.assertEqual(self.kept(pieces, count, count + 1)[1], truth)
        self.assertGreater(said, 4000)  # (the first answer is enough, mostly)

    def test_notKnown(self) -> None:
        """Without the server's position (an older server's events): not whole."""
        last = LastLines(1)
        last.add(0, b"done\n")
        self.assertFalse(last.whole())


class IPv6ZoneTests(SubprocessJW, JWAssertions, SynchronousTestCase):
    """
    A server URL with an IPv6 zone (C{%eth0}), which the verbs on Twisted
    cannot take: said in one line, naming what to do; it was Twisted's URL
    parser's words with a Python repr in them, C{(OSError('illegal IP
    address string passed to inet_pton'))} (new user round 38).
    """

    def test_said(self) -> None:
        for url in ("https://[fe80::1%eth0]:1", "https://[fe80::1%25lo]:1"):
            for argv in (("stop", UNKNOWN), ("rm", UNKNOWN)):
                result = self.jw(*argv, JW_SERVER=url)
                line = self.assertOneLineFailure(
                    result,
                    f"jw: cannot reach {url} with this command: ".encode(),
                    b"IPv6 zone",
                )
                self.assertNotIn(b"Error(", line)
                self.assertEqual(result[2], 1)


class OffsetRangeTests(SubprocessJW, JWAssertions, SynchronousTestCase):
    """
    C{jw logs --offset} past what any server takes (a 64-bit offset) is
    refused by jw, in one line, exit 2, nothing sent: it went to the server
    for its 400 (new user round 38). No server listens at JW_SERVER here.
    """

    def test_refused(self) -> None:
        for offset in ("9223372036854775808", "99999999999999999999999"):
            result = self.jw("logs", "--offset", offset, UNKNOWN)
            self.assertOneLineFailure(
                result, b"jw: --offset must be at most 9223372036854775807\n"
            )
            self.assertEqual(result[2], 2)

    def test_atTheLimit(self) -> None:
        _out, err, code = self.jw("logs", "--offset", str((1 << 63) - 1), UNKNOWN)
        self.assertEqual(code, 1, err)
        self.assertIn(b"connection refused", err)

    def test_agreesWithTheServer(self) -> None:
        self.assertEqual(calls.MAX_OFFSET, validation.MAX_INT64)


class NonBlockingOutputTests(SynchronousTestCase):
    """
    Output review 38: jw's job output written to a stdout another process
    left non-blocking (a pipe, a terminal) with a slow reader stopped at
    the first full buffer: "cannot write the job's output: Resource
    temporarily unavailable", exit 1, the rest never shown (11 KB of 1.3
    MB on a terminal). It waits for room, as jw's own lines do (new user
    round 29's C{writeAll}).
    """

    def test_everyByte(self) -> None:
        readEnd, writeEnd = os.pipe()
        os.set_blocking(writeEnd, False)
        out = os.fdopen(writeEnd, "wb")
        self.addCleanup(out.close)
        received = bytearray()

        def slowReader() -> None:
            with os.fdopen(readEnd, "rb", buffering=0) as reading:
                while chunk := reading.read(4096):
                    received.extend(chunk)
                    time.sleep(0.001)

        reader = threading.Thread(target=slowReader)
        reader.start()
        write = Streams(out=out, err=io.BytesIO()).writer("stdout")
        data = bytes(range(256)) * 4096  # (1 MiB: many pipe buffers)
        try:
            write(data)
        finally:
            out.close()
            reader.join(30)
        self.assertEqual(bytes(received), data)
