"""
Defects a new user's review found in C{jw} (each reproduced here first):
output dropped at the server's cap with no word when stdout is redirected;
a traceback, not exit 130, for Ctrl-C at a password prompt; the C{--} after
the command word eaten; durations without units; C{jw clean}'s help.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.failures import ArgumentsRefused, HelpShown
from jobworker.client.follow import readStream, sayDropped, sayLost
from jobworker.client.http import JobworkerClient
from jobworker.client.parser import buildParser
from jobworker.client.streams import Streams

from .support import CA, JW, JWAssertions, LiveServer, runJW, smallTmpfs
from .test_prompt import converse

#: What the server keeps of each stream in these tests, and what the job
#: writes: the rest is dropped.
CAP = 1 << 20
WRITTEN = 3_000_000
DROPPED = WRITTEN - CAP


def parse(*argv: str) -> Any:
    """C{jw}'s parser on C{argv}: the options (no server, no output)."""
    return buildParser(Streams(io.BytesIO(), io.BytesIO(), io.StringIO())).parse_args(
        list(argv)
    )


class TruncationNoticeTests(JWAssertions, TestCase):
    """
    Item 3: output past C{--max-log-bytes} is said to be dropped on every
    path, also when stdout and stderr go to different places (a file), where
    jw reads each stream on its own, raw.
    """

    timeout = 120

    def notice(self, stream: str, dropped: int = DROPPED) -> bytes:
        return (
            f"jw: {dropped} bytes of the job's {stream} were dropped "
            "(the server's output cap)\n"
        ).encode()

    async def bothCapped(self) -> tuple[LiveServer, str]:
        """A server with the cap, and an ended job past it on both streams
        (stdout by L{DROPPED} bytes, stderr by 5)."""
        server = LiveServer(self, f"--max-log-bytes={CAP}")
        jobId = await self.ended(
            server,
            "sh",
            "-c",
            f"head -c {WRITTEN} /dev/zero; head -c {CAP + 5} /dev/zero >&2",
        )
        return server, jobId

    async def ended(self, server: LiveServer, *command: str) -> str:
        """A job of C{command} that has ended: its id."""
        job = await server.createJob(*command)
        await server.waitEnded(job["id"], 60)
        return str(job["id"])

    async def test_execFollowToAFile(self) -> None:
        """
        C{jw exec -f ... > file} (stdout and stderr apart): the first MiB,
        then one line saying how much was dropped; the job's exit status.
        """
        server = LiveServer(self, f"--max-log-bytes={CAP}")
        out, err, code = await runJW(
            server.url, "exec", "-f", "--", "head", "-c", str(WRITTEN), "/dev/zero"
        )
        self.assertEqual((len(out), code), (CAP, 0), err)
        self.assertTrue(err.endswith(self.notice("stdout")), err)
        self.assertEqual(err.count(b"\n"), 2, err)  # "job started", the notice

    async def test_execFollowStderrToAFile(self) -> None:
        """The same for the job's stderr, with the job's exit status (3)."""
        server = LiveServer(self, f"--max-log-bytes={CAP}")
        out, err, code = await runJW(
            server.url,
            "exec",
            "-f",
            "--",
            "sh",
            "-c",
            f"head -c {WRITTEN} /dev/zero >&2; exit 3",
        )
        self.assertEqual((out, code), (b"", 3))
        self.assertTrue(err.endswith(self.notice("stderr")), err[-200:])

    async def test_logsFollowToAFile(self) -> None:
        """C{jw logs -f ID > file}: the notice, exit 0."""
        server = LiveServer(self, f"--max-log-bytes={CAP}")
        jobId = await self.ended(server, "head", "-c", str(WRITTEN), "/dev/zero")
        out, err, code = await runJW(server.url, "logs", "-f", jobId)
        self.assertEqual((len(out), code), (CAP, 0), err)
        self.assertEqual(err, self.notice("stdout"))

    async def test_logsOfOneStreamToAFile(self) -> None:
        """
        C{jw logs --stdout ID > file}, C{--stderr}, with and without C{-f}:
        the notice, for that stream only.
        """
        server, jobId = await self.bothCapped()
        for flags, stream, dropped in (
            (("--stdout",), "stdout", DROPPED),
            (("--stdout", "-f"), "stdout", DROPPED),
            (("--stderr",), "stderr", 5),
            (("--stderr", "-f"), "stderr", 5),
        ):
            out, err, code = await runJW(server.url, "logs", *flags, jobId)
            self.assertEqual((len(out), code), (CAP, 0), (flags, err))
            self.assertEqual(err, self.notice(stream, dropped), flags)

    async def test_readStreamSaysWhatWasDropped(self) -> None:
        """
        L{readStream}, what C{jw logs --stdout/--stderr [-f]} needs: the
        stream's bytes, then the notice for that stream only; the record.
        """
        server, jobId = await self.bothCapped()
        client = JobworkerClient.connect(reactor, server.url, CA, "alice", "alice-pass")
        self.addCleanup(client.close)
        for stream, follow, dropped in (
            ("stdout", False, DROPPED),
            ("stdout", True, DROPPED),
            ("stderr", False, 5),
            ("stderr", True, 5),
        ):
            out, messages = io.BytesIO(), io.StringIO()
            job = await readStream(
                client,
                jobId,
                stream,
                Streams(out, io.BytesIO(), messages, inp=None),
                follow=follow,
            )
            self.assertEqual(len(out.getvalue()), CAP)
            self.assertEqual(messages.getvalue().encode(), self.notice(stream, dropped))
            self.assertEqual(job["status"], "COMPLETED")

    async def test_nothingDroppedNothingSaid(self) -> None:
        """Under the cap, stderr holds only what the job wrote there."""
        server = LiveServer(self, f"--max-log-bytes={CAP}")
        out, err, code = await runJW(
            server.url, "exec", "-f", "--", "sh", "-c", "echo out; echo err >&2"
        )
        self.assertEqual((out, code), (b"out\n", 0))
        self.assertEqual(err.split(b"\n", 1)[1], b"err\n")
        jobId = err.split()[2].decode()
        for flags in ((), ("-f",), ("--stdout",), ("--stderr", "-f")):
            out, err, code = await runJW(server.url, "logs", *flags, jobId)
            self.assertEqual(code, 0, err)
            self.assertNotIn(b"dropped", err)


class PromptInterruptTests(TestCase):
    """
    Item 5: Ctrl-C at the password prompt of the verbs that run on the
    reactor (login, stop, rm) exits 130 without a traceback, as the other
    verbs do; Ctrl-D at C{Username:} is refused at once.
    """

    timeout = 120

    def environment(self) -> dict[str, str]:
        """No password, no saved login: jw asks on the terminal. Before the
        password it checks that it can reach the server: a real one."""
        home = os.path.realpath(self.mktemp())
        server = self.__dict__.get("server") or LiveServer(self)
        self.server = server
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JW_SERVER": server.url,
            "JW_CA": CA,
            "HOME": home,
            "XDG_CONFIG_HOME": home,
            **(
                {"PYTHONPATH": os.environ["PYTHONPATH"]}
                if "PYTHONPATH" in os.environ
                else {}
            ),
        }

    async def interrupted(
        self, argv: list[str], prompt: bytes, user: str | None = "alice"
    ) -> tuple[int, bytes]:
        env = self.environment()
        if user is not None:
            env["JW_USER"] = user
        return await deferToThread(converse, [JW, *argv], env, [(prompt, b"\x03")])

    def assertInterrupted(self, code: int, seen: bytes) -> None:
        self.assertEqual(code, 130, seen)
        self.assertNotIn(b"Traceback", seen)
        self.assertNotIn(b"main function", seen)
        self.assertTrue(seen.endswith(b"\n"), seen)  # the shell's prompt: its own line

    async def test_ctrlCAtThePasswordPrompt(self) -> None:
        """jw login, jw stop ID, jw rm ID: Ctrl-C at "Password for": 130."""
        someId = str(uuid.uuid4())
        for argv in (["login"], ["stop", someId], ["rm", someId]):
            code, seen = await self.interrupted(argv, b"Password for alice: ")
            self.assertInterrupted(code, seen)

    async def test_ctrlCAtTheUserNamePrompt(self) -> None:
        """The same at "Username:"; and the quick verbs (list) still do so."""
        for argv in (["login"], ["rm", str(uuid.uuid4())], ["list"]):
            code, seen = await self.interrupted(argv, b"Username: ", user=None)
            self.assertInterrupted(code, seen)

    async def test_endOfInputAtUserName(self) -> None:
        """
        Ctrl-D at "Username:" says "no user name given" at once, without
        asking for the password of no one.
        """
        for argv in (["login"], ["list"]):
            code, seen = await deferToThread(
                converse,
                [JW, *argv],
                self.environment(),
                # (Were the password of no one asked, it is answered.)
                [(b"Username: ", b"\x04"), (b"Password for : ", b"x\n")],
            )
            self.assertEqual(code, 2, seen)
            self.assertIn(b"jw: no user name given", seen)
            self.assertNotIn(b"Password", seen)
            self.assertNotIn(b"Traceback", seen)

    async def test_endOfInputAtThePassword(self) -> None:
        """Ctrl-D at the password prompt: one line, not "unexpected error"."""
        for argv in (["login"], ["list"]):
            code, seen = await deferToThread(
                converse,
                [JW, *argv],
                {**self.environment(), "JW_USER": "alice"},
                [(b"Password for alice: ", b"\x04")],
            )
            self.assertEqual(code, 2, seen)
            self.assertIn(b"jw: no password given", seen)
            self.assertNotIn(b"unexpected", seen)
            self.assertNotIn(b"Traceback", seen)


class CommandWordsTests(SynchronousTestCase):
    """
    Item 7: everything after the command word reaches the job as it was
    typed, a C{--} included; only a C{--} before the command is jw's.
    """

    def test_everyWordAfterTheCommandKept(self) -> None:
        for argv, command, args in (
            (["exec", "-f", "echo", "--", "a"], "echo", ["--", "a"]),
            (["exec", "grep", "--", "-v", "f"], "grep", ["--", "-v", "f"]),
            (["exec", "rm", "--", "-f"], "rm", ["--", "-f"]),
            (["exec", "--", "echo", "--", "a"], "echo", ["--", "a"]),
            (["exec", "--", "make", "test"], "make", ["test"]),
            (["exec", "-f", "--", "rm", "--", "-f"], "rm", ["--", "-f"]),
            (["exec", "git", "checkout", "--", "f"], "git", ["checkout", "--", "f"]),
            (["exec", "echo", "-n", "--", "a"], "echo", ["-n", "--", "a"]),
            (["exec", "echo", "--server", "x"], "echo", ["--server", "x"]),
            (["exec", "ls", "-la"], "ls", ["-la"]),
            (["exec", "--name", "n", "-f", "--", "ls"], "ls", []),
            (["exec", "--", "--", "x"], "--", ["x"]),
            (["exec", "echo", "--"], "echo", ["--"]),
            (["exec", "-f", "echo", "-f"], "echo", ["-f"]),
        ):
            options = parse(*argv)
            self.assertEqual((options.command, options.args), (command, args), argv)

    def test_jwsOwnOptionsBeforeTheCommand(self) -> None:
        """Options before the command word are jw's, global ones too."""
        options = parse("exec", "--server", "https://h:1", "-f", "--", "true")
        self.assertEqual(
            (options.server, options.follow, options.command, options.args),
            ("https://h:1", True, "true", []),
        )

    def test_noCommand(self) -> None:
        """No command at all (or only --): none, for jw exec to refuse."""
        for argv in (["exec"], ["exec", "--"], ["exec", "-f"]):
            options = parse(*argv)
            self.assertEqual((options.command, options.args), (None, []), argv)

    def test_usageNamesTheCommand(self) -> None:
        out = io.BytesIO()
        parser = buildParser(Streams(out, io.BytesIO(), io.StringIO()))
        self.assertRaises(HelpShown, parser.parse_args, ["exec", "--help"])
        self.assertIn(b"COMMAND [ARG ...]", out.getvalue())


class CommandWordsRunTests(JWAssertions, TestCase):
    """Item 7 on a real server: the job gets the C{--}."""

    timeout = 60

    async def test_dashDashReachesTheJob(self) -> None:
        server = LiveServer(self)
        out = self.assertSucceeded(
            await runJW(server.url, "exec", "-f", "echo", "--", "-n", "a")
        )
        self.assertEqual(out, b"-- -n a\n")


class DurationTests(JWAssertions, TestCase):
    """
    Item 10: every duration jw takes (exec --timeout, wait --timeout,
    stop --grace, clean --older-than) takes the units s, m, h, d, as jw clean
    and the server's durations do; plain numbers are seconds.
    """

    timeout = 60

    def test_unitsParsed(self) -> None:
        for argv, attribute, seconds in (
            (["exec", "--timeout", "1h", "--", "true"], "timeout", 3600.0),
            (["exec", "--timeout", "90", "--", "true"], "timeout", 90.0),
            (["exec", "--timeout", "1.5m", "--", "true"], "timeout", 90.0),
            (["wait", "--timeout", "1s", "abcdef"], "timeout", 1.0),
            (["wait", "--timeout", "0", "abcdef"], "timeout", 0.0),
            (["wait", "--timeout", "0.2", "abcdef"], "timeout", 0.2),
            (["wait", "--timeout", "2d", "abcdef"], "timeout", 172800.0),
            (["stop", "--grace", "2m", "abcdef"], "grace", 120.0),
            (["stop", "--grace", "30", "abcdef"], "grace", 30.0),
        ):
            self.assertEqual(getattr(parse(*argv), attribute), seconds, argv)
        self.assertEqual(parse("clean", "--older-than", "7d").older_than, "7d")

    def test_badDurationsRefusedAlike(self) -> None:
        """One line naming the flag and what a duration looks like; exit 2."""
        for argv in (
            ["exec", "--timeout", "1x", "--", "true"],
            ["exec", "--timeout", "soon", "--", "true"],
            ["wait", "--timeout", "-1", "abcdef"],
            ["wait", "--timeout", "1h30m", "abcdef"],
            ["stop", "--grace", "inf", "abcdef"],
            ["clean", "--older-than", "yesterday"],
        ):
            with self.assertRaises(ArgumentsRefused) as caught:
                parse(*argv)
            line = str(caught.exception)
            self.assertIn(f"argument {argv[1]}: {argv[2]!r} is not ", line)
            self.assertIn("like 90s, 30m, 12h, 7d", line)
            self.assertNotIn("\n", line)

    async def test_badDurationExitsTwo(self) -> None:
        """As jw itself: one line, exit 2, nothing sent (no server here)."""
        for argv in (
            ("exec", "--timeout", "1x", "--", "true"),
            ("wait", "--timeout", "1x", "abcdef"),
            ("clean", "--older-than", "1x"),
        ):
            result = await runJW("https://localhost:9", *argv)
            self.assertOneLineFailure(result, b"'1x'", b"7d")
            self.assertEqual(result[2], 2, argv)

    async def test_unitsOnARealServer(self) -> None:
        """exec --timeout 1h reaches the job; wait --timeout 1s gives up (124)."""
        server = LiveServer(self)
        out = self.assertSucceeded(
            await runJW(
                server.url, "exec", "--json", "--timeout", "1h", "--", "sleep", "300"
            )
        )
        job = json.loads(out)
        self.assertEqual(job["timeout_seconds"], 3600)
        out, err, code = await runJW(server.url, "wait", "--timeout", "1s", job["id"])
        self.assertEqual(code, 124, err)
        self.assertIn(b"has not ended (RUNNING)", err)
        # --json: the job as it is, the one document on stdout (there was
        # none: jw wait --json --timeout 60 ID | jq .status got nothing).
        out, err, code = await runJW(
            server.url, "wait", "--json", "--timeout", "1s", job["id"]
        )
        self.assertEqual(code, 124, err)
        self.assertEqual(json.loads(out)["status"], "RUNNING")
        await runJW(server.url, "stop", "--kill", job["id"])


class CleanHelpTests(SynchronousTestCase):
    """
    Item 4: the help of jw clean says what an Admin's clean deletes (every
    user's ended jobs, unless --owner), not "your" jobs only.
    """

    def helpOf(self, *argv: str) -> str:
        out = io.BytesIO()
        parser = buildParser(Streams(out, io.BytesIO(), io.StringIO()))
        self.assertRaises(HelpShown, parser.parse_args, [*argv, "--help"])
        return " ".join(out.getvalue().decode().split())

    def test_cleanHelp(self) -> None:
        text = self.helpOf("clean")
        self.assertIn("Delete your ended jobs; an Admin's: every user's", text)
        self.assertIn("unless --owner", text)
        self.assertNotIn("for an Admin with --owner", text)

    def test_topLevelExample(self) -> None:
        text = self.helpOf()
        self.assertIn("jw clean --older-than 7d", text)
        self.assertIn("an Admin's: every user's", text)
        self.assertNotIn("delete your ended jobs older than a week", text)


class LostOutputNoticeTests(JWAssertions, TestCase):
    """
    Output the server could not write (its state dir's disk full:
    C{output_lost}) was said nowhere: C{jw logs -f} exited 0 with what had
    been written (fault round 5). It is said in one line, as the cap's.
    """

    timeout = 120

    async def test_logsFollowSaysWhatWasLost(self) -> None:
        state = smallTmpfs(self, "4m")
        server = LiveServer(self, stateDir=state)
        job = await server.createJob("head", "-c", str(8 << 20), "/dev/zero")
        ended = await server.waitEnded(job["id"], 60)
        self.assertGreater(ended["output_lost"], 0, ended)
        _, err, code = await runJW(server.url, "logs", "-f", job["id"])
        self.assertEqual(code, 0, err)
        self.assertIn(
            f"jw: {ended['output_lost']} bytes of the job's output could not be "
            "written on the server".encode(),
            err,
        )
        self.flushLoggedErrors()


class ByteCountWordsTests(SynchronousTestCase):
    """The one-line notices say "1 byte ... was", not "1 bytes ... were"."""

    def said(self, say: Any) -> str:
        messages = io.StringIO()
        say(Streams(io.BytesIO(), io.BytesIO(), messages, inp=None))
        return messages.getvalue()

    def test_oneByteDropped(self) -> None:
        self.assertEqual(
            self.said(lambda streams: sayDropped(streams, "stdout", 1)),
            "jw: 1 byte of the job's stdout was dropped (the server's output cap)\n",
        )
        self.assertIn(
            "jw: 2 bytes of the job's stderr were dropped",
            self.said(lambda streams: sayDropped(streams, "stderr", 2)),
        )

    def test_oneByteLost(self) -> None:
        self.assertIn(
            "jw: 1 byte of the job's output could not be written",
            self.said(lambda streams: sayLost({"output_lost": 1}, streams)),
        )
