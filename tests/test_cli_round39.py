"""
What the thirty-ninth session's new user found in jw.

A follow (C{jw exec -f}, C{jw logs -f}, C{jw wait}) was cut when the saved
login's token expired under it, exit 125, even on a terminal where jw
could ask for the password and go on; a 429 of C{jw exec} (the server's
create rate) was not asked again after its short C{Retry-After}; C{jw
help} was an unknown command, and C{jw wait A B} said "unrecognized
arguments"; a port that speaks plain HTTP was "TLS 1.3 handshake failed".
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from .support import (
    JW,
    PASSWORDS,
    LiveServer,
    jwEnvironment,
    keptLoginEnvironment,
    runJW,
)
from .test_cli_exec_defects import BOUND, GRACE
from .test_prompt import converse


def _environment(server: LiveServer, home: str, **extra: str) -> dict[str, str]:
    """jw's environment: alice's kept login in C{home}, no password given."""
    return keptLoginEnvironment(server.url, home, **extra)


def _login(environ: dict[str, str]) -> None:
    """C{jw login} as alice with her password given (no terminal)."""
    done = subprocess.run(
        [JW, "login"],
        env={**environ, "JW_PASSWORD": PASSWORDS["alice"]},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=BOUND,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _tokens(home: str) -> dict[str, Any]:
    with open(os.path.join(home, "jobworker", "tokens.json")) as f:
        entries: dict[str, Any] = json.load(f)
    return entries


#: A job of about 11 s that says where it is, then exits 3.
_TICKS = "echo first; sleep 11; echo second; exit 3"


class RenewedUnderAFollowTests(TestCase):
    """
    The saved login's token expires under C{jw logs -f} (the server ends
    the stream, and refuses the token as the follow resumes): on a
    terminal, jw asks for the password, keeps the new login and resumes
    where it was (it exited 125 and left the job unfollowed: new user
    round 39). Not under C{jw exec -f}, whose prompt raced the stdin it
    forwards (jw security round 39): it says how to go on, exit 125.
    """

    timeout = 120

    async def _followed(self, argv: list[str]) -> tuple[int, bytes, str]:
        server = LiveServer(self, "--token-ttl=8", grace=GRACE)
        home = os.path.realpath(self.mktemp())
        environ = _environment(server, home)
        await deferToThread(_login, environ)
        before = _tokens(home)
        out = os.path.join(home, "out")
        code, seen = await deferToThread(
            converse,
            ["/bin/sh", "-c", " ".join(argv).replace("OUT", out)],
            environ,
            [(b"Password for alice: ", b"alice-pass\n")],
        )
        self.assertNotEqual(_tokens(home), before, seen)  # the new login kept
        self.assertIn(b"logged in to", seen)
        written = ""
        if os.path.exists(out):
            with open(out) as f:
                written = f.read()
        return code, seen, written

    async def test_combined(self) -> None:
        """Output in order on the terminal (one combined stream)."""
        code, seen, _ = await self._followed(
            [f"ID=$({JW} exec -- sh -c {_TICKS!r}) &&", "exec", JW, "logs", "-f", "$ID"]
        )
        self.assertEqual(code, 3, seen)  # (the job's: jw logs -f exits so)
        self.assertEqual(seen.count(b"first"), 1, seen)  # resumed, not repeated
        self.assertIn(b"second", seen)
        self.assertNotIn(b"cannot follow", seen)

    async def test_raw(self) -> None:
        """stdout to a file: its raw stream."""
        code, seen, written = await self._followed(
            [
                f"ID=$({JW} exec -- sh -c {_TICKS!r}) &&",
                "exec",
                JW,
                "logs",
                "-f",
                "--stdout",
                "$ID",
                ">OUT",
            ]
        )
        self.assertEqual(code, 3, seen)
        self.assertEqual(written, "first\nsecond\n")
        self.assertNotIn(b"cannot follow", seen)

    async def test_execFollowSaysHow(self) -> None:
        """Under jw exec -f (-i: jw's stdin the job's), no prompt races
        the stdin it forwards: exit 125, how to go on said."""
        server = LiveServer(self, "--token-ttl=8", grace=GRACE)
        home = os.path.realpath(self.mktemp())
        environ = _environment(server, home)
        await deferToThread(_login, environ)
        code, seen = await deferToThread(
            converse,
            ["/bin/sh", "-c", f"exec {JW} exec -i -f -- sh -c {_TICKS!r}"],
            environ,
            [],
        )
        self.assertEqual(code, 125, seen)
        self.assertNotIn(b"Password", seen)
        self.assertIn(b"jw login, then jw logs -f", seen)

    async def test_noTerminal(self) -> None:
        """
        No terminal to ask on (and no JW_PASSWORD): exit 125, the way back
        said, as before.
        """
        server = LiveServer(self, "--token-ttl=8", grace=GRACE)
        home = os.path.realpath(self.mktemp())
        environ = _environment(server, home)
        await deferToThread(_login, environ)
        done = await deferToThread(
            subprocess.run,
            [JW, "exec", "-f", "--", "sh", "-c", _TICKS],
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND,
            check=False,
            start_new_session=True,  # no controlling terminal
        )
        self.assertEqual(done.returncode, 125, done.stderr)
        self.assertIn(b"jw login, then jw logs -f", done.stderr)


class _BackDated:
    """A clock C{ago} seconds behind the real one (a token issued then)."""

    def __init__(self, ago: float) -> None:
        self._ago = ago

    def seconds(self) -> float:
        return time.time() - self._ago


def _keepOldLogin(server: LiveServer, home: str, issuedAgo: float, left: float) -> str:
    """
    Keep in C{home} a login of alice's to C{server} issued C{issuedAgo}
    seconds ago, expiring C{left} seconds from now: its token.
    """
    from jobworker.client import config

    reload = next(s for s in server.service if hasattr(s, "_authenticator"))
    signer = reload._authenticator.tokens
    clock, signer._clock = signer._clock, _BackDated(issuedAgo)
    try:
        token, expires = signer.issue("alice", "Developer", until=time.time() + left)
    finally:
        signer._clock = clock
    path = os.path.join(home, "jobworker", "tokens.json")
    config.saveToken(path, server.url, token, expires, "alice")
    return token


class RenewedBeforeAFollowTests(TestCase):
    """
    A follow (here C{jw wait}) renews, on a terminal, a login kept with
    less than a quarter of its life left before it starts: it would expire
    under a long follow (new user round 39). Else, or with no terminal,
    the token is used as it is.
    """

    timeout = 120

    async def _waited(self, issuedAgo: float, left: float) -> tuple[int, bytes, bool]:
        server = LiveServer(self, grace=GRACE)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        home = os.path.realpath(self.mktemp())
        token = _keepOldLogin(server, home, issuedAgo, left)
        code, seen = await deferToThread(
            converse,
            [JW, "wait", job["id"]],
            _environment(server, home),
            [(b"Password for alice: ", b"alice-pass\n")],
        )
        renewed = next(iter(_tokens(home).values()))["token"] != token
        return code, seen, renewed

    async def test_lateInLife(self) -> None:
        """1,000 s old, 200 s left: renewed, then followed."""
        code, seen, renewed = await self._waited(1000, 200)
        self.assertEqual(code, 0, seen)
        self.assertIn(b"logged in to", seen)
        self.assertTrue(renewed, seen)

    async def test_early(self) -> None:
        """100 s old, 1,000 s left: used, no prompt."""
        code, seen, renewed = await self._waited(100, 1000)
        self.assertEqual(code, 0, seen)
        self.assertNotIn(b"Password", seen)
        self.assertFalse(renewed, seen)

    async def test_noTerminal(self) -> None:
        """No terminal: the token late in its life is used as it is."""
        server = LiveServer(self, grace=GRACE)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        home = os.path.realpath(self.mktemp())
        token = _keepOldLogin(server, home, 1000, 200)
        done = await deferToThread(
            subprocess.run,
            [JW, "wait", job["id"]],
            env=_environment(server, home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND,
            check=False,
            start_new_session=True,
        )
        self.assertEqual((done.stderr, done.returncode), (b"", 0))
        self.assertEqual(next(iter(_tokens(home).values()))["token"], token)


class CreateRateTests(TestCase):
    """
    C{jw exec} refused by the server's create rate (429: nothing created)
    waits its C{Retry-After} and asks again, a few times, saying so on
    stderr; it exited 1 at once (new user round 39).
    """

    timeout = 120

    async def test_askedAgain(self) -> None:
        server = LiveServer(self, "--create-rate=0.5", grace=GRACE)
        first = await runJW(server.url, "exec", "--", "true")
        self.assertEqual(first[2], 0, first)
        _, err, code = await runJW(server.url, "exec", "--", "true")
        self.assertEqual(code, 0, err)
        self.assertIn(b"nothing was created", err)
        self.assertIn(b"asking again in", err)
        _, listed = await server.json("GET", "/jobs")
        self.assertEqual(len(listed["jobs"]), 2)

    async def test_givenUp(self) -> None:
        """A wait past jw's bound is not waited: said with when to retry."""
        server = LiveServer(self, "--create-rate=0.01", grace=GRACE)
        first = await runJW(server.url, "exec", "--", "true")
        self.assertEqual(first[2], 0, first)
        _, err, code = await runJW(server.url, "exec", "--", "true")
        self.assertEqual(code, 1, err)
        self.assertRegex(err.decode(), r"^jw: .*faster than .*: retry in \d+ s\n$")


class HelpVerbTests(TestCase):
    """
    C{jw help} is C{jw --help}, C{jw help VERB} is C{jw VERB --help}; a
    second id to a verb that takes one says so (C{jw help} was an unknown
    command, C{jw wait A B} "unrecognized arguments": new user round 39).
    """

    def jw(self, *argv: str) -> tuple[bytes, bytes, int]:
        done = subprocess.run(
            [JW, *argv],
            env=jwEnvironment("https://localhost:1"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND,
            check=False,
        )
        return done.stdout, done.stderr, done.returncode

    def test_help(self) -> None:
        self.assertEqual(self.jw("help"), self.jw("--help"))
        self.assertEqual(self.jw("help")[2], 0)

    def test_helpOfAVerb(self) -> None:
        out, err, code = self.jw("help", "wait")
        self.assertEqual((out, err, code), self.jw("wait", "--help"))
        self.assertEqual(code, 0)
        self.assertIn(b"jw wait", out)

    def test_helpOfNoVerb(self) -> None:
        out, err, code = self.jw("help", "bogus")
        self.assertEqual((out, code), (b"", 2))
        self.assertIn(b"unknown command 'bogus'", err)

    def test_secondId(self) -> None:
        for verb in ("wait", "logs"):
            out, err, code = self.jw(verb, "c05c0690", "d16d17a1")
            self.assertEqual(
                (out, err, code),
                (
                    b"",
                    f"jw: jw {verb} takes one ID: 'd16d17a1' is a second one "
                    f"(see jw {verb} --help)\n".encode(),
                    2,
                ),
            )


class PlainHTTPPortTests(TestCase):
    """
    A port that answers plain HTTP is said to ("TLS 1.3 handshake failed"
    said nothing of the likely slip, a wrong port: new user round 39).
    """

    timeout = 60

    def test_said(self) -> None:
        import http.server
        import threading

        class Quiet(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.addCleanup(httpd.server_close)
        self.addCleanup(httpd.shutdown)
        server = f"https://127.0.0.1:{httpd.server_address[1]}"
        for argv in (["list"], ["stop", "0" * 8]):  # quick client, Twisted one
            done = subprocess.run(
                [JW, *argv],
                env=jwEnvironment(server),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=BOUND,
                check=False,
            )
            self.assertEqual(
                (done.stderr, done.returncode),
                (
                    f"jw: cannot connect to {server}: the server there answered "
                    "in plain HTTP, not TLS: is it the right port?\n".encode(),
                    1,
                ),
                argv,
            )


class PasswordGivenTests(TestCase):
    """
    With C{JW_PASSWORD} set, an expired login kept is not renewed by a
    plain verb: the password is what is sent, nothing is said or saved
    (a CI's log got a "logged in" line, and a 12 h token was kept: new
    user round 39).
    """

    timeout = 60

    async def test_notRenewed(self) -> None:
        from jobworker.client import config

        server = LiveServer(self, grace=GRACE)
        home = os.path.realpath(self.mktemp())
        path = os.path.join(home, "jobworker", "tokens.json")
        config.saveToken(path, server.url, "jw1.old.sig", time.time() - 10, "alice")
        before = _tokens(home)
        done = await deferToThread(
            subprocess.run,
            [JW, "list"],
            env=_environment(server, home, JW_PASSWORD=PASSWORDS["alice"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=BOUND,
            check=False,
        )
        self.assertEqual((done.stderr, done.returncode), (b"", 0))
        self.assertEqual(_tokens(home), before)
