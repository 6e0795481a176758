"""The Slurm executor's logic on a fake clock with fake Slurm commands."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from jobworker.cgroups import Limits
from jobworker.errors import BadRequest, ServiceUnavailable
from jobworker.local import JobPolicy
from jobworker.manager import JobManager
from jobworker.records import JobStatus
from jobworker.slurm import SlurmError, SlurmExecutor, SlurmState, parseJobs

from .fakes import FakeProcessReactor
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
        self.assertEqual((jobs["27"].exitCode, jobs["27"].signal), (0, 15))

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


class FakeCommands:
    """Slurm's commands, answered by the test."""

    def __init__(self) -> None:
        self.submissions: list[tuple[list[str], list[str], Deferred[str]]] = []
        self.polls: list[Deferred[dict[str, SlurmState]]] = []
        self.signals: list[tuple[str, str]] = []
        self.cancels: list[str] = []
        self.failNext: SlurmError | None = None

    def submit(self, options: list[str], script: list[str]) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.submissions.append((options, script, d))
        return d

    def jobs(self) -> Deferred[dict[str, SlurmState]]:
        d: Deferred[dict[str, SlurmState]] = Deferred()
        self.polls.append(d)
        return d

    async def signal(self, jobId: str, name: str) -> None:
        if self.failNext is not None:
            error, self.failNext = self.failNext, None
            raise error
        self.signals.append((jobId, name))

    async def cancel(self, jobId: str) -> None:
        self.cancels.append(jobId)

    async def cancelByName(self, name: str) -> None:
        self.cancels.append(name)


def state(name: str, code: int = 0, signal: int = 0, jobName: str = "") -> SlurmState:
    return SlurmState(name, "None", code, signal, "node7", None, jobName)


class ExecutorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.stateDir = os.path.abspath(self.mktemp())
        self.outputDir = os.path.join(self.stateDir, "shared")
        self.executor = SlurmExecutor(
            self.reactor,
            self.outputDir,
            grace=5.0,
            policy=JobPolicy(maxima=Limits(memory_bytes=1 << 30)),
            partition="debug",
            account="physics",
            pollInterval=1.0,
            commands=self.commands,  # type: ignore[arg-type]
        )
        self.manager = self.makeManager()

    def makeManager(self) -> JobManager:
        manager = JobManager(self.reactor, self.stateDir, 5.0, executor=self.executor)
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
        self.commands.polls[-1].errback(SlurmError("down", unreachable=True))
        failure = self.failureResultOf(accepted, ServiceUnavailable)
        self.assertIn("unreachable", str(failure.value))
        self.assertEqual(self.manager.page()[0], [])
        self.assertEqual(self.commands.cancels, [f"jobworker-{record.id}"])

    def test_lostAnswerFoundByName(self) -> None:
        """sbatch timed out but Slurm queued the job: it is found and kept."""
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError("sbatch: (timed out)", unreachable=True)
        )
        self.commands.polls[-1].callback(
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
        self.commands.polls[-1].callback(
            {"77": state("RUNNING", jobName=f"jobworker-{found.id}")}
        )
        self.assertEqual(manager.record(found.id).slurm_job_id, "77")
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

    def test_stopPendingCancels(self) -> None:
        """A queued job is cancelled at once (nothing to TERM)."""
        record = self.submit("sleep", "100")
        self.manager.stop(record.id, "alice")
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertEqual(self.commands.signals, [])

    def test_stopWhileSlurmDown(self) -> None:
        """scancel cannot reach slurmctld: the stop fails with 503."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.commands.failNext = SlurmError("Unable to contact", unreachable=True)
        self.failureResultOf(self.manager.stop(record.id, "alice"), ServiceUnavailable)
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
