"""
What the thirty-fourth session's new user found in jw.

A server host of digits only (C{https://2130706433:PORT}, which resolves
to 127.0.0.1) had C{jw stop}, C{jw rm} and C{jw login} print two Twisted
tracebacks and hang for good; C{jw list} and C{jw status} showed
C{printf $'a\\nb'} and C{printf 'a\\nb'} alike, as C{printf 'a\\nb'};
with alice's login kept, C{JW_USER=bob} and no terminal was told to "set
JW_USER and JW_PASSWORD", and C{jw config} did not say whose the login is;
tab completion offered the ids of C{JW_SERVER}'s server, not of the
C{--server} on the line; C{jw clean --older-than 6000w} was the server's
400 in the API's words, exit 1; C{jw exec --help} did not say that a
priority above 0 is for Admins.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from jobworker.client import show
from jobworker.client.completion import COMPLETION
from jobworker.client.errors import ClientError
from jobworker.client.handshake import HandshakeDeadlineEndpoints
from jobworker.errors import BadRequest
from jobworker.jobs import queries
from jobworker.tls import TrustRootPolicy

from .support import CA, JW, bashOffers
from .test_cli_memory import MemoryCLITestCase
from .test_cli_round33 import UNKNOWN, SubprocessJW


class NumericHostTests(SubprocessJW, SynchronousTestCase):
    """
    A server whose host is digits only (C{2130706433}, an old way to write
    127.0.0.1): refused before anything, in one line, exit 2, by every
    verb. Twisted's TLS host check takes it for an address, the check of
    names then raises on the reactor: C{jw stop}, C{jw rm} and C{jw login}
    printed two tracebacks and hung for good (new user round 34).
    """

    def listening(self) -> int:
        """A port that takes connections (and never answers)."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port: int = sock.getsockname()[1]
        return port

    def test_refused(self) -> None:
        port = self.listening()
        for host in ("2130706433", "0", "1_0"):
            server = f"https://{host}:{port}"
            for argv in (
                ("list",),
                ("status", UNKNOWN),
                ("stop", UNKNOWN),
                ("rm", UNKNOWN),
                ("login",),
                ("exec", "--", "true"),
            ):
                out, err, code = self.jw(
                    *argv,
                    timeout=20,
                    JW_SERVER=server,
                    JW_TOKEN="",
                    JW_USER="alice",
                    JW_PASSWORD="alice-pass",
                )
                self.assertEqual((out, code), (b"", 2), (server, argv, err))
                self.assertEqual(err.count(b"\n"), 1, (server, argv, err))
                self.assertIn(
                    f"server's host '{host}' is not a host name".encode(), err
                )

    def test_addressesAndNamesStillTaken(self) -> None:
        from jobworker.client.config import checkServer

        for server, host in (
            ("https://127.0.0.1:1", "127.0.0.1"),
            ("https://[::1]:1", "::1"),
            ("https://localhost:1", "localhost"),
            ("https://1host:1", "1host"),
            ("https://1.2.3:1", "1.2.3"),
        ):
            self.assertEqual(checkServer(server), host)

    def test_hostCheckFailsTheRequest(self) -> None:
        """
        Whatever host reaches the Twisted client, one its TLS host check
        would refuse fails the request before any connection (it raised
        on the reactor, and the request was never answered).
        """
        endpoints = HandshakeDeadlineEndpoints(None, TrustRootPolicy(CA), 30)
        with self.assertRaises(ClientError) as caught:
            endpoints.endpointForURI(URI.fromBytes(b"https://2130706433:1/jobs"))
        self.assertIn("2130706433", str(caught.exception))
        # (A name and an address still get their endpoint.)
        for url in (b"https://localhost:1/jobs", b"https://127.0.0.1:1/jobs"):
            endpoints.endpointForURI(URI.fromBytes(url))


class CommandQuotedAsShellNeedsTests(SynchronousTestCase):
    """
    The command is shown as a shell needs it typed: a word with a
    character that is not printable in bash's C{$'...'} quoting, so that
    C{printf $'a\\nb'} and C{printf 'a\\nb'} differ (both were shown as
    C{printf 'a\\nb'}: new user round 34); other words as they were.
    """

    def shown(self, *words: str) -> str:
        job = {"command": words[0], "args": list(words[1:])}
        return show.commandLine(job)

    def test_newlineAndBackslash(self) -> None:
        self.assertEqual(self.shown("printf", "a\nb"), "printf $'a\\nb'")
        self.assertEqual(self.shown("printf", "a\\nb"), "printf 'a\\nb'")
        self.assertNotEqual(self.shown("printf", "a\nb"), self.shown("printf", "a\\nb"))

    def test_othersAsBefore(self) -> None:
        self.assertEqual(self.shown("sleep", "60"), "sleep 60")
        self.assertEqual(self.shown("sh", "-c", "echo $HOME"), "sh -c 'echo $HOME'")
        self.assertEqual(self.shown("echo", "it's"), "echo 'it'\"'\"'s'")
        self.assertEqual(self.shown("echo", ""), "echo ''")
        self.assertEqual(self.shown("echo", "café"), "echo 'café'")

    def test_escapes(self) -> None:
        self.assertEqual(
            self.shown("x", "'\\\t\x1b\x00\x7f\u200e\U000e0001"),
            "x $'\\'\\\\\\t\\x1b\\x00\\x7f\\u200e\\U000e0001'",
        )
        self.assertEqual(self.shown("x", "\x01b"), "x $'\\x01b'")

    def test_printableEverywhere(self) -> None:
        for word in ("a\nb", "\x1b[31m", "\u202eevil", "\ud800"):
            text = self.shown("echo", word)
            self.assertTrue(text.isprintable(), text)
        lines = show.jobLines(
            {
                "id": UNKNOWN,
                "status": "RUNNING",
                "command": "printf",
                "args": ["a\nb"],
                "owner": "alice",
            },
            0,
        )
        self.assertIn("command: printf $'a\\nb'\n", lines)

    def test_bashReadsItBack(self) -> None:
        given = [
            "a\nb",
            "a\\nb",
            "it's",
            "\t\x1b[1m\x7f\x01b",
            "\u200ex\u2028",
            "\U000e0001",
            "plain",
            "$HOME",
            "\\'",
            "",
        ]
        line = self.shown("printf", "%s\\0", *given)
        done = subprocess.run(
            ["bash", "-c", line],
            capture_output=True,
            check=True,
            timeout=30,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        self.assertEqual(done.stdout.decode().split("\0")[:-1], given)


class OtherUsersLoginTests(SynchronousTestCase):
    """
    alice's login kept, C{JW_USER=bob} and no terminal: the message says
    that the login kept is alice's and that bob needs C{JW_PASSWORD} (or a
    login of his own); it said "set JW_USER and JW_PASSWORD", JW_USER set.
    C{jw config} says whose the login is (new user round 34).
    """

    server = "https://localhost:1"

    def setUp(self) -> None:
        self.configHome = os.path.abspath(self.mktemp())
        folder = os.path.join(self.configHome, "jobworker")
        os.makedirs(folder, mode=0o700)
        path = os.path.join(folder, "tokens.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    f"{self.server}": {
                        "token": "jw1.x.y",
                        "expires": time.time() + 3600,
                        "user": "alice",
                    }
                },
                f,
            )

    def jwAlone(self, *argv: str, **environ: str) -> tuple[bytes, bytes, int]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("JW_")},
            "XDG_CONFIG_HOME": self.configHome,
            "JW_SERVER": self.server,
            "JW_CA": CA,
            **environ,
        }
        done = subprocess.run(
            [JW, *argv],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
            start_new_session=True,  # no terminal
        )
        return done.stdout, done.stderr, done.returncode

    def test_noTerminal(self) -> None:
        out, err, code = self.jwAlone("list", JW_USER="bob")
        self.assertEqual((out, code), (b"", 2), err)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertNotIn(b"set JW_USER and", err)
        self.assertIn(b"no terminal to ask for credentials", err)
        self.assertIn(b"set JW_PASSWORD", err)
        self.assertIn(b"jw login as bob", err)
        self.assertIn(
            f"the login kept for {self.server} is alice's, not bob's".encode(), err
        )

    def test_noUserNoTerminalAsBefore(self) -> None:
        os.unlink(os.path.join(self.configHome, "jobworker", "tokens.json"))
        out, err, code = self.jwAlone("list")
        self.assertEqual((out, code), (b"", 2), err)
        self.assertEqual(
            err,
            b"jw: no terminal to ask for credentials: set JW_USER and JW_PASSWORD\n",
        )

    def test_config(self) -> None:
        out, err, code = self.jwAlone("config", JW_USER="bob")
        self.assertEqual(code, 0, err)
        self.assertIn(b"login token = valid (alice's: not used for bob)    #", out)
        out, err, code = self.jwAlone("config")
        self.assertEqual(code, 0, err)
        self.assertIn(b"login token = valid (alice's)    #", out)
        out, err, code = self.jwAlone("config", JW_USER="alice")
        self.assertEqual(code, 0, err)
        self.assertIn(b"login token = valid (alice's)    #", out)


class CompletionOfTheLinesServerTests(MemoryCLITestCase):
    """
    Tab completion offers the ids of the server the line being completed
    names (its C{--server}, C{--ca}, C{--cert}, C{--key}), not those of
    C{JW_SERVER}'s (new user round 34): C{jw _ids} takes those options and
    the scripts pass them on, as bash splits them too (at C{:} and C{=}).
    """

    def test_idsTakesTheOptions(self) -> None:
        servers: list[str] = []

        def connect(reactor: Any, server: str, *args: Any, **kwargs: Any) -> Any:
            servers.append(server)
            return self.connect(reactor, server, *args, **kwargs)

        jobId = self.execId("true")
        out = self.assertSucceeded(
            self.jw("_ids", "--server", "https://other:8443", connect=connect)
        )
        self.assertEqual(out.decode().split(), [jobId])
        self.assertEqual(servers, ["https://other:8443"])
        self.assertSucceeded(
            self.jw("_ids", "--server=https://third:1", "--json", connect=connect)
        )
        self.assertEqual(servers[-1], "https://third:1")

    def test_idsOptions(self) -> None:
        from jobworker.client.cli import idsOptions  # (new this round)

        options = idsOptions(
            ["status", "--server", "https://h:1", "--ca=/c", "-x", "--key"]
        )
        self.assertEqual(
            vars(options),
            {"server": "https://h:1", "ca": "/c", "cert": None, "key": None},
        )
        self.assertEqual(vars(idsOptions([]))["server"], None)

    def bash(self, *words: str) -> list[str]:
        """What bash offers after C{WORDS} (COMP_WORDS as given): its
        C{jw _ids} prints the arguments it was given."""
        return bashOffers(
            *words,
            jw='jw() { [ "$1" = _ids ] && shift && (IFS=,; echo "[$*]"); }',
            env={**os.environ, "HOME": "/home/u"},
        )

    def test_bashPassesThemOn(self) -> None:
        # As bash splits the line: at ":" and at "=".
        split = ("jw", "--server", "https", ":", "//h", ":", "1", "--ca", "=", "/c")
        self.assertEqual(
            self.bash(*split, "status", ""), ["[--server,https://h:1,--ca=/c]"]
        )
        self.assertEqual(
            self.bash(*split, "exec", "--after", ""),
            ["[--server,https://h:1,--ca=/c]"],
        )
        self.assertEqual(
            self.bash("jw", "stop", "--cert", "~/c.pem", "--key", "k", ""),
            ["[--cert,/home/u/c.pem,--key,k]"],
        )
        self.assertEqual(
            self.bash("jw", "--server", "https://h:1", "rm", ""),
            ["[--server,https://h:1]"],
        )
        self.assertEqual(self.bash("jw", "wait", ""), ["[]"])
        # (The verb is still found after a split option.)
        self.assertEqual(
            self.bash(*split, "clean", "--status", ""),
            ["COMPLETED", "FAILED", "STOPPED"],
        )

    def test_zshAndFishPassThemOn(self) -> None:
        self.assertEqual(COMPLETION["zsh"].count("jw _ids $given 2>/dev/null"), 2)
        self.assertNotIn("jw _ids 2>", COMPLETION["zsh"])
        self.assertEqual(COMPLETION["fish"].count('"(__jw_ids)"'), 2)
        self.assertIn("jw _ids $given 2>/dev/null", COMPLETION["fish"])


class OlderThanRangeTests(MemoryCLITestCase):
    """
    C{jw clean --older-than} past the range fixed for every server (0 to
    100 years): refused before anything is sent, naming the flag, exit 2
    (it was the server's 400, "older_than_seconds must be whole seconds",
    exit 1: new user round 34).
    """

    def test_refused(self) -> None:
        jobId = self.execId("true")
        self.endJob(jobId)
        for text in ("6000w", "36601d", "3162240001", "9" * 400):
            out, err, code = self.jw("clean", "--older-than", text)
            self.assertEqual((out, code), (b"", 2), (text, err))
            self.assertEqual(
                err, b"jw: --older-than must be at most 100 years (36600d)\n"
            )
        self.assertEqual(self.listedIds(), [jobId])

    def test_largestTaken(self) -> None:
        from jobworker.client.verbs import MAX_AGE  # (new this round)

        self.assertEqual(queries.parseAge(str(MAX_AGE)), MAX_AGE)
        with self.assertRaises(BadRequest):
            queries.parseAge(str(MAX_AGE + 1))
        jobId = self.execId("true")
        self.endJob(jobId)
        for text in ("36600d", str(MAX_AGE), f"{MAX_AGE - 1}.5", "0"):
            self.assertSucceeded(self.jw("clean", "--older-than", text))


class PriorityHelpTests(SubprocessJW, SynchronousTestCase):
    """C{jw exec --help} says a priority above 0 is for Admins (it was
    refused as "forbidden", the help said nothing: new user round 34)."""

    def test_help(self) -> None:
        out, err, code = self.jw("exec", "--help")
        self.assertEqual(code, 0, err)
        self.assertIn(b"above 0: Admins only", b" ".join(out.split()))
