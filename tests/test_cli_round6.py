"""
Round 6 of a new user's findings on C{jw} (each reproduced here first): a
traceback for a closed stdin or stdout; a full disk under stdout shown as an
unexpected error, the job left running; a flood of backlog after Ctrl-C;
non-UTF-8 words sent to the server; a mistyped global flag blamed on the
URL, and abbreviated flags; completion of C{clean --status}; C{jw config}'s
user and a missing CA; the password asked before the connection is known to
work.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.client.completion import COMPLETION
from jobworker.client.failures import ArgumentsRefused
from jobworker.client.parser import buildParser
from jobworker.client.streams import Streams

from .support import (
    CA,
    JW,
    JWAssertions,
    LiveServer,
    bashOffers,
    jwEnvironment,
    sleep,
    waitUntil,
)
from .test_prompt import converse


def parse(*argv: str) -> Any:
    """C{jw}'s parser on C{argv}: the options (no server, no output)."""
    streams = Streams(io.BytesIO(), io.BytesIO(), io.StringIO(), inp=None)
    return buildParser(streams).parse_args(list(argv))


def shell(
    script: str, *argv: str | bytes, env: dict[str, str], timeout: float = 60
) -> tuple[bytes, bytes, int]:
    """C{script} run by sh with C{$0 $@} = C{jw argv}: (stdout, stderr, status)."""
    done = subprocess.run(
        ["sh", "-c", script, JW, *argv],
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return done.stdout, done.stderr, done.returncode


def freePort() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated(testCase: TestCase, **extra: str) -> dict[str, str]:
    """An environment of its own: home, config and state folders empty."""
    home = os.path.realpath(testCase.mktemp())
    os.makedirs(home)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, "config"),
        "XDG_STATE_HOME": os.path.join(home, "state"),
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


class ClosedStreamTests(JWAssertions, TestCase):
    """Item 1: a closed stdin is no input; a closed stdout, one line."""

    timeout = 120

    async def test_closedStdout(self) -> None:
        """C{jw status ID >&-}: one line on stderr, a non-zero exit."""
        server = LiveServer(self)
        job = await server.createJob("true")
        env = jwEnvironment(server.url)
        for argv in (("status", job["id"]), ("list",), ("exec", "-f", "--", "true")):
            result = await deferToThread(shell, 'exec "$0" "$@" >&-', *argv, env=env)
            self.assertOneLineFailure(result, b"stdout")

    async def test_closedStdin(self) -> None:
        """C{jw list <&-} runs; C{jw exec -i -f -- cat <&-}: no input."""
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        out = self.assertSucceeded(
            await deferToThread(shell, 'exec "$0" "$@" <&-', "list", env=env)
        )
        self.assertIn(b"ID", out)
        out, err, code = await deferToThread(
            shell, 'exec "$0" "$@" <&-', "exec", "-i", "-f", "--", "cat", env=env
        )
        self.assertEqual((out, code), (b"", 0), err)
        self.assertNotIn(b"Traceback", err)

    async def test_closedStderr(self) -> None:
        """C{jw list 2>&-}: it runs (nothing to say, nowhere to say it)."""
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        out = self.assertSucceeded(
            await deferToThread(shell, 'exec "$0" "$@" 2>&-', "list", env=env)
        )
        self.assertIn(b"ID", out)


class FullDiskTests(JWAssertions, TestCase):
    """Item 2: stdout on a full disk is a closed pipe with a reason."""

    timeout = 120

    async def test_execStopsTheJob(self) -> None:
        """
        C{jw exec -f ... > /dev/full}: one line naming the write error, a
        non-zero exit, and the job stopped (not left running unread).
        """
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        _out, err, code = await deferToThread(
            shell,
            'exec "$0" "$@" > /dev/full',
            "exec",
            "-f",
            "--",
            "sh",
            "-c",
            "sleep 0.5; echo hi; sleep 30",
            env=env,
        )
        self.assertNotEqual(code, 0, err)
        self.assertNotIn(b"unexpected", err)
        self.assertNotIn(b"Traceback", err)
        self.assertIn(
            b"jw: cannot write the job's output: No space left on device", err
        )
        match = re.search(rb"jw: job ([0-9a-f-]{36}) started", err)
        assert match is not None, err
        job = await server.waitEnded(match.group(1).decode(), 15)
        self.assertEqual(job["status"], "STOPPED", job)

    async def test_logsAndList(self) -> None:
        """C{jw logs ID > /dev/full}, C{jw list > /dev/full}: one line each."""
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "echo out; echo err >&2")
        await server.waitEnded(job["id"])
        env = jwEnvironment(server.url)
        for argv, line in (
            (("logs", job["id"]), b"jw: cannot write the job's output: "),
            (("logs", "--stdout", job["id"]), b"jw: cannot write the job's output: "),
            (("list",), b"jw: cannot write to stdout: "),
        ):
            result = await deferToThread(
                shell, 'exec "$0" "$@" > /dev/full', *argv, env=env
            )
            self.assertOneLineFailure(result, line, b"No space left on device")


class BacklogTests(TestCase):
    """Item 3: after one Ctrl-C, no minutes of backlog once the job ended."""

    timeout = 120

    async def test_backlogNotPrinted(self) -> None:
        """
        A job that wrote 20 MB that jw has not shown (its stdout is not
        read): after one SIGINT the job stops, and jw exits (130) once it
        has ended, saying how much it did not show and how to read it.
        """
        server = LiveServer(self)
        env = jwEnvironment(server.url)
        process = subprocess.Popen(
            [
                JW,
                "exec",
                "-f",
                "--",
                "sh",
                "-c",
                "head -c 20000000 /dev/zero; sleep 600",
            ],
            stdout=subprocess.PIPE,  # never read until jw exits
            stderr=subprocess.PIPE,
            env=env,
        )
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        errors: list[bytes] = []
        reader = threading.Thread(
            target=lambda: errors.extend(iter(process.stderr.readline, b"")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()

        def jobId() -> str | None:
            match = re.search(rb"job ([0-9a-f-]{36}) started", b"".join(errors))
            return match.group(1).decode() if match else None

        await waitUntil(jobId, 20, "the job's start")

        async def spooled() -> bool:
            _, job = await server.json("GET", f"/jobs/{jobId()}")
            return bool(job["stdout_bytes"] >= 20_000_000)

        await waitUntil(spooled, 20, "the job's output")
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            await sleep(0.1)
        exited = process.poll()
        if exited is None:
            process.kill()
        process.stdout.close()  # type: ignore[union-attr]
        await deferToThread(reader.join, 10)
        said = b"".join(errors)
        self.assertEqual(exited, 130, said)
        self.assertIn(f"jw logs {jobId()}".encode(), said)
        self.assertRegex(said, rb"jw: \d+ bytes of the job's output were not shown")
        self.assertNotIn(b"Traceback", said)


class Utf8Tests(JWAssertions, TestCase):
    """Item 4: words that are not UTF-8 are refused by jw, exit 2, unsent."""

    timeout = 60

    async def test_refusedBeforeSending(self) -> None:
        # Nothing listens: a refusal from jw itself, not a failed connection.
        env = jwEnvironment(f"https://localhost:{freePort()}", JW_CA=CA)
        for argv, named in (
            (["--", "printf", "%s", b"caf\xe9"], b"argument 2 of the command"),
            ([b"caf\xe9"], b"the command"),
            (["-e", b"X=\xe9", "--", "true"], b"--env"),
            (["--cwd", b"/tmp/\xe9", "--", "true"], b"--cwd"),
        ):
            out, err, code = await deferToThread(
                shell, 'exec "$0" "$@"', "exec", "-f", *argv, env=env
            )
            self.assertEqual((out, code), (b"", 2), err)
            self.assertEqual(err.count(b"\n"), 1, err)
            self.assertIn(b"not valid UTF-8", err)
            self.assertIn(named, err)
            self.assertIn(b"\\xe9", err)


class ParserTests(SynchronousTestCase):
    """Item 5: a mistyped global flag is named; no abbreviations."""

    def test_typoedGlobalFlag(self) -> None:
        with self.assertRaises(ArgumentsRefused) as caught:
            parse("--sever", "https://localhost:1", "list")
        message = str(caught.exception)
        self.assertIn("--sever", message)
        self.assertIn("did you mean --server?", message)
        self.assertNotIn("unknown command", message)
        self.assertEqual(message.count("\n"), 0)

    def test_unknownFlagAfterVerb(self) -> None:
        with self.assertRaises(ArgumentsRefused) as caught:
            parse("list", "--statuss", "FAILED")
        self.assertIn("--statuss", str(caught.exception))
        self.assertIn("did you mean --status?", str(caught.exception))

    def test_unknownFlagBeforeVerb(self) -> None:
        """A flag jw does not take, before the command: jw's own help is
        the one to read (it said "see jw list --help", and matched it
        against list's options)."""
        with self.assertRaises(ArgumentsRefused) as caught:
            parse("--jsonn", "list")
        message = str(caught.exception)
        self.assertIn("unknown option --jsonn", message)
        self.assertIn("(see jw --help)", message)
        with self.assertRaises(ArgumentsRefused) as caught:
            parse("--serverr", "list", "--all")
        self.assertIn("did you mean --server?", str(caught.exception))
        self.assertIn("(see jw --help)", str(caught.exception))

    def test_noAbbreviations(self) -> None:
        for argv in (
            ("--serv", "https://localhost:1", "list"),
            ("exec", "--fol", "--", "true"),
            ("list", "--stat", "FAILED"),
            ("logs", "--foll", "abcdef"),
        ):
            with self.assertRaises(ArgumentsRefused, msg=argv):
                parse(*argv)

    def test_wholeFlagsStillWork(self) -> None:
        options = parse(
            "--server", "https://localhost:1", "exec", "--follow", "--", "x"
        )
        self.assertEqual(
            (options.server, options.follow), ("https://localhost:1", True)
        )


class CompletionTests(SynchronousTestCase):
    """Item 6: C{clean --status} completes only what clean accepts."""

    def bashCompletes(self, *words: str) -> list[str]:
        return bashOffers(*words)

    def test_bash(self) -> None:
        self.assertEqual(
            self.bashCompletes("jw", "clean", "--status", ""),
            ["COMPLETED", "FAILED", "STOPPED"],
        )
        self.assertEqual(
            self.bashCompletes("jw", "list", "--status", ""),
            ["PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED"],
        )

    def test_fishAndZsh(self) -> None:
        fish = [
            line for line in COMPLETION["fish"].splitlines() if "-l status -x" in line
        ]
        clean = [line for line in fish if "subcommand_from clean" in line]
        listing = [line for line in fish if "subcommand_from list" in line]
        self.assertEqual(len(clean), 1, fish)
        self.assertNotIn("RUNNING", clean[0])
        self.assertNotIn("PENDING", clean[0])
        self.assertIn("STOPPED", clean[0])
        self.assertIn("RUNNING", listing[0])
        zsh = COMPLETION["zsh"]
        self.assertIn("compadd -- COMPLETED FAILED STOPPED", zsh)


class ConfigTests(TestCase):
    """Item 7: jw config names the user a token is for; a missing CA."""

    timeout = 60

    async def token(self, server: LiveServer, user: str) -> dict[str, Any]:
        code, body = await server.json("POST", "/tokens", user)
        self.assertEqual(code, 201, body)
        return body  # type: ignore[no-any-return]

    def config(self, env: dict[str, str]) -> tuple[bytes, bytes, int]:
        done = subprocess.run(
            [JW, "config"], capture_output=True, env=env, timeout=30, check=False
        )
        return done.stdout, done.stderr, done.returncode

    async def test_tokenUser(self) -> None:
        """A saved login's or JW_TOKEN's user is shown, not "(prompted)"."""
        from jobworker.client.config import saveToken, tokensPath

        server = LiveServer(self)
        given = await self.token(server, "rita")
        env = isolated(self, JW_SERVER=server.url, JW_CA=CA, JW_TOKEN=given["token"])
        out, err, code = await deferToThread(self.config, env)
        self.assertEqual(code, 0, err)
        self.assertIn(b"user = rita", out)
        self.assertNotIn(b"prompted", out)
        del env["JW_TOKEN"]
        saved = await self.token(server, "bob")
        saveToken(
            tokensPath(env), server.url, saved["token"], time.time() + 3600, "bob"
        )
        out, err, code = await deferToThread(self.config, env)
        self.assertEqual(code, 0, err)
        self.assertIn(b"user = bob", out)
        self.assertIn(b"the login token", out)
        self.assertNotIn(b"prompted", out)

    async def test_missingCA(self) -> None:
        """JW_CA naming no file: said on its line."""
        env = isolated(self, JW_CA="/nonexistent/ca.pem")
        out, err, code = await deferToThread(self.config, env)
        line = [x for x in out.splitlines() if x.startswith(b"ca = ")]
        self.assertEqual(len(line), 1, out)
        self.assertIn(b"cannot read", line[0])
        self.assertIn(b"No such file", line[0])
        self.assertEqual(code, 0, (out, err))


class LoginConnectsFirstTests(TestCase):
    """Item 8: jw login checks the server before it asks for a password."""

    timeout = 180

    async def test_untrustedLocalhost(self) -> None:
        """
        A localhost server whose CA jw does not know (its own, in another
        state dir): jw shows the CA's fingerprint and asks to trust it,
        before any user name or password; "no" sends nothing.
        """
        server = LiveServer(self, ownCertificate=True)
        env = isolated(self, JW_SERVER=server.url)
        code, seen = await deferToThread(
            converse,
            [JW, "login"],
            env,
            [
                (b"[y/N] ", b"n\n"),
                (b"Username: ", b"alice\n"),
                (b"Password for alice: ", b"alice-pass\n"),
            ],
        )
        self.assertNotIn(b"Username", seen)
        self.assertNotIn(b"Password", seen)
        self.assertIn(b"SHA-256 fingerprint", seen)
        self.assertIn(b"was not trusted", seen)
        self.assertNotEqual(code, 0, seen)

    async def test_trustedThenLoggedIn(self) -> None:
        """Saying yes keeps the CA; the password is then asked, and works."""
        server = LiveServer(self, ownCertificate=True)
        env = isolated(self, JW_SERVER=server.url, JW_USER="alice")
        code, seen = await deferToThread(
            converse,
            [JW, "login"],
            env,
            [(b"[y/N] ", b"y\n"), (b"Password for alice: ", b"alice-pass\n")],
        )
        self.assertEqual(code, 0, seen)
        self.assertIn(b"logged in to", seen)
        self.assertLess(seen.index(b"[y/N]"), seen.index(b"Password"))

    async def test_unreachable(self) -> None:
        """Nothing listens: jw says so without asking for the password."""
        url = f"https://localhost:{freePort()}"
        for verb in ("login", "list"):
            env = isolated(self, JW_SERVER=url, JW_CA=CA, JW_USER="alice")
            code, seen = await deferToThread(
                converse,
                [JW, verb],
                env,
                [(b"Password for alice: ", b"alice-pass\n")],
            )
            self.assertNotIn(b"Password", seen, verb)
            self.assertIn(b"connection refused", seen, verb)
            self.assertEqual(code, 1, seen)

    async def test_untrustedNamedHost(self) -> None:
        """A CA given with JW_CA that does not vouch for the server: said
        before the password is asked."""
        server = LiveServer(self, ownCertificate=True)
        env = isolated(self, JW_SERVER=server.url, JW_CA=CA, JW_USER="alice")
        code, seen = await deferToThread(
            converse,
            [JW, "login"],
            env,
            [(b"Password for alice: ", b"alice-pass\n")],
        )
        self.assertNotIn(b"Password", seen)
        self.assertIn(b"not trusted", seen)
        self.assertNotEqual(code, 0, seen)
        self.assertNotIn(json.dumps("alice-pass").encode(), seen)


class RepeatedCursorTests(SynchronousTestCase):
    """
    A server (or a cache before it) that answers every page of C{jw list}
    with the same C{next_cursor}: jw asks no page twice. It asked for
    ever, as C{jw clean} does not.
    """

    def test_aCursorAskedOnce(self) -> None:
        from twisted.internet.defer import Deferred

        from jobworker.client.verbs import doList

        class Replaying:
            class reactor:
                @staticmethod
                def seconds() -> float:
                    return 0.0

            def __init__(self) -> None:
                self.asked: list[object] = []

            async def listJobs(self, **filters: Any) -> tuple[list[Any], str]:
                self.asked.append(filters.get("cursor"))
                if len(self.asked) > 10:
                    raise AssertionError("asked for ever")
                return [], "42"

        for argv in (["list"], ["list", "--all"]):
            client = Replaying()
            streams = Streams(io.BytesIO(), io.BytesIO(), io.StringIO(), inp=None)
            done = Deferred.fromCoroutine(
                doList(parse(*argv), client, streams, None)  # type: ignore[arg-type]
            )
            self.assertEqual(self.successResultOf(done), 0)
            self.assertEqual(client.asked, [None, "42"], argv)
