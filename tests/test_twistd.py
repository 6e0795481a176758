"""
Integration tests of the real C{twistd jobworker} process: plugin discovery,
start-up errors, graceful shutdown and bounded memory under heavy output.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

import bcrypt
import treq
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

from jobworker.server.options import Options

from .support import (
    CA,
    CERT,
    CERTS,
    FREE_UIDS,
    KEY,
    TWISTD,
    basic,
    groupMembers,
    rssKiB,
    runSync,
    smallTmpfs,
)
from .twistd import Twistd

MiB = 1024 * 1024

#: A job that ignores SIGTERM (its children too) and says when it is set up.
TERM_IGNORING = 'trap "" TERM; echo ready; while :; do sleep 0.1; done'


class PluginTests(TestCase):
    """The twistd plugin is installed where twistd looks for it."""

    def test_pluginDiscoverable(self) -> None:
        """getPlugins(IServiceMaker) yields exactly one 'jobworker' maker."""
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "jobworker"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, Options)

    def test_twistdHelpListsJobworker(self) -> None:
        """'twistd --help' lists the jobworker command."""
        workDir = os.path.abspath(self.mktemp())
        os.makedirs(workDir)
        result = runSync(TWISTD, "--help", cwd=workDir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, rb"(?m)^\s+jobworker\s+\S")

    def test_jobworkerHelpListsOptions(self) -> None:
        """'twistd jobworker --help' documents --tls, --port and --stop-grace."""
        result = runSync(TWISTD, "jobworker", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in (b"--tls", b"--port", b"--stop-grace", b"--users"):
            self.assertIn(option, result.stdout)


class StartupErrorTests(TestCase):
    """Every start-up problem: a non-zero exit and one clear line, no traceback."""

    def runTwistd(
        self, *options: str, tls: bool = True, omit: tuple[str, ...] = ()
    ) -> tuple[str, str, int]:
        """
        Run twistd jobworker, which must exit at once; (stdout, stderr,
        code). C{omit}: default options not to give.
        """
        workDir = os.path.abspath(self.mktemp())
        os.makedirs(workDir)
        argv = [TWISTD, "-n", "--pidfile=", "jobworker"]
        if tls:
            argv.append("--tls")
        defaults = {
            "--port": "0",
            "--cert": CERT,
            "--key": KEY,
            "--state-dir": os.path.join(workDir, "state"),
            "--dynamic-uids": FREE_UIDS,
        }
        given = {option.split("=", 1)[0] for option in options} | set(omit)
        argv += [f"{k}={v}" for k, v in defaults.items() if k not in given]
        argv += options
        result = runSync(*argv, cwd=workDir)
        stdout = result.stdout.decode("utf-8", "replace")
        stderr = result.stderr.decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, (stdout, stderr))
        self.assertNotIn("Traceback", stdout + stderr)
        self.assertNotIn("jobworker listening", stdout)
        return stdout, stderr, result.returncode

    def refused(self, *options: str, tls: bool = True) -> str:
        """Run twistd jobworker expecting a start-up error; the one stderr line."""
        _, stderr, _ = self.runTwistd(*options, tls=tls)
        lines = [line for line in stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, stderr)
        return lines[0]

    def test_withoutTLSRefusesToStart(self) -> None:
        """
        Without --tls twistd jobworker refuses to start with one line saying
        --tls is required (not the whole help first).
        """
        _, stderr, code = self.runTwistd(tls=False)
        self.assertEqual(code, 2, stderr)
        self.assertEqual(len(stderr.splitlines()), 1, stderr)
        self.assertIn("--tls is required", stderr)

    def test_certWithoutKeyIsAnOptionError(self) -> None:
        """--cert without --key (a rule between options): exit status 2."""
        _, stderr, code = self.runTwistd(omit=("--key",))
        self.assertEqual(code, 2, stderr)
        self.assertEqual(len(stderr.splitlines()), 1, stderr)
        self.assertIn("--cert and --key go together", stderr)

    def test_badOptionValueOneLine(self) -> None:
        """
        A bad option value, whichever check refuses it (its type, its range,
        a rule between options, an unknown option): one line on stderr naming
        the option, exit status 2, not twistd's whole usage first.
        """
        for options, expected in (
            (("--port=abc",), "jobworker: error: --port: not a whole number: 'abc'"),
            (("--port=70000",), "jobworker: error: --port must be between"),
            (("--default-timeout=inf",), "jobworker: error: --default-timeout: "),
            (("--default-memory=0",), "jobworker: error: --default-memory "),
            (
                ("--default-memory=1G", "--max-memory=1M"),
                "jobworker: error: --default-memory 1073741824 is over --max-memory",
            ),
            (("--no-such-option",), "jobworker: error: option --no-such-option"),
        ):
            stdout, stderr, code = self.runTwistd(*options)
            self.assertEqual(code, 2, (options, stderr))
            self.assertEqual(stdout, "", options)
            lines = stderr.splitlines()
            self.assertEqual(len(lines), 1, (options, stderr))
            self.assertTrue(lines[0].startswith(expected), (options, lines[0]))

    def test_helpAgreesWithTheREADME(self) -> None:
        """--help says 431 (as the README) and the token TTL as 12h, not 43200.0."""
        result = runSync(TWISTD, "jobworker", "--help")
        text = " ".join(result.stdout.decode().split())
        self.assertIn("431 past it", text)
        self.assertIn("[default: 12h]", text)
        self.assertNotIn("43200", text)
        with open(os.path.join(CERTS, "..", "README.md")) as f:
            self.assertIn("`431` the request line, a header line or all the", f.read())

    def test_portInUse(self) -> None:
        """A port already in use: one line on stderr naming the port."""
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = self.refused(f"--port={port}")
        self.assertIn(str(port), line)
        self.assertIn("cannot listen", line)

    def test_missingCertFile(self) -> None:
        """A certificate file that does not exist is named in the one line."""
        missing = os.path.abspath(self.mktemp())
        line = self.refused(f"--cert={missing}")
        self.assertIn(missing, line)
        self.assertIn("certificate", line)

    def test_missingKeyFile(self) -> None:
        """A key file that does not exist is named in the one line."""
        missing = os.path.abspath(self.mktemp())
        line = self.refused(f"--key={missing}")
        self.assertIn(missing, line)
        self.assertIn("key", line)

    def test_certNotPEM(self) -> None:
        """A certificate file that holds no PEM certificate is refused."""
        bad = os.path.abspath(self.mktemp())
        with open(bad, "w") as f:
            f.write("not a certificate\n")
        line = self.refused(f"--cert={bad}")
        self.assertIn(bad, line)

    def test_keyNotMatchingCert(self) -> None:
        """A key that does not belong to the certificate is refused."""
        line = self.refused(f"--key={os.path.join(CERTS, 'ca.key')}")
        self.assertIn("does not match", line)

    def test_badUsersFile(self) -> None:
        """A users file that does not parse is refused, naming the line."""
        bad = os.path.abspath(self.mktemp())
        with open(bad, "w") as f:
            f.write("# users\nalice:Developer\n")
        line = self.refused(f"--users={bad}")
        self.assertIn("users file", line)
        self.assertIn("line 2", line)

    def test_usersFileNotUTF8(self) -> None:
        """A users file that is not UTF-8 is refused with one line."""
        bad = os.path.abspath(self.mktemp())
        with open(bad, "wb") as f:
            f.write(b"\xff\xfe\x00garbage\n")
        line = self.refused(f"--users={bad}")
        self.assertIn("users file", line)

    def test_unreadableUsersFile(self) -> None:
        """A users file that cannot be read (missing, a directory) is refused."""
        missing = os.path.abspath(self.mktemp())
        line = self.refused(f"--users={missing}")
        self.assertIn(missing, line)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        line = self.refused(f"--users={directory}")
        self.assertIn(directory, line)

    def test_unusableStateDir(self) -> None:
        """A state dir that cannot be created is refused with one line."""
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w"):
            pass
        stateDir = os.path.join(blocker, "state")
        line = self.refused(f"--state-dir={stateDir}")
        self.assertIn(stateDir, line)

    def usersFile(self) -> str:
        """A users file of one user (not a development one), mode 0600."""
        path = os.path.abspath(self.mktemp())
        hashed = bcrypt.hashpw(b"opsadmin-pass", bcrypt.gensalt(4)).decode()
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(f"opsadmin:Admin:{hashed}\n")
        return path

    def test_developmentClientCAWithRealUsers(self) -> None:
        """
        The development CA (its key is public) as --client-ca, with a users
        file: anyone could sign a certificate for any of its users, Admins
        too (attacker round 29). Refused, under any name it was copied to.
        """
        copy = os.path.abspath(self.mktemp())
        with open(CA, "rb") as f, open(copy, "wb") as out:
            out.write(f.read())
        for path in (CA, copy):
            line = self.refused(f"--client-ca={path}", f"--users={self.usersFile()}")
            self.assertIn("DEVELOPMENT CA", line)

    def test_clientCAOthersMayWrite(self) -> None:
        """A --client-ca file others may write: whoever does may add a CA of
        theirs, and log in as anyone (attacker round 29)."""
        path = os.path.abspath(self.mktemp())
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=own CA",
                "-days",
                "1",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-keyout",
                path + ".key",
                "-out",
                path,
            ],
            check=True,
            capture_output=True,
        )
        os.chmod(path, 0o666)  # noqa: S103 (the defect itself)
        line = self.refused(f"--client-ca={path}", f"--users={self.usersFile()}")
        self.assertIn("may be written by other users", line)

    def test_readOnlyJobsFolder(self) -> None:
        """
        A state dir whose C{jobs/} folder is a read-only mount (every job's
        output would be lost) is refused at start-up, with one line naming
        the state dir and why; nothing stored is touched.
        """
        stateDir = os.path.abspath(self.mktemp())
        jobs = os.path.join(stateDir, "jobs")
        os.makedirs(jobs, mode=0o700)
        mount = smallTmpfs(self, "1m")
        os.mkdir(os.path.join(mount, "kept"))
        subprocess.run(["mount", "--bind", mount, jobs], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", jobs], check=False)
        subprocess.run(["mount", "-o", "remount,bind,ro", jobs], check=True)
        line = self.refused(f"--state-dir={stateDir}")
        self.assertIn(stateDir, line)
        self.assertIn("Read-only file system", line)
        self.assertEqual(os.listdir(jobs), ["kept"])


class ShutdownTests(TestCase):
    """SIGTERM to twistd stops every job, escalating, before it exits."""

    async def shutDownWithJobs(
        self, grace: float, stubbornScript: str = TERM_IGNORING
    ) -> tuple[Twistd, dict[str, Any], dict[str, Any], str]:
        """
        Start twistd, a TERM-ignoring job and a plain one, SIGTERM twistd and
        wait for it to exit; (server, stubborn job, plain job, twistd's log).
        """
        server = await Twistd(self).start(f"--stop-grace={grace}")
        stubborn = await server.createJob("sh", "-c", stubbornScript)
        plain = await server.createJob("sleep", "300")
        await server.poll(
            lambda: server.logs(stubborn["id"]),
            10,
            "the TERM-ignoring job to be ready",
        )
        for job in (stubborn, plain):
            self.assertTrue(groupMembers(job["pid"]), job)
        os.kill(server.pid, signal.SIGTERM)
        started = time.monotonic()
        await server.protocol.whenEnded().addTimeout(30, reactor)
        elapsed = time.monotonic() - started
        log = server.protocol.log()
        self.assertLess(elapsed, grace + 5, log)
        return server, stubborn, plain, log

    async def test_sigtermStopsEveryJob(self) -> None:
        """SIGTERM: both job groups gone, each logged 'ended STOPPED', clean exit."""
        server, stubborn, plain, log = await self.shutDownWithJobs(grace=1.0)
        # A clean shutdown: exit status 0, or (as twistd does on SIGTERM) the
        # same signal re-raised once the reactor has stopped.
        self.assertIn(
            (server.protocol.exitCode, server.protocol.exitSignal),
            [(0, None), (None, signal.SIGTERM)],
            log,
        )
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        for job in (stubborn, plain):
            self.assertEqual(groupMembers(job["pid"]), [], job)
            self.assertIn(f"job {job['id']} ended STOPPED", log)
        self.assertRegex(
            log, rf"job {stubborn['id']} ended STOPPED \(exit None, signal SIGKILL\)"
        )
        self.assertRegex(
            log, rf"job {plain['id']} ended STOPPED \(exit None, signal SIGTERM\)"
        )

    async def test_shutdownKillsEachGroupOnce(self) -> None:
        """On shutdown a TERM-ignoring group is SIGKILLed once, not once per grace."""
        # Many children dying with the main process: some are still exiting
        # (or not yet reaped) when the main process is.
        script = (
            'trap "" TERM; i=0; while [ $i -lt 20 ]; do sleep 300 & i=$((i+1)); '
            "done; echo ready; wait"
        )
        _, stubborn, plain, log = await self.shutDownWithJobs(1.0, script)
        killed = "process group {} killed after"
        self.assertEqual(log.count(killed.format(stubborn["pid"])), 1, log)
        self.assertEqual(log.count(killed.format(plain["pid"])), 0, log)


class LargeOutputTests(TestCase):
    """100 MB of output goes to disk, not to the server's memory."""

    async def test_hundredMegabytesWithBoundedMemory(self) -> None:
        """100 MB of job output: spooled in full, read back, RSS grows < 50 MiB."""
        size = 100 * MiB
        server = await Twistd(self).start()
        code, _ = await server.json("GET", "/jobs", "ada")  # warm up TLS and auth
        self.assertEqual(code, 200)
        baseline = rssKiB(server.pid)
        peak = [baseline]

        def sample() -> None:
            try:
                peak[0] = max(peak[0], rssKiB(server.pid))
            except (OSError, AssertionError):
                pass

        sampler = LoopingCall(sample)
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        job = await server.createJob("head", "-c", str(size), "/dev/zero")

        async def ended() -> dict[str, Any] | None:
            code, record = await server.json("GET", f"/jobs/{job['id']}", "ada")
            assert code == 200, record
            return record if record["status"] != "RUNNING" else None

        record = await server.poll(ended, 60, "the 100 MB job to end")
        self.assertEqual(record["status"], "COMPLETED", record)
        self.assertEqual(record["stdout_bytes"], size)
        spool = os.path.join(server.stateDir, "jobs", job["id"], "stdout")
        self.assertEqual(os.path.getsize(spool), size)
        sample()
        growth = (peak[0] - baseline) * 1024
        self.assertLess(growth, 50 * MiB, f"RSS grew {growth / MiB:.1f} MiB")

        response = await server.http.get(
            f"{server.url}/jobs/{job['id']}/logs?follow=true",
            headers=basic("alice"),
            unbuffered=True,
        )
        self.assertEqual(response.code, 200)
        counts = {"bytes": 0, "nonzero": 0}

        def count(data: bytes) -> None:
            counts["bytes"] += len(data)
            counts["nonzero"] += len(data) - data.count(b"\x00")

        await treq.collect(response, count).addTimeout(120, reactor)
        sample()
        sampler.stop()
        self.assertEqual(counts, {"bytes": size, "nonzero": 0})
        growth = (peak[0] - baseline) * 1024
        self.assertLess(growth, 50 * MiB, f"RSS grew {growth / MiB:.1f} MiB")
