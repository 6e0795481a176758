"""
What the thirty-seventh session's new user found in jw.

An HTTPS service that is not jobworker (a wrong port, a proxy's page)
got "unexpected error: JSONDecodeError", a frame of a billion bytes, or
for C{jw rm} exit 0; C{jw logs --tail N} kept a line begun on stdout
before the other stream's lines, and dropped the job's last words; C{jw
exec -f ... | head} said "stopping job" of a job that had ended; a
command line over a server's fixed limits got the server's bare 413; a
login to a server whose tokens live a minute or less was never used;
C{jw exec -i} interrupted while its job was queued said it "runs on",
and not that the input read was dropped; C{jw ls} was steered to
C{logs}, and C{ps}, C{kill}, C{run}, C{delete}, C{tail} to nothing.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client import cli, config, verbs
from jobworker.client.follow import LastLines
from jobworker.client.parser import VERBS
from jobworker.client.quick import drive
from jobworker.jobs import validation

from .support import CERT, JW, KEY, JWAssertions, LiveServer, jwEnvironment, sleep
from .test_cli_exec_defects import BOUND, GRACE, readLine, startJW
from .test_cli_memory import MemoryCLITestCase, Run
from .test_cli_round33 import SubprocessJW

#: A whole job id no server has.
JOB = "abcdef12-0000-4000-8000-000000000000"


class _ForeignServer:
    """
    An HTTPS service that is not jobworker, with a certificate jw trusts
    (the test server's): every request is answered C{code}, C{contentType},
    C{body}. Stopped at cleanup.
    """

    def __init__(
        self, testCase: SynchronousTestCase, code: int, contentType: str, body: bytes
    ) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(code)
                self.send_header("Content-Type", contentType)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = answer

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(CERT, KEY)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        testCase.addCleanup(thread.join, BOUND)
        testCase.addCleanup(server.server_close)
        testCase.addCleanup(server.shutdown)
        self.url = f"https://localhost:{server.server_address[1]}"


class ForeignServerTests(JWAssertions, SynchronousTestCase):
    """
    jw pointed at an HTTPS service that is not jobworker (another service
    on the port, a reverse proxy's or a captive portal's page): one line
    saying the URL did not answer as a jobworker server, exit 1, for every
    verb; C{jw rm} does not take a foreign 201 for a deletion. It was
    "unexpected error: JSONDecodeError(...)" or "KeyError('jobs')", a
    frame of 1701604463 bytes for C{jw logs}, and exit 0 for C{jw rm}
    (new user round 37).
    """

    ANSWERS = (
        (200, "text/plain", b"hello"),
        (201, "application/json", b'{"id": 5}'),
        (200, "application/json", b'{"jobs": 5, "status": 1, "deleted": []}'),
        (200, "text/html", b"<html>welcome</html>"),
    )

    COMMANDS = (
        ("list",),
        ("status", JOB),
        ("exec", "--", "true"),
        ("exec", "-f", "--", "true"),
        ("stop", JOB),
        ("rm", JOB),
        ("wait", JOB),
        ("logs", JOB),
        ("logs", "--stdout", JOB),
        ("login",),
    )

    def jw(self, server: str, *argv: str) -> tuple[bytes, bytes, int]:
        environ = jwEnvironment(server, XDG_CONFIG_HOME=os.path.abspath(self.mktemp()))
        done = subprocess.run(
            [JW, *argv],
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND,
            check=False,
        )
        return done.stdout, done.stderr, done.returncode

    def test_said(self) -> None:
        for code, contentType, body in self.ANSWERS:
            foreign = _ForeignServer(self, code, contentType, body)
            for argv in self.COMMANDS:
                result = self.jw(foreign.url, *argv)
                line = self.assertOneLineFailure(
                    result,
                    f"{foreign.url} did not answer as a jobworker server (".encode(),
                    f"HTTP {code}".encode(),
                )
                self.assertEqual(result[2], 1, (argv, line))


class TailAcrossStreamsTests(MemoryCLITestCase):
    """
    C{jw logs --tail N} is the last N lines of what jw shows, as C{tail -n}
    of it: a stdout line cut by a stderr line ends where jw shows it end
    (it was kept whole, as beginning before the stderr line, and the job's
    last line was dropped: new user round 37).
    """

    def written(self, *pieces: tuple[int, bytes]) -> str:
        jobId = self.execId("sh", "-c", "true")
        spawned = self.process(jobId)
        for index, data in pieces:
            (spawned.output, spawned.errors)[index](data)
            self.reactor.advance(0.2)
            self.flush()
        self.endJob(jobId)
        return jobId

    def test_progressCutByAWarning(self) -> None:
        jobId = self.written((0, b"Downloading..."), (1, b"warning\n"), (0, b"done\n"))
        for tail, shown in (
            ("1", (b"done\n", b"")),
            ("2", (b"Downloading...done\n", b"warning\n")),
        ):
            self.assertEqual(self.jw("logs", "--tail", tail, jobId), (*shown, 0), tail)

    def test_otherStreamsLineBeforeTheTail(self) -> None:
        """
        A line of one stream left unfinished before the other's last lines
        is not part of them (the server's tail of each stream alone would
        have it begin the output).
        """
        jobId = self.written((0, b"xyz"), (1, b"e1\n"), (1, b"e2\n"))
        self.assertEqual(self.jw("logs", "--tail", "1", jobId), (b"", b"e2\n", 0))
        self.assertEqual(
            self.jw("logs", "--tail", "2", jobId), (b"xyz", b"e1\ne2\n", 0)
        )

    def test_lastLines(self) -> None:
        for pieces, count, kept in (
            (
                [(0, b"Downloading..."), (1, b"warning\n"), (0, b"done\n")],
                1,
                [b"done\n", b""],
            ),
            ([(0, b"a"), (1, b"x\n"), (0, b"b\n"), (1, b"y\n")], 2, [b"b\n", b"y\n"]),
            (
                [(0, b"a"), (1, b"x\n"), (0, b"b\n"), (1, b"y\n")],
                3,
                [b"ab\n", b"x\ny\n"],
            ),
            ([(0, b"a\nb"), (1, b"c"), (0, b"d\n")], 1, [b"bd\n", b"c"]),
            ([(0, b"a\n"), (1, b"b")], 1, [b"", b"b"]),
        ):
            shown = [io.BytesIO(), io.BytesIO()]
            last = LastLines(count)
            for index, data in pieces:
                last.add(index, data)
            last.release([shown[0].write, shown[1].write])
            self.assertEqual([f.getvalue() for f in shown], kept, (pieces, count))


class ClosedStdoutOfAnEndedJobTests(MemoryCLITestCase):
    """
    C{jw exec -f ... | head}: a reader gone once the job has ended is
    quiet, as over ssh; jw says "stopping job" only of a job it stops (it
    said it every time, of a job that had completed: new user round 37).
    """

    def test_quiet(self) -> None:
        run, spawned = self.followed("seq", "1", "300000")
        jobId = run.err.getvalue().split()[2].decode()

        def gone(data: bytes) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        run.out.write = gone  # type: ignore[method-assign]
        spawned.output(b"1\n2\n")
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        self.reactor.advance(0)
        _out, err, code = self.finish(run)
        self.assertEqual(
            (err, code), (f"jw: job {jobId} started\n".encode(), cli.EXIT_BROKEN_PIPE)
        )
        self.assertEqual(self.statusJSON(jobId)["status"], "COMPLETED")

    def test_saidOfARunningJob(self) -> None:
        run, spawned = self.followed("yes")
        jobId = run.err.getvalue().split()[2].decode()

        def gone(data: bytes) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        run.out.write = gone  # type: ignore[method-assign]
        spawned.output(b"y\n")
        self.flush()
        self.assertIn(
            f"jw: stdout closed: stopping job {jobId}\n".encode(), run.err.getvalue()
        )
        self.endJob(jobId, signum=signal.SIGTERM)
        _out, _err, code = self.finish(run)
        self.assertEqual(code, cli.EXIT_BROKEN_PIPE)
        self.assertEqual(self.statusJSON(jobId)["status"], "STOPPED")


class CommandLineLimitsTests(SubprocessJW, JWAssertions, SynchronousTestCase):
    """
    A command line over what every server takes (32 KiB of command, args,
    env and cwd together; 4096 args; 1024 env variables) is refused by jw
    before anything is sent, in one line, exit 2 (it was the server's 400,
    or past 64 KiB its bare 413, exit 1: new user round 37). No server
    listens at JW_SERVER here: a request would fail otherwise.
    """

    def test_jobData(self) -> None:
        long = "a" * 40000
        result = self.jw("exec", "--", "echo", long)
        self.assertOneLineFailure(
            result, b"40004 bytes together, over the 32768 a job may have"
        )
        self.assertEqual(result[2], 2)
        result = self.jw("exec", "-e", "X=" + "b" * 70000, "--", "true")
        self.assertOneLineFailure(result, b"70005 bytes together")
        self.assertEqual(result[2], 2)
        result = self.jw("exec", "--cwd", "/" + "c" * 33000, "--", "true")
        self.assertOneLineFailure(result, b"33005 bytes together")

    def test_counts(self) -> None:
        result = self.jw("exec", "--", "echo", *map(str, range(5000)))
        self.assertOneLineFailure(result, b"at most 4096 args", b"not 5000")
        self.assertEqual(result[2], 2)
        env = [f"-eV{i}=1" for i in range(1100)]
        result = self.jw("exec", *env, "--", "true")
        self.assertOneLineFailure(result, b"at most 1024 --env variables", b"not 1100")
        self.assertEqual(result[2], 2)

    def test_atTheLimits(self) -> None:
        """The most every server takes is not refused by jw (connection refused)."""
        args = ["a" * 7] * 4096  # 4 + 4096 * 7 = 28676 bytes
        for argv in (
            ("exec", "--", "echo", *args),
            ("exec", "--", "echo", "a" * (32768 - 4)),
            ("exec", *[f"-eV{i}=" for i in range(1024)], "--", "true"),
        ):
            _out, err, code = self.jw(*argv)
            self.assertEqual(code, 1, err)
            self.assertIn(b"connection refused", err)

    def test_agreesWithTheServer(self) -> None:
        self.assertEqual(verbs.MAX_JOB_DATA, validation.MAX_JOB_DATA)
        self.assertEqual(verbs.MAX_ARGS, validation.MAX_ARGS)
        self.assertEqual(verbs.MAX_ENV, validation.MAX_ENV)


class NonASCIICommandLineTests(TestCase):
    """
    A command line within the server's 32 KiB, in letters JSON would
    escape (C{\\u00e9}, 6 bytes for 2), is sent as it is: it was three
    times its size, and the server's 64 KiB body cap answered 413 (new
    user round 37).
    """

    async def test_created(self) -> None:
        server = LiveServer(self, grace=GRACE)
        word = "\u00e9" * 16000  # 32000 bytes in UTF-8
        environ = jwEnvironment(server.url)
        done = await deferToThread(
            subprocess.run,
            [JW, "exec", "--json", "--", "echo", word],
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["args"], [word])


def _token(issued: float, expires: float) -> str:
    """A token as a jobworker server's looks (unsigned: jw does not check)."""
    claims = {"u": "alice", "r": "Operator", "i": issued, "e": expires}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return f"jw1.{payload.decode()}.sig"


class ShortLivedTokenTests(SynchronousTestCase):
    """
    A token that lives a minute or less (a server's C{--token-ttl=45}) is
    used: jw renews a token ahead of its expiry by a quarter of its life,
    at most a minute (it was a minute always: a 45 s login was never used,
    and jw said to run the jw login just run: new user round 37).
    """

    def loaded(self, token: str, expires: float, now: float) -> str | None:
        path = os.path.join(os.path.abspath(self.mktemp()), "tokens.json")
        config.saveToken(path, "https://h:1", token, expires, "alice")
        return config.loadToken(path, "https://h:1", now)[0]

    def test_margin(self) -> None:
        issued = 1_800_000_000
        for lifetime, age, usable in (
            (45, 5, True),
            (45, 33, True),
            (45, 35, False),
            (8, 5, True),
            (8, 7, False),
            (12 * 3600, 12 * 3600 - 61, True),
            (12 * 3600, 12 * 3600 - 59, False),
        ):
            token = _token(issued, issued + lifetime)
            found = self.loaded(token, issued + lifetime, issued + age)
            self.assertEqual(found == token, usable, (lifetime, age))

    def test_unreadableToken(self) -> None:
        """A token whose claims jw cannot read keeps the minute's margin."""
        self.assertEqual(self.loaded("opaque", 1000.0, 900.0), "opaque")
        self.assertIsNone(self.loaded("opaque", 1000.0, 950.0))


class ShortLivedLoginTests(TestCase):
    """C{jw login} to a server with C{--token-ttl=45}: the next command uses it."""

    async def test_used(self) -> None:
        server = LiveServer(self, "--token-ttl=45", grace=GRACE)
        environ = jwEnvironment(
            server.url, XDG_CONFIG_HOME=os.path.abspath(self.mktemp())
        )

        def run(*argv: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [JW, *argv],
                env={**environ, **extra},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=BOUND,
                check=False,
            )

        login = await deferToThread(run, "login")
        self.assertEqual(login.returncode, 0, login.stderr)
        listed = await deferToThread(run, "list", JW_PASSWORD="")
        self.assertEqual((listed.stderr, listed.returncode), (b"", 0))


def _readOffset(pid: int, fd: int) -> int:
    """Where process C{pid}'s file descriptor C{fd} is in its file."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("pos:"):
                return int(line.split()[1])
    raise AssertionError("no pos in fdinfo")


class QueuedInputInterruptedTests(TestCase):
    """
    Ctrl-C on C{jw exec -i} (no C{-f}) while its job is queued: jw says
    that the job is left queued, its stdin to be closed as it starts, that
    the input it had read was not sent, and how to take the job off the
    queue (it said the job "runs on", and nothing of the input: new user
    round 37).
    """

    async def test_said(self) -> None:
        server = LiveServer(self, "--max-running=1", grace=GRACE)
        blocker = await server.createJob("sleep", "60")
        self.addCleanup(
            server.json,
            "POST",
            f"/jobs/{blocker['id']}/stop",
            "alice",
            {"signal": "KILL"},
        )
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"hello\n")
        with open(path, "rb") as stdin:
            process = startJW(server.url, "exec", "-i", "--", "cat", stdin=stdin)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        jobId = (await deferToThread(readLine, process.stdout)).decode().strip()
        deadline = time.monotonic() + BOUND
        while _readOffset(process.pid, 0) < 6:
            self.assertLess(time.monotonic(), deadline, "jw read its stdin")
            await sleep(0.02)
        process.send_signal(signal.SIGINT)
        exited = await deferToThread(process.wait, BOUND)
        err = process.stderr.read().decode()
        self.assertEqual(exited, 130, err)
        self.assertEqual(
            err,
            f"jw: job {jobId} is waiting to start: its stdin will be sent once it "
            f"starts\njw: SIGINT: job {jobId} is left queued, its stdin to be "
            "closed as it starts; the 6 bytes jw read of its stdin were not sent "
            f"(jw stop {jobId} takes it off the queue)\n",
        )
        self.assertEqual(server.manager.record(jobId).status.value, "PENDING")

    def test_nothingRead(self) -> None:
        """Nothing read yet: nothing said of it."""
        line = self.closed(0)
        self.assertIn("left queued, its stdin to be closed as it starts (jw", line)

    def closed(self, taken: int) -> str:
        from jobworker.client.quickexec import closeInput

        class Client:
            async def sendStdin(self, jobId: str, data: bytes, eof: bool) -> None:
                pass

            async def job(self, jobId: str) -> dict[str, Any]:
                return {"id": jobId, "status": "PENDING"}

        run = Run()
        drive(closeInput(Client(), JOB, "SIGINT", run.streams, taken=taken))
        return run.err.getvalue().decode()

    def test_running(self) -> None:
        """A job that runs is said to run on, as before."""
        from jobworker.client.quickexec import closeInput

        class Client:
            async def sendStdin(self, jobId: str, data: bytes, eof: bool) -> None:
                pass

            async def job(self, jobId: str) -> dict[str, Any]:
                return {"id": jobId, "status": "RUNNING"}

        run = Run()
        drive(closeInput(Client(), JOB, "SIGINT", run.streams, taken=5))
        self.assertEqual(
            run.err.getvalue().decode(),
            f"jw: SIGINT: job {JOB} runs on, its stdin closed (jw stop {JOB} ends "
            "it)\n",
        )


class VerbSynonymsTests(SubprocessJW, SynchronousTestCase):
    """
    The verbs other tools use for jw's (ssh's, docker's, kubectl's) are
    steered to jw's: C{ls} was steered to C{logs}, and C{ps}, C{kill},
    C{run}, C{delete}, C{tail} to nothing (new user round 37).
    """

    def test_suggested(self) -> None:
        for typed, verb in (
            ("ls", "list"),
            ("ps", "list"),
            ("kill", "stop"),
            ("run", "exec"),
            ("delete", "rm"),
            ("remove", "rm"),
            ("tail", "logs"),
            ("log", "logs"),
            ("lsit", "list"),  # (a typo, as before)
        ):
            out, err, code = self.jw(typed, "x")
            self.assertEqual(
                (out, err, code),
                (
                    b"",
                    f"jw: unknown command {typed!r}; did you mean {verb!r}? (see jw "
                    "--help)\n".encode(),
                    2,
                ),
            )
            self.assertIn(verb, VERBS)
