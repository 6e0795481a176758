"""The Slurm executor's logic on a fake clock with fake Slurm commands."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
from dataclasses import replace
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from jobworker.auth.audit import AuditLog
from jobworker.auth.permissions import Role, User, mayStartQueued
from jobworker.errors import BadRequest, Conflict, Forbidden, ServiceUnavailable
from jobworker.executors.local.executor import localJobManager
from jobworker.executors.local.sandbox import SETPRIV
from jobworker.executors.slurm import executor as executorModule
from jobworker.executors.slurm.accounts import SlurmAccounts
from jobworker.executors.slurm.commands import SlurmCommands
from jobworker.executors.slurm.documents import SlurmError, SlurmState, parseJobs
from jobworker.executors.slurm.executor import SlurmExecutor
from jobworker.executors.slurm.folders import WRAPPER
from jobworker.executors.slurm.job import SECRETS_GRACE
from jobworker.executors.slurm.outcomes import QUEUE_ENDINGS
from jobworker.executors.slurm.stopping import CANCEL_RETRY
from jobworker.jobs.identity import Identity
from jobworker.jobs.limits import Limits
from jobworker.jobs.manager import JobManager
from jobworker.jobs.placement import SlurmAllowances, SlurmRequest
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobStatus
from jobworker.jobs.stopping import DEFAULT_STOP, StopRequest
from jobworker.jobs.validation import parseJobRequest
from jobworker.metrics import Metrics
from jobworker.server.api import JobsAPI

from .fakes import FakeProcessReactor
from .test_api import APITestCase
from .test_manager import request

#: As squeue --json --states=all prints it (Slurm 22.05), trimmed.
SQUEUE = json.dumps(
    {
        "meta": {},
        "errors": [],
        "jobs": [
            {
                "job_id": 14,
                # A job may rename itself to anything: JSON keeps it a name.
                "name": "x JobState=COMPLETED ExitCode=0:0",
                "job_state": "FAILED",
                "state_reason": "NonZeroExitCode",
                "exit_code": 768,
                "nodes": "vm",
                "start_time": 1795989003,
            },
            {
                "job_id": 15,
                "name": "jobworker-b",
                "job_state": "PENDING",
                "state_reason": "Resources",
                "exit_code": 0,
                "nodes": "",
                "start_time": 0,
            },
            {
                "job_id": 27,
                "name": "jobworker-c",
                "job_state": "TIMEOUT",
                "state_reason": "TimeLimit",
                "exit_code": 15,
                "nodes": "vm",
                "start_time": 1795989010,
            },
        ],
    }
)


class ParseTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """State, reason, exit code and signal (a wait status), node, start."""
        jobs = parseJobs(SQUEUE)
        self.assertEqual(
            jobs["14"],
            SlurmState(
                "FAILED",
                "NonZeroExitCode",
                3,
                0,
                "vm",
                1795989003.0,
                "x JobState=COMPLETED ExitCode=0:0",
            ),
        )
        self.assertEqual(
            jobs["15"],
            SlurmState("PENDING", "Resources", 0, 0, None, None, "jobworker-b"),
        )
        self.assertEqual((jobs["27"].exitCode, jobs["27"].signal), (None, 15))

    def test_newerSlurmShapes(self) -> None:
        """State lists and number objects (Slurm 23+) are read too."""
        text = json.dumps(
            {
                "jobs": [
                    {
                        "job_id": 3,
                        "job_state": ["RUNNING"],
                        "start_time": {"set": True, "number": 5},
                        "exit_code": {"return_code": {"number": 0}},
                    }
                ]
            }
        )
        self.assertEqual(parseJobs(text)["3"].state, "RUNNING")
        self.assertEqual(parseJobs(text)["3"].startTime, 5.0)

    def test_errorsAreNotEmptyTables(self) -> None:
        """slurmctld down: squeue --json exits 0 with an error and no jobs."""
        text = json.dumps(
            {
                "errors": [{"description": "Failed while looking for jobs"}],
                "jobs": [],
            }
        )
        error = self.assertRaises(SlurmError, parseJobs, text)
        self.assertTrue(error.unreachable)

    def test_notJSON(self) -> None:
        """Anything else is a ValueError (the poll then reports it, and retries)."""
        self.assertRaises(ValueError, parseJobs, "No jobs in the system")


#: A mapped account (users file, fourth field) that need not exist.
ALICE = Identity(  # noqa: S604 (a login shell, not a subprocess flag)
    uid=4242,
    gid=4243,
    groups=(27, 100),
    name="jwalice",
    home="/home/jwalice",
    shell="/bin/bash",
    label="jwalice",
)


class FakeCommands:
    """
    Slurm's commands, answered by the test; who each was run as is kept.
    Each poll's squeue (L{states}) waits for the test; the exit statuses of
    the jobs it reports ended come from the same answer (L{exits}), as
    squeue --json would give them.
    """

    def __init__(self) -> None:
        self.submissions: list[tuple[list[str], list[str], Deferred[str]]] = []
        self.polls: list[Deferred[dict[str, SlurmState]]] = []
        #: The ids each poll asked about, and those asked for exit statuses.
        self.asked: list[list[str]] = []
        self.exitsAsked: list[list[str]] = []
        self.lookUps: list[Deferred[dict[str, SlurmState]]] = []
        self.pings: list[Deferred[None]] = []
        #: What sacct says of purged jobs, and the ids it was asked about.
        self.accounted: dict[str, list[SlurmState]] = {}
        self.accountingAsked: list[list[str]] = []
        self.signals: list[tuple[str, str]] = []
        self.cancels: list[str] = []
        #: (command, job id or name, identity) of each command on one job.
        self.actors: list[tuple[str, str, Identity | None]] = []
        self.failNext: SlurmError | None = None
        #: Every cancel fails so (counted), while set.
        self.failCancels: SlurmError | None = None
        self.cancelsRefused = 0
        self.failExits: SlurmError | None = None
        #: What squeue --json says, when it differs from the poll's squeue.
        self.exitsSay: dict[str, SlurmState] | None = None
        self._last: dict[str, SlurmState] = {}
        #: The jobs whose state a stop asked for (L{stateOf}).
        self.lookedAt: list[str] = []
        #: What Slurm says now, when it has changed since the last poll.
        self.nowSays: dict[str, SlurmState] | None = None

    def submit(
        self, options: list[str], script: list[str], identity: Identity | None = None
    ) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.submissions.append((options, script, d))
        self.actors.append(("sbatch", "", identity))
        return d

    def states(self, ids: list[str]) -> Deferred[dict[str, SlurmState]]:
        d: Deferred[dict[str, SlurmState]] = Deferred()
        self.asked.append(list(ids))
        self.polls.append(d)

        def keep(states: dict[str, SlurmState]) -> dict[str, SlurmState]:
            self._last = self.named(states)
            return self._last

        return d.addCallback(keep)

    async def exits(self, ids: list[str]) -> dict[str, SlurmState]:
        self.exitsAsked.append(list(ids))
        if self.failExits is not None:
            raise self.failExits
        if self.exitsSay is not None:
            return self.named(self.exitsSay)
        return {i: self._last[i] for i in ids if i in self._last}

    def named(self, states: dict[str, SlurmState]) -> dict[str, SlurmState]:
        """
        C{states}, each unnamed one named as the job submitted as Slurm job
        101 + n (the tests' numbering) was.
        """
        names = {}
        for index, (options, _, _) in enumerate(self.submissions):
            for option in options:
                if option.startswith("--job-name="):
                    names[str(101 + index)] = option.removeprefix("--job-name=")
        return {
            slurmId: s if s.name else replace(s, name=names.get(slurmId, ""))
            for slurmId, s in states.items()
        }

    def byName(self, name: str) -> Deferred[dict[str, SlurmState]]:
        d: Deferred[dict[str, SlurmState]] = Deferred()
        self.lookUps.append(d)
        return d

    async def accounting(self, ids: list[str]) -> dict[str, list[SlurmState]]:
        self.accountingAsked.append(list(ids))
        return {i: self.accounted[i] for i in ids if i in self.accounted}

    def ping(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.pings.append(d)
        return d

    async def stateOf(self, jobId: str) -> SlurmState | None:
        """What Slurm says of the job now: what the last poll was told."""
        self.lookedAt.append(jobId)
        if self.nowSays is not None:
            return self.named(self.nowSays).get(jobId)
        return self._last.get(jobId)

    async def signal(
        self, jobId: str, jobName: str, name: str, identity: Identity | None = None
    ) -> None:
        if self.failNext is not None:
            error, self.failNext = self.failNext, None
            raise error
        self.signals.append((jobId, name))
        self.actors.append(("signal", jobId, identity))

    async def cancel(
        self, jobId: str, jobName: str, identity: Identity | None = None
    ) -> None:
        if self.failNext is not None:
            error, self.failNext = self.failNext, None
            raise error
        if self.failCancels is not None:
            self.cancelsRefused += 1
            raise self.failCancels
        self.cancels.append(jobId)
        self.actors.append(("cancel", jobId, identity))

    async def cancelByName(self, name: str, identity: Identity | None = None) -> None:
        if self.failNext is not None:
            error, self.failNext = self.failNext, None
            raise error
        self.cancels.append(name)
        self.actors.append(("cancelByName", name, identity))


def state(name: str, code: int = 0, signal: int = 0, jobName: str = "") -> SlurmState:
    """
    A job's state; without C{jobName}, the poll gives it the job's own name.
    On node7, but for a queue ending (cancelled, past its deadline, its node
    never booted), which Slurm reports without one when the job never ran.
    """
    node = None if name in QUEUE_ENDINGS else "node7"
    return SlurmState(name, "None", code, signal, node, None, jobName)


class ExecutorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.stateDir = os.path.abspath(self.mktemp())
        self.outputDir = os.path.join(self.stateDir, "shared")
        # (Named on the class: other test classes borrow this setUp.)
        self.executor = ExecutorTests.makeExecutor(self)  # type: ignore[arg-type]
        self.manager = self.makeManager()

    def makeExecutor(self) -> SlurmExecutor:
        """An executor on the fake reactor and commands (a restart's too)."""
        return SlurmExecutor(
            self.reactor,
            self.outputDir,
            grace=5.0,
            policy=JobPolicy(maxima=Limits(memory_bytes=1 << 30)),
            partition="debug",
            account="physics",
            pollInterval=1.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
        )

    def makeManager(self) -> JobManager:
        manager = JobManager(self.reactor, self.stateDir, self.executor)
        self.addCleanup(manager.close)
        return manager

    def submit(self, *argv: str, **kwargs: Any) -> Any:
        """Create a job and let sbatch accept it as Slurm job 100+n."""
        record = self.manager.create(request(*argv, **kwargs), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        d = self.commands.submissions[-1][2]
        d.callback(str(100 + len(self.commands.submissions)))
        self.successResultOf(accepted)
        return record

    def stored(self, jobId: str) -> Any:
        """The job's record as the store has it."""
        record = self.manager._store.get(jobId)
        assert record is not None
        return record

    def poll(self, states: dict[str, SlurmState]) -> None:
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback(states)

    def test_submissionIsExact(self) -> None:
        """argv and env go to NUL-separated files; limits map to sbatch options."""
        record = self.manager.create(
            request(
                "printf", "%s\n", "a b", "$HOME", "it's", env={"K": "v w"}, cwd="/srv"
            ),
            owner="alice",
        )
        self.assertIs(record.status, JobStatus.PENDING)
        options, script, _ = self.commands.submissions[0]
        directory = os.path.join(self.outputDir, record.id)
        with open(os.path.join(directory, "argv"), "rb") as f:
            self.assertEqual(f.read(), b"printf\0%s\n\0a b\0$HOME\0it's\0")
        with open(os.path.join(directory, "env"), "rb") as f:
            self.assertIn(b"K=v w\0", f.read())
        self.assertEqual(script[1:3], ["-C", "/srv"])
        self.assertIn(f"--output={directory}/stdout", options)
        self.assertIn("--partition=debug", options)
        self.assertIn("--account=physics", options)

    def test_limitsMapped(self) -> None:
        """Memory to --mem (MiB, rounded up), CPU to --cpus-per-task, minutes."""
        req = request("true")
        req = type(req)(
            command="true",
            args=[],
            env={},
            cwd=None,
            limits=Limits(memory_bytes=300 * 1000 * 1000, cpu_millicores=1500),
            timeout=61.0,
        )
        self.manager.create(req, owner="alice")
        options = self.commands.submissions[0][0]
        self.assertIn("--mem=287M", options)
        self.assertIn("--cpus-per-task=2", options)
        self.assertIn("--time=2", options)

    def test_unsupportedLimitsRefused(self) -> None:
        """pids and io limits have no Slurm equivalent here: 400."""
        self.assertRaises(BadRequest, self.executor.limitsFor, Limits(pids=10))
        self.assertRaises(
            BadRequest, self.executor.limitsFor, Limits(memory_bytes=2 << 30)
        )

    def test_pendingRunningCompleted(self) -> None:
        """States follow the batched poll: one scontrol call for all jobs."""
        first = self.submit("true")
        second = self.submit("false")
        self.assertEqual(first.slurm_job_id, "101")
        self.poll({"101": state("PENDING"), "102": state("RUNNING")})
        self.assertEqual(len(self.commands.polls), 1)
        self.assertIs(self.manager.record(first.id).status, JobStatus.PENDING)
        self.assertIs(self.manager.record(second.id).status, JobStatus.RUNNING)
        self.assertEqual(self.manager.record(second.id).node, "node7")
        self.poll({"101": state("RUNNING"), "102": state("FAILED", 3)})
        self.assertEqual(len(self.commands.polls), 2)
        ended = self.manager.record(second.id)
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertEqual(ended.exit_code, 3)
        self.poll({"101": state("COMPLETED")})
        self.assertIs(self.manager.record(first.id).status, JobStatus.COMPLETED)

    def test_endDuringAClockStepBack(self) -> None:
        """
        A Slurm job seen running, then ending while the wall clock is
        stepped back an hour: its end is its start plus the time elapsed,
        not the stepped-back time (a local job's was; a Slurm one's was
        not: review of session 28).
        """
        elapsed = [500.0]
        self.executor.elapsed = lambda: elapsed[0]  # type: ignore[method-assign]
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        seen = self.reactor.seconds()
        elapsed[0] += 600
        self.reactor.advance(600)
        self.reactor.rightNow -= 3600  # the step back
        self.poll({"101": state("COMPLETED")})
        ended = self.manager.record(record.id)
        self.assertIs(ended.status, JobStatus.COMPLETED)
        assert ended.ended_at is not None
        self.assertGreaterEqual(ended.ended_at, seen + 600)

    def test_finalStatesMapped(self) -> None:
        """TIMEOUT, OUT_OF_MEMORY, signals and purged jobs are FAILED with why."""
        jobs = [self.submit("true") for _ in range(4)]
        self.poll(
            {
                "101": state("TIMEOUT", 0, 15),
                "102": state("OUT_OF_MEMORY", 0, 125),
                "103": state("FAILED", 0, 11),
            }
        )
        errors = [self.manager.record(j.id).error for j in jobs]
        assert errors[0] is not None and errors[1] is not None
        self.assertIn("timed out", errors[0])
        self.assertIn("out of memory", errors[1])
        self.assertEqual(errors[2], "killed by signal SIGSEGV")
        self.assertIn("no longer knows", errors[3] or "")

    def test_reusedNumberIsNotOurs(self) -> None:
        """
        Slurm gave the job's number to another job (its state was reset): the
        record is FAILED "Slurm no longer knows", never follows the other
        job, and nothing is sent to it.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.poll({"101": state("COMPLETED", jobName="someone-elses")})
        ended = self.manager.record(record.id)
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertIn("Slurm no longer knows job 101", ended.error or "")
        self.assertIn("another job", ended.error or "")
        # That it may be this job renamed; not the other name (it may be
        # another user's job: a review).
        self.assertIn("renamed", ended.error or "")
        self.assertNotIn("someone-elses", ended.error or "")
        self.assertIsNone(ended.exit_code)
        self.assertEqual((self.commands.signals, self.commands.cancels), ([], []))
        self.assertEqual(self.commands.exitsAsked, [])

    def test_sameNameOtherSubmitTime(self) -> None:
        """The same name, submitted long before the record existed: not ours."""
        record = self.submit("true")
        created = self.manager.record(record.id).created_at
        other = replace(
            state("RUNNING", jobName=f"jobworker-{record.id}"),
            submitTime=created - 3600,
        )
        self.poll({"101": other})
        self.assertIs(self.manager.record(record.id).status, JobStatus.FAILED)

    def test_submittedLongAfterItsRecord(self) -> None:
        """
        Submitted 20 minutes after its record was made (it waited in
        jobworker's own queue, past a running cap): ours all the same. It
        ended FAILED "never ran" while it ran in Slurm, untracked (Slurm
        round 27: a window of 10 minutes both ways).
        """
        record = self.submit("true")
        created = self.manager.record(record.id).created_at
        ours = replace(
            state("RUNNING", jobName=f"jobworker-{record.id}"),
            submitTime=created + 1200,
        )
        self.poll({"101": ours})
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)

    def test_accountedLongAfterItsRecord(self) -> None:
        """
        Accounting's entry (the completion log's, whose submit time sacct
        gives as the start's) 20 minutes after the record was made: ours,
        its exit code kept (it ended FAILED "never ran").
        """
        record = self.submit("sh", "-c", "exit 7")
        created = self.manager.record(record.id).created_at
        ours = replace(
            state("FAILED", 7, jobName=f"jobworker-{record.id}"),
            submitTime=created + 1200,
        )
        self.commands.accounted["101"] = [ours]
        self.poll({})
        ended = self.manager.record(record.id)
        self.assertEqual((ended.status, ended.exit_code), (JobStatus.FAILED, 7))

    def test_pollAsksOnlyAboutOurJobs(self) -> None:
        """One squeue for jobworker's jobs only; exit statuses only for ended ones."""
        self.submit("true")
        self.submit("true")
        self.poll({"101": state("RUNNING"), "102": state("FAILED", 3)})
        self.assertEqual(self.commands.asked, [["101", "102"]])
        self.assertEqual(self.commands.exitsAsked, [["102"]])
        self.poll({"101": state("RUNNING")})
        self.assertEqual(self.commands.asked[-1], ["101"])

    def test_exitStatusUnreadableStillEnds(self) -> None:
        """
        The exit-status helper fails (not Slurm down): the job still ends,
        without a code, rather than stay RUNNING forever.
        """
        record = self.submit("true")
        self.commands.failExits = SlurmError("squeue: unexpected output")
        self.poll({"101": replace(state("FAILED"), exitCode=None)})
        ended = self.manager.record(record.id)
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertIsNone(ended.exit_code)

    def test_endConfirmedByTheJSON(self) -> None:
        """
        The poll's text says the job ended, squeue's JSON (which no job name
        can forge) says it runs: nothing ends until both agree.
        """
        record = self.submit("sleep", "100")
        self.commands.exitsSay = {"101": state("RUNNING")}
        self.poll({"101": state("COMPLETED")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.PENDING)
        self.commands.exitsSay = None
        self.poll({"101": state("COMPLETED")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.COMPLETED)

    def test_pendingReasonAndStartTime(self) -> None:
        """
        A queued job carries Slurm's reason; once it runs, none; its start
        is never before its creation (Slurm's whole seconds).
        """
        record = self.submit("true")
        self.poll({"101": replace(state("PENDING"), reason="Resources")})
        self.assertEqual(self.manager.record(record.id).pending_reason, "Resources")
        self.assertEqual(
            self.manager.record(record.id).toJSON()["pending_reason"], "Resources"
        )
        created = self.manager.record(record.id).created_at
        self.poll({"101": replace(state("RUNNING"), startTime=created - 0.7)})
        running = self.manager.record(record.id)
        self.assertIsNone(running.pending_reason)
        assert running.started_at is not None
        self.assertGreaterEqual(running.started_at, created)

    def test_endTimeIsSlurms(self) -> None:
        """
        A job that ended while the server was not polling (down, or
        Slurm unreachable) ends when Slurm says it did, not at the poll
        that saw it (a 5 s job read 40 s: Slurm round 31); never in the
        future, nor before its start.
        """
        # (The elapsed clock moves with the wall clock, as it does: an end
        # long before the poll is no step back of the clock.)
        self.executor.elapsed = self.reactor.seconds  # type: ignore[method-assign]
        record = self.submit("sleep", "5")
        created = self.manager.record(record.id).created_at
        self.poll({"101": replace(state("RUNNING"), startTime=created + 1)})
        self.reactor.advance(40.0)
        self.poll({"101": replace(state("COMPLETED"), endTime=created + 6)})
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.COMPLETED)
        self.assertEqual((final.started_at, final.ended_at), (created + 1, created + 6))
        future = self.submit("true")
        self.poll({"102": replace(state("COMPLETED"), endTime=created + 9999)})
        self.assertEqual(
            self.manager.record(future.id).ended_at, self.reactor.seconds()
        )

    def test_knownUnreachableRefusedAtOnce(self) -> None:
        """
        Once a poll found slurmctld unreachable, new jobs are 503 at once
        (no sbatch), the executor reports itself down, and a ping brings it
        back when Slurm answers again.
        """
        self.submit("true")
        self.reactor.advance(1.0)
        self.commands.polls[-1].errback(
            SlurmError("squeue: Unable to contact slurm controller", unreachable=True)
        )
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("Unable to contact", health.reason or "")
        error = self.assertRaises(
            ServiceUnavailable, self.manager.create, request("true"), owner="alice"
        )
        self.assertIn("unreachable", error.message)
        self.assertEqual(len(self.commands.submissions), 1)
        self.poll({"101": state("COMPLETED")})
        self.assertTrue(self.executor.health().up)
        self.manager.create(request("true"), owner="alice")
        self.assertEqual(len(self.commands.submissions), 2)

    def test_requeuedAfterItStartedEnds(self) -> None:
        """
        A running job requeued in Slurm (an administrator's scontrol
        requeue): it read RUNNING while queued, and its second run failed
        at once (its arguments are removed at the first start). It ends
        FAILED, saying so, and is cancelled in Slurm: a job runs once.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        self.poll({"101": replace(state("PENDING"), reason="BeginTime")})
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertIn("requeued in Slurm", final.error or "")
        self.assertEqual(len(self.commands.cancels), 1)

    def test_specialExitEnds(self) -> None:
        """
        Slurm user round 38: a job Slurm holds in SPECIAL_EXIT (it exited
        with a code of the site's RequeueExitHold, or an administrator's
        requeuehold) read RUNNING for ever, its stop a 503 after a minute.
        It is a requeue: it ends FAILED with its exit code, and is
        cancelled in Slurm.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        held = replace(state("SPECIAL_EXIT"), reason="JobHeldUser", exitCode=42)
        self.poll({"101": held})
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual(final.exit_code, 42)
        self.assertIn("SPECIAL_EXIT", final.error or "")
        self.assertEqual(len(self.commands.cancels), 1)

    def test_suspendedEndsWhenSeen(self) -> None:
        """
        Slurm user round 38: a suspended job cancelled (a stop, an scancel)
        has Slurm's EndTime of its suspension: it read ended before anyone
        stopped it. It ends when the poll sees it.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        suspendedAt = self.reactor.seconds()
        self.poll({"101": state("SUSPENDED")})
        self.reactor.advance(20)
        self.poll({"101": replace(state("CANCELLED", signal=15), endTime=suspendedAt)})
        final = self.manager.record(record.id)
        self.assertTrue(final.status.ended)
        self.assertGreaterEqual(final.ended_at, suspendedAt + 20)

    def test_ownFolderUnwritableSaidSo(self) -> None:
        """
        Slurm user round 38: a job whose files the server could not write
        (--slurm-output-dir full) ended "Slurm refused the job": Slurm was
        never asked.
        """

        def full(*args: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(executorModule, "makeJobFolder", full)
        record = self.manager.create(request("true"), owner="alice")
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertNotIn("Slurm refused", final.error or "")
        self.assertIn("jobworker cannot write the job's files", final.error or "")
        self.assertIn("No space left on device", final.error or "")
        # /healthz says so for 30 s (it said ok: Slurm user round 38).
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("--slurm-output-dir", health.reason or "")
        self.reactor.advance(30)
        self.assertTrue(self.executor.health().up, self.executor.health())

    def test_failingPollReported(self) -> None:
        """
        A poll that fails for another reason than an unreachable slurmctld
        (squeue cannot be run: its arguments too long) left /healthz "ok"
        while no record moved (Slurm round 31): the executor says it is
        not up, and why, until a poll succeeds; new jobs are still taken.
        """
        self.submit("true")
        self.reactor.advance(1.0)
        self.commands.polls[-1].errback(
            SlurmError("cannot run squeue: Argument list too long")
        )
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("Argument list too long", health.reason or "")
        self.manager.create(request("true"), owner="alice")
        self.assertEqual(len(self.commands.submissions), 2)
        self.poll({"101": state("COMPLETED")})
        self.assertTrue(self.executor.health().up)

    def test_unreachableWithoutJobsPings(self) -> None:
        """With no job to poll, a ping finds out when Slurm is back."""
        record = self.manager.create(request("true"), owner="alice")
        self.commands.submissions[0][2].errback(
            SlurmError(
                "sbatch: Unable to contact slurm controller (connect failure)",
                unreachable=True,
            )
        )
        self.assertEqual(self.commands.lookUps, [])  # never reached slurmctld
        self.assertEqual(self.commands.cancels, [])
        self.assertIs(self.manager.record(record.id).status, JobStatus.FAILED)
        self.assertFalse(self.executor.health().up)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.commands.pings), 1)
        self.commands.pings[-1].callback(None)
        self.assertTrue(self.executor.health().up)

    def test_purgedJobReadFromAccounting(self) -> None:
        """
        A job squeue no longer knows (ended, purged while the server was
        down) ends with what accounting kept of it: its own entry, by name,
        not another job's that had the number before.
        """
        record = self.submit("false")
        created = self.manager.record(record.id).created_at
        ours = replace(
            state("FAILED", 3, jobName=f"jobworker-{record.id}"),
            submitTime=created + 1,
        )
        older = replace(
            state("COMPLETED", 0, jobName="jobworker-other"),
            submitTime=created - 86400,
        )
        self.commands.accounted["101"] = [older, ours]
        self.poll({})
        self.assertEqual(self.commands.accountingAsked, [["101"]])
        ended = self.manager.record(record.id)
        self.assertEqual((ended.status, ended.exit_code), (JobStatus.FAILED, 3))

    def test_completedWithNonZeroCodeFailed(self) -> None:
        """
        Slurm may say COMPLETED with a non-zero exit code: the job FAILED,
        with that code; only COMPLETED with code 0 is COMPLETED.
        """
        failed, completed = self.submit("false"), self.submit("true")
        self.poll({"101": state("COMPLETED", 3), "102": state("COMPLETED", 0)})
        record = self.manager.record(failed.id)
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertEqual((record.exit_code, record.signal), (3, None))
        self.assertTrue(record.error)
        record = self.manager.record(completed.id)
        self.assertIs(record.status, JobStatus.COMPLETED)
        self.assertEqual((record.exit_code, record.error), (0, None))

    def test_neverRequeued(self) -> None:
        """
        sbatch is told --no-requeue: a requeued job would run a second time,
        untracked, over its own output.
        """
        self.submit("true")
        options = self.commands.submissions[0][0]
        self.assertIn("--no-requeue", options)
        self.assertNotIn("--requeue", options)

    def test_unreachableIs503AndForgotten(self) -> None:
        """
        sbatch cannot reach slurmctld: Slurm is asked whether it has the job
        after all; it has not, so 503, no record kept, and a cancel by name
        makes sure it never runs.
        """
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.assertNoResult(accepted)
        self.commands.lookUps[-1].errback(SlurmError("down", unreachable=True))
        failure = self.failureResultOf(accepted, ServiceUnavailable)
        self.assertIn("unreachable", str(failure.value))
        self.assertEqual(self.manager.page()[0], [])
        self.assertEqual(self.commands.cancels, [f"jobworker-{record.id}"])

    def test_cancelByNameTriedAgain(self) -> None:
        """
        The cancel by name of a job whose sbatch answer was lost fails too
        (slurmctld stopped): it is sent again until Slurm takes it, so the
        job, if slurmctld queues it late, never runs (it was tried once,
        and a late job ran: Slurm round 27).
        """
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.commands.failNext = SlurmError("down", unreachable=True)
        self.commands.lookUps[-1].errback(SlurmError("down", unreachable=True))
        self.failureResultOf(accepted, ServiceUnavailable)
        self.assertEqual(self.commands.cancels, [])
        self.reactor.advance(CANCEL_RETRY)
        self.assertEqual(self.commands.cancels, [f"jobworker-{record.id}"])
        self.reactor.advance(CANCEL_RETRY * 10)
        self.assertEqual(self.commands.cancels, [f"jobworker-{record.id}"])

    def test_lostAnswerFoundByName(self) -> None:
        """sbatch timed out but Slurm queued the job: it is found and kept."""
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: (timed out)", unreachable=True)
        )
        self.commands.lookUps[-1].callback(
            {"55": state("PENDING", jobName=f"jobworker-{record.id}")}
        )
        final = self.successResultOf(accepted)
        self.assertEqual(final.slurm_job_id, "55")
        self.assertEqual(self.commands.cancels, [])

    def test_crashDuringSubmitRecovered(self) -> None:
        """A record left without a Slurm id is looked up by name at restart."""
        found = self.manager.create(request("true"), owner="alice")
        gone = self.manager.create(request("true"), owner="alice")
        self.manager.close()
        manager = self.makeManager()
        manager.recover()
        self.reactor.advance(1.0)
        self.commands.lookUps[0].callback(
            {"77": state("RUNNING", jobName=f"jobworker-{found.id}")}
        )
        self.commands.lookUps[1].callback({})
        self.assertEqual(manager.record(found.id).slurm_job_id, "77")
        self.reactor.advance(1.0)
        self.assertEqual(self.commands.asked[-1], ["77"])
        self.commands.polls[-1].callback(
            {"77": state("RUNNING", jobName=f"jobworker-{found.id}")}
        )
        self.assertIs(manager.record(found.id).status, JobStatus.RUNNING)
        self.assertIs(manager.record(gone.id).status, JobStatus.FAILED)
        self.assertIn("before Slurm took the job", manager.record(gone.id).error or "")

    def test_refusedIsFailedJob(self) -> None:
        """sbatch refusing the job (bad partition, too much memory): FAILED."""
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Invalid partition name specified")
        )
        final = self.successResultOf(accepted)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertIn("Invalid partition", final.error or "")

    def test_stopTermThenKill(self) -> None:
        """Stop: TERM to the job's processes, scancel after the grace, STOPPED."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        stopped = self.manager.stop(record.id, "alice")
        self.assertEqual(self.commands.signals, [("101", "TERM")])
        self.reactor.advance(4.9)
        self.assertEqual(self.commands.cancels, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.commands.cancels, ["101"])
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        self.assertNoResult(stopped)
        self.poll({"101": state("CANCELLED", 0, 9)})
        final = self.successResultOf(stopped)
        self.assertIs(final.status, JobStatus.STOPPED)
        self.assertEqual(final.stopped_by, "alice")

    def test_failedScancelTriedAgain(self) -> None:
        """
        The scancel at the end of a stop's grace fails (slurmctld down):
        it is sent again, until Slurm takes it, and a harder stop meanwhile
        sends it at once. It was tried once: the job ran on, and the stop,
        and a second one with --kill, waited for ever (Slurm round 27).
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        stopped = self.manager.stop(record.id, "alice")
        self.commands.failNext = SlurmError("connect failure", unreachable=True)
        self.reactor.advance(5.0)
        self.assertEqual(self.commands.cancels, [])  # (it failed)
        self.reactor.advance(CANCEL_RETRY)
        self.assertEqual(self.commands.cancels, ["101"])
        self.poll({"101": state("CANCELLED", 0, 9)})
        self.assertIs(self.successResultOf(stopped).status, JobStatus.STOPPED)

        again = self.submit("sleep", "100")
        self.poll({"102": state("RUNNING")})
        self.manager.stop(again.id, "alice")
        self.commands.failNext = SlurmError("connect failure", unreachable=True)
        self.reactor.advance(5.0)
        self.manager.stop(again.id, "alice", StopRequest(signal.SIGKILL))
        self.reactor.advance(0)
        self.assertEqual(self.commands.cancels, ["101", "102"])

    def test_refusedScancelGivenUp(self) -> None:
        """
        A scancel Slurm refuses for good (not unreachable: a permission,
        say) is sent three times in all, then given up (a review: it was
        sent, with a squeue, every 5 s for as long as the job ran).
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice")
        self.commands.failCancels = SlurmError("Access/permission denied")
        self.reactor.advance(5.0)
        for _ in range(10):
            self.reactor.advance(CANCEL_RETRY)
        self.assertEqual(self.commands.cancelsRefused, 3)

    def test_noScancelAfterShutdown(self) -> None:
        """
        A scancel that fails once the server is shutting down is not armed
        again (a restart goes on with the stop): no timer outlives it.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice")
        self.commands.failCancels = SlurmError("down", unreachable=True)
        self.executor.shutdown([])
        self.reactor.advance(5.0)
        self.assertEqual(self.commands.cancelsRefused, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopPendingCancels(self) -> None:
        """A queued job is cancelled at once (nothing to TERM)."""
        record = self.submit("sleep", "100")
        self.manager.stop(record.id, "alice")
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertEqual(self.commands.signals, [])

    def test_aJobThatNeverRanHasNoExitCode(self) -> None:
        """
        A Slurm job stopped, or cancelled from outside, while still queued
        was recorded with exit code 0 (Slurm's ExitCode 0:0), so `jw wait
        ID && deploy` went on (a Slurm user's review). It never ran: no
        exit code, and the record says so, as a local queued job's does.
        """
        record = self.submit("sleep", "100")
        stopped = self.manager.stop(record.id, "alice")
        self.poll({"101": state("CANCELLED", 0, 0)})
        final = self.successResultOf(stopped)
        self.assertIs(final.status, JobStatus.STOPPED)
        self.assertIsNone(final.exit_code)
        self.assertIsNone(final.started_at)
        self.assertIn("never ran", final.error or "")
        for n, ending in enumerate(("CANCELLED", "DEADLINE", "BOOT_FAIL")):
            other = self.submit("sleep", "100")
            self.poll({str(102 + n): state(ending, 0, 0)})
            final = self.manager.record(other.id)
            self.assertIs(final.status, JobStatus.FAILED)
            self.assertIsNone(final.exit_code)
            self.assertIn("never ran", final.error or "")

    def test_aJobThatRanBetweenPollsRan(self) -> None:
        """
        A job that started and was cancelled (or passed its deadline)
        between two polls was recorded "never ran: Slurm ended it CANCELLED
        while queued", with no start, because the poll never saw it
        RUNNING. Slurm gives a job nodes only once it is allocated them: an
        ending with a node ran, and reads as the end of a running job; one
        without a node, and any C{BOOT_FAIL} (its node never booted), did
        not.
        """
        record = self.submit("sleep", "100")
        ran = replace(
            state("CANCELLED", 0, 15), node="node7", startTime=record.created_at + 1
        )
        self.poll({"101": ran})
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual(final.signal, "SIGTERM")
        self.assertIn("cancelled in Slurm", final.error or "")
        self.assertNotIn("never ran", final.error or "")
        self.assertEqual(final.started_at, record.created_at + 1)
        self.assertEqual(final.node, "node7")
        other = self.submit("sleep", "100")
        self.poll({"102": replace(state("DEADLINE", 0, 9), node="node7")})
        self.assertNotIn("never ran", self.manager.record(other.id).error or "")
        booted = self.submit("sleep", "100")
        self.poll({"103": replace(state("BOOT_FAIL"), node="node7")})
        final = self.manager.record(booted.id)
        self.assertIn("never ran", final.error or "")
        self.assertIsNone(final.started_at)
        # Cancelled while its node booted (CONFIGURING at the last poll):
        # allocated a node, never started.
        booting = self.submit("sleep", "100")
        self.poll({"104": state("CONFIGURING")})
        self.poll({"104": replace(state("CANCELLED"), node="node7")})
        final = self.manager.record(booting.id)
        self.assertIn("never ran", final.error or "")
        self.assertIsNone(final.started_at)

    def test_aSuspendedJobSaysSo(self) -> None:
        """
        A job Slurm suspended (C{scontrol suspend}, gang scheduling, a
        preemption that suspends) read as plain RUNNING: a user saw it
        running and making no progress. Its C{pending_reason} says it is
        suspended, with Slurm's reason, until Slurm resumes it; the store
        has it too.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.assertIsNone(self.manager.record(record.id).pending_reason)
        self.poll({"101": replace(state("SUSPENDED"), reason="Preempted")})
        suspended = self.manager.record(record.id)
        self.assertIs(suspended.status, JobStatus.RUNNING)
        self.assertEqual(suspended.pending_reason, "suspended in Slurm: Preempted")
        self.assertEqual(
            self.stored(record.id).pending_reason, "suspended in Slurm: Preempted"
        )
        self.poll({"101": state("RUNNING")})
        self.assertIsNone(self.manager.record(record.id).pending_reason)
        self.assertIsNone(self.stored(record.id).pending_reason)
        other = self.submit("sleep", "100")
        self.poll({"102": state("SUSPENDED")})
        started = self.manager.record(other.id)
        self.assertIs(started.status, JobStatus.RUNNING)
        self.assertEqual(started.pending_reason, "suspended in Slurm")
        # Lost while suspended (its number another job's): no reason left.
        self.poll({"102": state("COMPLETED", jobName="someone-elses")})
        lost = self.manager.record(other.id)
        self.assertIs(lost.status, JobStatus.FAILED)
        self.assertIsNone(lost.pending_reason)
        self.assertIsNone(self.stored(other.id).pending_reason)

    def test_wrapperCopiedAgain(self) -> None:
        """
        The job wrapper removed from --slurm-output-dir (a purge of the
        shared folder): every job was "Slurm refused the job" until a
        restart (Slurm user round 39b). It is copied there again.
        """
        wrapper = os.path.join(self.outputDir, "slurm-exec.sh")
        os.remove(wrapper)
        record = self.submit("true")
        self.assertTrue(os.path.isfile(wrapper))
        _, script, _ = self.commands.submissions[-1]
        self.assertEqual(script[0], wrapper)
        self.assertIs(self.manager.record(record.id).status, JobStatus.PENDING)

    def test_aStoppedJobSaysSo(self) -> None:
        """
        A job sent SIGSTOP through Slurm (C{scancel --signal=STOP}: Slurm's
        STOPPED, its allocation kept) read RUNNING with no word (Slurm user
        round 38): its C{pending_reason} says so until it runs again.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.poll({"101": state("STOPPED")})
        stopped = self.manager.record(record.id)
        self.assertIs(stopped.status, JobStatus.RUNNING)
        self.assertIn("stopped in Slurm (SIGSTOP)", stopped.pending_reason or "")
        self.poll({"101": state("RUNNING")})
        self.assertIsNone(self.manager.record(record.id).pending_reason)

    def test_stopWhileSlurmDown(self) -> None:
        """scancel cannot reach slurmctld: the stop fails with 503."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.commands.failNext = SlurmError("Unable to contact", unreachable=True)
        self.failureResultOf(self.manager.stop(record.id, "alice"), ServiceUnavailable)
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        # Known to be out of reach (a poll found it so): the next stop is
        # refused at once, no scancel waiting for Slurm's own timeout
        # (9-28 s: Slurm user round 39b).
        self.reactor.advance(1.0)
        unreachable = SlurmError("Unable to contact", unreachable=True)
        self.commands.polls[-1].errback(unreachable)
        self.assertFalse(self.executor.health().up)
        asked = (list(self.commands.signals), list(self.commands.cancels))
        failure = self.failureResultOf(
            self.manager.stop(record.id, "alice"), ServiceUnavailable
        )
        self.assertIn("Slurm is unreachable", failure.getErrorMessage())
        self.assertEqual((self.commands.signals, self.commands.cancels), asked)

    def stopAfterSlurmEndedIt(
        self, how: StopRequest, error: str, now: dict[str, SlurmState]
    ) -> Any:
        """
        Stop a running job whose Slurm job ended after the last poll (the
        stop's scancel fails with C{error}; Slurm now says C{now}); the
        next poll says C{now} too. The stop's 409, and the final record.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.commands.failNext = SlurmError(
            f"scancel: Kill job error on job id 101: {error}"
        )
        self.commands.nowSays = now
        stopped = self.manager.stop(record.id, "alice", how)
        self.assertNoResult(stopped)
        self.assertEqual(self.commands.lookedAt[-1], "101")
        self.poll(now)
        conflict = self.failureResultOf(stopped, Conflict).value
        final = self.manager.record(record.id)
        self.assertIn(f"already ended ({final.status.value})", str(conflict))
        self.assertIsNone(final.stopped_by)
        return final

    def test_stopOfAJobSlurmCancelledMeanwhile(self) -> None:
        """
        Slurm ended the job after the last poll (an scancel from outside,
        its time limit): the stop's scancel answered "already completing
        or completed", and the stop was a 503 "cannot stop the Slurm job",
        though nothing was left to stop. It is a 409 once the poll has the
        end, as for any job that has ended, and the record tells how it
        ended (not STOPPED).
        """
        final = self.stopAfterSlurmEndedIt(
            DEFAULT_STOP,
            "Job/step already completing or completed",
            {"101": state("CANCELLED", 0, 15)},
        )
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertIn("cancelled in Slurm", final.error or "")

    def test_killOfAJobSlurmPurgedMeanwhile(self) -> None:
        """The same for a KILL, Slurm having forgotten the job: "Invalid job id"."""
        final = self.stopAfterSlurmEndedIt(
            StopRequest(signal.SIGKILL), "Invalid job id specified", {}
        )
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertIn("no longer knows", final.error or "")

    def test_stopRefusedBySlurmStillFails(self) -> None:
        """scancel refused while the job still runs in Slurm: a 503 at once."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.commands.failNext = SlurmError("scancel: Access/permission denied")
        failure = self.failureResultOf(
            self.manager.stop(record.id, "alice"), ServiceUnavailable
        )
        self.assertIn("permission denied", str(failure.value))
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)

    def test_pollFailureKeepsJobs(self) -> None:
        """A failed poll changes nothing; the next one catches up."""
        record = self.submit("true")
        self.reactor.advance(1.0)
        self.commands.polls[-1].errback(Failure(SlurmError("down", unreachable=True)))
        self.assertIs(self.manager.record(record.id).status, JobStatus.PENDING)
        self.poll({"101": state("COMPLETED")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.COMPLETED)

    def test_shutdownLeavesJobsAndRestartReattaches(self) -> None:
        """Shutdown cancels nothing; a new manager re-attaches from the store."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.successResultOf(self.manager.shutdown())
        self.assertEqual(self.commands.cancels, [])
        self.manager.close()
        manager = self.makeManager()
        self.assertEqual(manager.recover(), [])
        self.assertIs(manager.record(record.id).status, JobStatus.RUNNING)
        self.poll({"101": state("COMPLETED")})
        self.assertIs(manager.record(record.id).status, JobStatus.COMPLETED)


class OwnersChangedTests(SynchronousTestCase):
    """
    A job waiting in Slurm's queue starts only as a new request of its
    owner would, as one in jobworker's queue does (attacker round 9): at a
    users reload, or a start, one whose owner was removed, demoted or
    remapped since is cancelled in Slurm and ends FAILED, never started.
    Slurm ran it, as the account of its submission.
    """

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.stateDir = os.path.abspath(self.mktemp())
        self.executor = SlurmExecutor(
            self.reactor,
            os.path.join(self.stateDir, "shared"),
            grace=5.0,
            pollInterval=1.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
        )
        self.users = {
            "alice": User("alice", Role.DEVELOPER),
            "bob": User("bob", Role.DEVELOPER),
        }

        def ownerCheck(
            owner: str, madeAs: str | None
        ) -> tuple[str | None, Identity | None]:
            user = self.users.get(owner)
            account = user.account if user is not None else None
            return mayStartQueued(user, owner, madeAs), account

        self.manager = JobManager(
            self.reactor, self.stateDir, self.executor, ownerCheck=ownerCheck
        )
        self.addCleanup(self.manager.close)

    def submit(self, owner: str) -> Any:
        record = self.manager.create(request("true"), owner=owner)
        accepted = ensureDeferred(self.manager.accepted(record))
        d = self.commands.submissions[-1][2]
        d.callback(str(100 + len(self.commands.submissions)))
        self.successResultOf(accepted)
        return record

    poll = ExecutorTests.poll

    def test_removedOwnersWaitingJobCancelled(self) -> None:
        waiting, raced, bobs = (
            self.submit("alice"),
            self.submit("alice"),
            self.submit("bob"),
        )
        self.poll(
            {"101": state("PENDING"), "102": state("PENDING"), "103": state("PENDING")}
        )
        self.manager.ownersChanged()  # the same users: a control
        self.assertEqual(self.commands.cancels, [])
        del self.users["alice"]
        self.manager.ownersChanged()
        self.assertEqual(sorted(self.commands.cancels), ["101", "102"])
        # 102 started before the scancel reached it: it ends as it ends.
        self.poll(
            {
                "101": state("CANCELLED"),
                "102": state("RUNNING"),
                "103": state("RUNNING"),
            }
        )
        ended = self.manager.record(waiting.id)
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertEqual(
            ended.error,
            "cannot start: its owner alice is no longer a user of this server",
        )
        self.assertIsNone(ended.started_at)
        self.assertIs(self.manager.record(raced.id).status, JobStatus.RUNNING)
        self.assertIs(self.manager.record(bobs.id).status, JobStatus.RUNNING)

    def test_demotedOrRemappedOwner(self) -> None:
        demoted, remapped = self.submit("alice"), self.submit("bob")
        self.users["alice"] = User("alice", Role.READER)
        self.users["bob"] = User(
            "bob",
            Role.DEVELOPER,
            Identity(1500, 1500, (), "games", "/", "/bin/sh", "games"),
        )
        self.manager.ownersChanged()
        self.assertEqual(sorted(self.commands.cancels), ["101", "102"])
        self.poll({"101": state("CANCELLED"), "102": state("CANCELLED")})
        self.assertIn("may no longer start jobs", self.manager.record(demoted.id).error)
        self.assertIn("(none, now games)", self.manager.record(remapped.id).error)

    def test_refusedBeforeSbatchAnswered(self) -> None:
        """Refused while sbatch has not answered: cancelled once it has."""
        record = self.manager.create(request("true"), owner="alice")
        del self.users["alice"]
        self.manager.ownersChanged()
        self.assertEqual(self.commands.cancels, [])
        self.commands.submissions[-1][2].callback("101")
        self.assertEqual(self.commands.cancels, ["101"])
        self.poll({"101": state("CANCELLED")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.FAILED)

    def test_cancelledAgain(self) -> None:
        """The scancel of a refused job failed (slurmctld out of reach): a
        poll that finds it still queued a while after cancels it again (it
        was left queued until the next reload, and Slurm ran it; a review)."""
        waiting = self.submit("alice")
        self.poll({"101": state("PENDING")})
        del self.users["alice"]
        self.manager.ownersChanged()
        self.assertEqual(self.commands.cancels, ["101"])  # (lost, say)
        self.poll({"101": state("PENDING")})
        self.assertEqual(self.commands.cancels, ["101"], "not at once")
        for _ in range(5):
            self.poll({"101": state("PENDING")})
        self.assertEqual(self.commands.cancels, ["101", "101"])
        self.poll({"101": state("CANCELLED")})
        self.assertIs(self.manager.record(waiting.id).status, JobStatus.FAILED)

    def test_removedMappingToTheServiceAccount(self) -> None:
        """
        Without --slurm-shared-account, a user mapped to the service
        account itself (run_as is the server's name): the mapping removed,
        a new request of theirs is refused, and so is the job waiting in
        Slurm (it read as unmapped, and was kept).
        """
        server = Identity(1600, 1600, (), "svc", "/", "/bin/sh", "svc")
        self.executor._server = self.executor._accounts.server = server
        self.executor._accounts._shared = False
        self.executor._accounts._lookUp = lambda name: server
        self.users["carol"] = User("carol", Role.DEVELOPER, server)
        record = self.manager.create(request("true"), "carol", server)
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[-1][2].callback("101")
        self.successResultOf(accepted)
        self.assertEqual(record.run_as, "svc")
        self.poll({"101": state("PENDING")})
        self.manager.ownersChanged()  # still mapped: kept
        self.assertEqual(self.commands.cancels, [])
        self.users["carol"] = User("carol", Role.DEVELOPER)
        self.manager.ownersChanged()
        self.assertEqual(self.commands.cancels, ["101"])
        self.poll({"101": state("CANCELLED")})
        self.assertIn("no Unix account mapped", self.manager.record(record.id).error)


class PerJobOptionsTests(SynchronousTestCase):
    """A job's own "slurm" choices: parsed, checked against the server's
    allow-lists and maxima (400 otherwise), passed to sbatch exactly."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        stateDir = os.path.abspath(self.mktemp())
        executor = SlurmExecutor(
            self.reactor,
            os.path.join(stateDir, "shared"),
            grace=5.0,
            partition="debug",
            account="physics",
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
            allowances=SlurmAllowances(
                partition=frozenset({"gpu"}),
                account=frozenset({"chem"}),
                qos=frozenset({"high"}),
                gres=frozenset({"gpu:a100:2"}),
                constraint=frozenset({"intel&ib"}),
                nodes=2,
                ntasks=4,
                exclusive=True,
            ),
        )
        self.manager = JobManager(self.reactor, stateDir, executor)
        self.addCleanup(self.manager.close)

    def create(self, slurm: dict[str, Any]) -> list[str]:
        body = json.dumps({"command": "true", "slurm": slurm}).encode()
        self.manager.create(parseJobRequest(body), owner="alice")
        return self.commands.submissions[-1][0]

    def test_passedExactly(self) -> None:
        options = self.create(
            {
                "partition": "gpu",
                "account": "chem",
                "qos": "high",
                "gres": "gpu:a100:2",
                "constraint": "intel&ib",
                "nodes": 2,
                "ntasks": 4,
                "exclusive": True,
            }
        )
        for option in (
            "--partition=gpu",
            "--account=chem",
            "--qos=high",
            "--gres=gpu:a100:2",
            "--constraint=intel&ib",
            "--nodes=2",
            "--ntasks=4",
            "--exclusive",
        ):
            self.assertIn(option, options)
        self.assertNotIn("--partition=debug", options)
        self.assertNotIn("--account=physics", options)

    def test_serverDefaultsOtherwise(self) -> None:
        options = self.create({"qos": "high"})
        self.assertIn("--partition=debug", options)
        self.assertIn("--account=physics", options)
        self.assertNotIn("--exclusive", options)
        self.assertFalse([o for o in options if o.startswith("--nodes")])

    def test_outsideTheAllowancesIs400(self) -> None:
        for slurm, said in (
            ({"partition": "debug"}, "slurm.partition 'debug' is not allowed"),
            ({"account": "physics"}, "allowed: chem"),
            ({"gres": "gpu:a100:3"}, "slurm.gres"),
            ({"nodes": 3}, "over this server's maximum 2"),
            ({"ntasks": 5}, "slurm.ntasks"),
        ):
            error = self.assertRaises(BadRequest, self.create, slurm)
            self.assertIn(said, error.message)
        self.assertEqual(len(self.commands.submissions), 0)

    def test_badShapesAre400(self) -> None:
        for slurm in (
            {"partition": "a b"},
            {"partition": ""},
            {"qos": 3},
            {"nodes": 0},
            {"nodes": "2"},
            {"exclusive": "yes"},
            {"gpus": 1},
            [],
        ):
            body = json.dumps({"command": "true", "slurm": slurm}).encode()
            self.assertRaises(BadRequest, parseJobRequest, body)

    def test_nothingAllowedByDefault(self) -> None:
        self.assertRaises(
            BadRequest, SlurmAllowances().check, SlurmRequest(partition="debug")
        )
        self.assertRaises(BadRequest, SlurmAllowances().check, SlurmRequest(nodes=2))
        self.assertRaises(
            BadRequest, SlurmAllowances().check, SlurmRequest(exclusive=True)
        )
        SlurmAllowances().check(SlurmRequest(nodes=1, ntasks=1))

    def test_localExecutorRefuses(self) -> None:
        """Slurm options to a server that runs jobs locally: 400."""
        manager = localJobManager(FakeProcessReactor(), self.mktemp(), 5.0)
        self.addCleanup(manager.close)
        body = json.dumps({"command": "true", "slurm": {"nodes": 1}}).encode()
        error = self.assertRaises(
            BadRequest, manager.create, parseJobRequest(body), owner="alice"
        )
        self.assertIn("--executor slurm", error.message)


class CommandsTests(SynchronousTestCase):
    """Slurm's commands as child processes: as whom each one runs."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()

    def commands(self, serverUid: int) -> SlurmCommands:
        # No PATH lookup: the command names stay as given.
        return SlurmCommands(
            self.reactor,  # type: ignore[arg-type]
            env={"PATH": "/nonexistent"},
            serverUid=serverUid,
        )

    def lastArgv(self, stdout: bytes = b"") -> list[str]:
        """The last command's argv, after letting it succeed."""
        spawned = self.reactor.spawned[-1]
        if stdout:
            spawned.output(stdout)
        spawned.exit(0)
        if spawned.args[0] == SETPRIV:
            self.assertEqual(spawned.executable, SETPRIV)
        return spawned.args

    def test_sbatchGetsTheServersFirstDescriptorLimit(self) -> None:
        """
        sbatch hands its soft limits to the job (Slurm's default
        PropagateResourceLimits=ALL): a server that raised its own soft
        RLIMIT_NOFILE gave every Slurm job 65,536. sbatch runs with the
        limit the server was started with; squeue and scancel as they are.
        """
        commands = SlurmCommands(
            self.reactor,  # type: ignore[arg-type]
            env={"PATH": "/nonexistent"},
            serverUid=1000,
            descriptorLimit=1024,
        )
        submitted = Deferred.fromCoroutine(commands.submit(["--job-name=x"], ["s"]))
        self.assertEqual(
            self.lastArgv(b"7\n"),
            [
                "sh",
                "-c",
                'ulimit -Sn 1024 && exec "$@"',
                "jobworker-sbatch",
                "sbatch",
                "--parsable",
                "--job-name=x",
                "s",
            ],
        )
        self.assertEqual(self.successResultOf(submitted), "7")
        Deferred.fromCoroutine(commands.cancel("7", "jobworker-x"))
        self.assertEqual(self.lastArgv(), ["scancel", "--jobname=jobworker-x", "7"])

    def test_sbatchGetsTheStartersUmask(self) -> None:
        """
        sbatch hands its umask to the job (SLURM_UMASK): a daemonized server
        (twistd sets its own to 077) gave every Slurm job 077. sbatch runs
        with the umask of whoever started the server, as local jobs do.
        """
        commands = SlurmCommands(
            self.reactor,  # type: ignore[arg-type]
            env={"PATH": "/nonexistent"},
            serverUid=1000,
            descriptorLimit=1024,
            umask=0o022,
        )
        Deferred.fromCoroutine(commands.submit(["--job-name=x"], ["s"]))
        self.assertEqual(
            self.lastArgv(b"7\n")[:4],
            [
                "sh",
                "-c",
                'umask 0022 && ulimit -Sn 1024 && exec "$@"',
                "jobworker-sbatch",
            ],
        )
        alone = SlurmCommands(
            self.reactor,  # type: ignore[arg-type]
            env={"PATH": "/nonexistent"},
            serverUid=1000,
            umask=0o002,
        )
        Deferred.fromCoroutine(alone.submit(["--job-name=x"], ["s"]))
        self.assertEqual(self.lastArgv(b"8\n")[2], 'umask 0002 && exec "$@"')

    def test_sbatchWithoutTheServersTimeFormat(self) -> None:
        """
        SLURM_TIME_FORMAT=%s (for the server's own squeue) reached every job
        through sbatch --export=ALL: squeue and sacct in a job printed epoch
        seconds (a Slurm user's review). Only the server's queries get it.
        """
        commands = self.commands(serverUid=1000)
        Deferred.fromCoroutine(commands.submit(["--job-name=x"], ["s"]))
        self.lastArgv(b"7\n")
        self.assertNotIn("SLURM_TIME_FORMAT", self.reactor.spawned[-1].env)
        Deferred.fromCoroutine(commands.states(["7"]))
        self.assertEqual(self.reactor.spawned[-1].env["SLURM_TIME_FORMAT"], "%s")

    def test_rootActsOnJobsAsTheOwner(self) -> None:
        """
        A root server runs sbatch and each scancel through setpriv as the
        job's account (its uid, gid and groups); squeue stays its own.
        """
        commands = self.commands(serverUid=0)
        becomeAlice = [
            SETPRIV,
            "--reuid=4242",
            "--regid=4243",
            "--groups=27,100",
            "--",
        ]
        submitted = Deferred.fromCoroutine(
            commands.submit(["--job-name=x"], ["script", "argv"], ALICE)
        )
        self.assertEqual(
            self.lastArgv(b"7\n"),
            [*becomeAlice, "sbatch", "--parsable", "--job-name=x", "script", "argv"],
        )
        self.assertEqual(self.successResultOf(submitted), "7")
        Deferred.fromCoroutine(commands.signal("7", "jobworker-x", "TERM", ALICE))
        self.assertEqual(
            self.lastArgv(),
            [
                *becomeAlice,
                "scancel",
                "--full",
                "--signal=TERM",
                "--jobname=jobworker-x",
                "7",
            ],
        )
        Deferred.fromCoroutine(commands.cancel("7", "jobworker-x", ALICE))
        self.assertEqual(
            self.lastArgv(), [*becomeAlice, "scancel", "--jobname=jobworker-x", "7"]
        )
        Deferred.fromCoroutine(commands.cancelByName("jobworker-x", ALICE))
        self.assertEqual(
            self.lastArgv(), [*becomeAlice, "scancel", "--jobname=jobworker-x"]
        )
        Deferred.fromCoroutine(commands.states(["7", "8"]))
        argv = self.lastArgv(b"")
        self.assertEqual(
            argv[:4], ["squeue", "--noheader", "--states=all", "--jobs=7,8"]
        )
        self.assertRegex(
            argv[4], r"^--format=([0-9a-f]{32})%i\|%T\|%r\|%N\|%S\|%V\|%j\1$"
        )

    def test_noGroupsCleared(self) -> None:
        """An account without supplementary groups gets none of root's."""
        commands = self.commands(serverUid=0)
        lonely = Identity(4242, 4243, (), "jwalice", None, "/bin/sh", "jwalice")
        Deferred.fromCoroutine(commands.cancel("7", "jobworker-x", lonely))
        self.assertEqual(
            self.lastArgv()[:5],
            [SETPRIV, "--reuid=4242", "--regid=4243", "--clear-groups", "--"],
        )

    def test_noSwitchWhenNotNeeded(self) -> None:
        """
        Commands run as they are when the server is not root (it cannot
        switch), or when the identity is the server's own.
        """
        server = Identity(0, 0, (), "root", "/root", "/bin/sh", "root")
        for serverUid, identity in ((1000, ALICE), (0, server), (0, None)):
            Deferred.fromCoroutine(
                self.commands(serverUid).cancel("7", "jobworker-x", identity)
            )
            self.assertEqual(self.lastArgv(), ["scancel", "--jobname=jobworker-x", "7"])


class IdentityTests(SynchronousTestCase):
    """Whom a Slurm job runs as, and what of its folder belongs to whom."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.outputDir = os.path.abspath(self.mktemp())
        self.stateDir = os.path.abspath(self.mktemp())

    def executor(self, shared: bool = False) -> SlurmExecutor:
        return SlurmExecutor(
            self.reactor,
            self.outputDir,
            grace=5.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=shared,
            lookUp=self.lookUp,
        )

    def lookUp(self, name: str) -> Identity:
        """The user database of these tests: jwalice is L{mapped}."""
        if name == "jwalice":
            return self.mapped()
        return Identity.ofAccount(name)

    def manager(self, executor: SlurmExecutor) -> JobManager:
        manager = JobManager(self.reactor, self.stateDir, executor)
        self.addCleanup(manager.close)
        return manager

    def mapped(self) -> Identity:
        """
        alice's mapped account: ALICE when the tests run as root (the folder
        can then be given to it), else one of this user's uid.
        """
        if os.getuid() == 0:
            return ALICE
        me = Identity.ofServer()
        return Identity(
            me.uid, me.gid, (), "jwalice", "/home/jwalice", "/bin/sh", "jwalice"
        )

    def test_unmappedRefused(self) -> None:
        """Without a mapped account (and no shared account): 403, nothing made."""
        manager = self.manager(self.executor())
        error = self.assertRaises(
            Forbidden, manager.create, request("true"), owner="bob"
        )
        self.assertIn("user bob has no Unix account mapped", error.message)
        self.assertIn("name:role:hash:unix-user", error.message)
        self.assertIn("--slurm-shared-account", error.message)
        self.assertEqual(self.commands.submissions, [])
        self.assertEqual(os.listdir(self.outputDir), ["slurm-exec.sh"])
        self.assertEqual(manager.page()[0], [])

    def test_sharedAccountRunsUnmapped(self) -> None:
        """
        With C{--slurm-shared-account} the unmapped run as the service
        account, which the start-up log calls a shared identity.
        """
        events: list[dict[str, Any]] = []
        self.patch(SlurmAccounts, "log", Logger(observer=events.append))
        manager = self.manager(self.executor(shared=True))
        warnings = [formatEvent(e) for e in events if e["log_level"] is LogLevel.warn]
        self.assertTrue(any("SHARED IDENTITY" in w for w in warnings), warnings)
        record = manager.create(request("true"), owner="bob")
        server = Identity.ofServer()
        self.assertEqual(record.run_as, server.label)
        self.assertEqual(self.commands.actors, [("sbatch", "", server)])
        _options, script, _ = self.commands.submissions[0]
        self.assertNotIn("-C", script)  # it starts in its output folder

    def test_mappedJobIsTheAccounts(self) -> None:
        """
        A mapped user's job is submitted as the account, records it in
        C{run_as}, starts in its home, and gets its C{HOME} and C{USER}.
        """
        account = self.mapped()
        manager = self.manager(self.executor())
        record = manager.create(request("true"), owner="alice", account=account)
        self.assertEqual(record.run_as, "jwalice")
        self.assertEqual(self.commands.actors, [("sbatch", "", account)])
        _options, script, _ = self.commands.submissions[0]
        self.assertEqual(script[1:3], ["-C", "/home/jwalice"])
        self.assertEqual(
            (record.env["HOME"], record.env["USER"]), ("/home/jwalice", "jwalice")
        )

    def test_commentNamesUserAndJob(self) -> None:
        """
        --comment tells Slurm's administrators whose job it is: one argv
        element (no shell splits it), whoever the job runs as.
        """
        manager = self.manager(self.executor(shared=True))
        record = manager.create(request("true"), owner="bob")
        options = self.commands.submissions[0][0]
        comments = [o for o in options if o.startswith("--comment")]
        self.assertEqual(comments, [f"--comment=jobworker user=bob job={record.id}"])

    def test_folderBelongsToTheAccount(self) -> None:
        """
        The job's folder is the account's, 0700; the argv and env files
        too, 0600; the top folder is searchable but not listable (0711).
        """
        if os.getuid() != 0:
            raise SkipTest("giving files to another uid needs root")
        manager = self.manager(self.executor())
        record = manager.create(request("true"), owner="alice", account=ALICE)
        self.assertEqual(stat.S_IMODE(os.stat(self.outputDir).st_mode), 0o711)
        folder = os.stat(os.path.join(self.outputDir, record.id))
        self.assertEqual((folder.st_uid, folder.st_gid), (4242, 4243))
        self.assertEqual(stat.S_IMODE(folder.st_mode), 0o700)
        for name in ("argv", "env"):
            st = os.stat(os.path.join(self.outputDir, record.id, name))
            self.assertEqual((st.st_uid, st.st_gid), (4242, 4243))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)

    def test_folderModeWhateverTheUmask(self) -> None:
        """The job's folder is 0700 even under a umask that takes bits off."""
        manager = self.manager(self.executor(shared=True))
        self.addCleanup(os.umask, os.umask(0o277))
        record = manager.create(request("true"), owner="bob")
        folder = os.stat(os.path.join(self.outputDir, record.id))
        self.assertEqual(stat.S_IMODE(folder.st_mode), 0o700)

    def test_lostSubmissionCancelledAsTheOwner(self) -> None:
        """A job sbatch may have queued without saying is cancelled as its owner."""
        account = self.mapped()
        manager = self.manager(self.executor())
        record = manager.create(request("true"), owner="alice", account=account)
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: (timed out)", unreachable=True)
        )
        self.commands.lookUps[-1].errback(SlurmError("down", unreachable=True))
        self.assertEqual(
            self.commands.actors[-1],
            ("cancelByName", f"jobworker-{record.id}", account),
        )

    def test_topFolderRepairedAndScriptReadable(self) -> None:
        """
        A top folder made 0700 (by an older version) becomes 0711, and holds
        a copy of the batch script everyone can read, which sbatch is given.
        """
        os.makedirs(self.outputDir, mode=0o700)
        manager = self.manager(self.executor(shared=True))
        self.assertEqual(stat.S_IMODE(os.stat(self.outputDir).st_mode), 0o711)
        copy = os.path.join(self.outputDir, "slurm-exec.sh")
        self.assertEqual(stat.S_IMODE(os.stat(copy).st_mode), 0o644)
        with open(copy, "rb") as f, open(WRAPPER, "rb") as g:
            self.assertEqual(f.read(), g.read())
        manager.create(request("true"), owner="bob")
        self.assertEqual(self.commands.submissions[0][1][0], copy)

    def test_stopAndCancelAsTheOwner(self) -> None:
        """TERM and the scancel after the grace act as the job's account."""
        account = self.mapped()
        manager = self.manager(self.executor())
        record = manager.create(request("sleep", "9"), owner="alice", account=account)
        self.commands.submissions[0][2].callback("101")
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        manager.stop(record.id, "alice")
        self.reactor.advance(5.0)
        self.assertEqual(
            self.commands.actors[1:],
            [("signal", "101", account), ("cancel", "101", account)],
        )

    def test_harderSecondStop(self) -> None:
        """
        A KILL, or a grace that ends sooner, while a stop with an hour's
        grace goes on: the scancel comes then, not at the hour's end (it
        was dropped, as for a local job: fault round 6).
        """
        account = self.mapped()
        manager = self.manager(self.executor())
        for slurmId, second, wait in (
            ("101", StopRequest(signal.SIGKILL), 0.0),
            ("102", StopRequest(grace=2), 2.0),
        ):
            del self.commands.actors[:]
            record = manager.create(
                request("sleep", "9"), owner="alice", account=account
            )
            self.commands.submissions[-1][2].callback(slurmId)
            self.reactor.advance(1.0)
            self.commands.polls[-1].callback({slurmId: state("RUNNING")})
            manager.stop(record.id, "alice", StopRequest(grace=3600))
            self.assertEqual(self.commands.actors[-1], ("signal", slurmId, account))
            manager.stop(record.id, "ada", second)
            self.reactor.advance(wait)
            self.assertEqual(self.commands.actors[-1], ("cancel", slurmId, account))
            stored = manager.record(record.id)
            self.assertEqual(stored.stopped_by, "alice")
            self.assertEqual(stored.stop_grace, wait)  # for a restart
            self.reactor.advance(1.0)
            self.commands.polls[-1].callback({slurmId: state("CANCELLED")})

    def test_harderStopWhileTheFirstIsSent(self) -> None:
        """
        A KILL that comes while Slurm has not yet answered the first stop's
        signal (its scancel not armed yet) was dropped: the scancel waited
        the first stop's hour (the review's finding). It comes once the
        signal is answered.
        """
        account = self.mapped()
        manager = self.manager(self.executor())
        held: list[Deferred[None]] = []
        signalled = self.commands.signal

        async def slowSignal(*args: Any, **kwargs: Any) -> None:
            answered: Deferred[None] = Deferred()
            held.append(answered)
            await answered
            await signalled(*args, **kwargs)

        self.patch(self.commands, "signal", slowSignal)
        record = manager.create(request("sleep", "9"), owner="alice", account=account)
        self.commands.submissions[-1][2].callback("101")
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        manager.stop(record.id, "alice", StopRequest(grace=3600))
        manager.stop(record.id, "ada", StopRequest(signal.SIGKILL))
        self.assertNotIn(("cancel", "101", account), self.commands.actors)
        held[0].callback(None)
        self.reactor.advance(0)
        self.assertEqual(self.commands.actors[-1], ("cancel", "101", account))

    def test_recoveredJobCancelledAsTheOwner(self) -> None:
        """
        After a restart the job's account is looked up again by the name in
        its record's C{run_as}, to cancel it as its owner.
        """
        account = self.mapped()
        looked: list[str] = []

        def ofAccount(name: str) -> Identity:
            looked.append(name)
            return account

        manager = self.manager(self.executor())
        record = manager.create(request("sleep", "9"), owner="alice", account=account)
        self.commands.submissions[0][2].callback("101")
        manager.close()
        self.patch(self, "lookUp", ofAccount)
        manager = self.manager(self.executor())
        manager.recover()
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("PENDING")})
        self.assertEqual(looked, [])  # only when needed
        manager.stop(record.id, "alice")
        self.assertEqual(looked, ["jwalice"])
        self.assertEqual(self.commands.actors[-1], ("cancel", "101", account))

    def test_secretsRemovedOnceRunning(self) -> None:
        """
        The argv and env files go once the job has run a while (the batch
        script removes them itself at once; this is the fallback), not as
        soon as Slurm says RUNNING, which may be before the script read them.
        """
        manager = self.manager(self.executor(shared=True))
        record = manager.create(request("true", env={"TOKEN": "s3cret"}), owner="bob")
        self.commands.submissions[0][2].callback("101")
        folder = os.path.join(self.outputDir, record.id)
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        self.assertEqual(sorted(os.listdir(folder)), ["argv", "env"])
        self.reactor.advance(SECRETS_GRACE)
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        self.assertEqual(os.listdir(folder), [])
        self.assertIs(manager.record(record.id).status, JobStatus.RUNNING)

    def test_secretsRemovedAtTheEnd(self) -> None:
        """A job that ends (or never ran, or was refused) leaves no secrets."""
        manager = self.manager(self.executor(shared=True))
        ended = manager.create(request("true"), owner="bob")
        self.commands.submissions[0][2].callback("101")
        refused = manager.create(request("true"), owner="bob")
        self.commands.submissions[1][2].errback(SlurmError("sbatch: Invalid account"))
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("CANCELLED")})
        for record in (ended, refused):
            self.assertTrue(manager.record(record.id).status.ended)
            self.assertEqual(os.listdir(os.path.join(self.outputDir, record.id)), [])


class ProbeTests(SynchronousTestCase):
    """The start-up probe of --slurm-output-dir, on fake Slurm commands."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.outputDir = os.path.abspath(self.mktemp())
        self.executor = self.probed()

    def probed(self, allowances: SlurmAllowances | None = None) -> SlurmExecutor:
        """An executor on the server's partition C{debug}."""
        return SlurmExecutor(
            self.reactor,
            self.outputDir,
            grace=5.0,
            partition="debug",
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
            allowances=allowances,
        )

    def probe(self, nodeWrites: bool) -> None:
        done = self.executor.probe()
        options, script, submitted = self.commands.submissions[0]
        self.assertEqual(script, [])
        self.assertIn("--partition=debug", options)
        [wrap] = [o for o in options if o.startswith("--wrap=")]
        _, token, _, path = wrap.removeprefix("--wrap=").split(" ")
        self.assertEqual(os.path.dirname(path), self.outputDir)
        submitted.callback("500")
        self.reactor.advance(1.0)
        self.assertEqual(self.commands.asked[-1], ["500"])
        if nodeWrites:
            with open(path, "w") as f:
                f.write(token + "\n")
        self.commands.polls[-1].callback(
            {"500": state("COMPLETED", jobName="jobworker-output-dir-probe")}
        )
        self.successResultOf(done)
        self.assertFalse(os.path.exists(path))

    def test_shared(self) -> None:
        """The node's file arrived: healthy."""
        self.probe(nodeWrites=True)
        self.assertTrue(self.executor.health().up)

    def test_notShared(self) -> None:
        """
        The probe ended but its file never appeared here: the executor says
        it is degraded, and why (jobs are still taken: another node may see
        the folder).
        """
        self.probe(nodeWrites=False)
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("is not shared with the nodes", health.reason or "")
        self.assertIn("node7", health.reason or "")

    def test_unreachableAtStartTriedAgain(self) -> None:
        """
        slurmctld down when the server started: the probe was never sent
        again, and a folder not shared read ok for good (Slurm user round
        39). It is sent again until it concludes.
        """
        self.executor.probe()
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.assertTrue(self.executor.health().up)
        self.reactor.advance(executorModule.PROBE_RETRY - 1)
        self.assertEqual(len(self.commands.submissions), 1)
        self.reactor.advance(1)
        self.assertEqual(len(self.commands.submissions), 2)
        self.commands.submissions[1][2].callback("501")
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback(
            {"501": state("COMPLETED", jobName="jobworker-output-dir-probe")}
        )
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("is not shared with the nodes", health.reason or "")
        # Checked again later: mended meanwhile, ok.
        self.reactor.advance(executorModule.PROBE_RECHECK)
        self.assertEqual(len(self.commands.submissions), 3)

    def test_probeRefusedOnlySaid(self) -> None:
        """
        Slurm user round 40: the probe is root's, and a cluster that refuses
        root's jobs (DisableRootJobs) refused it whatever the options: taken
        for the server's own options refused, /healthz was degraded for good
        while every user's job ran. A refused probe is logged, nothing more.
        """
        self.executor.probe()
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: error: Batch job submission failed: Invalid user id")
        )
        self.assertTrue(self.executor.health().up)
        self.reactor.advance(executorModule.PROBE_RECHECK)
        self.assertEqual(len(self.commands.submissions), 1)

    def test_serverPartitionRefused(self) -> None:
        """
        Slurm user round 39: a --slurm-partition Slurm refuses (a typo, a
        partition removed) failed every job naming none of its own, with
        /healthz ok. A job so refused for its partition says so, until one
        is taken or PLACEMENT_REFUSED_FOR passes; a job refused for its own
        partition, or for another reason, says nothing.
        """
        self.executor = self.probed(
            SlurmAllowances(partition=frozenset(["debug", "gpu"]))
        )
        stateDir = os.path.abspath(self.mktemp())
        manager = JobManager(self.reactor, stateDir, self.executor)
        self.addCleanup(manager.close)
        invalid = SlurmError(
            "sbatch: error: Batch job submission failed: Invalid partition name "
            "specified"
        )
        own = replace(request("true"), slurm=SlurmRequest(partition="gpu"))
        manager.create(own, owner="bob")
        self.commands.submissions[-1][2].errback(invalid)
        manager.create(request("true"), owner="bob")
        self.commands.submissions[-1][2].errback(SlurmError("sbatch: Invalid qos"))
        self.assertTrue(self.executor.health().up)
        manager.create(request("true"), owner="bob")
        self.commands.submissions[-1][2].errback(invalid)
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("--partition=debug", health.reason or "")
        self.assertIn("Invalid partition name", health.reason or "")
        manager.create(request("true"), owner="bob")
        self.commands.submissions[-1][2].callback("600")
        self.assertTrue(self.executor.health().up)
        manager.create(request("true"), owner="bob")
        self.commands.submissions[-1][2].errback(invalid)
        self.assertFalse(self.executor.health().up)
        self.reactor.advance(executorModule.PLACEMENT_REFUSED_FOR)
        self.assertTrue(self.executor.health().up)

    def test_noProbeAfterShutdown(self) -> None:
        """A probe due is not sent once the executor shut down."""
        self.executor.probe()
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.executor.shutdown([])
        self.reactor.advance(executorModule.PROBE_RECHECK)
        self.assertEqual(len(self.commands.submissions), 1)


class UnreachableAPITests(APITestCase):
    """Slurm known down, through the HTTP API: 503 at once, degraded health."""

    def setUp(self) -> None:
        super().setUp()
        self.commands = FakeCommands()
        stateDir = os.path.abspath(self.mktemp())
        executor = SlurmExecutor(
            self.reactor,
            os.path.join(stateDir, "shared"),
            grace=5.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
        )
        self.metrics = Metrics()
        self.manager = JobManager(
            self.reactor, stateDir, executor, metrics=self.metrics
        )
        self.addCleanup(self.manager.close)
        self.api = JobsAPI(self.manager, self.authenticator, self.reactor, self.metrics)
        self.treq = StubTreq(self.api.app.resource())

    def test_failedStopAudited(self) -> None:
        """
        Known since stop 54: a stop that failed (C{scancel} could not reach
        slurmctld: 503) was audited C{requested} and nothing more, as if
        made. Its failure is audited too (session 38).
        """
        path = os.path.abspath(self.mktemp())
        self.api = JobsAPI(
            self.manager,
            self.authenticator,
            self.reactor,
            self.metrics,
            audit=AuditLog(path, self.reactor),
        )
        self.treq = StubTreq(self.api.app.resource())
        created = self.send("POST", "/jobs", "alice", body={"command": "sleep"})
        self.commands.submissions[0][2].callback("101")
        self.treq.flush()
        job = self.successResultOf(created).json()
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        self.commands.failNext = SlurmError("Unable to contact", unreachable=True)
        refused = self.call("POST", f"/jobs/{job['id']}/stop", "alice")
        self.assertIn("Slurm is unreachable", self.assertError(refused, 503)["error"])
        # Again: its failure is said once a minute (session review 38).
        self.commands.failNext = SlurmError("Unable to contact", unreachable=True)
        self.assertError(self.call("POST", f"/jobs/{job['id']}/stop", "alice"), 503)
        with open(path) as f:
            stops = [e for e in map(json.loads, f) if e["event"] == "job.stop"]
        self.assertEqual(
            [e["result"] for e in stops], ["requested", "failed", "requested"], stops
        )
        stops.pop()
        self.assertIn("Slurm is unreachable", stops[-1]["error"])
        self.assertEqual(stops[-1]["job"], job["id"])

    def test_combinedOffsetOfARunningJobRefused(self) -> None:
        """
        A Slurm job keeps no order of its two files: while it runs, a
        combined follower gets them as they grow, and a later reader in
        another order, so a combined offset of one read is no place in
        the next (bytes lost and repeated on a resume: session review 31).
        Refused until the job has ended; by stream positions it resumes.
        """
        created = self.send("POST", "/jobs", "alice", body={"command": "true"})
        self.commands.submissions[0][2].callback("101")
        self.treq.flush()
        job = self.successResultOf(created).json()
        for query in ("offset=3", "offset=3&follow=true", "offset=3&format=sse"):
            refused = self.call(
                "GET", f"/jobs/{job['id']}/logs?stream=combined&{query}", "alice"
            )
            self.assertIn("offset", self.assertError(refused, 400)["error"], query)

    def test_downIs503AtOnceAndDegraded(self) -> None:
        self.assertEqual(self.call("GET", "/healthz", None).json(), {"status": "ok"})
        body = {"command": "true"}
        first = self.send("POST", "/jobs", "alice", body=body)
        self.commands.submissions[0][2].errback(
            SlurmError(
                "sbatch: Unable to contact slurm controller (connect failure)",
                unreachable=True,
            )
        )
        self.treq.flush()
        self.assertError(self.successResultOf(first), 503)
        # Known down: the next POST is answered without running sbatch.
        refused = self.call("POST", "/jobs", "alice", body=body)
        self.assertIn("unreachable", self.assertError(refused, 503)["error"])
        self.assertEqual(len(self.commands.submissions), 1)
        health = self.call("GET", "/healthz", None).json()
        self.assertEqual(health["status"], "degraded")
        self.assertEqual(health["executor"], "slurm")
        self.assertIn("Unable to contact", health["reason"])
        metrics = self.call("GET", "/metrics", "ada").body.decode()
        self.assertIn('jobworker_executor_up{executor="slurm"} 0.0', metrics)
        # Slurm answers again: ok, and jobs are taken.
        self.reactor.advance(1.0)
        self.commands.pings[-1].callback(None)
        self.assertEqual(self.call("GET", "/healthz", None).json(), {"status": "ok"})
        metrics = self.call("GET", "/metrics", "ada").body.decode()
        self.assertIn('jobworker_executor_up{executor="slurm"} 1.0', metrics)
        self.send("POST", "/jobs", "alice", body=body)
        self.assertEqual(len(self.commands.submissions), 2)
