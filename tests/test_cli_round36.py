"""
What the thirty-sixth session's new user found in jw.

Ctrl-C while jw shook hands with a slow server said "unexpected error:
OSError(9, ...)", exit 1; Ctrl-C while plain C{jw exec} created its job
left it running, its id never shown, and C{jw exec -f} stopped it with
TERM whatever jw got; a saved login refused under C{jw exec -i} said
neither the job nor that its stdin was left open; Ctrl-C in jw's first
moments printed a traceback; a setting with bytes that are not UTF-8
crashed C{jw config}, and C{JW_USER}/C{JW_PASSWORD} got Python's codec
message; C{keepalive = 30.0} was refused quoting C{''}; C{jw login} said
"in 11h" for a login of 12.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth.tokens import TokenSigner
from jobworker.client import show

from .support import JW, LiveServer, jwEnvironment, sleep
from .test_cli_exec_defects import BOUND, GRACE, readLine, startJW
from .test_cli_round33 import UNKNOWN, SubprocessJW


class HandshakeInterruptedTests(SynchronousTestCase):
    """
    Ctrl-C while jw's TLS handshake waits for a server that does not
    answer (far away, busy, wedged): exit 130, nothing said. It was "jw:
    unexpected error: OSError(9, 'Bad file descriptor')", exit 1 (new user
    round 36).
    """

    def test_quiet(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(BOUND)
        server = f"https://localhost:{listener.getsockname()[1]}"
        for argv in (
            ("list",),
            ("status", UNKNOWN),
            ("wait", UNKNOWN),
            ("exec", "--", "true"),
        ):
            process = startJW(server, *argv)
            self.addCleanup(lambda p=process: p.poll() is None and p.kill())
            connection, _ = listener.accept()  # jw's; its handshake waits
            self.addCleanup(connection.close)
            time.sleep(0.3)
            process.send_signal(signal.SIGINT)
            exited = process.wait(BOUND)
            out, err = process.stdout.read(), process.stderr.read()
            self.assertEqual((out, err, exited), (b"", b"", 130), argv)


class _HeldCreation:
    """
    The server's answer to C{POST /jobs} held back until L{release}: the
    job is created, and jw waits for its id (C{arrived} fires with it).
    """

    def __init__(self, testCase: TestCase, server: LiveServer) -> None:
        self.arrived: Deferred[str] = Deferred()
        self._release: Deferred[None] = Deferred()
        accepted = server.manager.accepted

        async def held(record: Any) -> Any:
            self.arrived.callback(record.id)
            await self._release
            return await accepted(record)

        testCase.patch(server.manager, "accepted", held)
        testCase.addCleanup(self.release)

    def release(self) -> None:
        if not self._release.called:
            self._release.callback(None)


class ExecInterruptedWhileCreatedTests(TestCase):
    """
    An interrupt while C{jw exec} creates its job (the request sent, no
    answer yet): plain C{jw exec} waits for the answer, prints the id, says
    that the job runs on and how to stop it, and exits 128 + N (it exited
    130 saying nothing: the job ran, its id never shown); C{jw exec -f}
    stops the job with the signal jw got, as its other interrupts do (it
    sent TERM: new user round 36).
    """

    async def interrupted(
        self, server: LiveServer, number: int, *argv: str
    ) -> tuple[str, bytes, str, int]:
        held = _HeldCreation(self, server)
        process = startJW(server.url, *argv)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        jobId = await held.arrived
        process.send_signal(number)
        await sleep(0.5)  # (the signal has come to jw)
        held.release()
        exited = await deferToThread(process.wait, BOUND)
        return jobId, process.stdout.read(), process.stderr.read().decode(), exited

    async def test_plain(self) -> None:
        for argv in (("exec",), ("exec", "--json")):
            server = LiveServer(self, grace=GRACE)
            jobId, out, err, exited = await self.interrupted(
                server, signal.SIGINT, *argv, "--", "sleep", "60"
            )
            self.assertEqual(exited, 130, err)
            if "--json" in argv:
                self.assertIn(f'"id": "{jobId}"'.encode(), out)
            else:
                self.assertEqual(out, f"{jobId}\n".encode())
            self.assertEqual(
                err,
                f"jw: SIGINT: job {jobId} was created and runs on "
                f"(jw stop {jobId} ends it)\n",
            )
            code, job = await server.json("GET", f"/jobs/{jobId}")
            self.assertEqual((code, job["status"]), (200, "RUNNING"))

    async def test_secondInterruptEndsAtOnce(self) -> None:
        """
        A second interrupt while the answer is awaited ends jw at once
        (it was held, every signal but KILL, until the answer came or the
        request's 300 s ran out: session review 36).
        """
        server = LiveServer(self, grace=GRACE)
        held = _HeldCreation(self, server)
        process = startJW(server.url, "exec", "--", "sleep", "60")
        self.addCleanup(lambda: process.poll() is None and process.kill())
        await held.arrived
        process.send_signal(signal.SIGINT)
        await sleep(0.5)
        self.assertIsNone(process.poll())  # (the first waits for the answer)
        process.send_signal(signal.SIGTERM)
        exited = await deferToThread(process.wait, BOUND)
        err = process.stderr.read().decode()
        self.assertEqual(exited, 130, err)
        self.assertIn("interrupted again", err)
        self.assertIn("jw list shows it", err)

    async def test_followedStoppedWithTheSignalGot(self) -> None:
        server = LiveServer(self, grace=GRACE)
        jobId, _out, err, exited = await self.interrupted(
            server, signal.SIGQUIT, "exec", "-f", "--", "sleep", "60"
        )
        self.assertEqual(exited, 131, err)
        self.assertIn(f"jw: SIGQUIT: stopping job {jobId}", err)
        ended = await server.waitEnded(jobId, timeout=BOUND)
        self.assertEqual((ended["status"], ended["signal"]), ("STOPPED", "SIGQUIT"))


def _changeTokenKey(server: LiveServer) -> None:
    """The server's token key changes: every token it gave is refused."""
    with open(os.path.join(server.stateDir, "token.key"), "rb") as f:
        key = f.read()
    signers = [
        o for o in gc.get_objects() if isinstance(o, TokenSigner) and o._key == key
    ]
    assert signers, "the server's TokenSigner"
    for signer in signers:
        signer._key = os.urandom(len(key))


class InputLeftOnRefusedLoginTests(TestCase):
    """
    C{jw exec -i} (no C{-f}) whose saved login the server refuses while it
    feeds the job's stdin: jw names the job, says its stdin is left open,
    and gives the C{jw stop} that ends it, then that the login was refused
    (it said the latter alone, exit 1: the job waited on its stdin for
    ever: new user round 36).
    """

    async def test_said(self) -> None:
        server = LiveServer(self, grace=GRACE)
        environ = jwEnvironment(
            server.url, XDG_CONFIG_HOME=os.path.abspath(self.mktemp())
        )
        process = subprocess.Popen([JW, "login"], env=environ)
        self.assertEqual(await deferToThread(process.wait, BOUND), 0)
        process = subprocess.Popen(
            [JW, "exec", "-i", "--", "sh", "-c", "while read l; do echo $l; done"],
            env={**environ, "JW_PASSWORD": ""},  # the saved login only
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        jobId = (await deferToThread(readLine, process.stdout)).decode().strip()
        process.stdin.write(b"1\n")
        await sleep(0.5)
        _changeTokenKey(server)
        process.stdin.write(b"2\n")
        exited = await deferToThread(process.wait, BOUND)
        err = process.stderr.read().decode()
        self.assertEqual(exited, 1, err)
        self.assertIn(f"stdin is left open: jw stop {jobId} ends the job", err)
        self.assertIn("run jw login", err)
        self.assertEqual(err.count("\n"), 2, err)


#: A jw (C{cli.main}, ARGV) that gets Ctrl-C as it imports module MODULE,
#: jw's handlers not in place yet: C{python -c CHILD MODULE ARGV...}.
_INTERRUPTED_IMPORT = """
import sys
from jobworker.client import cli

class Interrupting:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupting())
cli.main(sys.argv[2:])
"""


class EarlyInterruptTests(SynchronousTestCase):
    """
    Ctrl-C in jw's first moments, as it imports what the verb needs (the
    quick client; Twisted's for C{stop}), before its handlers are in
    place: no traceback, exit 130. It was a traceback (Twisted's "main
    function encountered error" for C{stop}, exit 1: new user round 36).
    """

    def test_noTraceback(self) -> None:
        environ = {**jwEnvironment("https://localhost:1"), "JW_TOKEN": "t"}
        for module, argv in (
            ("jobworker.client.quick", ("list",)),
            ("jobworker.client.http", ("stop", UNKNOWN)),
        ):
            done = subprocess.run(
                [sys.executable, "-c", _INTERRUPTED_IMPORT, module, *argv],
                env=environ,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=BOUND,
                check=False,
            )
            self.assertEqual(
                (done.stdout, done.stderr, done.returncode), (b"", b"", 130), argv
            )


class NotUTF8SettingsTests(SubprocessJW, SynchronousTestCase):
    """
    A setting with bytes that are not UTF-8 (a Latin-1 file name or
    terminal): C{jw config} shows it as its bytes (it was "unexpected
    error"); C{JW_USER} or C{JW_PASSWORD}, which jw must send as text, are
    refused in one line naming them (it was Python's codec message: new
    user round 36).
    """

    def test_config(self) -> None:
        ca = os.fsdecode(b"/nonexistent/ca\xe9.pem")
        out, err, code = self.jw("config", JW_CA=ca)
        self.assertNotIn(b"unexpected", err)
        self.assertEqual(code, 0, err)
        self.assertIn(b"\nca = /nonexistent/ca\xe9.pem    # JW_CA", out)
        home = os.fsdecode(os.fsencode(os.path.abspath(self.mktemp())) + b"\xe9")
        out, err, code = self.jw("config", XDG_CONFIG_HOME=home)
        self.assertEqual(code, 0, err)
        self.assertIn(os.fsencode(home) + b"/jobworker/config.toml", out)

    def test_credentials(self) -> None:
        latin1 = os.fsdecode(b"\xe9")
        for name, environ in (
            ("JW_USER", {"JW_USER": latin1, "JW_PASSWORD": "x"}),
            ("JW_PASSWORD", {"JW_USER": "alice", "JW_PASSWORD": "p" + latin1}),
        ):
            out, err, code = self.jw("list", JW_TOKEN="", **environ)
            self.assertEqual(
                (out, err, code),
                (
                    b"",
                    f"jw: {name} is not valid UTF-8 (jw sends text only)\n".encode(),
                    2,
                ),
            )


class KeepAliveShownTests(SubprocessJW, SynchronousTestCase):
    """
    A config file's C{keepalive} that is neither a whole number nor text
    (C{30.0}, C{[30]}) is still refused, showing the value given (it showed
    C{''}: new user round 36).
    """

    def test_shown(self) -> None:
        for text, shown in (("30.0", "30.0"), ("[30]", "[30]"), ("true", "true")):
            home = os.path.abspath(self.mktemp())
            os.makedirs(os.path.join(home, "jobworker"))
            path = os.path.join(home, "jobworker", "config.toml")
            with open(path, "w") as f:
                f.write(f"keepalive = {text}\n")
            for argv in (("list",), ("config",)):
                _out, err, code = self.jw(*argv, XDG_CONFIG_HOME=home)
                self.assertEqual(code, 2, err)
                self.assertIn(
                    f"jw: {path}: keepalive must be whole seconds from 1 to 32767: "
                    f"{shown}\n".encode(),
                    err,
                )


class TimesToComeTests(SynchronousTestCase):
    """
    A time to come is rounded to the nearest unit: a 12-hour login, less
    the request's moment, is "in 12h" (it was "in 11h": new user round 36);
    times past are rounded down, as ages are.
    """

    now = 1_800_000_000.0

    def shown(self, seconds: float) -> str:
        stamp = datetime.fromtimestamp(self.now + seconds, UTC).isoformat()
        return show.when(stamp, self.now).partition(" (")[2].rstrip(")")

    def test_toCome(self) -> None:
        self.assertEqual(self.shown(12 * 3600 - 0.3), "in 12h")
        self.assertEqual(self.shown(12 * 3600 - 40), "in 12h")
        self.assertEqual(self.shown(65), "in 1m")
        self.assertEqual(self.shown(59.6), "in 1m")
        self.assertEqual(self.shown(3 * 86400 - 60), "in 3d")
        self.assertEqual(self.shown(23 * 3600 + 50 * 60), "in 1d")
        self.assertEqual(self.shown(5), "in 5s")

    def test_pastAsBefore(self) -> None:
        self.assertEqual(self.shown(-(12 * 3600 - 1)), "11h ago")
        self.assertEqual(self.shown(-65), "1m ago")
