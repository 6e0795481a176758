"""
What the thirty-second session's new user found in jw: C{--offset} dropped
when C{--tail} came with it, an id too long sent to the server, refusals
worded in the API's field names, a job not found without its id, C{jw
logout} saying more than it did, a Ctrl-C during C{jw stop} said nothing,
and jw's own last line run onto the job's unfinished one.

The code reviewer's: a C{JW_TOKEN} with a newline in it (pasted with one)
and a C{JW_SERVER} whose host cannot be a host name were "jw: unexpected
error: ValueError(...)", jw's words for its own bug, exit 1; and C{jw stop},
C{rm} and C{login} could not reach a server named by an IPv6 literal
(C{https://[::1]:8443}: "Codepoint U+003A ... not allowed"), which the
other verbs reach.

And the new user's smaller ones: C{jobworker-hash-password}'s refusals came
with argparse's usage block (jw's are one line), and it had no way to give
a users-file line's fourth field, the Unix account.
"""

from __future__ import annotations

import io
import os
import pty
import pwd
import select
import signal
import socket
import subprocess
import sys
import tempfile
import termios

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.client.calls import MAX_GRACE, MAX_TIMEOUT
from jobworker.client.failures import ArgumentsRefused
from jobworker.client.parser import buildParser
from jobworker.client.streams import GatedStreams, Streams
from jobworker.jobs import stopping, validation

from . import test_cli_habits
from .support import CA, JW, runJW
from .test_cli_memory import MemoryCLITestCase
from .twistd import Twistd

UNKNOWN = "00000000-0000-4000-8000-000000000000"


class OffsetWithTailTests(MemoryCLITestCase):
    """C{jw logs --offset 60 --tail 20}: the tail's lines from byte 60 on
    (the API's answer); jw sent the tail alone and printed from byte 0."""

    def test_offsetKeptWithTail(self) -> None:
        jobId = self.execId("sh", "-c", "seq")
        spawned = self.process(jobId)
        spawned.output(b"".join(b"line %d\n" % n for n in range(1, 11)))
        self.flush()
        out = self.assertSucceeded(
            self.jw("logs", "--offset", "60", "--tail", "20", jobId)
        )
        self.assertEqual(out, b" 9\nline 10\n")
        out = self.assertSucceeded(
            self.jw("logs", "--offset", "0", "--tail", "2", jobId)
        )
        self.assertEqual(out, b"line 9\nline 10\n")


class LocalRefusalTests(MemoryCLITestCase):
    """Refused before a login or a request, exit 2, naming the flag."""

    def refused(self, *argv: str) -> bytes:
        out, err, code = self.jw(*argv)
        self.assertEqual((out, code), (b"", 2), err)
        self.assertEqual(err.count(b"\n"), 1, err)
        return err

    def test_idTooLong(self) -> None:
        err = self.refused("status", UNKNOWN + "0")
        self.assertIn(b"is not a job id", err)
        self.assertEqual(self.listedIds(), [])

    def test_fixedRangesNamedByFlag(self) -> None:
        for argv, expected in (
            (("stop", "--grace", "3601", UNKNOWN), b"--grace must be from 0 to 3600"),
            (("exec", "--timeout", "400d", "--", "true"), b"--timeout must be above 0"),
            (("exec", "--cpu", "0", "--", "true"), b"--cpu must be at least 1"),
            (("exec", "--pids", "0", "--", "true"), b"--pids must be at least 1"),
        ):
            self.assertIn(expected, self.refused(*argv), argv)
        self.assertEqual(self.listedIds(), [])

    def test_boundsAreTheServers(self) -> None:
        self.assertEqual(MAX_GRACE, stopping.MAX_GRACE)
        self.assertEqual(MAX_TIMEOUT, validation.MAX_TIMEOUT)

    def test_boundsThemselvesTaken(self) -> None:
        out = self.assertSucceeded(self.jw("exec", "--timeout", "366d", "--", "true"))
        jobId = out.decode().strip()
        self.assertEqual(self.statusJSON(jobId)["timeout_seconds"], MAX_TIMEOUT)


class UnknownIdNamedTests(MemoryCLITestCase):
    """A whole id that names no job: the message names it (a loop over
    several ids read "not found: no such job")."""

    def test_named(self) -> None:
        for verb in ("status", "logs", "stop", "wait", "rm"):
            out, err, code = self.jw(verb, UNKNOWN)
            said = f"not found: no job {UNKNOWN}\n"
            if verb == "rm":  # (each failure named by the argument as given)
                said = f"{UNKNOWN}: {said}"
            self.assertEqual((out, err, code), (b"", f"jw: {said}".encode(), 1), verb)


class LogoutSaysTheTokenLivesOn(MemoryCLITestCase):
    def test_logoutSays(self) -> None:
        self.assertSucceeded(self.jw("login"))
        out = self.assertSucceeded(self.jw("logout"))
        self.assertIn(b"stays valid until it expires", out)


class StopInterruptedTests(MemoryCLITestCase):
    """Ctrl-C while C{jw stop} waits for the grace: one line says the stop
    goes on (it exited 130 in silence, as if the stop were called off)."""

    interruptible = test_cli_habits.InterruptTests.interruptible

    def test_ctrlCSays(self) -> None:
        jobId = self.execId("sleep", "300")
        run, interrupts = self.interruptible("stop", "--grace", "30", jobId)
        self.flush()
        interrupts.fire("SIGINT")  # (in its first second: before "waiting")
        _out, err, code = self.finish(run)
        self.assertEqual(code, 130, err)
        last = err.decode().splitlines()[-1]
        self.assertIn("no longer waiting", last)
        self.assertIn(f"the stop of job {jobId} goes on", last)
        spawned = self.process(jobId)
        self.assertIn((spawned.pid, signal.SIGTERM), self.killer.calls)


class OwnLineAfterPartialOutputTests(SynchronousTestCase):
    """jw's own line after job output that left a line unfinished on a
    terminal: on a line of its own (it read C{partialjw: job ...}). A real
    pseudo-terminal; output to a file or pipe is left as it is."""

    def terminal(self) -> tuple[int, Streams]:
        master, slave = pty.openpty()
        attributes = termios.tcgetattr(slave)
        attributes[1] &= ~termios.ONLCR  # (the bytes as written)
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        out = os.fdopen(os.dup(slave), "wb")
        messages = os.fdopen(slave, "w")
        self.addCleanup(out.close)
        self.addCleanup(messages.close)
        self.addCleanup(os.close, master)
        return master, Streams(out, out, messages, inp=None)

    def test_lineOfItsOwn(self) -> None:
        master, streams = self.terminal()
        gated = GatedStreams(streams)
        gated.writer("stdout")(b"partial")
        streams.say("jw: job 1: timed out")
        gated.writer("stderr")(b"done\n")
        gated.say("jw: job 2")
        expected = b"partial\njw: job 1: timed out\ndone\njw: job 2\n"
        got = b""
        while len(got) < len(expected) and select.select([master], [], [], 10)[0]:
            got += os.read(master, 1000)
        self.assertEqual(got, expected)

    def test_notOnAFile(self) -> None:
        with tempfile.TemporaryFile() as out:
            messages = io.StringIO()
            streams = Streams(out, out, messages, inp=None)  # type: ignore[arg-type]
            streams.writer("stdout")(b"partial")
            streams.say("jw: x")
            self.assertEqual(messages.getvalue(), "jw: x\n")


class BadSettingsTests(SynchronousTestCase):
    """Refused in one line, exit 2, before anything is sent."""

    def jw(self, *argv: str, **environ: str) -> tuple[bytes, bytes, int]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JW_")},
            "XDG_CONFIG_HOME": os.path.abspath(self.mktemp()),
            "JW_SERVER": "https://localhost:1",
            "JW_CA": CA,
            **environ,
        }
        done = subprocess.run(
            [JW, *argv], env=env, capture_output=True, timeout=60, check=False
        )
        return done.stdout, done.stderr, done.returncode

    def test_tokenWithNewline(self) -> None:
        for verb in (("list",), ("exec", "--", "true"), ("stop", UNKNOWN)):
            out, err, code = self.jw(*verb, JW_TOKEN="abc\ndef")
            self.assertEqual((out, code), (b"", 2), (verb, err))
            self.assertIn(b"JW_TOKEN", err)
            self.assertEqual(err.count(b"\n"), 1, err)

    def test_hostNotAName(self) -> None:
        for host in ("\udcff", "a b", "ex%41mple", "a..b", "x" * 64 + ".example"):
            for verb in (("list",), ("exec", "--", "true"), ("stop", UNKNOWN)):
                out, err, code = self.jw(
                    *verb, JW_SERVER=f"https://{host}:8443", JW_TOKEN="t"
                )
                self.assertEqual((out, code), (b"", 2), (host, verb, err))
                self.assertNotIn(b"unexpected", err)
                self.assertEqual(err.count(b"\n"), 1, err)

    def test_underscore(self) -> None:
        """A name with an C{_} (a compose service's): tried by the commands
        on the stdlib's client; Twisted's TLS host check refuses it, and
        the others say so in words, not "connection failed: Codepoint
        U+005F ... not allowed"."""
        server = "https://no_such_host.invalid:8443"
        out, err, code = self.jw("status", UNKNOWN, JW_SERVER=server, JW_TOKEN="t")
        self.assertEqual((out, code), (b"", 1), err)
        self.assertIn(b"no_such_host.invalid", err)
        for verb in (("stop", UNKNOWN), ("rm", UNKNOWN)):
            out, err, code = self.jw(*verb, JW_SERVER=server, JW_TOKEN="t")
            self.assertEqual((out, code), (b"", 1), (verb, err))
            self.assertIn(b"its TLS host check refuses the host's name", err)
            self.assertEqual(err.count(b"\n"), 1, err)


class IPv6LiteralTests(TestCase):
    """C{jw stop}, C{rm} and C{login} (the verbs on Twisted's client) reach
    a server named by an IPv6 literal, as the others do."""

    timeout = 120

    async def test_stopRemoveLogin(self) -> None:
        if not socket.has_ipv6:
            raise SkipTest("no IPv6 on this machine")
        server = await Twistd(self).start()
        url = f"https://[::1]:{server.port}"
        job = await server.createJob("sleep", "60")
        _out, err, code = await runJW(url, "stop", "--kill", job["id"])
        self.assertEqual(code, 0, err)
        _out, err, code = await runJW(url, "rm", job["id"])
        self.assertEqual(code, 0, err)
        home = os.path.abspath(self.mktemp())
        _out, err, code = await runJW(url, "login", XDG_CONFIG_HOME=home)
        self.assertEqual(code, 0, err)
        _out, err, code = await runJW(url, "list", XDG_CONFIG_HOME=home, JW_PASSWORD="")
        self.assertEqual(code, 0, err)


class HashPasswordLineTests(SynchronousTestCase):
    def hashed(self, given: bytes, *argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "jobworker.auth.hashpw", "--cost", "10", *argv],
            input=given,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def test_refusalsOneLine(self) -> None:
        for argv in (
            ("--cost", "3"),
            ("--user", "a b"),
            ("--role", "Admin"),
            ("--bogus",),
        ):
            done = self.hashed(b"pw\n", *argv)
            self.assertEqual(done.returncode, 2, argv)
            self.assertEqual(done.stderr.count(b"\n"), 1, (argv, done.stderr))
            self.assertTrue(done.stderr.startswith(b"jobworker-hash-password: "), argv)
            self.assertNotIn(b"usage:", done.stderr)

    def test_unixUser(self) -> None:
        account = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            account = next(
                (e.pw_name for e in pwd.getpwall() if e.pw_uid not in (0,)), ""
            )
        done = self.hashed(b"pw\n", "--user", "carol", "--unix-user", account)
        self.assertEqual(done.returncode, 0, done.stderr)
        name, role, _hash, unix = done.stdout.decode().strip().split(":")
        self.assertEqual((name, role, unix), ("carol", "Developer", account))
        for bad in ("no-such-account-32", "root"):
            done = self.hashed(b"pw\n", "--user", "carol", "--unix-user", bad)
            self.assertEqual((done.returncode, done.stdout), (2, b""), bad)
            self.assertEqual(done.stderr.count(b"\n"), 1, done.stderr)
        done = self.hashed(b"pw\n", "--unix-user", account)
        self.assertEqual(done.returncode, 2)


class VerbOptionFirstTests(SynchronousTestCase):
    """C{jw --json list}: the option is the verb's, and jw says so."""

    def test_said(self) -> None:
        streams = Streams(io.BytesIO(), io.BytesIO(), io.StringIO(), inp=None)  # type: ignore[arg-type]
        with self.assertRaises(ArgumentsRefused) as caught:
            buildParser(streams).parse_args(["--json", "list"])
        self.assertIn("--json is an option of jw list: after it", str(caught.exception))
        with self.assertRaises(ArgumentsRefused) as caught:
            buildParser(streams).parse_args(["--bogus", "list"])
        self.assertIn("unknown option --bogus", str(caught.exception))


class CorruptTokensFileTests(MemoryCLITestCase):
    """A tokens file that is not JSON was read as empty: C{jw logout} said
    "not logged in", a login's token went unread, silently. It is refused
    in one line, exit 2, naming it."""

    def test_refusedNamed(self) -> None:
        self.assertSucceeded(self.jw("login"))
        path = os.path.join(self.configHome, "jobworker", "tokens.json")
        self.assertTrue(os.path.exists(path))
        with open(path, "w") as f:
            f.write("{not json")
        for argv in (("logout",), ("list",)):
            out, err, code = self.jw(*argv)
            self.assertEqual((out, code), (b"", 2), (argv, err))
            self.assertIn(path.encode(), err)
            self.assertEqual(err.count(b"\n"), 1, err)
        # A login writes it anew, its token kept (it was lost, after the
        # password had gone: late review 32).
        self.assertSucceeded(self.jw("login"))
        self.assertSucceeded(self.jw("list"))
        with open(path) as f:
            self.assertIn("token", f.read())
