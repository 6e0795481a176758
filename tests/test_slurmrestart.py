"""
Issue 13, defect 8: a Slurm stop in progress survives a restart of jobworker:
the intention to stop (who, and when TERM was sent) is stored, and after a
restart the escalation (scancel after the grace) goes on where it stopped.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.records import JobStatus
from jobworker.jobs.stopping import StopRequest

from . import test_slurmunit as unit
from .test_slurmunit import state


class StopAcrossRestartTests(SynchronousTestCase):
    # The Slurm executor on fake commands, as in test_slurmunit.
    setUp = unit.ExecutorTests.setUp
    makeManager = unit.ExecutorTests.makeManager
    submit = unit.ExecutorTests.submit
    poll = unit.ExecutorTests.poll

    def restart(self) -> None:
        self.successResultOf(self.manager.shutdown())
        self.manager.close()
        self.manager = self.makeManager()
        self.manager.recover()

    def test_escalationContinuesAfterRestart(self) -> None:
        """TERM sent, restart 2 s later: scancel follows 3 s after that."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice")
        self.assertEqual(self.commands.signals, [("101", "TERM")])
        self.reactor.advance(2.0)
        self.restart()
        again = self.manager.record(record.id)
        self.assertEqual(again.stopped_by, "alice")
        self.assertEqual(self.commands.cancels, [])
        self.reactor.advance(2.9)
        self.assertEqual(self.commands.cancels, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.commands.cancels, ["101"])
        for pending in self.commands.polls:
            if not pending.called:
                pending.callback({"101": state("RUNNING")})
        self.poll({"101": state("CANCELLED", 0, 9)})
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.STOPPED)
        self.assertEqual(final.stopped_by, "alice")

    def test_graceOverWhileDownCancelsAtOnce(self) -> None:
        """The grace passed while jobworker was down: scancel at start-up."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice")
        self.reactor.advance(30.0)
        self.commands.cancels.clear()
        self.restart()
        self.reactor.advance(0)
        self.assertEqual(self.commands.cancels, ["101"])

    def test_stopsOwnGraceAfterRestart(self) -> None:
        """
        A stop's own grace (30 s here) held across a restart: the server's
        --stop-grace was used instead, and the job was cancelled 27 s early.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice", StopRequest(grace=30.0))
        self.reactor.advance(2.0)
        self.restart()
        self.reactor.advance(27.9)
        self.assertEqual(self.commands.cancels, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.commands.cancels, ["101"])

    def test_stopsOwnSignalSentAgain(self) -> None:
        """
        A stop asked with INT whose signal may not have gone out (the server
        died before storing when it did): the restart sends INT, not TERM.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        stored = self.manager.record(record.id)
        stored.stopped_by, stored.stop_signal = "alice", "SIGINT"
        self.manager._store.update(stored)
        self.restart()
        self.reactor.advance(0)
        self.assertEqual(self.commands.signals, [("101", "INT")])
