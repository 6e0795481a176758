"""
Smoke tests of the installed C{jw} script against a live server over real
TLS: what the in-memory tests (test_cli_memory) cannot see, namely real
processes streamed end to end, a real TLS handshake refused, and a run with no
terminal to prompt on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from jobworker.jobs import store

from .support import CA, JW, JWAssertions, LiveServer, jwEnvironment, runJW, sharedPath

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


class CLITestCase(JWAssertions, TestCase):
    """Shared assertions for C{jw} runs."""

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
    """C{jw exec --follow}."""

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


class LogsTests(CLITestCase):
    """C{jw logs --follow}."""

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


class FailureTests(CLITestCase):
    """Every failure is one line on stderr and a non-zero exit, never a traceback."""

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

    async def test_emptyPasswordCountsAsUnset(self) -> None:
        """
        C{JW_PASSWORD=} (set, empty) counts as unset, as every empty C{JW_*}
        does: with no tty to ask, jw says to set it, exit 2, and sends
        nothing; after C{jw login}, the saved login is used. (The empty
        password was sent, and refused: exit 1, the login unused.)
        """
        server = LiveServer(self)
        home = os.path.abspath(self.mktemp())
        empty = jwEnvironment(server.url, XDG_CONFIG_HOME=home, JW_PASSWORD="")
        result = await runDetachedJW("exec", "--", "true", env=empty)
        self.assertOneLineFailure(result, b"JW_USER", b"JW_PASSWORD")
        self.assertEqual(result[2], 2)
        self.assertEqual(await self.listedIds(server), [])
        login = jwEnvironment(server.url, XDG_CONFIG_HOME=home)
        self.assertEqual((await runDetachedJW("login", env=login))[2], 0)
        out = self.assertSucceeded(await runDetachedJW("exec", "--", "true", env=empty))
        self.assertRegex(out, UUID_LINE)


class ListTests(CLITestCase):
    """C{jw list} as a shell runs it."""

    async def test_moreExistFollowsTheTable(self) -> None:
        """
        With C{2>&1}, the hint that more jobs exist comes after the table,
        where a reader looks once the rows end (it came above the header).
        """
        server = LiveServer(self)
        for _ in range(2):
            await server.createJob("true")
        out, err, code = await runProcess(
            "/bin/sh",
            ["-c", 'exec "$0" list --limit 1 2>&1', JW],
            jwEnvironment(server.url),
        )
        self.assertEqual((code, err), (0, b""), out)
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertEqual(lines[0].split()[0], "ID", out)
        self.assertEqual(lines[2], "jw: 1 shown, more exist (--all: every one)")

    async def test_shortPagesFilled(self) -> None:
        """
        Two filters: each page searches so many jobs at most and may come
        short, even empty, with a cursor (attacker round 10). C{jw list}
        fills its page from the next ones; C{--all} gets every match.
        """
        self.patch(store, "SEARCH_SPAN", 2)
        server = LiveServer(self)
        made = [
            (await server.createJob("true", labels={"k": "v" if n % 3 else "w"}))["id"]
            for n in range(12)
        ]
        wanted = [job for n, job in enumerate(made) if n % 3][::-1]
        code, page = await server.json("GET", "/jobs?label=k=v&owner=alice&limit=5")
        self.assertEqual(code, 200, page)
        self.assertIsNotNone(page["next_cursor"])
        self.assertLess(len(page["jobs"]), 5, "a page past its span came short")
        env = jwEnvironment(server.url)
        base = ["list", "--label", "k=v", "--owner", "alice", "--wide"]
        out, err, code = await runProcess(JW, [*base, "--limit", "5"], env)
        self.assertEqual(code, 0, err)
        self.assertEqual(
            [line.split()[0] for line in out.decode().splitlines()[1:]], wanted[:5]
        )
        self.assertIn(b"5 shown, more exist", err)
        out, err, code = await runProcess(JW, [*base, "--all"], env)
        self.assertEqual(code, 0, err)
        self.assertEqual(
            [line.split()[0] for line in out.decode().splitlines()[1:]], wanted
        )
        self.assertEqual(err, b"")

    async def test_cleanGoesOnPastTheSpan(self) -> None:
        """
        C{DELETE /jobs} searches so many jobs a request, and may delete none
        and give a cursor: C{jw clean} goes on from it until none is left
        (it stopped at the first request that deleted nothing).
        """
        self.patch(store, "SEARCH_SPAN", 2)
        server = LiveServer(self)
        made = [
            (await server.createJob("false" if n in (0, 7) else "true"))["id"]
            for n in range(8)
        ]
        for job in made:
            await server.waitEnded(job)
        env = jwEnvironment(server.url)
        out, err, code = await runProcess(JW, ["clean", "--status", "FAILED"], env)
        self.assertEqual((code, out), (0, b"deleted 2 ended jobs\n"), err)
        code, page = await server.json("GET", "/jobs?owner=alice")
        self.assertEqual(sorted(job["id"] for job in page["jobs"]), sorted(made[1:7]))


class InputAndInterruptTests(CLITestCase):
    """Issue 17 over real TLS and real processes: stdin, and SIGINT to jw."""

    async def test_stdinPipedThroughToTheJob(self) -> None:
        """
        `... | jw exec -i -f -- sha256sum`: 3 MiB of stdin (many chunks, the
        pipe's back-pressure) reach the sandboxed job byte for byte, then EOF.
        """
        import hashlib
        import subprocess

        from twisted.internet.threads import deferToThread

        server = LiveServer(self)
        data = os.urandom(3 << 20)
        result = await deferToThread(
            subprocess.run,
            [JW, "exec", "-i", "-f", "--", "sha256sum"],
            input=data,
            env=jwEnvironment(server.url),
            capture_output=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.split()[0].decode(), hashlib.sha256(data).hexdigest()
        )

    async def test_ctrlCStopsTheFollowedJob(self) -> None:
        """SIGINT to `jw exec -f`: the job is STOPPED, jw exits 130."""
        import signal
        import subprocess

        from twisted.internet.threads import deferToThread

        from .support import waitUntil

        server = LiveServer(self, grace=2.0)
        process = subprocess.Popen(
            [JW, "exec", "-f", "--", "sleep", "300"],
            env=jwEnvironment(server.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(process.kill)
        jobs = await waitUntil(
            lambda: [j for j in server.manager.page()[0] if j.pid], 30, "the job"
        )
        assert process.stderr is not None
        started = await deferToThread(process.stderr.readline)
        self.assertRegex(started, rb"^jw: job [0-9a-f-]{36} started\n$")
        process.send_signal(signal.SIGINT)
        code = await deferToThread(process.wait, 60)
        err = process.stderr.read()
        self.assertEqual(code, 130, err)
        self.assertIn(b"stopping job", err)
        self.assertEqual(server.manager.record(jobs[0].id).status.value, "STOPPED")
