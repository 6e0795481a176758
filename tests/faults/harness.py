"""
The fault suite's tools: a real twistd jobworker as a subprocess, a blocking
HTTPS client (so a test can SIGKILL or SIGTERM the server between any two
requests), a small tmpfs to fill, and /proc scans for leftovers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from ..support import CA, basic, twistdCommand


def requireFaultRun() -> None:
    """
    Run only in C{tox -e faults} (which sets JW_FAULTS=1), and there never
    skip: the faults need root, and CI has root.
    """
    if os.environ.get("JW_FAULTS") != "1":
        reason = "the fault suite runs in `tox -e faults` (JW_FAULTS=1)"
        print(f"\nSKIPPED fault injection: {reason}")
        raise SkipTest(reason)
    if os.getuid() != 0:
        raise AssertionError(
            "the fault suite needs root (tmpfs mounts, identities, cgroups)"
        )


class Tmpfs:
    """A small tmpfs mounted for one test; C{fill} makes it full."""

    def __init__(self, testCase: TestCase, size: str = "24m") -> None:
        self.path = os.path.realpath(testCase.mktemp())
        os.makedirs(self.path)
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size},mode=0755",
                "tmpfs",
                self.path,
            ],
            check=True,
        )
        testCase.addCleanup(subprocess.run, ["umount", "-l", self.path], check=False)
        self.filler = os.path.join(self.path, "filler")

    def fill(self) -> int:
        """Write the filler until the file system is full; its size."""
        written = 0
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 20, 1 << 12, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        f.write(block)
                    except OSError:
                        break
                    written += chunk
        return written

    def free(self) -> None:
        """Remove the filler."""
        if os.path.exists(self.filler):
            os.unlink(self.filler)

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Twistd:
    """
    C{twistd -n jobworker --tls} on a free port, as a subprocess, its log
    in a file. Start it again on the same state dir with L{start}.
    """

    def __init__(self, testCase: TestCase, stateDir: str, *extra: str) -> None:
        self.stateDir = stateDir
        self.extra = extra
        self.logPath = os.path.realpath(testCase.mktemp()) + ".log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._context = ssl.create_default_context(cafile=CA)
        testCase.addCleanup(self.kill)

    def argv(self) -> list[str]:
        return twistdCommand(self.stateDir, *self.extra)

    def start(self, timeout: float = 30.0) -> Twistd:
        """Start; wait for its listening line (fail if it exits first)."""
        offset = os.path.getsize(self.logPath) if os.path.exists(self.logPath) else 0
        log = open(self.logPath, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.logPath, "rb") as f:
                f.seek(offset)
                found = re.findall(rb"listening on https://[^:]+:(\d+)", f.read())
            if found:
                self.port = int(found[-1])
                return self
            if self.process.poll() is not None:
                raise AssertionError(
                    f"twistd exited at start-up: {self.logText()[-2000:]}"
                )
            time.sleep(0.05)
        raise AssertionError("twistd did not start listening")

    def startFailing(self, timeout: float = 30.0) -> tuple[int, str]:
        """Start a server that must refuse to: its exit code and stderr."""
        result = subprocess.run(
            self.argv(), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        return result.returncode, result.stderr.decode("utf-8", "replace")

    def logText(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def connection(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "localhost", self.port, context=self._context, timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        body: Any = None,
        timeout: float = 30.0,
    ) -> Response:
        headers: dict[str, str] = {}
        if user is not None:
            headers["Authorization"] = basic(user)[b"authorization"][0].decode()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
        if body is not None or method in ("POST", "DELETE"):
            headers["Content-Type"] = "application/json"
        connection = self.connection(timeout)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return Response(
                response.status, dict(response.getheaders()), response.read()
            )
        finally:
            connection.close()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM; wait for the exit; its code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def processesWith(token: str) -> dict[int, list[str]]:
    """Live processes whose argv holds C{token}: pid -> argv."""
    found: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [
                    a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a
                ]
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and any(token in a for a in argv):
            found[int(entry)] = argv
    return found


def sessionOf(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[3])
    except OSError:
        return None


def waitUntil(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
