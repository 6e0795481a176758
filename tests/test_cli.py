"""End-to-end tests of the C{jw} command-line client against a live server."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from .support import CA, JW, LiveServer, jwEnvironment, runJW, sharedPath

#: Every key of the API's job object that the brief names.
JOB_KEYS = {
    "id",
    "command",
    "args",
    "owner",
    "status",
    "pid",
    "exit_code",
    "signal",
    "error",
    "created_at",
    "started_at",
    "ended_at",
    "stopped_by",
}

UUID_LINE = re.compile(
    rb"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n\Z"
)

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

#: A bound on anything a test waits for.
TIMEOUT = 30.0


def closedPort() -> int:
    """A loopback TCP port that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def runProcess(
    executable: str, args: list[str], env: dict[str, str]
) -> Deferred[tuple[bytes, bytes, int]]:
    """Run any program with exactly C{env}; fires with (stdout, stderr, code)."""
    return getProcessOutputAndValue(  # type: ignore[no-any-return]
        executable, args, env=env, reactor=reactor
    )


def runDetachedJW(
    *args: str, env: dict[str, str]
) -> Deferred[tuple[bytes, bytes, int]]:
    """
    Run C{jw} in a new session (C{setsid -w}): it has no controlling terminal,
    so C{/dev/tty} cannot be opened.
    """
    return runProcess(SETSID, ["-w", JW, *args], env)


class StreamingProtocol(ProcessProtocol):
    """
    Collect a process's output; C{seen} fires once C{marker} is on stdout,
    C{ended} fires with (stdout, stderr, exit code) when it exits.
    """

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.out = b""
        self.err = b""
        self.seen: Deferred[None] = Deferred()
        self.ended: Deferred[tuple[bytes, bytes, int]] = Deferred()
        self.exited = False
        self._exitWaiters: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if not self.seen.called and self.marker in self.out:
            self.seen.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            code = 0
        elif reason.check(ProcessTerminated):
            code = reason.value.exitCode
            if code is None:
                code = 128 + (reason.value.signal or 0)
        else:
            code = -1
        if not self.seen.called:
            self.seen.errback(
                AssertionError(f"process ended before {self.marker!r}: {self.out!r}")
            )
        self.exited = True
        for waiter in self._exitWaiters:
            waiter.callback(None)
        self.ended.callback((self.out, self.err, code))

    def whenExited(self) -> Deferred[None]:
        """A Deferred that fires once the process has exited (no timeout)."""
        waiter: Deferred[None] = Deferred()
        if self.exited:
            waiter.callback(None)
        else:
            self._exitWaiters.append(waiter)
        return waiter


class CLITestCase(TestCase):
    """Shared assertions for C{jw} runs."""

    def assertSucceeded(self, result: tuple[bytes, bytes, int]) -> bytes:
        """Exit 0, no traceback; return stdout."""
        out, err, code = result
        self.assertEqual(code, 0, (out, err))
        self.assertNotIn(b"Traceback", out + err)
        return out

    def assertOneLineFailure(
        self, result: tuple[bytes, bytes, int], *expected: bytes
    ) -> bytes:
        """
        A non-zero exit, nothing on stdout, exactly one line on stderr (that
        starts with C{jw:} and contains each of C{expected}), no traceback.
        Returns that line.
        """
        out, err, code = result
        self.assertNotEqual(code, 0, (out, err))
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(out, b"", err)
        self.assertTrue(err.endswith(b"\n"), err)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertTrue(err.startswith(b"jw: "), err)
        for text in expected:
            self.assertIn(text, err)
        return err

    async def execId(self, server: LiveServer, *command: str) -> str:
        """C{jw exec -- COMMAND...}: return the new job's id."""
        out = self.assertSucceeded(await runJW(server.url, "exec", "--", *command))
        self.assertRegex(out, UUID_LINE)
        return out.decode("ascii").strip()

    async def statusJSON(
        self, server: LiveServer, jobId: str, user: str = "alice"
    ) -> dict[str, Any]:
        """C{jw status ID --json}, decoded."""
        out = self.assertSucceeded(
            await runJW(server.url, "status", jobId, "--json", user=user)
        )
        job: dict[str, Any] = json.loads(out)
        return job

    async def listedIds(self, server: LiveServer) -> list[str]:
        """The ids the API lists (to check that nothing was created)."""
        code, body = await server.json("GET", "/jobs", "ada")
        self.assertEqual(code, 200)
        return [job["id"] for job in body["jobs"]]


class ExecTests(CLITestCase):
    """C{jw exec}, with and without C{--follow}."""

    async def test_execPrintsOnlyTheJobId(self) -> None:
        """Without --follow, jw exec prints just the UUID and a newline."""
        server = LiveServer(self)
        out, err, code = await runJW(server.url, "exec", "--", "sleep", "60")
        self.assertEqual(code, 0, err)
        self.assertEqual(err, b"")
        self.assertRegex(out, UUID_LINE)
        jobId = out.decode("ascii").strip()
        self.assertEqual(str(uuid.UUID(jobId)), jobId)
        job = await self.statusJSON(server, jobId)
        self.assertEqual(job["id"], jobId)
        self.assertEqual(job["status"], "RUNNING")
        self.assertEqual(job["command"], "sleep")
        self.assertEqual(job["args"], ["60"])
        self.assertEqual(job["owner"], "alice")

    async def test_followSeparatesStreamsAndExitCode(self) -> None:
        """--follow copies stdout and stderr apart and exits with the job's code."""
        server = LiveServer(self)
        out, err, code = await runJW(
            server.url,
            "exec",
            "--follow",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        )
        self.assertEqual(out, b"out\n")
        self.assertIn(b"err\n", err)
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(code, 3)

    async def test_followSucceedsWithZero(self) -> None:
        """--follow exits 0 when the job completes successfully."""
        server = LiveServer(self)
        out, err, code = await runJW(
            server.url, "exec", "--follow", "--", "echo", "hello", "world"
        )
        self.assertEqual((out, err, code), (b"hello world\n", b"", 0))

    async def test_followKilledBySignal(self) -> None:
        """A job killed by SIGKILL makes jw exec --follow exit 128+9."""
        server = LiveServer(self)
        out, err, code = await runJW(
            server.url, "exec", "--follow", "--", "sh", "-c", "kill -9 $$"
        )
        self.assertNotIn(b"Traceback", out + err)
        self.assertEqual(code, 137, (out, err))

    async def test_followCommandCannotStart(self) -> None:
        """A command that cannot start exits 127 with one line naming it."""
        server = LiveServer(self)
        result = await runJW(
            server.url, "exec", "--follow", "--", "no-such-command-xyz"
        )
        out, err, code = result
        self.assertEqual(code, 127, (out, err))
        self.assertEqual(out, b"")
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(b"no-such-command-xyz", err)
        self.assertNotIn(b"Traceback", err)

    async def test_followCwdMissing(self) -> None:
        """A working directory that does not exist exits 127 with one line."""
        server = LiveServer(self)
        missing = sharedPath(self)
        out, err, code = await runJW(
            server.url, "exec", "--follow", "--cwd", missing, "--", "pwd"
        )
        self.assertEqual(code, 127, (out, err))
        self.assertEqual(out, b"")
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(missing.encode(), err)

    async def test_envReachesJob(self) -> None:
        """--env K=V sets a variable in the job's environment."""
        server = LiveServer(self)
        out, err, code = await runJW(
            server.url,
            "exec",
            "--follow",
            "--env",
            "GREETING=hi",
            "-e",
            "OTHER=a=b",
            "--",
            "sh",
            "-c",
            'echo "$GREETING" "$OTHER"',
        )
        self.assertEqual((out, err, code), (b"hi a=b\n", b"", 0))

    async def test_cwdIsUsed(self) -> None:
        """--cwd DIR runs the job in DIR."""
        server = LiveServer(self)
        directory = sharedPath(self)
        os.makedirs(directory)
        out, err, code = await runJW(
            server.url, "exec", "--follow", "--cwd", directory, "--", "pwd"
        )
        self.assertEqual((out, err, code), (directory.encode() + b"\n", b"", 0))

    async def test_envWithoutEqualsIsRejected(self) -> None:
        """--env BAD (no '=') is a one-line usage error and starts no job."""
        server = LiveServer(self)
        result = await runJW(server.url, "exec", "--env", "BAD", "--", "true")
        self.assertOneLineFailure(result, b"BAD")
        self.assertEqual(await self.listedIds(server), [])

    async def test_execJSON(self) -> None:
        """jw exec --json prints the created job object."""
        server = LiveServer(self)
        out = self.assertSucceeded(
            await runJW(server.url, "exec", "--json", "--", "sleep", "60")
        )
        job = json.loads(out)
        self.assertTrue(JOB_KEYS <= set(job), job)
        self.assertEqual(job["status"], "RUNNING")
        self.assertEqual((job["command"], job["args"]), ("sleep", ["60"]))


class ListAndStatusTests(CLITestCase):
    """C{jw list} and C{jw status}."""

    async def test_listTable(self) -> None:
        """jw list prints a table with a header and a row per job."""
        server = LiveServer(self)
        first = await self.execId(server, "sleep", "60")
        second = await self.execId(server, "true")
        out = self.assertSucceeded(await runJW(server.url, "list"))
        lines = out.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertEqual(lines[0].split()[:3], ["ID", "OWNER", "STATUS"])
        self.assertTrue(lines[1].startswith(second), out)
        self.assertTrue(lines[2].startswith(first), out)
        self.assertIn("sleep 60", lines[2])
        self.assertIn("RUNNING", lines[2])

    async def test_listEmpty(self) -> None:
        """jw list --json on a fresh server is an empty jobs list."""
        server = LiveServer(self)
        out = self.assertSucceeded(await runJW(server.url, "list", "--json"))
        self.assertEqual(json.loads(out), {"jobs": []})

    async def test_listJSONNewestFirst(self) -> None:
        """jw list --json is {"jobs": [...]} with the newest job first."""
        server = LiveServer(self)
        ids = [await self.execId(server, "true") for _ in range(3)]
        out = self.assertSucceeded(await runJW(server.url, "list", "--json"))
        body = json.loads(out)
        self.assertEqual(list(body), ["jobs"])
        self.assertEqual([job["id"] for job in body["jobs"]], ids[::-1])
        stamps = [job["created_at"] for job in body["jobs"]]
        self.assertEqual(stamps, sorted(stamps, reverse=True))

    async def test_statusHuman(self) -> None:
        """jw status ID shows the id, the command and the status."""
        server = LiveServer(self)
        jobId = await self.execId(server, "sleep", "60")
        out = self.assertSucceeded(await runJW(server.url, "status", jobId))
        lines = out.decode("utf-8").splitlines()
        self.assertIn(f"id: {jobId}", lines)
        self.assertIn("status: RUNNING", lines)
        self.assertIn("owner: alice", lines)
        self.assertIn("command: sleep", lines)

    async def test_statusJSONMatchesAPI(self) -> None:
        """jw status --json is the API's job object, key for key."""
        server = LiveServer(self)
        jobId = await self.execId(server, "sh", "-c", "exit 4")
        await server.waitEnded(jobId)
        job = await self.statusJSON(server, jobId)
        code, apiJob = await server.json("GET", f"/jobs/{jobId}")
        self.assertEqual(code, 200)
        self.assertTrue(JOB_KEYS <= set(job), sorted(job))
        self.assertEqual(job, apiJob)
        self.assertEqual(job["status"], "FAILED")
        self.assertEqual(job["exit_code"], 4)

    async def test_readerMayReadStatus(self) -> None:
        """A Reader can see another user's job with jw status."""
        server = LiveServer(self)
        jobId = await self.execId(server, "sleep", "60")
        job = await self.statusJSON(server, jobId, user="rita")
        self.assertEqual((job["id"], job["owner"]), (jobId, "alice"))


class StopTests(CLITestCase):
    """C{jw stop}."""

    async def test_stopHuman(self) -> None:
        """jw stop ID prints the job, now STOPPED, stopped by the caller."""
        server = LiveServer(self)
        jobId = await self.execId(server, "sleep", "300")
        out = self.assertSucceeded(await runJW(server.url, "stop", jobId))
        lines = out.decode("utf-8").splitlines()
        self.assertIn(f"id: {jobId}", lines)
        self.assertIn("status: STOPPED", lines)
        self.assertIn("stopped_by: alice", lines)

    async def test_stopJSONThenAgain(self) -> None:
        """jw stop --json shows STOPPED by alice; a second stop is one-line error."""
        server = LiveServer(self)
        jobId = await self.execId(server, "sleep", "300")
        out = self.assertSucceeded(await runJW(server.url, "stop", jobId, "--json"))
        job = json.loads(out)
        self.assertEqual(job["id"], jobId)
        self.assertEqual(job["status"], "STOPPED")
        self.assertEqual(job["stopped_by"], "alice")
        self.assertIsNotNone(job["ended_at"])
        again = await runJW(server.url, "stop", jobId)
        self.assertOneLineFailure(again, b"already ended")
        self.assertEqual((await self.statusJSON(server, jobId))["status"], "STOPPED")

    async def test_otherDeveloperCannotStop(self) -> None:
        """bob cannot stop alice's job: one line, and the job keeps running."""
        server = LiveServer(self)
        jobId = await self.execId(server, "sleep", "300")
        result = await runJW(server.url, "stop", jobId, user="bob")
        self.assertOneLineFailure(result, b"forbidden")
        self.assertEqual((await self.statusJSON(server, jobId))["status"], "RUNNING")


class LogsTests(CLITestCase):
    """C{jw logs}."""

    async def binaryJob(self, server: LiveServer) -> str:
        """A job that wrote binary bytes to both streams, ended."""
        jobId = await self.execId(
            server,
            "sh",
            "-c",
            r"printf '\000\377\376abc'; printf 'e\001\200rr' >&2",
        )
        ended = await server.waitEnded(jobId)
        self.assertEqual(ended["status"], "COMPLETED")
        return jobId

    async def test_logsRawBytes(self) -> None:
        """jw logs prints stdout byte for byte, NUL and invalid UTF-8 included."""
        server = LiveServer(self)
        jobId = await self.binaryJob(server)
        out, err, code = await runJW(server.url, "logs", jobId)
        self.assertEqual((out, err, code), (b"\x00\xff\xfeabc", b"", 0))

    async def test_logsStderr(self) -> None:
        """jw logs --stderr prints the job's stderr byte for byte."""
        server = LiveServer(self)
        jobId = await self.binaryJob(server)
        out, err, code = await runJW(server.url, "logs", "--stderr", jobId)
        self.assertEqual((out, err, code), (b"e\x01\x80rr", b"", 0))

    async def test_logsOffset(self) -> None:
        """jw logs --offset N skips the first N bytes."""
        server = LiveServer(self)
        jobId = await self.binaryJob(server)
        out, err, code = await runJW(server.url, "logs", "--offset", "2", jobId)
        self.assertEqual((out, err, code), (b"\xfeabc", b"", 0))
        out, err, code = await runJW(
            server.url, "logs", "--stderr", "--offset", "2", jobId
        )
        self.assertEqual((out, err, code), (b"\x80rr", b"", 0))

    async def test_logsNegativeOffset(self) -> None:
        """jw logs --offset -1 is a one-line error."""
        server = LiveServer(self)
        jobId = await self.binaryJob(server)
        result = await runJW(server.url, "logs", "--offset", "-1", jobId)
        self.assertOneLineFailure(result, b"offset")

    async def reap(self, process: Any, protocol: StreamingProtocol) -> None:
        """Kill a C{jw} left running by a failed test, and wait for it."""
        if not protocol.exited:
            process.signalProcess("KILL")
        await protocol.whenExited()

    async def test_logsFollowStreamsUntilEnd(self) -> None:
        """jw logs --follow streams output as it comes and exits 0 at the end."""
        server = LiveServer(self)
        flag = sharedPath(self)
        jobId = await self.execId(
            server,
            "sh",
            "-c",
            'echo first; while [ ! -e "$1" ]; do sleep 0.05; done; echo second',
            "sh",
            flag,
        )
        protocol = StreamingProtocol(b"first\n")
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            protocol,
            JW,
            [JW, "logs", "--follow", jobId],
            env=jwEnvironment(server.url),
        )
        self.addCleanup(self.reap, process, protocol)
        protocol.seen.addTimeout(TIMEOUT, reactor)
        await protocol.seen
        # The job is still waiting for the flag: jw is following live output.
        self.assertEqual((await self.statusJSON(server, jobId))["status"], "RUNNING")
        self.assertFalse(protocol.ended.called)
        with open(flag, "w"):
            pass
        protocol.ended.addTimeout(TIMEOUT, reactor)
        out, err, code = await protocol.ended
        self.assertEqual((out, err, code), (b"first\nsecond\n", b"", 0))
        self.assertEqual((await self.statusJSON(server, jobId))["status"], "COMPLETED")

    async def test_logsFollowSlowJob(self) -> None:
        """jw logs --follow on a slowly printing job returns all its output."""
        server = LiveServer(self)
        jobId = await self.execId(
            server, "sh", "-c", "for i in 1 2 3 4; do echo line$i; sleep 0.2; done"
        )
        out, err, code = await runJW(server.url, "logs", "--follow", jobId)
        self.assertEqual((out, err, code), (b"line1\nline2\nline3\nline4\n", b"", 0))

    async def test_logsUnknownJob(self) -> None:
        """jw logs of an unknown id is a one-line not found."""
        server = LiveServer(self)
        result = await runJW(server.url, "logs", str(uuid.uuid4()))
        self.assertOneLineFailure(result, b"not found")


class FailureTests(CLITestCase):
    """Every failure is one line on stderr and a non-zero exit, never a traceback."""

    async def test_wrongPassword(self) -> None:
        """A wrong password is an authentication failure."""
        server = LiveServer(self)
        result = await runJW(server.url, "list", JW_PASSWORD="wrong")
        self.assertOneLineFailure(result, b"authentication failed")

    async def test_unknownUser(self) -> None:
        """An unknown user is an authentication failure."""
        server = LiveServer(self)
        result = await runJW(server.url, "list", JW_USER="mallory", JW_PASSWORD="x")
        self.assertOneLineFailure(result, b"authentication failed")

    async def test_readerCannotExec(self) -> None:
        """A Reader running jw exec is forbidden and no job starts."""
        server = LiveServer(self)
        result = await runJW(server.url, "exec", "--", "true", user="rita")
        self.assertOneLineFailure(result, b"forbidden")
        self.assertEqual(await self.listedIds(server), [])

    async def test_statusUnknownId(self) -> None:
        """jw status of a well-formed but unknown id is not found."""
        server = LiveServer(self)
        result = await runJW(server.url, "status", str(uuid.uuid4()))
        self.assertOneLineFailure(result, b"not found")

    async def test_statusMalformedId(self) -> None:
        """jw status of malformed ids is not found (even with slashes or dots)."""
        server = LiveServer(self)
        for bad in ("not-a-uuid", "../../etc/passwd", "..", "%2e%2e"):
            result = await runJW(server.url, "status", bad)
            self.assertOneLineFailure(result, b"not found")

    async def test_serverDown(self) -> None:
        """A closed port gives a one-line connection failure."""
        url = f"https://127.0.0.1:{closedPort()}"
        result = await runJW(url, "list")
        self.assertOneLineFailure(result, b"cannot connect", b"refused")

    async def test_untrustedCertificate(self) -> None:
        """A CA that did not sign the server's certificate is refused."""
        server = LiveServer(self)
        directory = sharedPath(self)
        os.makedirs(directory)
        ca = os.path.join(directory, "ca.pem")
        _out, err, code = await runProcess(
            OPENSSL,
            [
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                os.path.join(directory, "ca.key"),
                "-out",
                ca,
                "-subj",
                "/CN=Throwaway Test CA",
                "-days",
                "1",
            ],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        self.assertEqual(code, 0, err)
        result = await runJW(server.url, "list", JW_CA=ca)
        self.assertOneLineFailure(result, b"not trusted")
        # The same server is fine with the right CA.
        self.assertSucceeded(await runJW(server.url, "list", JW_CA=CA))

    async def test_hostNameChecked(self) -> None:
        """
        The certificate must name the host jw connects to: its names are
        localhost, 127.0.0.1 and ::1, so a server reached as 127.0.0.2 (still
        loopback, signed by the trusted CA) is refused; under a name the
        certificate lists, it is accepted.
        """
        named = LiveServer(self)
        for host in ("localhost", "127.0.0.1"):
            self.assertSucceeded(await runJW(f"https://{host}:{named.port}", "list"))
        unnamed = LiveServer(self, "--interface=127.0.0.2")
        result = await runJW(f"https://127.0.0.2:{unnamed.port}", "list")
        self.assertOneLineFailure(result, b"does not match its host name")

    async def test_missingCAFile(self) -> None:
        """A CA file that does not exist is a one-line error naming it."""
        server = LiveServer(self)
        missing = sharedPath(self)
        result = await runJW(server.url, "list", JW_CA=missing)
        self.assertOneLineFailure(result, missing.encode())

    async def test_garbageCAFile(self) -> None:
        """A CA file that holds no certificate is a one-line error."""
        server = LiveServer(self)
        garbage = sharedPath(self)
        with open(garbage, "wb") as f:
            f.write(b"this is not a certificate\n")
        result = await runJW(server.url, "list", JW_CA=garbage)
        self.assertOneLineFailure(result, garbage.encode())

    async def test_plainHTTPServerRefused(self) -> None:
        """--server http://... is refused: https is required."""
        server = LiveServer(self)
        url = server.url.replace("https://", "http://")
        result = await runJW(server.url, "--server", url, "list")
        self.assertOneLineFailure(result, b"https://")

    async def test_noCredentialsNoTerminal(self) -> None:
        """Without JW_USER/JW_PASSWORD and no tty, jw says to set them."""
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        del env["JW_USER"], env["JW_PASSWORD"]
        result = await runDetachedJW("exec", "--", "true", env=env)
        self.assertOneLineFailure(result, b"JW_USER", b"JW_PASSWORD")
        self.assertEqual(await self.listedIds(server), [])

    async def test_userWithoutPasswordNoTerminal(self) -> None:
        """JW_USER alone, with no tty to ask for the password, fails likewise."""
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        del env["JW_PASSWORD"]
        result = await runDetachedJW("list", env=env)
        self.assertOneLineFailure(result, b"JW_USER", b"JW_PASSWORD")


class HelpTests(CLITestCase):
    """C{--help} needs no server and shows examples."""

    async def test_topLevelHelp(self) -> None:
        """jw --help exits 0 and lists examples and the environment variables."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        out = self.assertSucceeded(await runDetachedJW("--help", env=env))
        self.assertIn(b"examples:", out)
        self.assertIn(b"jw exec -- sleep 30", out)
        self.assertIn(b"JW_USER", out)
        for verb in (b"exec", b"list", b"status", b"stop", b"logs"):
            self.assertIn(verb, out)

    async def test_execHelp(self) -> None:
        """jw exec --help exits 0 and shows an example."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        out = self.assertSucceeded(await runDetachedJW("exec", "--help", env=env))
        self.assertIn(b"example:", out)
        self.assertIn(b"jw exec", out)
        self.assertIn(b"--follow", out)

    async def test_unknownCommand(self) -> None:
        """An unknown subcommand is a usage error with a non-zero exit."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        out, err, code = await runDetachedJW("frobnicate", env=env)
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")
        self.assertIn(b"frobnicate", err)
        self.assertNotIn(b"Traceback", err)
