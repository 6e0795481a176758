"""
What the thirty-fifth session's new user found in jw.

Ctrl-C on C{jw exec -i} of a queued job said "its stdin closed" while the
server had answered 409, and the job, once started, waited on its stdin
for ever; C{jw exec -i -f --detach-on-interrupt} left the job's stdin
open, and said nothing of it. One unknown key in config.toml
(C{keepalive}, which C{jw config} shows) stopped every verb, C{jw config}
and C{jw completion} too. The rules every server applies to C{--name},
C{--label}, C{--cwd} and C{--owner} were the server's 400, exit 1. Bash
completion offered verbs or ids as C{--server}'s value, and nothing after
C{jw login --}. C{jw login} said its expiry in the API's UTC text.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth.names import USER_NAME
from jobworker.client import verbs
from jobworker.client.completion import COMPLETION, OPTIONS
from jobworker.client.errors import ClientError
from jobworker.client.failures import BadArguments
from jobworker.client.parser import VERBS
from jobworker.client.quick import drive
from jobworker.errors import BadRequest
from jobworker.jobs import selection
from jobworker.jobs.queries import parseOwner
from jobworker.jobs.validation import parseJobRequest

from .support import LiveServer, bashOffers
from .test_cli_exec_defects import BOUND, GRACE, readLine, startJW
from .test_cli_memory import MemoryCLITestCase, Run
from .test_cli_round33 import SubprocessJW


def _status(server: LiveServer, jobId: str) -> str:
    status: str = server.manager.record(jobId).status.value
    return status


class QueuedInputInterruptedTests(TestCase):
    """
    Ctrl-C on C{jw exec -i} (no C{-f}) of a job still queued: its stdin is
    closed, and the job, once started, ends on it (C{cat}: COMPLETED). It
    was left open (the server's 409), jw said "closed", and the job waited
    on its stdin for ever (new user round 35).
    """

    async def test_closedAtItsStart(self) -> None:
        server = LiveServer(self, "--max-running=1", grace=GRACE)
        code, blocker = await server.json(
            "POST", "/jobs", "alice", {"command": "sleep", "args": ["60"]}
        )
        self.assertEqual(code, 201, blocker)
        process = startJW(server.url, "exec", "-i", "--", "cat", stdin=subprocess.PIPE)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        jobId = (await deferToThread(readLine, process.stdout)).decode().strip()
        self.assertEqual(_status(server, jobId), "PENDING")
        process.send_signal(signal.SIGINT)
        exited = await deferToThread(process.wait, BOUND)
        err = process.stderr.read().decode()
        self.assertEqual(exited, 130, err)
        self.assertIn(
            f"jw: SIGINT: job {jobId} is left queued, its stdin to be closed as it "
            "starts",
            err,
        )
        await server.json(
            "POST", f"/jobs/{blocker['id']}/stop", "alice", {"signal": "KILL"}
        )
        ended = await server.waitEnded(jobId, timeout=BOUND)
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0))


class _RefusingClient:
    """A client whose close of a job's stdin is answered C{error}."""

    def __init__(self, error: ClientError) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes, bool]] = []

    async def sendStdin(self, jobId: str, data: bytes, eof: bool = False) -> None:
        self.sent.append((jobId, data, eof))
        raise self.error

    async def pause(self, seconds: float) -> None:
        raise AssertionError("no pause expected")


class OlderServerQueuedTests(SynchronousTestCase):
    """
    A server older than round 35's answers the close of a queued job's
    stdin 409 "has not started yet (PENDING)": jw says that the stdin
    stays open once the job starts, and that C{jw stop ID} ends it (it
    said "its stdin closed": new user round 35). Another 409 (the job
    ended, or its stdin was closed already) is still taken for closed.
    """

    jobId = "5d713290-0000-4000-8000-000000000000"

    def closed(self, error: ClientError, **kwargs: Any) -> str:
        from jobworker.client.quickexec import closeInput

        run = Run()
        client = _RefusingClient(error)
        drive(closeInput(client, self.jobId, "SIGINT", run.streams, **kwargs))
        self.assertEqual(client.sent, [(self.jobId, b"", True)])
        return run.err.getvalue().decode()

    def test_pending(self) -> None:
        error = ClientError(
            "server answered 409: job has not started yet (PENDING): send its "
            "stdin once it runs",
            409,
            {"error": "job has not started yet (PENDING): send its stdin once it runs"},
        )
        said = self.closed(error)
        self.assertNotIn("stdin closed", said)
        self.assertEqual(said.count("\n"), 1, said)
        self.assertIn(
            f"jw: SIGINT: job {self.jobId} runs on, its stdin left open", said
        )
        self.assertIn("once started, it waits on it", said)
        self.assertTrue(said.endswith(f": jw stop {self.jobId} ends it\n"), said)

    def test_endedAlready(self) -> None:
        error = ClientError(
            "server answered 409: job already ended (COMPLETED)",
            409,
            {"error": "job already ended (COMPLETED)"},
        )
        self.assertEqual(
            self.closed(error),
            f"jw: SIGINT: job {self.jobId} runs on, its stdin closed "
            f"(jw stop {self.jobId} ends it)\n",
        )


class DetachedInputClosedTests(TestCase):
    """
    C{jw exec -i -f --detach-on-interrupt}, interrupted: the job is left
    running (or queued), its stdin closed, and jw says so; C{cat} then ends
    COMPLETED. Its stdin was left open, nothing said, and the job waited on
    it for ever (new user round 35).
    """

    async def leave(self, server: LiveServer) -> tuple[str, str]:
        process = startJW(
            server.url,
            "exec",
            "-i",
            "-f",
            "--detach-on-interrupt",
            "--",
            "cat",
            stdin=subprocess.PIPE,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        line = await deferToThread(readLine, process.stderr)
        match = re.match(rb"^jw: job ([0-9a-f-]{36}) (started|is queued)", line)
        self.assertIsNotNone(match, line)
        assert match is not None
        jobId = match.group(1).decode()
        process.send_signal(signal.SIGINT)
        exited = await deferToThread(process.wait, BOUND)
        err = line.decode() + process.stderr.read().decode()
        self.assertEqual(exited, 130, err)
        self.assertIn(f"jw: SIGINT: left job {jobId} ", err)
        self.assertIn(f"jw: SIGINT: job {jobId}'s stdin closed", err)
        return jobId, err

    async def test_running(self) -> None:
        server = LiveServer(self, grace=GRACE)
        jobId, _ = await self.leave(server)
        ended = await server.waitEnded(jobId, timeout=BOUND)
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0))

    async def test_queued(self) -> None:
        server = LiveServer(self, "--max-running=1", grace=GRACE)
        code, blocker = await server.json(
            "POST", "/jobs", "alice", {"command": "sleep", "args": ["60"]}
        )
        self.assertEqual(code, 201, blocker)
        jobId, err = await self.leave(server)
        self.assertIn(f"left job {jobId} queued", err)
        self.assertEqual(_status(server, jobId), "PENDING")
        await server.json(
            "POST", f"/jobs/{blocker['id']}/stop", "alice", {"signal": "KILL"}
        )
        ended = await server.waitEnded(jobId, timeout=BOUND)
        self.assertEqual((ended["status"], ended["exit_code"]), ("COMPLETED", 0))


class ConfigFileTests(SubprocessJW, SynchronousTestCase):
    """
    A config file jw refuses (an unknown key) no longer stops C{jw
    completion}, and C{jw config} shows every line, the refusal on the
    config file's, then says it, exit 2 (both printed nothing, exit 2). The
    file takes C{keepalive}, which C{jw config} shows as a setting (new
    user round 35).
    """

    def written(self, text: str) -> dict[str, str]:
        home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(home, "jobworker"))
        self.path = os.path.join(home, "jobworker", "config.toml")
        with open(self.path, "w") as f:
            f.write(text)
        return {"XDG_CONFIG_HOME": home}

    def test_completion(self) -> None:
        environ = self.written('keepalive = 10\nbogus = "x"\n')
        for shell in COMPLETION:
            out, err, code = self.jw("completion", shell, **environ)
            self.assertEqual((out.decode(), err, code), (COMPLETION[shell], b"", 0))

    def test_configShowsTheRefusal(self) -> None:
        environ = self.written('bogus = "x"\nserver = "https://h:1"\n')
        out, err, code = self.jw("config", JW_SERVER="", **environ)
        self.assertEqual(code, 2, err)
        lines = out.decode().splitlines()
        self.assertEqual(
            lines[0],
            f"config file: {self.path} (refused: unknown setting(s) bogus (known: "
            "server, ca, user, cert, key, keepalive))",
        )
        self.assertEqual(
            [line.split(" = ")[0] for line in lines[1:]],
            ["server", "ca", "user", "cert", "key", "keepalive", "login token", "sent"],
        )
        self.assertEqual(lines[1], "server = https://localhost:8443    # default")
        self.assertEqual(
            err.decode(),
            f"jw: {self.path}: unknown setting(s) bogus (known: server, ca, user, "
            "cert, key, keepalive)\n",
        )
        # (Every other verb refuses it, as before.)
        out, err, code = self.jw("list", **environ)
        self.assertEqual((out, code), (b"", 2), err)
        self.assertIn(b"unknown setting(s) bogus", err)

    def test_keepAliveTaken(self) -> None:
        for text in ("keepalive = 10\n", 'keepalive = "10"\n'):
            environ = self.written(text)
            out, err, code = self.jw("config", **environ)
            self.assertEqual(code, 0, err)
            self.assertIn(f"\nkeepalive = 10    # {self.path}\n".encode(), out)
            # JW_KEEPALIVE goes first.
            out, err, code = self.jw("config", JW_KEEPALIVE="7", **environ)
            self.assertIn(b"\nkeepalive = 7    # JW_KEEPALIVE\n", out)
            # Other verbs take it: nothing listens at port 1 (exit 1, not 2).
            out, err, code = self.jw("list", **environ)
            self.assertEqual(code, 1, err)

    def test_keepAliveChecked(self) -> None:
        for text in ("keepalive = 0\n", "keepalive = 40000\n", "keepalive = 1.5\n"):
            environ = self.written(text)
            for argv in (("list",), ("config",)):
                _out, err, code = self.jw(*argv, **environ)
                self.assertEqual(code, 2, (text, argv, err))
                self.assertIn(
                    f"jw: {self.path}: keepalive must be whole seconds from 1 to "
                    "32767".encode(),
                    err,
                )

    def test_keepAliveInTheFileUsed(self) -> None:
        from jobworker.client.quick import keepAliveSeconds

        environ = self.written("keepalive = 12\n")
        self.assertEqual(keepAliveSeconds({}, self.path), 12)
        self.assertEqual(keepAliveSeconds({"JW_KEEPALIVE": "5"}, self.path), 5)
        self.assertEqual(keepAliveSeconds({}, self.path + ".absent"), 30)
        self.assertTrue(environ)


#: Samples for the rules' agreement (each taken or refused by both).
NAMES = [
    "build",
    "my build",
    "a" * 128,
    "a" * 129,
    "-x",
    ".x",
    "x-1.2:3@4+5_6",
    "é",
    "x\n",
    "",
    "x/y",
    "0",
]
LABEL_KEYS = ["team", "app.kubernetes.io/name", "bad key", "-a", "a" * 63, "a" * 64]
LABEL_VALUES = ["", "x y", "é", "a" * 256, "a" * 257, "a\tb", "a\x7f", "\x85", "a=b"]
OWNERS = ["alice", "a b", "a" * 64, "a" * 65, "_a", "a.b@c-d", "a\n", "", "é"]
CWDS = ["/tmp", "tmp", "./x", "/", "~/x", ""]


def _takes(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except (BadArguments, BadRequest):
        return False
    return True


class RulesAgreeTests(SynchronousTestCase):
    """jw's copy of the server's rules takes and refuses what it does."""

    def test_patterns(self) -> None:
        for client, server in (
            (verbs.JOB_NAME, selection.NAME),
            (verbs.LABEL_KEY, selection.LABEL_KEY),
            (verbs.LABEL_VALUE, selection.LABEL_VALUE),
        ):
            self.assertEqual(client.pattern, server.pattern)
        self.assertEqual(verbs.USER_NAME.pattern[2:-2], USER_NAME.pattern[1:-1])

    def test_name(self) -> None:
        for name in NAMES:
            self.assertEqual(
                _takes(verbs.checkName, name),
                _takes(selection.parseName, name),
                name,
            )

    def test_labels(self) -> None:
        for key in LABEL_KEYS:
            for value in LABEL_VALUES:
                self.assertEqual(
                    _takes(verbs.checkLabels, [(key, value)]),
                    _takes(selection.parseLabels, {key: value}),
                    (key, value),
                )
                self.assertEqual(
                    _takes(verbs.checkLabels, [(key, value)], True),
                    _takes(selection.parseLabelFilters, [f"{key}={value}"]),
                    (key, value),
                )
        for count in (16, 17):
            labels = [(f"k{i}", "v") for i in range(count)]
            self.assertEqual(
                _takes(verbs.checkLabels, labels),
                _takes(selection.parseLabels, dict(labels)),
            )
            self.assertEqual(
                _takes(verbs.checkLabels, labels, True),
                _takes(selection.parseLabelFilters, [f"{k}={v}" for k, v in labels]),
            )
        self.assertEqual(verbs.MAX_LABELS, selection.MAX_LABELS)
        self.assertEqual(verbs.MAX_LABEL_VALUE, selection.MAX_LABEL_VALUE)

    def test_owner(self) -> None:
        for owner in OWNERS:
            self.assertEqual(
                _takes(verbs.checkOwner, owner), _takes(parseOwner, owner), owner
            )
            self.assertEqual(
                _takes(verbs.checkOwner, owner), bool(USER_NAME.fullmatch(owner))
            )

    def test_cwd(self) -> None:
        for cwd in CWDS:
            body = json.dumps({"command": "true", "cwd": cwd}).encode()
            self.assertEqual(
                _takes(verbs.checkCwd, cwd), _takes(parseJobRequest, body), cwd
            )


class FixedRulesRefusedTests(MemoryCLITestCase):
    """
    A name, label, cwd or owner that breaks a rule every server applies is
    refused by jw before anything is sent, naming the flag, exit 2 (it was
    the server's 400, exit 1: new user round 35).
    """

    def refused(self, *argv: str) -> bytes:
        out, err, code = self.jw(*argv)
        self.assertEqual((out, code), (b"", 2), (argv, err))
        self.assertEqual(err.count(b"\n"), 1, (argv, err))
        self.assertTrue(err.startswith(b"jw: "), err)
        self.assertNotIn(b"server answered", err)
        return err

    def test_exec(self) -> None:
        err = self.refused("exec", "--name", "my build", "--", "true")
        self.assertIn(b"--name must be 1 to 128 ASCII letters", err)
        err = self.refused("exec", "-l", "bad key=v", "--", "true")
        self.assertIn(b"--label name 'bad key' must be", err)
        err = self.refused("exec", "-l", "k=a\tb", "--", "true")
        self.assertIn(b"--label k: its value must be", err)
        many = [f"-lk{i}=v" for i in range(17)]
        err = self.refused("exec", *many, "--", "true")
        self.assertIn(b"at most 16 labels (--label), not 17", err)
        err = self.refused("exec", "--cwd", "tmp", "--", "true")
        self.assertEqual(
            err, b"jw: --cwd must be an absolute path on the server, not 'tmp'\n"
        )
        self.assertEqual(self.listedIds(), [])
        # (Sixteen labels, a name given twice, are taken.)
        self.assertSucceeded(
            self.jw("exec", *many[:16], "-lk0=w", "--name", "a.b", "--", "true")
        )

    def test_listAndClean(self) -> None:
        err = self.refused("list", "--name", "my build")
        self.assertIn(b"--name must be", err)
        err = self.refused("list", "--owner", "a b")
        self.assertIn(b"--owner must be a user name", err)
        err = self.refused("clean", "--owner", "a b")
        self.assertIn(b"--owner must be a user name", err)
        err = self.refused("list", "--label", "bad key=v")
        self.assertIn(b"--label name 'bad key'", err)
        err = self.refused("list", *[f"--label=k=v{i}" for i in range(17)])
        self.assertIn(b"at most 16 --label filters", err)
        self.assertSucceeded(self.jw("list", "--owner", "alice", "--name", "x"))


class CompletionTests(SynchronousTestCase):
    """
    Bash offers nothing as C{--server}'s value (it offered verbs, or the
    ids of a server); C{jw login}, C{logout} and C{config} offer their
    options (they offered none: new user round 35).
    """

    def bash(self, *words: str) -> list[str]:
        return bashOffers(*words, jw='jw() { [ "$1" = _ids ] && echo id1 id2; }')

    def test_serverValue(self) -> None:
        self.assertEqual(self.bash("jw", "--server", ""), [])
        self.assertEqual(self.bash("jw", "stop", "--server", ""), [])
        self.assertEqual(self.bash("jw", "exec", "--server", ""), [])
        # (Ids are still offered where they are asked for.)
        self.assertEqual(self.bash("jw", "stop", ""), ["id1", "id2"])

    def test_connectionVerbs(self) -> None:
        for verb in ("login", "logout", "config"):
            self.assertEqual(
                sorted(self.bash("jw", verb, "--")),
                ["--ca", "--cert", "--help", "--key", "--server"],
                verb,
            )

    def test_everyVerb(self) -> None:
        self.assertEqual(set(OPTIONS), set(VERBS))

    def test_zshCwd(self) -> None:
        self.assertIn("--ca|--cert|--key|--cwd) _files", COMPLETION["zsh"])


class LoginExpiryTests(MemoryCLITestCase):
    """
    C{jw login} says its expiry as jw shows every time: local, C{YYYY-MM-DD
    HH:MM:SS TZ (in 12h)} (it was the API's C{...T08:01:00.000Z}: new user
    round 35).
    """

    def test_local(self) -> None:
        out, err, code = self.jw("login")
        self.assertEqual((out, code), (b"", 0), err)
        self.assertRegex(
            err.decode(),
            r"^logged in to \S+ as alice until "
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(in \d+[smhd]\)\n$",
        )
