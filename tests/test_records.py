"""Unit tests for L{jobworker.jobs.records}: the job record and its state machine."""

from __future__ import annotations

import signal

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.records import JobRecord, JobStatus, rfc3339, signalName

JOB_ID = "0b5f6c1e-3d0a-4c8e-9a43-1f0e2d3c4b5a"


def makeRecord(**extra: object) -> JobRecord:
    """A RUNNING record with fixed fields."""
    fields: dict[str, object] = {
        "id": JOB_ID,
        "command": "sh",
        "args": ["-c", "echo hi"],
        "owner": "alice",
        "created_at": 1700000000.25,
    }
    fields.update(extra)
    return JobRecord(**fields)  # type: ignore[arg-type]


class JobStatusTests(SynchronousTestCase):
    """The five states and which of them are final."""

    def test_onlyRunningIsNotEnded(self) -> None:
        """PENDING (queued in Slurm) and RUNNING are the states not ended."""
        self.assertEqual(
            {status: status.ended for status in JobStatus},
            {
                JobStatus.PENDING: False,
                JobStatus.RUNNING: False,
                JobStatus.COMPLETED: True,
                JobStatus.FAILED: True,
                JobStatus.STOPPED: True,
            },
        )

    def test_values(self) -> None:
        """Each state's value is its upper-case name, as the API sends it."""
        self.assertEqual(
            [status.value for status in JobStatus],
            ["PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED"],
        )


class FinishTests(SynchronousTestCase):
    """L{JobRecord.finish} records the end exactly once."""

    def test_newRecordIsRunning(self) -> None:
        """A new record is RUNNING with no end fields set."""
        record = makeRecord()
        self.assertIs(record.status, JobStatus.RUNNING)
        self.assertIsNone(record.ended_at)
        self.assertIsNone(record.exit_code)
        self.assertIsNone(record.signal)
        self.assertIsNone(record.error)

    def test_finishSetsEveryEndField(self) -> None:
        """finish() stores status, end time, exit code, signal and error."""
        record = makeRecord()
        record.finish(
            JobStatus.FAILED,
            1700000005.0,
            exit_code=3,
            signal="SIGTERM",
            error="exited with code 3",
        )
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertEqual(record.ended_at, 1700000005.0)
        self.assertEqual(record.exit_code, 3)
        self.assertEqual(record.signal, "SIGTERM")
        self.assertEqual(record.error, "exited with code 3")

    def test_finishDefaultsToNoDetails(self) -> None:
        """Without keyword arguments exit code, signal and error stay None."""
        record = makeRecord()
        record.finish(JobStatus.STOPPED, 1.0)
        self.assertIs(record.status, JobStatus.STOPPED)
        self.assertIsNone(record.exit_code)
        self.assertIsNone(record.signal)
        self.assertIsNone(record.error)

    def test_secondFinishRaises(self) -> None:
        """A second finish() raises RuntimeError naming the job."""
        record = makeRecord()
        record.finish(JobStatus.COMPLETED, 2.0, exit_code=0)
        error = self.assertRaises(
            RuntimeError, record.finish, JobStatus.FAILED, 3.0, exit_code=1
        )
        self.assertIn(JOB_ID, str(error))
        self.assertIn("COMPLETED", str(error))

    def test_secondFinishChangesNothing(self) -> None:
        """The refused second finish() leaves the first outcome intact."""
        record = makeRecord()
        ended = record.created_at + 2.0
        record.finish(JobStatus.COMPLETED, ended, exit_code=0)
        with self.assertRaises(RuntimeError):
            record.finish(JobStatus.FAILED, ended + 1.0, exit_code=1, error="boom")
        self.assertIs(record.status, JobStatus.COMPLETED)
        self.assertEqual(record.ended_at, ended)
        self.assertEqual(record.exit_code, 0)
        self.assertIsNone(record.error)

    def test_everyFinalStatusFinishesOnce(self) -> None:
        """Each final status can end a record, and only once."""
        for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED):
            record = makeRecord()
            record.finish(status, 1.0)
            self.assertIs(record.status, status)
            self.assertRaises(RuntimeError, record.finish, status, 2.0)

    def test_finishRunningRefused(self) -> None:
        """finish(RUNNING) raises ValueError and leaves the record running."""
        record = makeRecord()
        self.assertRaises(ValueError, record.finish, JobStatus.RUNNING, 1.0)
        self.assertIs(record.status, JobStatus.RUNNING)
        self.assertIsNone(record.ended_at)


class ToJSONTests(SynchronousTestCase):
    """L{JobRecord.toJSON} is the API's job object."""

    def test_fields(self) -> None:
        """A running record gives exactly the documented members."""
        record = makeRecord(cwd="/tmp", pid=4242, started_at=1700000000.5)
        self.assertEqual(
            record.toJSON(),
            {
                "id": JOB_ID,
                "command": "sh",
                "args": ["-c", "echo hi"],
                "cwd": "/tmp",
                "owner": "alice",
                "status": "RUNNING",
                "pid": 4242,
                "exit_code": None,
                "signal": None,
                "error": None,
                "created_at": "2023-11-14T22:13:20.250Z",
                "started_at": "2023-11-14T22:13:20.500Z",
                "ended_at": None,
                "stopped_by": None,
                "stdout_bytes": 0,
                "stderr_bytes": 0,
                "stdout_truncated": False,
                "stdout_dropped": 0,
                "stderr_truncated": False,
                "stderr_dropped": 0,
                "output_lost": 0,
                "limits": None,
                "timeout_seconds": None,
                "executor": "local",
                "slurm_job_id": None,
                "node": None,
                "pending_reason": None,
                "run_as": None,
                "name": None,
                "labels": {},
                "stdin": False,
                "priority": 0,
                "after": [],
                "after_ok": [],
            },
        )

    def test_truncationFlags(self) -> None:
        """Dropped bytes per stream show as truncated, with their count."""
        record = makeRecord(stdout_dropped=10, output_lost=4)
        body = record.toJSON()
        self.assertIs(body["stdout_truncated"], True)
        self.assertEqual(body["stdout_dropped"], 10)
        self.assertIs(body["stderr_truncated"], False)
        self.assertEqual(body["stderr_dropped"], 0)
        self.assertEqual(body["output_lost"], 4)

    def test_internalFieldsNotExposed(self) -> None:
        """The store sequence and recovery fields stay internal."""
        record = makeRecord(seq=7, boot_id="boot-1234", proc_start=99)
        body = record.toJSON()
        for name in ("seq", "boot_id", "proc_start", "env"):
            self.assertNotIn(name, body)
        self.assertNotIn("boot-1234", repr(body))

    def test_endedFields(self) -> None:
        """An ended record shows its status, exit details and end time."""
        record = makeRecord(started_at=1700000000.5)
        record.stopped_by = "ada"
        record.stdout_bytes = 12
        record.stderr_bytes = 3
        record.finish(JobStatus.STOPPED, 1700000010.0, exit_code=None, signal="SIGTERM")
        body = record.toJSON()
        self.assertEqual(body["status"], "STOPPED")
        self.assertEqual(body["ended_at"], "2023-11-14T22:13:30.000Z")
        self.assertEqual(body["signal"], "SIGTERM")
        self.assertIsNone(body["exit_code"])
        self.assertEqual(body["stopped_by"], "ada")
        self.assertEqual(body["stdout_bytes"], 12)
        self.assertEqual(body["stderr_bytes"], 3)

    def test_envNotExposed(self) -> None:
        """The environment (which may hold secrets) is not in the JSON."""
        record = makeRecord(env={"SECRET": "hunter2"})
        body = record.toJSON()
        self.assertNotIn("env", body)
        self.assertNotIn("hunter2", repr(body))

    def test_envNotInRepr(self) -> None:
        """The environment is left out of the record's repr too."""
        record = makeRecord(env={"SECRET": "hunter2"})
        self.assertNotIn("hunter2", repr(record))

    def test_argsCopied(self) -> None:
        """The JSON args list is a copy: changing it leaves the record alone."""
        record = makeRecord()
        record.toJSON()["args"].append("extra")
        self.assertEqual(record.args, ["-c", "echo hi"])

    def test_timesAreRFC3339Z(self) -> None:
        """Times are UTC RFC 3339 with milliseconds and a 'Z' suffix."""
        record = makeRecord(created_at=0.0)
        self.assertEqual(record.toJSON()["created_at"], "1970-01-01T00:00:00.000Z")


class RFC3339Tests(SynchronousTestCase):
    """L{rfc3339} formats POSIX timestamps."""

    def test_none(self) -> None:
        """None stays None."""
        self.assertIsNone(rfc3339(None))

    def test_milliseconds(self) -> None:
        """Sub-second parts become exactly three digits."""
        self.assertEqual(rfc3339(1700000000.123456), "2023-11-14T22:13:20.123Z")

    def test_wholeSeconds(self) -> None:
        """Whole seconds still carry .000 and the Z suffix, never +00:00."""
        text = rfc3339(86400.0)
        self.assertEqual(text, "1970-01-02T00:00:00.000Z")
        assert text is not None
        self.assertNotIn("+00:00", text)


class SignalNameTests(SynchronousTestCase):
    """L{signalName} names signal numbers."""

    def test_known(self) -> None:
        """Known numbers give their SIG name."""
        self.assertEqual(signalName(signal.SIGKILL), "SIGKILL")
        self.assertEqual(signalName(signal.SIGTERM), "SIGTERM")
        self.assertEqual(signalName(signal.SIGINT), "SIGINT")

    def test_plainInt(self) -> None:
        """A plain int (as ProcessTerminated carries) is named too."""
        self.assertEqual(signalName(9), "SIGKILL")
        self.assertEqual(signalName(15), "SIGTERM")

    def test_unknown(self) -> None:
        """Unknown numbers become SIG<n>."""
        self.assertEqual(signalName(999), "SIG999")
        self.assertEqual(signalName(0), "SIG0")
