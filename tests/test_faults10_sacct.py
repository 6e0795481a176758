"""
Fault round 10, finding 1: Slurm's accounting (sacct, slurmdbd) failing when
jobworker, after a restart, finds a job squeue no longer knows. The job was
closed FAILED "Slurm no longer knows job N" for good, though accounting had
its real end a poll later. A failure to read accounting keeps the job as it
was until accounting answers (or for an hour at most); only accounting that
answers and names no entry (a site that keeps none) makes it lost at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from jobworker.errors import Conflict
from jobworker.executors.slurm import job as slurmJob
from jobworker.executors.slurm import poll as slurmPoll
from jobworker.executors.slurm.documents import SlurmError, SlurmState
from jobworker.jobs.records import JobStatus

from . import test_slurmunit as unit
from .test_slurmunit import state

#: What SlurmCommands raises for "sacct: error: Problem talking to the
#: database: Connection refused" (slurmdbd restarting).
REFUSED = SlurmError(
    "sacct: Problem talking to the database: Connection refused", unreachable=True
)
#: An accounting failure that is not "unreachable".
GARBLED = SlurmError("sacct: unexpected output (3 fields, 9 expected)")


class AccountingFailureTests(SynchronousTestCase):
    # The Slurm executor on fake commands, as in test_slurmunit.
    setUp = unit.ExecutorTests.setUp
    makeManager = unit.ExecutorTests.makeManager
    submit = unit.ExecutorTests.submit
    poll = unit.ExecutorTests.poll

    def restartAfterPurge(self, *failures: SlurmError) -> Any:
        """
        A job seen RUNNING; jobworker restarts while it ends (FAILED, exit
        3) and is purged from squeue. Accounting raises each of
        C{failures} in turn, then answers with the job's own entry; the
        calls it got are in C{self.commands.accountingAsked}.
        """
        record = self.submit("false")
        self.poll({"101": state("RUNNING")})
        created = self.manager.record(record.id).created_at
        self.successResultOf(self.manager.shutdown())
        self.manager.close()
        self.manager = self.makeManager()
        self.manager.recover()
        ours = replace(
            state("FAILED", 3, jobName=f"jobworker-{record.id}"),
            submitTime=created + 1,
        )
        pending = list(failures)

        async def accounting(ids: list[str]) -> dict[str, list[SlurmState]]:
            self.commands.accountingAsked.append(list(ids))
            if pending:
                raise pending.pop(0)
            return {"101": [ours]}

        self.commands.accounting = accounting  # type: ignore[method-assign]
        return record

    def logged(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(slurmPoll.SlurmPoll, "log", Logger(observer=events.append))
        return events

    def test_unreachableOnceThenAnswers(self) -> None:
        """
        Accounting unreachable at the first poll after the restart: the job
        stays RUNNING; at the next poll accounting answers, and the job ends
        as it did (FAILED, exit 3).
        """
        record = self.restartAfterPurge(REFUSED)
        self.poll({})
        kept = self.manager.record(record.id)
        self.assertIs(kept.status, JobStatus.RUNNING)
        self.assertIsNone(kept.error)
        self.poll({})
        ended = self.manager.record(record.id)
        self.assertEqual((ended.status, ended.exit_code), (JobStatus.FAILED, 3))
        self.assertNotIn("no longer knows", ended.error or "")
        self.assertEqual(self.commands.accountingAsked, [["101"], ["101"]])

    def test_otherErrorOnceThenAnswers(self) -> None:
        """An accounting failure of another kind keeps the job too."""
        record = self.restartAfterPurge(GARBLED)
        self.poll({})
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.poll({})
        ended = self.manager.record(record.id)
        self.assertEqual((ended.status, ended.exit_code), (JobStatus.FAILED, 3))

    def test_staysUnreachable(self) -> None:
        """
        Accounting stays unreachable: the job is not ended, and each poll
        asks again; warned of once, however many polls fail, and told when
        accounting answers again.
        """
        events = self.logged()
        record = self.restartAfterPurge(*[REFUSED] * 20)
        for _ in range(20):
            self.poll({})
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.assertEqual(self.commands.accountingAsked, [["101"]] * 20)
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in warnings])
        self.assertEqual(warnings[0]["ids"], "101")
        self.assertIn("Connection refused", warnings[0]["error"])
        self.assertIn("Connection refused", formatEvent(warnings[0]))
        self.poll({})
        ended = self.manager.record(record.id)
        self.assertEqual((ended.status, ended.exit_code), (JobStatus.FAILED, 3))
        infos = [
            formatEvent(e)
            for e in events
            if e["log_level"] is LogLevel.info and "accounting" in formatEvent(e)
        ]
        self.assertEqual(len(infos), 1, infos)

    def test_otherJobsStillFollowed(self) -> None:
        """
        While accounting cannot be read, the jobs squeue still knows are
        followed as usual (slurmctld answered), and Slurm is not called
        down: new jobs are still taken (the health is degraded, with why).
        """
        record = self.restartAfterPurge(*[REFUSED] * 5)
        other = self.submit("true")
        self.poll({"102": state("RUNNING")})
        self.assertIs(self.manager.record(other.id).status, JobStatus.RUNNING)
        self.poll({"102": state("COMPLETED")})
        self.assertIs(self.manager.record(other.id).status, JobStatus.COMPLETED)
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        # Degraded, saying why (Slurm user round 33: it said ok), not down:
        # a new job is still taken.
        self.assertIn("accounting cannot be read", self.executor.health().reason or "")
        self.submit("true")

    def test_stopOfAForgottenJobAnswersSoon(self) -> None:
        """
        A stop of a job Slurm has forgotten ("Invalid job id") waits for
        the poll to record its end, to answer 409 with it. While accounting
        cannot be read, that is up to an hour: the stop answers 409 after
        L{job.ENDED_ANSWER_AFTER} seconds all the same, saying its end is
        not known yet; the job is recorded when accounting answers.
        """
        record = self.restartAfterPurge(*[REFUSED] * 100)
        self.commands.failNext = SlurmError(
            "scancel: Kill job error on job id 101: Invalid job id specified"
        )
        self.commands.nowSays = {}
        stopped = self.manager.stop(record.id, "alice")
        self.assertNoResult(stopped)
        self.poll({})
        self.assertNoResult(stopped)
        self.reactor.advance(slurmJob.ENDED_ANSWER_AFTER)
        conflict = self.failureResultOf(stopped, Conflict).value
        self.assertIn("its end is not known yet", str(conflict))
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.assertIsNone(self.manager.record(record.id).stopped_by)

    def test_unreadableForAnHour(self) -> None:
        """
        Accounting cannot be read for an hour: the job ends FAILED, saying
        so, rather than stay RUNNING for ever.
        """
        record = self.restartAfterPurge(*[GARBLED] * 10_000)
        self.poll({})  # the first failure
        self.reactor.advance(slurmPoll.ACCOUNTING_PATIENCE - 2.0)
        self.commands.polls[-1].callback({})
        self.poll({})  # ACCOUNTING_PATIENCE - 1 s after the first failure
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.poll({})
        ended = self.manager.record(record.id)
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertIsNone(ended.exit_code)
        self.assertIn("Slurm no longer knows job 101", ended.error or "")
        self.assertIn("accounting could not be read", ended.error or "")
        self.assertIn("unexpected output", ended.error or "")

    def test_withoutAccountingStillLost(self) -> None:
        """
        A site that keeps no accounting (sacct answers, naming no entry):
        the job is FAILED "Slurm no longer knows" at once, as before.
        """
        record = self.submit("false")
        self.poll({"101": state("RUNNING")})
        self.successResultOf(self.manager.shutdown())
        self.manager.close()
        self.manager = self.makeManager()
        self.manager.recover()
        self.poll({})
        ended = self.manager.record(record.id)
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertIsNone(ended.exit_code)
        self.assertIn("Slurm no longer knows job 101", ended.error or "")
        self.assertEqual(self.commands.accountingAsked, [["101"]])
