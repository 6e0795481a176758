"""
Issue 18, the Slurm executor: C{after}/C{after_ok} are Slurm's
C{--dependency=afterany:}/C{afterok:} on the Slurm ids, and a job whose
C{after_ok} failed ends FAILED with the queue's words; jobworker's own queue
comes first only while a running cap is set. On fake Slurm commands, as in
L{tests.test_slurmunit}.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.slurm.dependencies import (
    dependencyOptions,
    failedDependency,
)
from jobworker.executors.slurm.job import DEPENDENCY_PATIENCE
from jobworker.jobs.manager import JobManager
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.validation import JobRequest

from . import test_slurmunit as unit
from .test_slurmunit import state

NEVER = replace(state("CANCELLED"), reason="DependencyNeverSatisfied")
HELD = replace(state("PENDING"), reason="Dependency")


class DependencyOptionsTests(SynchronousTestCase):
    """The sbatch options of after/after_ok, as Slurm's syntax wants them."""

    def test_none(self) -> None:
        self.assertEqual(dependencyOptions([], []), [])

    def test_afterIsAfterany(self) -> None:
        self.assertEqual(
            dependencyOptions(["7", "9"], []),
            ["--dependency=afterany:7:9", "--kill-on-invalid-dep=yes"],
        )

    def test_afterOkIsAfterok(self) -> None:
        self.assertEqual(
            dependencyOptions([], ["7"]),
            ["--dependency=afterok:7", "--kill-on-invalid-dep=yes"],
        )

    def test_bothJoinedByComma(self) -> None:
        """Both kinds: one --dependency, joined by "," (all must hold)."""
        self.assertEqual(
            dependencyOptions(["7"], ["8", "9"]),
            ["--dependency=afterany:7,afterok:8:9", "--kill-on-invalid-dep=yes"],
        )

    def test_inBothIsAfterok(self) -> None:
        """A job named in both is waited for as after_ok only (the stricter)."""
        self.assertEqual(
            dependencyOptions(["7", "8"], ["7"]),
            ["--dependency=afterany:8,afterok:7", "--kill-on-invalid-dep=yes"],
        )


def record(jobId: str, status: JobStatus) -> JobRecord:
    found = JobRecord(id=jobId, command="x", args=[], owner="x", created_at=0.0)
    found.status = status
    return found


class VerdictTests(SynchronousTestCase):
    """Which after_ok made Slurm cancel a job (pure)."""

    def test_firstFailedNamed(self) -> None:
        records = {
            "a": record("a", JobStatus.COMPLETED),
            "b": record("b", JobStatus.STOPPED),
            "c": record("c", JobStatus.FAILED),
        }
        verdict = failedDependency(["a", "b", "c"], records.get)
        self.assertEqual(verdict.error, "dependency b ended STOPPED")

    def test_notEndedYetWaits(self) -> None:
        records = {"a": record("a", JobStatus.RUNNING)}
        verdict = failedDependency(["a"], records.get)
        self.assertEqual((verdict.error, verdict.waiting), (None, True))

    def test_noneFailedNoneWaiting(self) -> None:
        """All completed, or deleted: nothing to name (Slurm's words then)."""
        records = {"a": record("a", JobStatus.COMPLETED)}
        verdict = failedDependency(["a", "gone"], records.get)
        self.assertEqual((verdict.error, verdict.waiting), (None, False))


class DependencyCase(SynchronousTestCase):
    """The manager and the Slurm executor on fake Slurm commands."""

    setUp = unit.ExecutorTests.setUp
    poll = unit.ExecutorTests.poll

    policy: JobPolicy | None = None

    def makeManager(self) -> JobManager:
        manager = JobManager(
            self.reactor, self.stateDir, self.executor, policy=self.policy
        )
        self.addCleanup(manager.close)
        return manager

    def create(self, *argv: str, **kwargs: Any) -> JobRecord:
        """Create a job; it is sbatch'ed at once unless the queue keeps it."""
        before = len(self.commands.submissions)
        created = self.manager.create(
            JobRequest(
                command=argv[0] if argv else "true",
                args=list(argv[1:]),
                env={},
                cwd=None,
                **kwargs,
            ),
            owner="alice",
        )
        if len(self.commands.submissions) > before:
            self.accept(created)
        return created

    def accept(self, created: JobRecord) -> None:
        """sbatch answers with Slurm job 100+n."""
        accepted = ensureDeferred(self.manager.accepted(created))
        self.commands.submissions[-1][2].callback(
            str(100 + len(self.commands.submissions))
        )
        self.successResultOf(accepted)

    def options(self, index: int) -> list[str]:
        return self.commands.submissions[index][0]

    def dependency(self, index: int) -> list[str]:
        return [
            o
            for o in self.options(index)
            if o.startswith(("--dependency=", "--kill-on-invalid-dep"))
        ]

    def restart(self) -> None:
        self.successResultOf(self.manager.shutdown())
        self.manager.close()
        self.manager = self.makeManager()
        self.manager.recover()


class HeldBySlurmTests(DependencyCase):
    """Without a running cap: Slurm holds the jobs (--dependency)."""

    def test_afterOkSubmittedAtOnce(self) -> None:
        """
        B after_ok A, A running: B goes to sbatch at once with afterok on
        A's Slurm id; PENDING, not in jobworker's queue, with Slurm's reason.
        """
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.assertEqual(len(self.commands.submissions), 2)
        self.assertEqual(
            self.dependency(1),
            ["--dependency=afterok:101", "--kill-on-invalid-dep=yes"],
        )
        self.assertEqual(self.dependency(0), [])
        seen = self.manager.record(b.id)
        self.assertIs(seen.status, JobStatus.PENDING)
        self.assertFalse(seen.queued)
        self.assertEqual(seen.slurm_job_id, "102")
        self.poll({"101": state("RUNNING"), "102": HELD})
        seen = self.manager.record(b.id)
        self.assertEqual(seen.pending_reason, "Dependency")
        self.assertEqual(seen.toJSON()["pending_reason"], "Dependency")
        self.assertEqual(seen.toJSON()["after_ok"], [a.id])

    def test_afterAndAfterOkTogether(self) -> None:
        a = self.create("true")
        c = self.create("true")
        self.create("true", after=(a.id,), after_ok=(c.id,))
        self.assertEqual(
            self.dependency(2),
            ["--dependency=afterany:101,afterok:102", "--kill-on-invalid-dep=yes"],
        )

    def test_failedDependencyFailsIt(self) -> None:
        """
        A fails; Slurm cancels B (DependencyNeverSatisfied): B is FAILED
        "dependency A ended FAILED", never started, no exit code.
        """
        a = self.create("false")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.poll({"101": state("FAILED", 1), "102": NEVER})
        final = self.manager.record(b.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual(final.error, f"dependency {a.id} ended FAILED")
        self.assertIsNone(final.started_at)
        self.assertIsNone(final.exit_code)
        self.assertIsNone(final.pending_reason)
        self.assertEqual(self.commands.cancels, [])  # Slurm's own doing

    def test_dependencysEndSeenLater(self) -> None:
        """
        Slurm cancelled B while A still looks alive to jobworker (squeue
        says COMPLETING during A's clean-up): B waits for A's end to name it.
        """
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.poll({"101": state("COMPLETING"), "102": NEVER})
        self.assertIs(self.manager.record(b.id).status, JobStatus.PENDING)
        self.poll({"101": state("CANCELLED", 0, 9), "102": NEVER})
        final = self.manager.record(b.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual(final.error, f"dependency {a.id} ended FAILED")

    def test_waitIsBounded(self) -> None:
        """A dependency that never ends in jobworker's eyes: Slurm's words."""
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        for _ in range(int(DEPENDENCY_PATIENCE) + 1):
            self.poll({"101": state("RUNNING"), "102": NEVER})
        final = self.manager.record(b.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual(
            final.error,
            "never ran: Slurm ended it CANCELLED while queued "
            "(DependencyNeverSatisfied)",
        )
        self.assertIsNone(final.exit_code)
        self.assertIs(self.manager.record(a.id).status, JobStatus.RUNNING)

    def test_afterRunsWhateverTheEnd(self) -> None:
        """B after A: A fails, B runs (Slurm's afterany)."""
        a = self.create("false")
        b = self.create("echo", "b", after=(a.id,))
        self.assertEqual(
            self.dependency(1),
            ["--dependency=afterany:101", "--kill-on-invalid-dep=yes"],
        )
        self.poll({"101": state("FAILED", 1), "102": HELD})
        self.poll({"102": state("COMPLETED")})
        self.assertIs(self.manager.record(b.id).status, JobStatus.COMPLETED)
        self.assertEqual(self.commands.cancels, [])

    def test_stoppedDependencyCancelsWhatSlurmWouldRun(self) -> None:
        """
        A is stopped: it will be STOPPED for jobworker, but COMPLETED for
        Slurm if it exits 0 on TERM, and Slurm's afterok would let B run.
        B is cancelled (as its owner) as soon as A's stop is under way, and
        ends FAILED "dependency A ended STOPPED" once A has ended, however
        long A's stop takes.
        """
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.poll({"101": state("RUNNING"), "102": HELD})
        self.manager.stop(a.id, "alice")
        self.assertEqual(self.commands.signals, [("101", "TERM")])
        self.assertEqual(self.commands.cancels, ["102"])
        self.assertEqual(self.commands.actors[-1][0], "cancel")
        cancelled = replace(state("CANCELLED"), reason="Dependency")
        for _ in range(int(DEPENDENCY_PATIENCE) + 1):
            self.poll({"101": state("RUNNING"), "102": cancelled})
        self.assertIs(self.manager.record(b.id).status, JobStatus.PENDING)
        self.poll({"101": state("COMPLETED"), "102": cancelled})
        self.assertIs(self.manager.record(a.id).status, JobStatus.STOPPED)
        final = self.manager.record(b.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual(final.error, f"dependency {a.id} ended STOPPED")

    def test_lostDependencyCancels(self) -> None:
        """
        Slurm forgot A (FAILED for jobworker, unknown to Slurm, which would
        take the afterok as met): jobworker cancels B.
        """
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.poll({"102": HELD})
        self.assertIn("no longer knows", self.manager.record(a.id).error or "")
        self.assertEqual(self.commands.cancels, ["102"])
        self.poll({"102": replace(state("CANCELLED"), reason="Dependency")})
        self.assertEqual(
            self.manager.record(b.id).error, f"dependency {a.id} ended FAILED"
        )

    def test_dependencyFailsBeforeSbatchAnswers(self) -> None:
        """
        A ends STOPPED while B's sbatch is still out: B is cancelled as soon
        as sbatch gives its Slurm id.
        """
        a = self.create("sleep", "100")
        b = self.manager.create(
            JobRequest(command="true", args=[], env={}, cwd=None, after_ok=(a.id,)),
            "alice",
        )
        self.manager.stop(a.id, "alice")
        self.poll({"101": state("COMPLETED")})
        self.assertIs(self.manager.record(a.id).status, JobStatus.STOPPED)
        self.assertEqual(self.commands.cancels, ["101"])
        self.accept(b)
        self.assertEqual(self.commands.cancels, ["101", "102"])
        self.poll({"102": replace(state("CANCELLED"), reason="Dependency")})
        self.assertEqual(
            self.manager.record(b.id).error, f"dependency {a.id} ended STOPPED"
        )

    def test_stoppedWhileHeldIsStopped(self) -> None:
        """Stopping B while it waits on A: STOPPED, as any pending Slurm job."""
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.manager.stop(b.id, "alice")
        self.assertEqual(self.commands.cancels, ["102"])
        self.poll({"101": state("RUNNING"), "102": state("CANCELLED")})
        self.assertIs(self.manager.record(b.id).status, JobStatus.STOPPED)

    def test_endedDependenciesAsToday(self) -> None:
        """
        Already COMPLETED: no Slurm dependency needed. Already FAILED: an
        after_ok job is FAILED at once, never submitted; an after one runs.
        """
        ok = self.create("true")
        bad = self.create("false")
        self.poll({"101": state("COMPLETED"), "102": state("FAILED", 1)})
        self.create("true", after_ok=(ok.id,), after=(bad.id,))
        self.assertEqual(len(self.commands.submissions), 3)
        self.assertEqual(self.dependency(2), [])
        doomed = self.create("true", after_ok=(ok.id, bad.id))
        self.assertEqual(len(self.commands.submissions), 3)
        self.assertIs(doomed.status, JobStatus.FAILED)
        self.assertEqual(doomed.error, f"dependency {bad.id} ended FAILED")

    def test_liveAndEndedMixed(self) -> None:
        """Only the dependencies still live are Slurm's to wait for."""
        done = self.create("true")
        self.poll({"101": state("COMPLETED")})
        live = self.create("sleep", "100")
        self.create("true", after_ok=(done.id, live.id))
        self.assertEqual(self.dependency(2)[0], "--dependency=afterok:102")

    def test_unsubmittedDependencyWaitsInTheQueue(self) -> None:
        """
        A's sbatch has not answered (no Slurm id to name): B waits in
        jobworker's queue, and is submitted once A ended.
        """
        a = self.manager.create(
            JobRequest(command="sleep", args=["1"], env={}, cwd=None), "alice"
        )
        b = self.create("true", after=(a.id,))
        self.assertEqual(len(self.commands.submissions), 1)
        self.assertTrue(self.manager.record(b.id).queued)
        self.assertEqual(
            self.manager.record(b.id).pending_reason, f"waiting for job {a.id}"
        )
        self.accept(a)
        self.poll({"101": state("COMPLETED")})
        self.assertEqual(len(self.commands.submissions), 2)
        self.assertEqual(self.dependency(1), [])

    def test_noCapStraightToSbatch(self) -> None:
        """Without a running cap, every job goes to sbatch at once."""
        for _ in range(5):
            self.create("sleep", "100")
        self.assertEqual(len(self.commands.submissions), 5)

    def test_heldAcrossRestart(self) -> None:
        """
        The server restarts with B held on A: A's failure still names A.
        A ended FAILED before the next restart, C still pending in Slurm:
        the restarted server cancels C and fails it the same way.
        """
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        c = self.create("echo", "c", after_ok=(a.id,))
        self.poll({"101": state("RUNNING"), "102": HELD, "103": HELD})
        self.restart()
        self.poll({"101": state("FAILED", 1), "102": NEVER, "103": HELD})
        final = self.manager.record(b.id)
        self.assertEqual(final.error, f"dependency {a.id} ended FAILED")
        # Slurm saw A fail: it cancels C itself (not yet, here).
        self.assertEqual(self.commands.cancels, [])
        self.restart()
        # Whether Slurm saw A fail is not known after a restart: cancelled.
        self.assertEqual(self.commands.cancels, ["103"])
        self.poll({"103": replace(state("CANCELLED"), reason="Dependency")})
        self.assertEqual(
            self.manager.record(c.id).error, f"dependency {a.id} ended FAILED"
        )


class CappedTests(DependencyCase):
    """With a running cap, jobworker's queue comes first, as before."""

    policy = JobPolicy(maxRunning=5)

    test_endedDependenciesAsToday = HeldBySlurmTests.test_endedDependenciesAsToday
    test_unsubmittedDependencyWaits = (
        HeldBySlurmTests.test_unsubmittedDependencyWaitsInTheQueue
    )

    def test_queuedUntilTheDependencyEnds(self) -> None:
        """B after_ok A with a cap: in jobworker's queue, no sbatch until A ends."""
        a = self.create("sleep", "100")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.assertEqual(len(self.commands.submissions), 1)
        seen = self.manager.record(b.id)
        self.assertTrue(seen.queued)
        self.assertEqual(seen.pending_reason, f"waiting for job {a.id}")
        self.poll({"101": state("COMPLETED")})
        self.assertEqual(len(self.commands.submissions), 2)
        self.assertEqual(self.dependency(1), [])

    def test_failedDependencyNeverSubmitted(self) -> None:
        a = self.create("false")
        b = self.create("echo", "b", after_ok=(a.id,))
        self.poll({"101": state("FAILED", 1)})
        self.assertEqual(len(self.commands.submissions), 1)
        final = self.manager.record(b.id)
        self.assertEqual(final.error, f"dependency {a.id} ended FAILED")

    def test_capHoldsBeforeSbatch(self) -> None:
        """Past the cap, a job waits in jobworker's queue, not in Slurm."""
        for _ in range(6):
            self.create("sleep", "100")
        self.assertEqual(len(self.commands.submissions), 5)
