"""
Slurm's JSON of every version from 22.05 on, read into a job's ending.

The documents are shaped as each version prints them: squeue --json of
22.05 (openapi v0.0.38: C{exit_code} the raw wait status), sacct --json of
22.05 (dbv0.0.38) and squeue/sacct of 23.02 and 23.11 (data_parser
v0.0.39: C{{"status": "SIGNALED", "return_code": -127, "signal":
{"signal_id": 9, "name": "Killed"}}}, and C{"SUCCESS"} for every exit,
zero or not), and 23.11 to 25.x (v0.0.40 to v0.0.43: C{"status"} a list,
numbers C{{"set", "infinite", "number"}}). Checked against SchedMD/slurm's
C{src/plugins/openapi/v0.0.38/jobs.c}, C{openapi/dbv0.0.38/parse.c} and
C{data_parser/v0.0.39..v0.0.43/parsers.c} (C{DUMP_FUNC(JOB_EXIT_CODE)},
C{DUMP_FUNC(PROCESS_EXIT_CODE)}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.slurm.documents import (
    SlurmState,
    parseAccounting,
    parseJobs,
    parseStates,
)
from jobworker.executors.slurm.outcomes import Outcome, outcomeOf
from jobworker.executors.slurm.sieve import sieve
from jobworker.jobs.records import JobStatus

#: The cases: Slurm's state and reason, and the raw wait status slurmctld
#: keeps (what 22.05's squeue prints as is; the others derive theirs).
CASES = {
    "exit 0": ("COMPLETED", "None", 0),
    "exit 3": ("FAILED", "NonZeroExitCode", 3 << 8),
    "SIGKILL": ("FAILED", "JobLaunchFailure", 9),
    "TIMEOUT": ("TIMEOUT", "TimeLimit", 15),
    "OUT_OF_MEMORY": ("OUT_OF_MEMORY", "OutOfMemory", 125),
    # sbatch -o /nonexistent/x: "Could not open stdout file" on the node.
    "launch failure": ("FAILED", "JobLaunchFailure", 4021),
}

#: What jobworker must make of each, whatever the version.
EXPECTED = {
    "exit 0": (JobStatus.COMPLETED, 0, None),
    "exit 3": (JobStatus.FAILED, 3, None),
    "SIGKILL": (JobStatus.FAILED, None, "SIGKILL"),
    "TIMEOUT": (JobStatus.FAILED, None, "SIGTERM"),
    # Slurm's own SIG_OOM (125) is no signal: the OOM killer's SIGKILL.
    "OUT_OF_MEMORY": (JobStatus.FAILED, None, "SIGKILL"),
    "launch failure": (JobStatus.FAILED, None, None),
}


def _waitStatus(raw: int) -> tuple[str, int | None, int | None]:
    """C's WIFEXITED/WIFSIGNALED as glibc defines them: (kind, code, signal)."""
    low = raw & 0x7F
    if low == 0:
        return "exited", (raw >> 8) & 0xFF, None
    if ((low + 1) & 0xFF) >> 1 > 0 and low != 0x7F:
        return "signaled", None, low
    return "other", None, None


def _v38Exit(raw: int) -> Any:
    return raw


def _v39Exit(raw: int) -> dict[str, Any]:
    """data_parser v0.0.39 (23.02, 23.11) and sacct's dbv0.0.38 (22.05)."""
    kind, _, signal = _waitStatus(raw)
    if kind == "exited":
        return {"status": "SUCCESS", "return_code": 0}
    if kind == "signaled":
        return {
            "status": "SIGNALED",
            "return_code": -127,
            "signal": {"signal_id": signal, "name": "Killed"},
        }
    return {"status": "ERROR", "return_code": (raw >> 8) & 0xFF}


def _set(number: int | None) -> dict[str, Any]:
    return {"set": number is not None, "infinite": False, "number": number or 0}


def _v40Exit(raw: int) -> dict[str, Any]:
    """data_parser v0.0.40 on (23.11 to 25.x)."""
    kind, code, signal = _waitStatus(raw)
    if kind == "exited":
        status = ["ERROR"] if code else ["SUCCESS"]
        return {
            "status": status,
            "return_code": _set(code),
            "signal": {"id": _set(None), "name": ""},
        }
    if kind == "signaled":
        return {
            "status": ["SIGNALED"],
            "return_code": _set(None),
            "signal": {"id": _set(signal), "name": "KILL" if signal == 9 else ""},
        }
    return {
        "status": ["INVALID"],
        "return_code": _set(raw),
        "signal": {"id": _set(None), "name": ""},
    }


def squeue2205(case: str) -> str:
    state, reason, raw = CASES[case]
    job = {
        "job_id": 14,
        "name": "jobworker-a",
        "job_state": state,
        "state_reason": reason,
        "exit_code": _v38Exit(raw),
        "nodes": "vm",
        "start_time": 1795989003,
        "submit_time": 1795989001,
    }
    return json.dumps({"meta": {}, "errors": [], "jobs": [job]})


def squeue2302(case: str) -> str:
    state, reason, raw = CASES[case]
    job = {
        "job_id": 14,
        "name": "jobworker-a",
        "job_state": state,
        "state_reason": reason,
        "exit_code": _v39Exit(raw),
        "nodes": "vm",
        "start_time": 1795989003,
        "submit_time": 1795989001,
    }
    return json.dumps({"meta": {}, "errors": [], "warnings": [], "jobs": [job]})


def squeue2405(case: str) -> str:
    state, reason, raw = CASES[case]
    job = {
        "job_id": 14,
        "name": "jobworker-a",
        "job_state": [state],
        "state_reason": reason,
        "exit_code": _v40Exit(raw),
        "derived_exit_code": _v40Exit(raw),
        "nodes": "vm",
        "start_time": _set(1795989003),
        "submit_time": _set(1795989001),
    }
    return json.dumps({"meta": {}, "errors": [], "warnings": [], "jobs": [job]})


def sacct2205(case: str) -> str:
    state, reason, raw = CASES[case]
    job = {
        "job_id": 14,
        "name": "jobworker-a",
        "state": {"current": state, "reason": reason},
        "exit_code": _v39Exit(raw),
        "nodes": "vm",
        "time": {"start": 1795989003, "submission": 1795989001},
    }
    return json.dumps({"meta": {}, "errors": [], "jobs": [job]})


def sacct2405(case: str) -> str:
    state, reason, raw = CASES[case]
    job = {
        "job_id": 14,
        "name": "jobworker-a",
        "state": {"current": [state], "reason": reason},
        "exit_code": _v40Exit(raw),
        "nodes": "vm",
        "time": {"start": 1795989003, "submission": 1795989001},
    }
    return json.dumps({"meta": {}, "errors": [], "warnings": [], "jobs": [job]})


SHAPES = {
    "squeue 22.05": squeue2205,
    "squeue 23.02": squeue2302,
    "squeue 24.05": squeue2405,
    "sacct 22.05": sacct2205,
    "sacct 24.05": sacct2405,
}


def outcome(document: str) -> Outcome:
    return outcomeOf(parseJobs(document)["14"], False, 60.0)


class ExitStatusTests(SynchronousTestCase):
    def test_everyShape(self) -> None:
        """
        Every case, in every version's shape, ends as it should: never
        "exit 0" for an exit 3 or a SIGKILL, never a signal for a launch
        failure.
        """
        for shape, document in SHAPES.items():
            for case, (status, code, signal) in EXPECTED.items():
                if case == "exit 3" and shape in ("squeue 23.02", "sacct 22.05"):
                    continue  # below: these versions do not keep the code
                got = outcome(document(case))
                self.assertEqual(
                    (got.status, got.exitCode, got.signal),
                    (status, code, signal),
                    f"{case} as {shape} gave {got}",
                )

    def test_v39ExitCodeLost(self) -> None:
        """
        23.02/23.11 (v0.0.39) and 22.05's sacct say C{"SUCCESS"} with code 0
        for any exit: a FAILED job with that status failed with a code
        Slurm did not keep, and is never said to have exited 0.
        """
        for document in (squeue2302, sacct2205):
            got = outcome(document("exit 3"))
            self.assertIs(got.status, JobStatus.FAILED)
            self.assertIsNone(got.exitCode)
            self.assertIn("non-zero", got.error or "")

    def test_launchFailureSaysWhatSlurmSaid(self) -> None:
        """Raw status 4021 is FAILED with Slurm's reason and status, no signal."""
        for shape, document in SHAPES.items():
            got = outcome(document("launch failure"))
            self.assertIsNone(got.signal, shape)
            self.assertIn("could not launch", got.error or "", shape)
            self.assertIn("JobLaunchFailure", got.error or "", shape)
            self.assertIn("--slurm-output-dir", got.error or "", shape)
        self.assertIn("4021", outcome(squeue2205("launch failure")).error or "")

    def test_timesAndNames(self) -> None:
        """Start and submit times (plain or set/number), and the job's name."""
        for shape, document in SHAPES.items():
            job = parseJobs(document("exit 0"))["14"]
            self.assertEqual(
                (job.startTime, job.submitTime, job.name, job.node),
                (1795989003.0, 1795989001.0, "jobworker-a", "vm"),
                shape,
            )


class NodeFailTests(SynchronousTestCase):
    def test_nodeFailSaysWhichNode(self) -> None:
        """A job whose node died: FAILED, naming the node and Slurm's reason."""
        line = "T4|NODE_FAIL|NodeDown|n1|1796027633|1796027630|jobworker-aT\n"
        got = outcomeOf(parseStates(line, "T")["4"], False, None)
        self.assertEqual(
            (got.status, got.exitCode, got.signal), (JobStatus.FAILED, None, None)
        )
        self.assertEqual(
            got.error, "its node n1 failed: Slurm ended it NODE_FAIL (NodeDown)"
        )


class StoppedAndTimedOutTests(SynchronousTestCase):
    """What Slurm's exit status says after a stop, and at a time limit (Slurm
    round 27)."""

    def state(self, name: str, code: int | None, signal: int = 0) -> SlurmState:
        return SlurmState(name, "None", code, signal, "n1")

    def test_stoppedWithoutAStatus(self) -> None:
        """
        Cancelled by a stop with 0:0 (its node stopped answering, and Slurm
        gave up on it; or no status came): no exit code, since none is known.
        It was recorded "exited with code 0", and `jw wait` exited 0, while
        the job still ran on its node.
        """
        got = outcomeOf(self.state("CANCELLED", 0), True, None)
        self.assertEqual(
            (got.status, got.exitCode, got.signal), (JobStatus.STOPPED, None, None)
        )

    def test_stoppedWithItsOwnCode(self) -> None:
        """A stopped job that exited with a code of its own keeps it; one
        that a signal ended keeps that."""
        got = outcomeOf(self.state("CANCELLED", 3), True, None)
        self.assertEqual((got.status, got.exitCode), (JobStatus.STOPPED, 3))
        got = outcomeOf(self.state("CANCELLED", 0, 15), True, None)
        self.assertEqual((got.exitCode, got.signal), (None, "SIGTERM"))
        got = outcomeOf(self.state("COMPLETED", 0), True, None)
        self.assertEqual((got.status, got.exitCode), (JobStatus.STOPPED, 0))

    def test_timedOutWithItsOwnCode(self) -> None:
        """
        At its time limit a job that caught TERM and exited 3 (TIMEOUT 3:0)
        keeps its code, as a local job does (it had none: `jw wait` exited
        255, which says the server crashed under it).
        """
        got = outcomeOf(self.state("TIMEOUT", 3), False, 60.0)
        self.assertEqual(
            (got.status, got.exitCode, got.signal), (JobStatus.FAILED, 3, None)
        )
        self.assertIn("timed out", got.error or "")
        got = outcomeOf(self.state("TIMEOUT", 0, 15), False, 60.0)
        self.assertEqual((got.exitCode, got.signal), (None, "SIGTERM"))


class PollLinesTests(SynchronousTestCase):
    def test_lines(self) -> None:
        """
        squeue --format output (SLURM_TIME_FORMAT=%s), each job between two
        copies of the poll's token: a name holding the separator stays
        whole; "N/A" times are None; array parts skipped.
        """
        t = "0123abcd"
        text = (
            f"{t}272|FAILED|JobLaunchFailure|vm|1796027633|1796027633|wrap{t}\n"
            f"{t}273|FAILED|NonZeroExitCode|vm|1796027633|1796027633|a|b c{t}\n"
            f"{t}274|PENDING|JobHeldUser||N/A|1796027760|jobworker-x{t}\n"
            f"{t}275_1|PENDING|None||N/A|1796027760|array{t}\n"
        )
        states = parseStates(text, t)
        self.assertEqual(sorted(states), ["272", "273", "274"])
        self.assertEqual(states["273"].name, "a|b c")
        self.assertEqual(states["274"].reason, "JobHeldUser")
        self.assertIsNone(states["274"].startTime)
        self.assertIsNone(states["274"].node)
        self.assertEqual(states["272"].submitTime, 1796027633.0)
        self.assertIsNone(states["272"].exitCode)

    def test_forgedLinesInANameStayTheName(self) -> None:
        """
        A job may rename itself to text holding newlines and a whole forged
        line of another job (Slurm 22.05 allows it: checked); without the
        token, that text stays its name and forges nothing.
        """
        t = "5f0e9c1d"
        forged = "c\n9|COMPLETED|None|vm|1|1|jobworker-victim"
        text = (
            f"{t}10|PENDING|JobHeldUser||N/A|1796027760|{forged}{t}\n"
            f"{t}9|RUNNING|None|vm|1796027700|1796027690|jobworker-victim{t}\n"
        )
        states = parseStates(text, t)
        self.assertEqual(states["10"].name, forged)
        self.assertEqual(states["9"].state, "RUNNING")

    def test_accountingLines(self) -> None:
        """
        sacct --parsable2 (here from the job completion log, 22.05): every
        job that had the number, steps left out; "code:signal", a launch
        failure's "0:53" not a signal.
        """
        text = (
            "14|COMPLETED|0:0|vm|1796019075|1796019075|jobworker-6b31\n"
            "14|FAILED|3:0|vm|1796027633|1796027633|jobworker-a\n"
            "14.batch|FAILED|3:0|vm|1796027633|1796027633|batch\n"
            "272|FAILED|0:53|vm|1796027633|1796027633|wrap\n"
            "273|CANCELLED by 0|0:9|vm|1796027633|1796027633|a\nb\n"
        ).replace("|", "TK")
        jobs = parseAccounting(text, "TK")
        self.assertEqual(sorted(jobs), ["14", "272", "273"])
        self.assertEqual(
            [j.name for j in jobs["14"]], ["jobworker-6b31", "jobworker-a"]
        )
        self.assertEqual(jobs["14"][1].exitCode, 3)
        self.assertEqual(jobs["14"][1].submitTime, 1796027633.0)
        self.assertEqual((jobs["272"][0].signal, jobs["272"][0].invalidStatus), (0, 53))
        self.assertEqual(
            (jobs["273"][0].state, jobs["273"][0].signal), ("CANCELLED", 9)
        )
        self.assertEqual(jobs["273"][0].name, "a\nb")
        launch = outcomeOf(jobs["272"][0], False, None)
        self.assertIn("could not launch", launch.error or "")
        self.assertEqual(parseAccounting("", "TK"), {})

    def test_accountingNameForgesNothing(self) -> None:
        """A name holding a newline and a forged record (no token) stays a name."""
        forged = "x\n14|COMPLETED|0:0|vm|1|1|jobworker-a"
        one = "TK".join(["15", "FAILED", "1:0", "vm", "5", "5", forged]) + "\n"
        jobs = parseAccounting(one, "TK")
        self.assertEqual(sorted(jobs), ["15"])
        self.assertEqual(jobs["15"][0].name, forged)

    def test_badLine(self) -> None:
        self.assertRaises(ValueError, parseStates, "squeue: error: something\n", "T")
        self.assertRaises(ValueError, parseStates, "T1|RUNNING|None|T\n", "T")


class SieveTests(SynchronousTestCase):
    def test_keepsOnlyTheIdsAsked(self) -> None:
        """The sieve passes the server only its own jobs (and Slurm's errors)."""
        document = json.dumps(
            {
                "meta": {"plugin": "x" * 1000},
                "errors": [],
                "jobs": [{"job_id": n, "name": f"j{n}"} for n in range(1, 1001)],
            }
        )
        kept = json.loads(sieve(document, {"7", "999"}))
        self.assertEqual([j["job_id"] for j in kept["jobs"]], [7, 999])
        self.assertEqual(kept["errors"], [])
        self.assertNotIn("meta", kept)
