"""
Real faults against a real twistd (`tox -e faults`, as root): a full disk
under the state dir, SIGKILL in the middle of concurrent POSTs, SIGTERM with
followers attached, SIGHUP storms, a damaged store, an unwritable jobs/
folder. Each scenario prints its figures and checks every guarantee.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.records import JobRecord
from jobworker.jobs.store import JobStore

from ..support import JW, jwEnvironment
from .harness import (
    Tmpfs,
    Twistd,
    processesWith,
    requireFaultRun,
    sessionOf,
    waitUntil,
)


class FaultTestCase(SynchronousTestCase):
    def assertStopped(self, code: int) -> None:
        """twistd ends on SIGTERM by re-raising it, after a clean stop."""
        self.assertIn(code, (0, -signal.SIGTERM))


def figures(name: str, **values: Any) -> None:
    """One line of figures per scenario, in the test log."""
    print(f"\nFAULT {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


class DiskFullTests(FaultTestCase):
    """The state dir on a 24 MB tmpfs that fills up."""

    timeout = 120

    def setUp(self) -> None:
        requireFaultRun()
        self.disk = Tmpfs(self)
        self.state = os.path.join(self.disk.path, "state")

    def test_finalRecordNeverTurnsBackToRunning(self) -> None:
        """
        A job that fills the disk and exits 3 stays FAILED, exit 3: in GET,
        lists, stop (409 with the real status), metrics; DELETE is 200 or
        503, never 409 or 500; once space is back the store takes the
        record, and a restart shows the real result.
        """
        server = Twistd(self, self.state).start()
        job = server.request(
            "POST",
            "/jobs",
            body={"command": "sh", "args": ["-c", "head -c 64M /dev/zero; exit 3"]},
        ).json()

        def endedRecord() -> Any:
            record = server.request("GET", f"/jobs/{job['id']}").json()
            return record if record["status"] != "RUNNING" else None

        ended = waitUntil(endedRecord, 30, "the job to end")
        self.assertEqual((ended["status"], ended["exit_code"]), ("FAILED", 3), ended)
        storeRefused = "kept in memory" in server.logText()
        seen = set()
        for _ in range(20):
            record = server.request("GET", f"/jobs/{job['id']}").json()
            seen.add((record["status"], record["exit_code"]))
            time.sleep(0.05)
        self.assertEqual(seen, {("FAILED", 3)})
        listed = server.request("GET", "/jobs?status=RUNNING").json()
        self.assertEqual(listed["jobs"], [])
        stop = server.request("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(stop.status, 409, stop.body)
        self.assertIn(b"FAILED", stop.body)
        metrics = server.request("GET", "/metrics", "ada")
        self.assertEqual(metrics.status, 200)
        self.assertIn(b'jobworker_jobs{status="FAILED"} 1.0', metrics.body)
        self.assertNotIn(b'jobworker_jobs{status="RUNNING"} 1.0', metrics.body)
        other = server.request("POST", "/jobs", body={"command": "true"})
        self.assertIn(other.status, (201, 503), other.body)
        # Space comes back (the job's own output is what filled the disk).
        os.truncate(os.path.join(self.state, "jobs", job["id"], "stdout"), 0)
        waitUntil(
            lambda: _storedStatus(self.state, job["id"]) == "FAILED",
            60,
            "the store to take the final record",
        )
        self.assertStopped(server.stop())
        server.start()
        again = server.request("GET", f"/jobs/{job['id']}").json()
        self.assertEqual((again["status"], again["exit_code"]), ("FAILED", 3), again)
        self.assertNotIn("restarted", again["error"] or "")
        gone = server.request("DELETE", f"/jobs/{job['id']}", "ada")
        self.assertEqual(gone.status, 200, gone.body)
        figures(
            "disk-full end",
            store_write_refused=storeRefused,
            other_post=other.status,
            output_lost=ended["output_lost"],
        )

    def test_deleteAndRetentionOnFullDisk(self) -> None:
        """
        With the disk full, DELETE answers 200 or 503 (never 500), --retain
        keeps running (no dead LoopingCall), and once space is back the
        expired jobs go.
        """
        # Expiry 4 s after the end: the first DELETE comes well before it
        # on a loaded machine (1.2 s measured beside 16 busy loops).
        server = Twistd(self, self.state, "--retain=4s").start()
        ids = []
        for n in range(5):
            job = server.request(
                "POST", "/jobs", body={"command": "sh", "args": ["-c", f"echo {n}"]}
            ).json()
            ids.append(job["id"])
        waitUntil(
            lambda: all(
                server.request("GET", f"/jobs/{i}").json()["status"] == "COMPLETED"
                for i in ids
            ),
            20,
            "the jobs to end",
        )
        self.disk.fill()
        codes = [server.request("DELETE", f"/jobs/{ids[0]}", "ada").status]
        # The jobs expire within 4 s of it: then at least two retention
        # rounds (one a second) try to remove them from the full disk.
        time.sleep(6.5)
        health = server.request("GET", "/healthz", None)
        self.assertEqual(health.status, 200)
        codes.append(server.request("GET", "/jobs", "ada").status)
        self.assertTrue(set(codes) <= {200, 503}, codes)
        self.assertNotIn("Unhandled error in Deferred", server.logText())
        self.disk.free()
        waitUntil(
            lambda: all(server.request("GET", f"/jobs/{i}").status == 404 for i in ids),
            20,
            "retention to remove the jobs once space is back",
        )
        figures("disk-full retention", answers=codes)


def _storedStatus(stateDir: str, jobId: str) -> str | None:
    db = sqlite3.connect(f"file:{stateDir}/jobs.sqlite3?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (jobId,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return None if row is None else str(row[0])


def _storedJobs(stateDir: str) -> list[tuple[str, int | None, str]]:
    db = sqlite3.connect(f"file:{stateDir}/jobs.sqlite3?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT id, pid, status FROM jobs"))
    finally:
        db.close()


class CrashTests(SynchronousTestCase):
    """SIGKILL of twistd in the middle of a burst of concurrent POSTs."""

    timeout = 180

    def setUp(self) -> None:
        requireFaultRun()

    def crashDuringPosts(self, *options: str) -> None:
        token = f"300.{random.randrange(10**6):06d}"
        state = os.path.realpath(self.mktemp())
        server = Twistd(self, state, *options).start()
        answers: list[int] = []
        dead = threading.Event()

        def post() -> None:
            # A loop of POSTs until the server is gone.
            while not dead.is_set():
                try:
                    answers.append(
                        server.request(
                            "POST", "/jobs", body={"command": "sleep", "args": [token]}
                        ).status
                    )
                except (OSError, http.client.HTTPException):
                    answers.append(0)
                    return

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(random.uniform(0.5, 1.5))
        server.signal(signal.SIGKILL)
        dead.set()
        assert server.process is not None
        server.process.wait()
        for thread in threads:
            thread.join(30)
        # A process behind its gate exits once the server is gone (EOF).
        time.sleep(1.0)
        recorded = {pid for _, pid, _ in _storedJobs(state) if pid is not None}
        running = {
            pid: argv
            for pid, argv in processesWith(token).items()
            if argv[:1] == ["sleep"]
        }
        unrecorded = [pid for pid in running if sessionOf(pid) not in recorded]
        self.assertEqual(
            unrecorded, [], f"commands running without a record: {running}"
        )
        server.start()
        waitUntil(lambda: not processesWith(token), 20, "recovery to kill leftovers")
        for jobId, _, status in _storedJobs(state):
            self.assertNotIn(status, ("RUNNING", "PENDING"), jobId)
        figures(
            f"sigkill {' '.join(options) or 'defaults'}",
            posts=len(answers),
            created=answers.count(201),
            cut=answers.count(0),
            recorded=len(_storedJobs(state)),
            commands_running_at_crash=len(running),
        )

    def test_crashWithCgroups(self) -> None:
        """Default (cgroups, dynamic uids): no unrecorded process, no orphan."""
        self.crashDuringPosts()

    def test_crashWithoutCgroups(self) -> None:
        """--cgroups off: the same, with process groups only."""
        self.crashDuringPosts("--cgroups=off")

    def test_crashWithoutCgroupsAsRoot(self) -> None:
        """--cgroups off, root jobs (no sandbox): the gate still holds."""
        self.crashDuringPosts("--cgroups=off", "--allow-root-jobs")


class CrashInGraceTests(SynchronousTestCase):
    """
    SIGKILL of twistd inside an ended job's stop grace: the record is final
    (its main process ended, its pipes closed), a leftover that ignores
    SIGTERM waits for its SIGKILL. A restart used to leave it running for
    good (a mapped account's or root's: nobody's to reclaim).
    """

    timeout = 120

    def setUp(self) -> None:
        requireFaultRun()

    def crashInGrace(self, *options: str) -> None:
        token = f"400.{random.randrange(10**6):06d}"
        state = os.path.realpath(self.mktemp())
        server = Twistd(self, state, "--stop-grace=60", *options).start()
        script = (
            f"(trap '' TERM; exec sleep {token}) </dev/null >/dev/null 2>&1 & sleep 0.2"
        )
        answer = server.request(
            "POST", "/jobs", body={"command": "sh", "args": ["-c", script]}
        )
        self.assertEqual(answer.status, 201, answer.body)
        jobId = answer.json()["id"]

        def ended() -> bool:
            record = server.request("GET", f"/jobs/{jobId}").json()
            return record["status"] == "COMPLETED"

        waitUntil(ended, 20, "the job's end")
        self.assertTrue(processesWith(token), "the leftover is in its grace")
        server.signal(signal.SIGKILL)
        assert server.process is not None
        server.process.wait()
        time.sleep(0.5)
        self.assertTrue(processesWith(token), "the leftover outlived the server")
        server.start()
        waitUntil(lambda: not processesWith(token), 20, "recovery to kill it")
        figures(f"sigkill in grace {' '.join(options) or 'defaults'}", killed=1)

    def test_rootJobWithCgroups(self) -> None:
        self.crashInGrace("--allow-root-jobs")

    def test_rootJobWithoutCgroups(self) -> None:
        self.crashInGrace("--allow-root-jobs", "--cgroups=off")


class ShutdownTests(FaultTestCase):
    """SIGTERM with 16 followers attached."""

    timeout = 120

    def setUp(self) -> None:
        requireFaultRun()

    def test_sixteenFollowersGetEverything(self) -> None:
        state = os.path.realpath(self.mktemp())
        server = Twistd(self, state).start()
        script = "head -c 24M /dev/urandom | od -An -tx1 -v; echo done; exec sleep 300"
        job = server.request(
            "POST", "/jobs", body={"command": "sh", "args": ["-c", script]}
        ).json()
        results: list[tuple[str, bytes, str]] = []

        def follow(sse: bool) -> None:
            connection = server.connection(120)
            query = "?format=sse" if sse else "?follow=true"
            try:
                connection.request(
                    "GET",
                    f"/jobs/{job['id']}/logs{query}",
                    headers={"Authorization": _auth("alice")},
                )
                response = connection.getresponse()
                body = response.read()
                results.append(("sse" if sse else "raw", body, "complete"))
            except (OSError, http.client.HTTPException) as e:
                results.append(("sse" if sse else "raw", b"", f"cut: {e!r}"))
            finally:
                connection.close()

        threads = [
            threading.Thread(target=follow, args=(n % 2 == 1,)) for n in range(16)
        ]
        for thread in threads:
            thread.start()
        # And jw itself: it must exit with the job's status, not an error.
        jwOut = os.path.realpath(self.mktemp())
        with open(jwOut, "wb") as out:
            jw = subprocess.Popen(
                [JW, "logs", "--follow", job["id"]],
                stdout=out,
                stderr=subprocess.PIPE,
                env=jwEnvironment(f"https://localhost:{server.port}"),
            )
        stdout = os.path.join(state, "jobs", job["id"], "stdout")
        waitUntil(
            lambda: (
                os.path.exists(stdout) and open(stdout, "rb").read()[-5:] == b"done\n"
            ),
            60,
            "the job to print everything",
        )
        time.sleep(0.2)
        started = time.monotonic()
        self.assertStopped(server.stop())
        took = time.monotonic() - started
        for thread in threads:
            thread.join(60)
        _, jwErrors = jw.communicate(timeout=60)
        with open(stdout, "rb") as f:
            expected = f.read()
        with open(jwOut, "rb") as f:
            self.assertEqual(f.read(), expected)
        stopped = 128 + signal.SIGTERM
        self.assertEqual(jw.returncode, stopped, jwErrors)
        self.assertEqual(len(results), 16)
        for kind, body, how in results:
            self.assertEqual(how, "complete", kind)
            if kind == "raw":
                self.assertEqual(len(body), len(expected))
                self.assertEqual(body, expected)
            else:
                self.assertIn(b"event: end", body)
                self.assertIn(b'"STOPPED"', body)
        figures(
            "sigterm 16 followers", bytes_each=len(expected), shutdown_s=f"{took:.2f}"
        )


def _auth(user: str) -> str:
    from ..support import basic

    return basic(user)[b"authorization"][0].decode()


class SighupTests(FaultTestCase):
    """SIGHUP storms, with and without --users."""

    timeout = 120

    def setUp(self) -> None:
        requireFaultRun()

    def storm(self, server: Twistd) -> float:
        worst = 0.0
        for _ in range(50):
            server.signal(signal.SIGHUP)
            time.sleep(0.01)
        for _ in range(20):
            started = time.monotonic()
            self.assertEqual(server.request("GET", "/healthz", None).status, 200)
            worst = max(worst, time.monotonic() - started)
        assert server.process is not None
        self.assertIsNone(server.process.poll(), "SIGHUP ended the server")
        return worst

    def test_withoutUsersFile(self) -> None:
        server = Twistd(self, os.path.realpath(self.mktemp())).start()
        worst = self.storm(server)
        self.assertIn("nothing to reload", server.logText())
        self.assertEqual(server.request("GET", "/jobs").status, 200)
        self.assertStopped(server.stop())
        figures("sighup no --users", healthz_worst_ms=f"{worst * 1000:.0f}")

    def test_withUsersFile(self) -> None:
        from jobworker.auth.users import DEVELOPMENT_USERS

        users = os.path.realpath(self.mktemp())
        with open(users, "w") as f:
            f.write(DEVELOPMENT_USERS)
        server = Twistd(self, os.path.realpath(self.mktemp()), f"--users={users}")
        server.start()
        worst = self.storm(server)
        waitUntil(lambda: "reloaded" in server.logText(), 10, "a reload")
        self.assertEqual(server.request("GET", "/jobs").status, 200)
        self.assertLess(worst, 1.0)
        self.assertStopped(server.stop())
        figures("sighup --users", healthz_worst_ms=f"{worst * 1000:.0f}")


class StartupRefusalTests(SynchronousTestCase):
    """A damaged store, an unwritable jobs/: refused at start, one line, exit 1."""

    timeout = 60

    def setUp(self) -> None:
        requireFaultRun()

    def test_damagedStoreRefused(self) -> None:
        state = os.path.realpath(self.mktemp())
        os.makedirs(state)
        path = os.path.join(state, "jobs.sqlite3")
        store = JobStore(path)
        for n in range(300):
            store.insert(
                JobRecord(
                    id=f"{n:08d}-0000-4000-8000-000000000000",
                    command="x" * 300,
                    args=[],
                    owner="alice",
                    created_at=1.0,
                    status=_ended(),
                )
            )
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(os.urandom(4096))
        with open(path, "rb") as f:
            before = f.read()
        code, stderr = Twistd(self, state).startFailing()
        self.assertEqual(code, 1, stderr)
        lines = stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, stderr)
        # The state dir's path holds the word (this test's name): not that.
        self.assertIn("is damaged (", lines[0].replace(path, "PATH"))
        self.assertNotIn("Traceback", stderr)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_unwritableJobsFolderRefused(self) -> None:
        state = os.path.realpath(self.mktemp())
        jobs = os.path.join(state, "jobs")
        os.makedirs(jobs)
        subprocess.run(["mount", "--bind", jobs, jobs], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", jobs], check=False)
        subprocess.run(["mount", "-o", "remount,bind,ro", jobs], check=True)
        code, stderr = Twistd(self, state).startFailing()
        self.assertEqual(code, 1, stderr)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
        self.assertTrue(re.search(r"cannot use state dir .*Read-only", stderr), stderr)


def _ended() -> Any:
    from jobworker.jobs.records import JobStatus

    return JobStatus.COMPLETED
