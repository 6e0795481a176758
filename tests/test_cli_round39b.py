"""
What the thirty-ninth session's new user found in jw, the rest.

A mistyped password at jw's prompt ended the command (ssh and sudo ask
again); the advice after a password refused under a follow was "jw login"
(which cannot help one who gives JW_USER/JW_PASSWORD); shell completion
offered files as C{--server}'s value (fish), job ids as the value of
C{--tail}/C{--grace} and after C{jw exec --} (fish), nothing for the job's
command after C{--} (zsh, fish), and jw's own flags after C{jw exec}'s
COMMAND (bash).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth.users import UserDatabase
from jobworker.client.completion import COMPLETION

from .support import JW, LiveServer, bashOffers, fishOffers, jwEnvironment
from .test_cli_exec_defects import BOUND
from .test_prompt import onPty


def _talk(
    argv: list[str], env: dict[str, str], prompt: bytes, answers: list[bytes]
) -> tuple[int, bytes]:
    """
    Run C{argv} on a pty; each time C{prompt} shows (anew), type the next
    of C{answers}. The exit status and everything it showed.
    """
    pid, fd = onPty(argv, env)
    seen = b""
    looked = 0  # where the next prompt is looked for
    pending = list(answers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the pty closed: jw ended
            break
        if not chunk:
            break
        seen += chunk
        at = seen.find(prompt, looked)
        if pending and at >= 0:
            looked = at + len(prompt)
            os.write(fd, pending.pop(0))
    else:
        os.kill(pid, signal.SIGKILL)  # a failure, not a hang
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def _promptEnvironment(server: LiveServer, home: str) -> dict[str, str]:
    """JW_USER alice, no password given, no login kept: jw asks."""
    env = jwEnvironment(server.url, "alice", HOME=home, XDG_CONFIG_HOME=home)
    del env["JW_PASSWORD"]
    return env


class PasswordAskedAgainTests(TestCase):
    """
    Finding 5: a password mistyped at jw's prompt is asked for again, up
    to 3 times in all, as ssh and sudo do (it ended the command, exit 1).
    """

    timeout = 120

    async def test_secondTry(self) -> None:
        server = LiveServer(self)
        home = os.path.realpath(self.mktemp())
        code, seen = await deferToThread(
            _talk,
            [JW, "exec", "-f", "--", "echo", "hi-there"],
            _promptEnvironment(server, home),
            b"Password for alice: ",
            [b"wrongpass\n", b"alice-pass\n"],
        )
        self.assertEqual(code, 0, seen)
        self.assertIn(b"hi-there", seen)
        self.assertEqual(seen.count(b"Password for alice: "), 2, seen)
        self.assertIn(b"try again", seen)

    async def test_threeTries(self) -> None:
        """Three wrong: the refusal, exit 1, no fourth prompt, no job."""
        server = LiveServer(self)
        home = os.path.realpath(self.mktemp())
        code, seen = await deferToThread(
            _talk,
            [JW, "exec", "-f", "--", "echo", "hi-there"],
            _promptEnvironment(server, home),
            b"Password for alice: ",
            [b"wrong1\n", b"wrong2\n", b"wrong3\n", b"alice-pass\n"],
        )
        self.assertEqual(code, 1, seen)
        self.assertEqual(seen.count(b"Password for alice: "), 3, seen)
        self.assertIn(b"invalid user name or password", seen)
        status, listing = await server.json("GET", "/jobs", "ada")
        self.assertEqual((status, listing["jobs"]), (200, []))

    async def test_throttled(self) -> None:
        """A 429 of the login throttle ends it at once, said."""
        server = LiveServer(self, "--login-failures=1")
        home = os.path.realpath(self.mktemp())
        code, seen = await deferToThread(
            _talk,
            [JW, "list"],
            _promptEnvironment(server, home),
            b"Password for alice: ",
            [b"wrongpass\n", b"alice-pass\n", b"alice-pass\n"],
        )
        self.assertEqual(code, 1, seen)
        self.assertEqual(seen.count(b"Password for alice: "), 2, seen)
        self.assertIn(b"too many failed logins", seen)

    async def test_givenPasswordNotAskedAgain(self) -> None:
        """A wrong JW_PASSWORD: no prompt, exit 1, as before."""
        server = LiveServer(self)
        home = os.path.realpath(self.mktemp())
        env = {**_promptEnvironment(server, home), "JW_PASSWORD": "wrongpass"}
        code, seen = await deferToThread(
            _talk, [JW, "list"], env, b"Password for alice: ", [b"alice-pass\n"]
        )
        self.assertEqual(code, 1, seen)
        self.assertNotIn(b"Password", seen)
        self.assertIn(b"invalid user name or password", seen)


class PasswordRefusedUnderAFollowTests(TestCase):
    """
    Finding 2: bob follows his job with JW_USER/JW_PASSWORD and is removed
    from the users under it: jw says his user name or password was refused,
    not "jw login" (no token was involved; a login cannot help).
    """

    timeout = 120

    async def test_removed(self) -> None:
        server = LiveServer(self)
        env = jwEnvironment(server.url, "bob")
        process = subprocess.Popen(
            [JW, "exec", "-f", "--", "sh", "-c", "echo first; sleep 60"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        assert process.stdout is not None
        first = await deferToThread(process.stdout.readline)
        self.assertEqual(first, b"first\n")
        reload = next(s for s in server.service if hasattr(s, "_authenticator"))
        users = UserDatabase.development()
        reload._authenticator.replaceUsers(
            UserDatabase(
                [e for n in users.names() if n != "bob" if (e := users.lookup(n))],
                users.dummyHash,
            )
        )
        _out, err = await deferToThread(process.communicate, timeout=BOUND)
        self.assertEqual(process.returncode, 125, err)
        self.assertIn(b"cannot follow job", err)
        self.assertNotIn(b"jw login", err)
        self.assertIn(b"user name or password", err.split(b";", 1)[1])


class CompletionTests(SynchronousTestCase):
    """
    Finding 3: what each shell offers, by running it: commands after
    C{--} (zsh, fish), no job ids or files as an option's value, nothing
    of jw's after C{jw exec}'s COMMAND (the job's words: files).
    """

    def setUp(self) -> None:
        self.folder = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "somedir"))
        open(os.path.join(self.folder, "somefile"), "w").close()

    def bash(self, *words: str) -> list[str]:
        cwd = os.getcwd()
        os.chdir(self.folder)
        try:
            return bashOffers(*words, jw='jw() { [ "$1" = _ids ] && echo id1 id2; }')
        finally:
            os.chdir(cwd)

    def test_bashAfterCommand(self) -> None:
        self.assertEqual(self.bash("jw", "exec", "grep", "--fo"), [])
        self.assertEqual(self.bash("jw", "exec", "ls", "some"), ["somedir", "somefile"])
        self.assertEqual(self.bash("jw", "exec", "--name", "x", "ls", "-f", "--fo"), [])
        # The command itself, and jw's options before it.
        self.assertIn("echo", self.bash("jw", "exec", "ech"))
        self.assertEqual(self.bash("jw", "exec", "--name", "x", "--fo"), ["--follow"])
        self.assertEqual(self.bash("jw", "exec", "-f", "--fo"), ["--follow"])
        self.assertEqual(self.bash("jw", "stop", ""), ["id1", "id2"])

    def fish(self, line: str) -> list[str]:
        return fishOffers(line, cwd=self.folder)

    def test_fishValues(self) -> None:
        self.assertEqual(self.fish("jw status --server "), [])
        self.assertEqual(self.fish("jw logs --tail "), [])
        self.assertEqual(self.fish("jw stop --grace "), [])
        self.assertEqual(self.fish("jw exec --name "), [])
        self.assertIn("somedir/", self.fish("jw exec --cwd some"))
        self.assertIn("somefile", self.fish("jw --ca some"))
        # (Ids and statuses where they are asked for.)
        self.assertEqual(self.fish("jw stop "), ["id1", "id2"])
        self.assertEqual(self.fish("jw stop --grace 3 "), ["id1", "id2"])
        self.assertIn("FAILED", self.fish("jw list --status "))

    def test_fishJobsWords(self) -> None:
        self.assertIn("echo", self.fish("jw exec -- ech"))
        self.assertIn("echo", self.fish("jw exec ech"))
        self.assertNotIn("id1", self.fish("jw exec -- git status "))
        self.assertNotIn("id1", self.fish("jw exec git status "))
        self.assertIn("somefile", self.fish("jw exec -- cat some"))
        self.assertNotIn("--follow", self.fish("jw exec grep --fo"))
        self.assertIn("--follow", self.fish("jw exec --fo"))

    def zsh(self, *words: str) -> list[str]:
        """
        What zsh's C{_jw} asks for with C{words} on the line (the last
        being completed): its calls of compadd, _files and _command_names.
        """
        if shutil.which("zsh") is None:
            self.skipTest("no zsh")
        script = (
            "compdef() { : }\n"
            + COMPLETION["zsh"]
            + "\njw() { [[ $1 == _ids ]] && print id1 id2 }\n"
            + 'compadd() { print -r -- "compadd $*" }\n'
            + "_files() { print -r -- _files }\n"
            + '_command_names() { print -r -- "_command_names $*" }\n'
            + 'words=("$@"); CURRENT=$#; PREFIX=$words[CURRENT]; _jw\n'
        )
        done = subprocess.run(
            ["zsh", "-f", "-c", script, "zsh", *words],
            capture_output=True,
            check=True,
            timeout=30,
        )
        return done.stdout.decode().splitlines()

    def test_zshJobsWords(self) -> None:
        self.assertEqual(self.zsh("jw", "exec", "--", "ech"), ["_command_names -e"])
        self.assertEqual(self.zsh("jw", "exec", "--", "ls", "/et"), ["_files"])
        self.assertEqual(self.zsh("jw", "exec", "grep", "--fo"), ["_files"])
        self.assertEqual(self.zsh("jw", "exec", "ech"), ["_command_names -e"])
        self.assertEqual(self.zsh("jw", "exec", "--cwd", "/tm"), ["_files"])
        self.assertEqual(self.zsh("jw", "logs", "--tail", ""), [])
        self.assertIn("compadd -- id1 id2", self.zsh("jw", "stop", ""))
        self.assertIn("--follow", " ".join(self.zsh("jw", "exec", "--fo")))
