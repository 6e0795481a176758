"""
Issue 18 against the real one-node Slurm cluster: C{after}/C{after_ok} are
Slurm's own C{--dependency=afterany:}/C{afterok:}, and jobworker's queue
comes first only with a running cap. Run by C{tox -e slurm}
(C{slurm-ci/run-tests.sh}); skipped elsewhere, saying why (L{SlurmCase}).
"""

from __future__ import annotations

from typing import Any

from jobworker.server.services import UsersReloadService

from .support import LiveServer, sleep
from .test_slurm import SlurmCase, squeueJobs


class SlurmDependencyTests(SlurmCase):
    async def reason(self, server: LiveServer, jobId: str) -> dict[str, Any]:
        """The job once it shows why it waits (the poll brings Slurm's reason)."""
        for _ in range(80):
            code, job = await server.json("GET", f"/jobs/{jobId}")
            assert code == 200, (code, job)
            if job["pending_reason"] or job["status"] != "PENDING":
                return job  # type: ignore[no-any-return]
            await sleep(0.25)
        raise AssertionError(f"job {jobId} never said why it waits: {job}")

    async def test_afterOkOnAFailedJobNeverRuns(self) -> None:
        """
        B after_ok A is submitted to Slurm at once (afterok on A's Slurm
        id), says "Dependency" while A runs; A fails, Slurm cancels B: B is
        FAILED "dependency A ended FAILED" and never ran.
        """
        server = self.server()
        a = await server.createJob("sh", "-c", "sleep 4; exit 1")
        b = await server.createJob(
            "sh", "-c", "echo ran; touch ran", after_ok=[a["id"]]
        )
        self.assertEqual(b["status"], "PENDING")
        self.assertTrue(b["slurm_job_id"].isdigit(), b)
        waiting = await self.reason(server, b["id"])
        self.assertEqual(
            (waiting["status"], waiting["pending_reason"]), ("PENDING", "Dependency")
        )
        slurm = squeueJobs()[b["slurm_job_id"]]
        self.assertEqual(
            slurm["dependency"], f"afterok:{a['slurm_job_id']}(unfulfilled)"
        )
        final = await self.waitFor(server, b["id"], ("FAILED", "COMPLETED"))
        self.assertEqual(final["status"], "FAILED", final)
        self.assertEqual(final["error"], f"dependency {a['id']} ended FAILED")
        self.assertIsNone(final["started_at"])
        self.assertIsNone(final["exit_code"])
        self.assertIsNone(final["pending_reason"])
        code, failed = await server.json("GET", f"/jobs/{a['id']}")
        self.assertEqual(
            (code, failed["status"], failed["exit_code"]), (200, "FAILED", 1)
        )
        slurm = squeueJobs()[b["slurm_job_id"]]
        self.assertEqual(
            (slurm["job_state"], slurm["state_reason"]),
            ("CANCELLED", "DependencyNeverSatisfied"),
        )
        self.assertEqual(await self.output(server, b["id"], "stdout"), b"")

    async def test_afterStartsOnceTheDependencyEnded(self) -> None:
        """
        B after A: held by Slurm ("Dependency") while A runs; A fails, B
        runs all the same, and only after A ended (each prints the time).
        """
        server = self.server()
        a = await server.createJob("sh", "-c", "sleep 3; date +%s.%N; exit 1")
        b = await server.createJob("date", "+%s.%N", after=[a["id"]])
        waiting = await self.reason(server, b["id"])
        self.assertEqual(
            (waiting["status"], waiting["pending_reason"]), ("PENDING", "Dependency")
        )
        self.assertEqual(
            squeueJobs()[b["slurm_job_id"]]["dependency"],
            f"afterany:{a['slurm_job_id']}(unfulfilled)",
        )
        final = await self.waitFor(server, b["id"], ("FAILED", "COMPLETED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        code, first = await server.json("GET", f"/jobs/{a['id']}")
        self.assertEqual(
            (code, first["status"], first["exit_code"]), (200, "FAILED", 1)
        )
        aEnded = float(await self.output(server, a["id"], "stdout"))
        bStarted = float(await self.output(server, b["id"], "stdout"))
        self.assertGreater(bStarted, aEnded)

    async def test_stoppedDependencyThatExitsZero(self) -> None:
        """
        A exits 0 on TERM: stopped, it is STOPPED for jobworker but
        COMPLETED for Slurm, whose afterok alone would run B. jobworker
        cancels B when A's stop begins: B is FAILED "dependency A ended
        STOPPED" and never ran.
        """
        server = self.server()
        a = await server.createJob(
            "sh", "-c", "trap 'exit 0' TERM; echo up; sleep 60 & wait"
        )
        b = await server.createJob("echo", "ran", after_ok=[a["id"]])
        await self.printed(a["id"], 1)
        waiting = await self.reason(server, b["id"])
        self.assertEqual(waiting["pending_reason"], "Dependency")
        # Slurm cancels, rather than signals, a job whose batch launch it has
        # not settled yet: seen once in CI, TERM 0.13 s after the allocation
        # left A CANCELLED with no exit, and this test's premise (COMPLETED
        # for Slurm) did not hold. Let the launch settle first.
        await sleep(2)
        # A grace long enough for A to exit by itself (no scancel of A).
        code, stopped = await server.json(
            "POST", f"/jobs/{a['id']}/stop", "alice", {"grace_seconds": 30}
        )
        self.assertEqual((code, stopped["status"]), (200, "STOPPED"), stopped)
        final = await self.waitFor(server, b["id"], ("FAILED", "COMPLETED"))
        self.assertEqual(final["status"], "FAILED", final)
        self.assertEqual(final["error"], f"dependency {a['id']} ended STOPPED")
        self.assertIsNone(final["started_at"])
        jobs = squeueJobs()
        self.assertEqual(jobs[a["slurm_job_id"]]["job_state"], "COMPLETED")
        # Cancelled by jobworker while still waiting, not by Slurm.
        self.assertEqual(
            (
                jobs[b["slurm_job_id"]]["job_state"],
                jobs[b["slurm_job_id"]]["state_reason"],
            ),
            ("CANCELLED", "Dependency"),
        )
        self.assertEqual(await self.output(server, b["id"], "stdout"), b"")

    async def test_removedOwnersWaitingJobNeverRuns(self) -> None:
        """
        B after A waits in Slurm's queue; alice is removed from the users
        file (a reload): jobworker cancels B in Slurm and records it FAILED,
        never started, as its own queue does (Slurm would have run it as
        jwalice once A ended).
        """
        server = self.server()
        a = await server.createJob("sh", "-c", "echo up; sleep 60")
        b = await server.createJob("sh", "-c", "echo ran", after=[a["id"]])
        await self.waitFor(server, a["id"], ("RUNNING",))  # (not refused)
        waiting = await self.reason(server, b["id"])
        self.assertEqual(waiting["status"], "PENDING", waiting)
        with open(self.users, encoding="utf-8") as f:
            lines = [line for line in f if not line.startswith("alice:")]
        with open(self.users, "w", encoding="utf-8") as f:
            f.writelines(lines)
        [reload] = [s for s in server.service if isinstance(s, UsersReloadService)]
        await reload.reload()
        final = await self.waitFor(server, b["id"], ("FAILED", "COMPLETED", "STOPPED"))
        self.assertEqual(final["status"], "FAILED", final)
        self.assertEqual(
            final["error"],
            "cannot start: its owner alice is no longer a user of this server",
        )
        self.assertIsNone(final["started_at"])
        self.assertEqual(squeueJobs()[b["slurm_job_id"]]["job_state"], "CANCELLED")
        code, body = await server.json("POST", f"/jobs/{a['id']}/stop", "ada")
        self.assertIn(code, (200, 202), body)
        stopped = await self.waitFor(server, a["id"], ("STOPPED",))
        self.assertEqual(stopped["status"], "STOPPED", stopped)
        self.assertEqual(await self.output(server, b["id"], "stdout", "ada"), b"")

    async def test_capKeepsJobworkersQueueFirst(self) -> None:
        """
        With --max-running, B after_ok A waits in jobworker's queue (no
        Slurm job yet) and is submitted once A completed.
        """
        server = self.server("--max-running=4")
        a = await server.createJob("sleep", "2")
        b = await server.createJob("echo", "after", after_ok=[a["id"]])
        self.assertEqual(b["status"], "PENDING")
        self.assertIsNone(b["slurm_job_id"])
        self.assertEqual(b["pending_reason"], f"waiting for job {a['id']}")
        final = await self.waitFor(server, b["id"], ("FAILED", "COMPLETED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(await self.output(server, b["id"], "stdout"), b"after\n")
        slurm = squeueJobs()[final["slurm_job_id"]]
        self.assertIn(slurm["dependency"], ("", None))
