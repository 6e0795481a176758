"""Test helpers: the real server on a loopback port, credentials, the jw CLI."""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jobworker.auth.users import UserDatabase
from jobworker.client.completion import COMPLETION
from jobworker.executors.local.sandbox import privateFolders
from jobworker.server.options import Options
from jobworker.server.services import ListeningService, ManagerService
from jobworker.server.tap import makeService
from jobworker.tls import TrustRootPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CERTS = os.path.join(ROOT, "certs")
CA = os.path.join(CERTS, "ca.pem")
CERT = os.path.join(CERTS, "server.pem")
KEY = os.path.join(CERTS, "server.key")
BIN = os.path.dirname(sys.executable)
JW = os.path.join(BIN, "jw")
TWISTD = os.path.join(BIN, "twistd")

#: A dynamic uid range that no account of the test machines uses.
FREE_UIDS = "70000-71999"

#: The development users (see README) by role.
PASSWORDS = {
    "alice": "alice-pass",
    "bob": "bob-pass",
    "rita": "rita-pass",
    "ada": "ada-pass",
}


def basic(user: str, password: str | None = None) -> dict[bytes, list[bytes]]:
    """An Authorization header for C{user} (with the dev password by default)."""
    if password is None:
        password = PASSWORDS[user]
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {b"authorization": [f"Basic {token}".encode("ascii")]}


class ApiClient:
    """
    Requests to a server under test as one of the test users; the server
    classes (L{LiveServer}, C{tests.twistd.Twistd}) provide C{http} (a treq
    client trusting the test CA) and C{url}.
    """

    http: HTTPClient
    url: str

    def request(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Deferred[Any]:
        """Send a request as C{user} (None: no credentials)."""
        allHeaders: dict[bytes, list[bytes]] = dict(headers or {})
        if user is not None:
            allHeaders.update(basic(user))
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        if (body is not None or method in ("POST", "DELETE")) and (
            b"content-type" not in allHeaders
        ):
            allHeaders[b"content-type"] = [b"application/json"]
        return self.http.request(method, self.url + path, data=data, headers=allHeaders)

    async def json(
        self, method: str, path: str, user: str | None = "alice", body: Any = None
    ) -> tuple[int, Any]:
        """Send a request; return (status, decoded JSON body)."""
        response = await self.request(method, path, user, body)
        content = await treq.content(response)
        return response.code, json.loads(content)

    async def sendStdin(
        self, jobId: str, data: bytes, eof: bool = True, user: str = "alice"
    ) -> tuple[int, Any]:
        """Write C{data} (then end of file) to a job's stdin: (status, body)."""
        response = await self.request(
            "POST",
            f"/jobs/{jobId}/stdin?eof={'true' if eof else 'false'}",
            user,
            raw=data,
            headers={b"content-type": [b"application/octet-stream"]},
        )
        return response.code, json.loads(await treq.content(response))

    async def createJob(
        self, command: str, *args: str, user: str = "alice", **extra: Any
    ) -> dict[str, Any]:
        """Create a job; fail the test unless it answered 201."""
        code, job = await self.json(
            "POST", "/jobs", user, {"command": command, "args": list(args), **extra}
        )
        assert code == 201, (code, job)
        return job  # type: ignore[no-any-return]

    async def waitEnded(self, jobId: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll a job's status until it has ended."""
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while True:
            code, job = await self.json("GET", f"/jobs/{jobId}", "ada")
            assert code == 200, (code, job)
            if job["status"] not in ("RUNNING", "PENDING"):
                return job  # type: ignore[no-any-return]
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                raise AssertionError(f"job {jobId} still RUNNING after {timeout}s")
            await sleep(0.02)


class LiveServer(ApiClient):
    """
    The real jobworker service in this process: real TLS on a loopback port,
    real processes, a temporary state dir. Stopped (jobs and all) at cleanup.
    """

    def __init__(
        self,
        testCase: TestCase,
        *extra: str,
        grace: float = 2.0,
        stateDir: str | None = None,
        ownCertificate: bool = False,
    ) -> None:
        self.stateDir = stateDir or os.path.abspath(testCase.mktemp())
        # A variant of a test class (e.g. the exec chain: --launcher=off)
        # names its options once, in a serverOptions class attribute.
        extra = (*getattr(testCase, "serverOptions", ()), *extra)
        if not any(
            option.startswith(("--dynamic-uids", "--run-as", "--allow-root-jobs"))
            for option in extra
        ):
            # Debian's slurm package puts its account in the default range.
            extra = (f"--dynamic-uids={FREE_UIDS}", *extra)
        options = Options()
        options.parseOptions(
            [
                "--tls",
                "--port=0",
                *([] if ownCertificate else [f"--cert={CERT}", f"--key={KEY}"]),
                f"--state-dir={self.stateDir}",
                f"--stop-grace={grace}",
                *extra,
            ]
        )
        self.service = makeService(options, reactor)
        self.service.startService()
        testCase.addCleanup(self.stop)
        services = list(self.service)
        self.manager = next(
            s for s in services if isinstance(s, ManagerService)
        ).manager
        listening = next(s for s in services if isinstance(s, ListeningService))
        self.port: int = listening._port.getHost().port  # type: ignore[attr-defined]
        self.url = f"https://localhost:{self.port}"
        pool = HTTPConnectionPool(reactor, persistent=True)
        testCase.addCleanup(pool.closeCachedConnections)
        #: The CA that signs the server's certificate.
        self.ca = os.path.join(self.stateDir, "tls", "ca.pem") if ownCertificate else CA
        self.http = HTTPClient(
            Agent(reactor, contextFactory=TrustRootPolicy(self.ca), pool=pool)
        )

    def stop(self) -> Deferred[None] | None:
        """Stop the service (jobs and all), once."""
        if not self.service.running:
            return None
        return self.service.stopService()  # type: ignore[no-any-return]


def bashOffers(
    *words: str, jw: str = "", env: dict[str, str] | None = None
) -> list[str]:
    """
    What jw's bash completion offers after C{words} (COMP_WORDS as given),
    with C{jw}, if given, the shell function that stands in for C{jw} (its
    C{jw _ids}).
    """
    script = (
        COMPLETION["bash"]
        + (f"\n{jw}\n" if jw else "")
        + 'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _jw; '
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "-c", script, "jw", *words],
        capture_output=True,
        check=True,
        timeout=30,
        env=env,
    )
    return done.stdout.decode().split()


def fishOffers(line: str, cwd: str | None = None) -> list[str]:
    """
    What jw's fish completion offers for C{line}, with a C{jw} whose C{jw
    _ids} prints C{id1} and C{id2}; skipped where there is no fish.
    """
    if shutil.which("fish") is None:
        from twisted.trial.unittest import SkipTest

        raise SkipTest("no fish")
    script = (
        COMPLETION["fish"]
        + '\nfunction jw; test "$argv[1]" = _ids; and echo id1\\nid2; end\n'
        + 'complete -C "$argv[1]"\n'
    )
    done = subprocess.run(
        ["fish", "--no-config", "-c", script, line],
        capture_output=True,
        check=True,
        timeout=30,
        cwd=cwd,
    )
    return [entry.split("\t")[0] for entry in done.stdout.decode().splitlines()]


def sleep(seconds: float) -> Deferred[None]:
    """A Deferred that fires after C{seconds} on the real reactor."""
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


async def waitUntil(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """
    Poll C{check} (sync or async) until it is truthy, for at most C{timeout}
    seconds; return its value.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(0.02)


def jwEnvironment(server: str, user: str = "alice", **extra: str) -> dict[str, str]:
    """An environment for running C{jw} as C{user} against C{server}."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "JW_SERVER": server,
        "JW_CA": CA,
        "JW_USER": user,
        "JW_PASSWORD": PASSWORDS.get(user, ""),
    }
    if "PYTHONPATH" in os.environ:
        # So that jw runs the jobworker the tests import (a tree under test,
        # e.g. a mutated copy), not only the installed one.
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def runJW(
    server: str, *args: str, user: str = "alice", **extra: str
) -> Deferred[tuple[bytes, bytes, int]]:
    """Run the installed C{jw} script; fires with (stdout, stderr, exit code)."""
    from twisted.internet.utils import getProcessOutputAndValue

    return getProcessOutputAndValue(  # type: ignore[no-any-return]
        JW, list(args), env=jwEnvironment(server, user, **extra), reactor=reactor
    )


def processAlive(pid: int) -> bool:
    """True if C{pid} exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def startTime(pid: int) -> int | None:
    """The start time (clock ticks after boot) of C{pid}, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def killGroupIfOurs(pgid: int, leaderStarted: int | None) -> None:
    """
    SIGKILL what is left of a job's process group, whose leader started at
    C{leaderStarted} (None: it was gone already); never a group whose id
    was reused since (a leader now that started at another time, or at all
    when it was gone, is someone else's).
    """
    now = startTime(pgid)
    if now is not None and now != leaderStarted:
        return
    if groupMembers(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def groupMembers(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is C{pgid}."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def rssKiB(pid: int) -> int:
    """Resident set size of C{pid} in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def runSync(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a short command synchronously (for twistd --help and the like)."""
    return subprocess.run(argv, capture_output=True, timeout=60, check=False, **kwargs)


def sharedPath(testCase: TestCase) -> str:
    """
    A fresh path in a folder every job may read and write (mode 1777): on a
    root server jobs run as a dynamic uid of their own, which cannot enter
    the test's private (0700) temporary folders.
    """
    path = os.path.realpath(testCase.mktemp())
    if any(path.startswith(folder + "/") for folder in privateFolders()):
        # A job sees its own tmpfs there, not this folder.
        raise AssertionError(
            f"the test folder {path} is in a folder jobs see privately "
            "(/tmp, /var/tmp, ...): run the tests from a checkout elsewhere "
            "(.ci/run does)"
        )
    os.chmod(os.path.dirname(path), 0o1777)  # noqa: S103 (jobs of any uid)
    return path


class JWAssertions:
    """What every C{jw} run is checked for, in memory or as a subprocess."""

    assertEqual: Any
    assertNotEqual: Any
    assertNotIn: Any
    assertIn: Any
    assertTrue: Any

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


def selfSigned(name: Any, ca: bool = False) -> tuple[Any, Any]:
    """
    A self-signed EC P-256 certificate for C{name} (an C{x509.Name}), valid
    from five minutes ago for a day; a CA's if C{ca}: (certificate, key).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from jobworker.certificates import certificateBuilder, newKey

    key = newKey()
    builder = certificateBuilder(name, name, key.public_key(), 1)
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), True
        )
    return builder.sign(key, hashes.SHA256()), key


class RecordingAuthenticator:
    """Records each users database a reload (SIGHUP) installs."""

    def __init__(self) -> None:
        self.replaced: list[Any] = []
        self.users = UserDatabase.development()

    def replaceUsers(self, users: Any) -> None:
        self.replaced.append(users)
        self.users = users


def writePEM(path: str, data: bytes) -> None:
    """Write a certificate or key file made by a test (others may not write
    it, whatever the umask: the server refuses a --client-ca they may)."""
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)


def twistdCommand(stateDir: str, *extra: str, stopGrace: str | None = "1") -> list[str]:
    """
    The command line of a real twistd jobworker on a free port (jobs as
    dynamic uids unless C{extra} says who they run as; jobs given
    C{stopGrace} seconds at shutdown, None: the server's default).
    """
    if not any(
        option.startswith(("--dynamic-uids", "--run-as", "--allow-root-jobs"))
        for option in extra
    ):
        extra = (f"--dynamic-uids={FREE_UIDS}", *extra)
    return [
        TWISTD,
        "-n",
        "--pidfile=",
        "jobworker",
        "--tls",
        "--port=0",
        f"--cert={CERT}",
        f"--key={KEY}",
        f"--state-dir={stateDir}",
        *([f"--stop-grace={stopGrace}"] if stopGrace is not None else []),
        *extra,
    ]


def giveTurns(api: Any, clock: Any, flush: Callable[[], None]) -> None:
    """
    A page of an API on a frozen clock waiting for its turn (L{Turns}: a
    second list request of a test) is given it: the reactor's next calls
    run, as a running reactor's would, and the stub client is flushed.
    """
    if len(api._turns):
        clock.advance(0)
        flush()


def smallTmpfs(testCase: Any, size: str) -> str:
    """
    A tmpfs of C{size} (C{"3m"}) mounted on a new folder of C{testCase},
    unmounted at its cleanup: a real full disk. Skips unless root (CI is).
    """
    from twisted.trial.unittest import SkipTest

    if os.getuid() != 0:
        raise SkipTest("mounts a small tmpfs: needs root (CI runs as root)")
    mount = os.path.abspath(testCase.mktemp())
    os.makedirs(mount)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "jwtest", mount], check=True
    )
    testCase.addCleanup(subprocess.run, ["umount", "-l", mount], check=False)
    return mount


def keptLoginEnvironment(url: str, home: str, **extra: str) -> dict[str, str]:
    """L{jwEnvironment} for alice with no password given: her config and
    kept login (C{jw login}) in C{home}."""
    env = jwEnvironment(url, HOME=home, XDG_CONFIG_HOME=home)
    del env["JW_PASSWORD"]
    env.update(extra)
    return env


def fillDisk(folder: str) -> None:
    """Fill the file system of C{folder} (a small tmpfs: L{smallTmpfs}) with
    a file of its own, to the last byte it takes."""
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def pythonChild(
    script: str, *argv: str, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """C{script} run by this Python in a process of its own, with this
    checkout's jobworker (for what would hang or crash the test's own)."""
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
