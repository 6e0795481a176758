"""
What the forty-first session's new user found in jw.

Under a locale that is not UTF-8 (C{LC_ALL=en_US.ISO-8859-1}, cron's
C{LANG=en_US} on older hosts), jw sent each word of the command
re-encoded: UTF-8 words reached the job double-encoded, a Latin-1 byte was
sent as UTF-8 instead of being refused. C{jw wait} exited 1, not 125, when
its login ran out under it without a terminal. An expired C{JW_TOKEN} was
sent anyway (each run a failed login at the server's throttle), and jw
advised C{jw login}, which cannot help while C{JW_TOKEN} is set.
C{HOME=/dev/null} stopped every command. A 503 "too many password checks,
retry in 1 s" ended the command. Nothing silenced jw's informational lines
on stderr for cron (new user round 41).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from jobworker.auth import authenticator

from .support import (
    JW,
    PASSWORDS,
    LiveServer,
    jwEnvironment,
    keptLoginEnvironment,
    sleep,
    waitUntil,
)
from .test_cli_exec_defects import BOUND, GRACE

#: A word in UTF-8 that is not ASCII: "ünï ✓".
_WORD = "ünï ✓"
_WORD_BYTES = _WORD.encode("utf-8")


def _jw(argv: list[Any], environ: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run jw (words as bytes or text), with no terminal and no stdin."""
    return subprocess.run(
        [JW, *argv],
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=BOUND + 30,
        check=False,
        start_new_session=True,  # no controlling terminal
    )


def _latin1Locale(testCase: TestCase) -> dict[str, str]:
    """
    The environment of a locale whose charset is ISO-8859-1 (glibc's plain
    C{en_US}), made here with localedef; skipped where it cannot be.
    """
    if shutil.which("localedef") is None:
        raise SkipTest("no localedef")
    folder = os.path.abspath(testCase.mktemp())
    os.makedirs(folder)
    made = subprocess.run(
        ["localedef", "-i", "en_US", "-f", "ISO-8859-1", f"{folder}/en_US.ISO-8859-1"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if made.returncode not in (0, 1) or not os.path.isdir(f"{folder}/en_US.ISO-8859-1"):
        raise SkipTest(f"localedef failed: {made.stderr!r}")
    environ = {"LOCPATH": folder, "LC_ALL": "en_US.ISO-8859-1"}
    probe = subprocess.run(
        ["python3", "-c", "import sys; print(sys.getfilesystemencoding())"],
        env={**os.environ, **environ},
        capture_output=True,
        check=False,
    )
    if probe.stdout.strip() != b"iso8859-1":
        raise SkipTest(f"the locale made is not Latin-1: {probe.stdout!r}")
    return environ


#: A locale whose charset is ASCII, Python's UTF-8 mode off: argv decoded
#: as ASCII (every other byte a lone surrogate).
_ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0"}


class WordsAsGivenTests(TestCase):
    """
    The command's words, C{--env} and C{--label} values reach the job as
    the bytes jw was given, whatever the locale's charset (they were
    re-encoded as UTF-8 from it); bytes that are not UTF-8 are refused,
    as under a UTF-8 locale (new user round 41).
    """

    timeout = 120

    async def _exact(self, locale: dict[str, str]) -> None:
        server = LiveServer(self, grace=GRACE)
        environ = {**jwEnvironment(server.url), **locale}
        done = await deferToThread(
            _jw,
            [
                b"exec",
                b"-e",
                b"V=" + _WORD_BYTES,
                b"-l",
                b"k=" + _WORD_BYTES,
                b"--",
                b"sh",
                b"-c",
                b'printf "%s|%s" "$1" "$V"',
                b"sh",
                _WORD_BYTES,
            ],
            environ,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        jobId = done.stdout.strip().decode()
        job = await server.waitEnded(jobId)
        self.assertEqual(job["args"][-1], _WORD)
        self.assertEqual(job["labels"], {"k": _WORD})
        response = await server.request(
            "GET", f"/jobs/{jobId}/logs?stream=stdout&follow=false"
        )
        output = await treq.content(response)
        self.assertEqual(output, _WORD_BYTES + b"|" + _WORD_BYTES)

    async def test_latin1Locale(self) -> None:
        """
        ISO-8859-1: Python decodes argv as Latin-1, and each word was sent
        double-encoded (16 bytes for 9).
        """
        await self._exact(_latin1Locale(self))

    async def test_asciiLocale(self) -> None:
        """C, Python's UTF-8 mode off: the UTF-8 words were refused."""
        await self._exact(_ASCII_LOCALE)

    async def _refused(self, locale: dict[str, str]) -> None:
        server = LiveServer(self, grace=GRACE)
        environ = {**jwEnvironment(server.url), **locale}
        done = await deferToThread(
            _jw, [b"exec", b"-f", b"--", b"printf", b"%s", b"caf\xe9"], environ
        )
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(
            done.stderr,
            b"jw: argument 2 of the command 'caf\\xe9' is not valid UTF-8 (jw "
            b"sends text only)\n",
        )
        self.assertEqual(done.stdout, b"")
        _, listed = await server.json("GET", "/jobs")
        self.assertEqual(listed["jobs"], [])  # nothing sent

    async def test_latin1ByteRefused(self) -> None:
        """ISO-8859-1: the byte 0xe9 was sent as "é" (C3 A9), exit 0."""
        await self._refused(_latin1Locale(self))

    async def test_latin1ByteRefusedAscii(self) -> None:
        """C, UTF-8 mode off: refused too (as it was)."""
        await self._refused(_ASCII_LOCALE)


def _tokenEnvironment(server: LiveServer, token: str, **extra: str) -> dict[str, str]:
    """jw's environment with C{JW_TOKEN} alone for credentials."""
    return jwEnvironment(
        server.url, JW_TOKEN=token, JW_USER="", JW_PASSWORD="", **extra
    )


async def _token(server: LiveServer) -> str:
    """A token of alice's (C{POST /tokens})."""
    code, body = await server.json("POST", "/tokens")
    assert code == 201, (code, body)
    return str(body["token"])


def _login(environ: dict[str, str]) -> None:
    """C{jw login} as alice with her password given (no terminal)."""
    done = _jw(["login"], {**environ, "JW_PASSWORD": PASSWORDS["alice"]})
    assert done.returncode == 0, done.stderr


#: A job that runs long past any token of these tests, saying so.
_LONG = "while :; do echo x; sleep 1; done"


class WaitLapsedTests(TestCase):
    """
    C{jw wait} whose login runs out in the middle, with no terminal to
    renew it on: exit 125 and "it is still running", as C{jw logs -f} and
    C{jw exec -f} (it exited 1, the raw refusal said: no status of the job
    was known before its long poll's 401: new user round 41).
    """

    timeout = 120

    async def test_givenToken(self) -> None:
        """A C{JW_TOKEN} that expires during the wait."""
        server = LiveServer(self, "--token-ttl=4", grace=GRACE)
        job = await server.createJob("/bin/sh", "-c", _LONG)
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        environ = _tokenEnvironment(server, await _token(server))
        done = await deferToThread(_jw, ["wait", job["id"]], environ)
        self.assertEqual(done.returncode, 125, done.stderr)
        self.assertIn(f"cannot follow job {job['id']}".encode(), done.stderr)
        self.assertIn(b"it is still running", done.stderr)

    async def test_keptLogin(self) -> None:
        """The token C{jw login} kept, expiring during the wait."""
        server = LiveServer(self, "--token-ttl=4", grace=GRACE)
        job = await server.createJob("/bin/sh", "-c", _LONG)
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        home = os.path.realpath(self.mktemp())
        environ = keptLoginEnvironment(server.url, home)
        await deferToThread(_login, environ)
        done = await deferToThread(_jw, ["wait", job["id"]], environ)
        self.assertEqual(done.returncode, 125, done.stderr)
        self.assertIn(b"it is still running: jw login, then jw logs -f", done.stderr)

    async def test_endedAtOnce(self) -> None:
        """A job that has ended: its status at once, as ever."""
        server = LiveServer(self, grace=GRACE)
        job = await server.createJob("/bin/sh", "-c", "exit 3")
        await server.waitEnded(job["id"])
        done = await deferToThread(_jw, ["wait", job["id"]], jwEnvironment(server.url))
        self.assertEqual((done.returncode, done.stderr), (3, b""))


class GivenTokenTests(TestCase):
    """
    C{JW_TOKEN}: one its claims show to have expired is not sent (each was
    a failed login at the server's throttle, whose 429 then hid the
    expiry, and held back other users' logins from the host): jw says so
    at once, naming it. One the server refuses, at the start or under a
    follow, is named as what to renew; jw does not advise C{jw login},
    which cannot help while it is set (new user round 41).
    """

    timeout = 120

    async def test_expiredNotSent(self) -> None:
        """
        Expired: not sent, every time (the sixth run was the throttle's
        429), said at once, exit 1 as the server's refusal was; C{jw
        config} says it too.
        """
        server = LiveServer(self, "--token-ttl=1", grace=GRACE)
        environ = _tokenEnvironment(server, await _token(server))
        await sleep(2.5)
        for _ in range(7):
            done = await deferToThread(_jw, ["list"], environ)
            self.assertEqual(done.returncode, 1, done.stderr)
            self.assertEqual(done.stderr.count(b"\n"), 1, done.stderr)
            self.assertTrue(
                done.stderr.startswith(
                    b"jw: authentication failed: JW_TOKEN expired at "
                ),
                done.stderr,
            )
            self.assertIn(b"set a new one", done.stderr)
            self.assertIn(b"it was not sent", done.stderr)
            self.assertNotIn(b"429", done.stderr)
            self.assertNotIn(b"jw login", done.stderr)
        done = await deferToThread(_jw, ["config"], environ)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"sent = JW_TOKEN (a bearer token; expired at ", done.stdout)
        # A user new to this host may still log in with a password.
        done = await deferToThread(_jw, ["list"], jwEnvironment(server.url, user="bob"))
        self.assertEqual(done.returncode, 0, done.stderr)

    async def test_refusedNamed(self) -> None:
        """A token the server refuses (not signed by its key): named."""
        server = LiveServer(self, grace=GRACE)
        token = await _token(server)
        forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        done = await deferToThread(_jw, ["list"], _tokenEnvironment(server, forged))
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(done.stderr.count(b"\n"), 1, done.stderr)
        self.assertIn(b"authentication failed", done.stderr)
        self.assertIn(b"JW_TOKEN was refused: set a new one", done.stderr)

    async def test_expiredUnderAFollow(self) -> None:
        """
        Expired under C{jw logs -f}: exit 125, and what to renew is
        JW_TOKEN, not a login (it said "jw login, then jw logs -f ID",
        which then failed the same way).
        """
        server = LiveServer(self, "--token-ttl=4", grace=GRACE)
        job = await server.createJob("/bin/sh", "-c", _LONG)
        self.addCleanup(server.json, "POST", f"/jobs/{job['id']}/stop")
        environ = _tokenEnvironment(server, await _token(server))
        done = await deferToThread(_jw, ["logs", "-f", job["id"]], environ)
        self.assertEqual(done.returncode, 125, done.stderr)
        line = done.stderr.splitlines()[-1]
        self.assertIn(
            b"it is still running: JW_TOKEN was refused (it expired at ", line
        )
        self.assertIn(f"set a new one, then jw logs -f {job['id']}".encode(), line)
        self.assertNotIn(b"jw login", line)


class NoConfigFolderTests(TestCase):
    """
    C{HOME=/dev/null} or C{XDG_CONFIG_HOME=/dev/null} (CI's "no user
    config" idiom, a service account's home): no config file, as an absent
    one; every command stopped, exit 2, "cannot read
    /dev/null/.config/jobworker/config.toml: Not a directory", with
    everything given in C{JW_*} variables (new user round 41).
    """

    timeout = 60

    async def _works(self, **where: str) -> None:
        server = LiveServer(self, grace=GRACE)
        environ = jwEnvironment(server.url, **where)
        for argv in (["list"], ["status", "ffffffff"], ["logout"]):
            done = await deferToThread(_jw, argv, environ)
            self.assertNotIn(b"Not a directory", done.stderr, argv)
            self.assertNotIn(b"cannot read", done.stderr, argv)
        done = await deferToThread(_jw, ["list"], environ)
        self.assertEqual(done.returncode, 0, done.stderr)
        done = await deferToThread(_jw, ["config"], environ)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"config.toml (absent)", done.stdout)

    async def test_home(self) -> None:
        await self._works(HOME="/dev/null")

    async def test_xdgConfigHome(self) -> None:
        await self._works(XDG_CONFIG_HOME="/dev/null")


class _ChecksHeld:
    """
    The password checks of a live server held: rita's is held until
    L{release} (its slot taken: at C{--max-password-checks=1} every other
    check is a 503, "retry in 1 s"), and the checks refused are counted,
    by user name.
    """

    def __init__(self, testCase: TestCase, server: LiveServer) -> None:
        self.gate = threading.Event()
        testCase.addCleanup(self.gate.set)  # (before the server stops)
        self.refused: list[str] = []
        self.server = server
        self.releaseAfterRefusals: int | None = None
        service = next(s for s in server.service if hasattr(s, "_authenticator"))
        self.auth = service._authenticator
        check = authenticator._checkPassword
        gate = self.gate

        def held(password: bytes, hashed: bytes, *padding: bytes) -> bool:
            if password == PASSWORDS["rita"].encode():
                gate.wait(BOUND)
            return check(password, hashed, *padding)

        testCase.patch(authenticator, "_checkPassword", held)
        admit = self.auth._admitCheck

        def counted(name: str, client: str) -> None:
            try:
                admit(name, client)
            except Exception:
                self.refused.append(name)
                if self.releaseAfterRefusals == len(self.refused):
                    reactor.callLater(0.3, gate.set)  # type: ignore[attr-defined]
                raise

        testCase.patch(self.auth, "_admitCheck", counted)

    async def hold(self) -> Any:
        """rita's request, its check held: what it answers, once released."""
        answer = self.server.request("GET", "/jobs?limit=1", "rita")
        await waitUntil(
            lambda: self.auth._checker.inFlight == 1, what="rita's check in flight"
        )
        return answer


class PasswordChecksBusyTests(TestCase):
    """
    A 503 "too many password checks in progress: retry in 1 s" (its
    Retry-After short) is asked again a few times, quietly, as the follow
    asks again; it ended C{jw list}, C{jw status} and C{jw exec} with exit
    1 (nothing was done), and a CI fan-out had to wrap every call in a
    retry loop (new user round 41).
    """

    timeout = 120

    async def _asked(
        self, *argv: str
    ) -> tuple[subprocess.CompletedProcess[bytes], _ChecksHeld, LiveServer]:
        server = LiveServer(self, "--max-password-checks=1", grace=GRACE)
        held = _ChecksHeld(self, server)
        held.releaseAfterRefusals = 1
        rita = await held.hold()
        done = await deferToThread(_jw, list(argv), jwEnvironment(server.url))
        await treq.content(await rita)
        return done, held, server

    async def test_list(self) -> None:
        """C{jw list}: answered, nothing said."""
        done, held, _ = await self._asked("list")
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        self.assertEqual(held.refused, ["alice"])

    async def test_exec(self) -> None:
        """
        C{jw exec}: its 503 created no job; asked again, one job is
        created.
        """
        done, held, server = await self._asked("exec", "--", "true")
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        self.assertEqual(held.refused, ["alice"])
        _, listed = await server.json("GET", "/jobs", "ada")
        self.assertEqual(
            [job["id"] for job in listed["jobs"]], [done.stdout.strip().decode()]
        )

    async def test_bounded(self) -> None:
        """
        Busy for longer: given up after three tries in about 2 s, the
        server's words said, exit 1.
        """
        server = LiveServer(self, "--max-password-checks=1", grace=GRACE)
        held = _ChecksHeld(self, server)
        rita = await held.hold()
        began = time.monotonic()
        done = await deferToThread(_jw, ["list"], jwEnvironment(server.url))
        took = time.monotonic() - began
        held.gate.set()
        await treq.content(await rita)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(done.stderr.count(b"\n"), 1, done.stderr)
        self.assertIn(b"server answered 503: too many password checks", done.stderr)
        self.assertEqual(held.refused, ["alice"] * 3)
        self.assertGreaterEqual(took, 2.0)
        self.assertLess(took, 15.0)


class QuietTests(TestCase):
    """
    C{jw -q}: jw's informational lines on stderr are not said ("job ID
    started", "N shown, more exist"), its errors and warnings are; cron
    mails any output, and C{2>/dev/null} hid the errors too (new user
    round 41).
    """

    timeout = 60

    async def test_quiet(self) -> None:
        server = LiveServer(self, grace=GRACE)
        environ = jwEnvironment(server.url)
        for _ in range(2):
            done = await deferToThread(
                _jw, ["-q", "exec", "-f", "--", "echo", "hi"], environ
            )
            self.assertEqual((done.returncode, done.stdout), (0, b"hi\n"))
            self.assertEqual(done.stderr, b"")
        done = await deferToThread(_jw, ["-q", "list", "--limit", "1"], environ)
        self.assertEqual((done.returncode, done.stderr), (0, b""))  # (2 jobs)
        ids = [(await server.createJob("true"))["id"] for _ in range(2)]
        for jobId in ids:
            await server.waitEnded(jobId)
        done = await deferToThread(_jw, ["--quiet", "rm", *ids], environ)
        self.assertEqual((done.returncode, done.stderr), (0, b""))

    async def test_errorsSaid(self) -> None:
        server = LiveServer(self, grace=GRACE)
        environ = jwEnvironment(server.url)
        done = await deferToThread(_jw, ["-q", "status", "ffffffff"], environ)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn(b"jw: no job id starts with ffffffff", done.stderr)
        done = await deferToThread(
            _jw, ["-q", "exec", "-f", "--", "sh", "-c", "exit 3"], environ
        )
        self.assertEqual((done.returncode, done.stderr), (3, b""))

    async def test_notSaidWithoutIt(self) -> None:
        """Without it, as before."""
        server = LiveServer(self, grace=GRACE)
        environ = jwEnvironment(server.url)
        done = await deferToThread(_jw, ["exec", "-f", "--", "true"], environ)
        self.assertIn(b"started", done.stderr)

    async def test_afterTheVerb(self) -> None:
        """It is jw's own: after the verb, said to go before it."""
        done = await deferToThread(
            _jw, ["exec", "-q", "--", "true"], jwEnvironment("https://localhost:1")
        )
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(
            done.stderr, b"jw: -q is an option of jw: before exec (see jw --help)\n"
        )
