"""
Issue 17, finding 1: jw's password prompt works on a real terminal (a pty):
`open("/dev/tty", "r+")` raised io.UnsupportedOperation on every terminal,
which was taken for "no terminal".
"""

from __future__ import annotations

import os
import pty
import select
import signal
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from .support import CA, JW, LiveServer


def onPty(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Start C{argv} with a new pty as its controlling terminal and stdio:
    its pid, and our side of the pty."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal and stdio
        try:
            # As an interactive shell starts a command in the foreground:
            # a test run started in the background (a non-interactive
            # shell's "&") ignores SIGINT and SIGQUIT, and an ignored
            # signal stays ignored across exec, so Ctrl-C would do nothing.
            for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
                signal.signal(number, signal.SIG_DFL)
            os.execve(argv[0], argv, env)  # noqa: S606 (jw itself, no shell)
        finally:
            os._exit(127)
    return pid, fd


def converse(
    argv: list[str], env: dict[str, str], answers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """
    Run C{argv} with a pty as its controlling terminal; on each expected
    prompt, type its answer. The exit status and everything it showed.
    """
    pid, fd = onPty(argv, env)
    seen = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if pending and pending[0][0] in seen:
                os.write(fd, pending.pop(0)[1])
        else:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                os.close(fd)
                return os.waitstatus_to_exitcode(status), seen
    os.kill(pid, signal.SIGKILL)  # still there after a minute: a failure, not a hang
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


class PromptTests(TestCase):
    timeout = 120

    async def test_promptOnARealTerminal(self) -> None:
        """No JW_USER/JW_PASSWORD: jw asks on the terminal, and it works."""
        server = LiveServer(self)
        job = await server.createJob("true", user="alice")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JW_SERVER": server.url,
            "JW_CA": CA,
            "HOME": os.path.realpath(self.mktemp()),
            "XDG_CONFIG_HOME": os.path.realpath(self.mktemp()),
        }
        code, seen = await deferToThread(
            converse,
            [JW, "status", job["id"]],
            env,
            [(b"Username: ", b"alice\n"), (b"Password for alice: ", b"alice-pass\n")],
        )
        self.assertEqual(code, 0, seen)
        self.assertIn(job["id"].encode(), seen)
        self.assertNotIn(b"alice-pass", seen, "the password was echoed")

    async def test_loginThenRenewalOnARealTerminal(self) -> None:
        """
        jw login asks for the name and password on the terminal and keeps a
        token; later commands use it without asking; once it is about to
        expire, the next command asks for the password again and renews it.
        """
        server = LiveServer(self, "--token-ttl=90")
        job = await server.createJob("true", user="alice")
        home = os.path.realpath(self.mktemp())
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JW_SERVER": server.url,
            "JW_CA": CA,
            "HOME": home,
            "XDG_CONFIG_HOME": home,
        }
        answers = [
            (b"Username: ", b"alice\n"),
            (b"Password for alice: ", b"alice-pass\n"),
        ]
        code, seen = await deferToThread(converse, [JW, "login"], env, answers)
        self.assertEqual(code, 0, seen)
        self.assertIn(b"logged in to", seen)
        tokens = os.path.join(home, "jobworker", "tokens.json")
        self.assertTrue(os.path.exists(tokens))
        with open(tokens) as f:
            saved = f.read()
        # 90 s of life, renewed a quarter of it before the end (a minute,
        # for a token of 4 minutes or more): not yet.
        code, seen = await deferToThread(converse, [JW, "status", job["id"]], env, [])
        self.assertEqual(code, 0, seen)
        self.assertNotIn(b"Password", seen)
        # Make the kept token about to expire: the next command renews it.
        import json

        entries = json.loads(saved)
        for entry in entries.values():
            entry["expires"] = entry["expires"] - 80  # (10 s left, under 22.5)
        with open(tokens, "w") as f:
            json.dump(entries, f)
        code, seen = await deferToThread(
            converse,
            [JW, "status", job["id"]],
            env,
            [(b"Password for alice: ", b"alice-pass\n")],
        )
        self.assertEqual(code, 0, seen)
        self.assertIn(b"logged in to", seen)
        with open(tokens) as f:
            self.assertNotEqual(f.read(), saved)
