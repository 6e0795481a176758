"""
What Slurm's commands print, read (pure, no I/O): the poll's
C{squeue --format} lines, and the C{squeue --json} / C{sacct --json}
documents of every Slurm version from 22.05 on, whose C{exit_code} changed
shape three times:

  - 22.05 (squeue, openapi v0.0.38): the raw wait status, an integer;
  - 22.05 sacct (dbv0.0.38) and 23.02/23.11 (data_parser v0.0.39):
    C{{"status": "SIGNALED", "return_code": -127, "signal": {"signal_id": 9,
    "name": "Killed"}}}; their C{"SUCCESS"} says only "it exited" (the
    return code is always 0 there, whatever the code was);
  - 23.11 on (v0.0.40, v0.0.41 and later): C{{"status": ["ERROR"],
    "return_code": {"set": true, "infinite": false, "number": 3},
    "signal": {"id": {"set": false, ...}, "name": ""}}}, C{"INVALID"} with
    the raw number for what is no wait status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

#: The poll's C{squeue --format}: id, state, reason, nodes, start, submit,
#: name, each job's between two copies of a token (L{stateFormat}). The name
#: last: it may hold anything, "|" and newlines included. Times are epoch
#: seconds with C{SLURM_TIME_FORMAT=%s}.
STATE_FORMAT = "%i|%T|%r|%N|%S|%V|%j"


def stateFormat(token: str) -> str:
    """
    The poll's C{--format}, each job's fields between two copies of
    C{token}: a job may rename itself to text holding newlines and whole
    forged lines of another job, but it cannot know a token made afresh for
    each poll.
    """
    return f"{token}{STATE_FORMAT}{token}"


#: Highest number that is a signal: above it, Slurm's "signal" is a code of
#: its own (a launch failure: 4021 is read as "signal 53").
_LAST_SIGNAL = 31


class SlurmError(Exception):
    """
    A Slurm command failed; C{unreachable} if slurmctld could not be
    reached; C{unread} if it may have done what it was asked but its answer
    could not be read (an sbatch that printed no job id).
    """

    def __init__(
        self, message: str, unreachable: bool = False, unread: bool = False
    ) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.unread = unread


@dataclass(frozen=True)
class SlurmState:
    """What Slurm says of one job."""

    state: str
    reason: str
    #: The code it exited with; None if it did not exit (or Slurm does not say).
    exitCode: int | None
    #: The signal that killed it; 0 if none.
    signal: int
    node: str | None
    #: When it started (epoch seconds), if it has.
    startTime: float | None = None
    #: The job's name (C{jobworker-<id>}): a Slurm job is ours only by it.
    name: str = ""
    #: When Slurm accepted it (epoch seconds).
    submitTime: float | None = None
    #: When it ended (epoch seconds), for an ended job, if Slurm says
    #: (squeue's JSON; for a running job, Slurm's estimate: not read).
    endTime: float | None = None
    #: Slurm's status when it is no wait status (a launch failure), else None.
    invalidStatus: int | None = None

    def withExit(self, other: SlurmState) -> SlurmState:
        """This state, with the exit status (and end time) of C{other}, a
        fuller document."""
        return replace(
            self,
            exitCode=other.exitCode,
            signal=other.signal,
            invalidStatus=other.invalidStatus,
            endTime=other.endTime,
        )


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended, as far as Slurm's document says."""

    code: int | None = None
    signal: int = 0
    invalid: int | None = None


def _number(value: Any) -> int | None:
    """An integer, or Slurm's C{{"set": .., "number": ..}}; None if unset."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and value.get("set", True) and not value.get("infinite"):
        number = value.get("number")
        return number if isinstance(number, int) else None
    return None


def _rawStatus(status: int) -> ExitStatus:
    """A wait status as C{waitpid} gives it (what 22.05's squeue prints)."""
    low, high = status & 0x7F, (status >> 8) & 0xFF
    if status < 0 or status > 0xFFFF or (low and high) or low == 0x7F:
        return ExitStatus(invalid=status)  # no wait status: Slurm's own code
    if low == 0:
        return ExitStatus(code=high)
    if low > _LAST_SIGNAL:
        return ExitStatus(invalid=status)
    return ExitStatus(signal=low)


def exitStatus(value: Any, state: str = "") -> ExitStatus:
    """
    The exit status in any shape Slurm prints C{exit_code} in (see the
    module's docstring). C{state} is the job's state: with v0.0.39's
    C{"SUCCESS"} it tells a zero exit from a non-zero one.
    """
    if value is None:
        return ExitStatus()
    if not isinstance(value, dict):
        number = _number(value)
        return ExitStatus() if number is None else _rawStatus(number)
    status = value.get("status")
    if isinstance(status, list):
        status = status[0] if status else ""
    status = str(status or "")
    code = _number(value.get("return_code"))
    signalInfo = value.get("signal")
    signal = None
    if isinstance(signalInfo, dict):
        signal = _number(signalInfo.get("id", signalInfo.get("signal_id")))
    if status == "SUCCESS":
        if state in ("", "COMPLETED"):
            return ExitStatus(code=0)
        # v0.0.39: "it exited", the code not kept; v0.0.40 on: exited 0.
        return ExitStatus(code=code if code else None)
    if status == "ERROR":
        return ExitStatus(code=code)
    if status in ("SIGNALED", "CORE_DUMPED"):
        if signal is None or signal <= 0:
            return ExitStatus()
        if signal > _LAST_SIGNAL:
            return ExitStatus(invalid=signal)
        return ExitStatus(signal=signal)
    if status == "INVALID":
        return ExitStatus(invalid=code)
    return ExitStatus()  # PENDING: not ended yet


def parseJobs(text: str) -> dict[str, SlurmState]:
    """
    The jobs of C{squeue --json} or C{sacct --json} output, by Slurm job id.

    @raise ValueError: the output is not the JSON expected.
    @raise SlurmError: Slurm reported an error (with slurmctld down, squeue
        --json exits 0 with no jobs and an error: never take that for "no
        jobs").
    """
    document = json.loads(text)
    errors = document.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        raise SlurmError(
            "squeue: " + str(first.get("description") or first.get("error") or "error"),
            unreachable=True,
        )
    jobs: dict[str, SlurmState] = {}
    for job in document.get("jobs", []):
        state = job.get("job_state")
        if isinstance(job.get("state"), dict):  # sacct: {"current": ..., "reason"}
            state = job["state"].get("current")
        if isinstance(state, list):  # newer Slurm: a list of flags
            state = state[0] if state else ""
        state = str(state or "")
        reason = job.get("state_reason")
        if reason is None and isinstance(job.get("state"), dict):
            reason = job["state"].get("reason")
        times = job.get("time") if isinstance(job.get("time"), dict) else job
        started = _number(times.get("start_time", times.get("start")))
        submitted = _number(times.get("submit_time", times.get("submission")))
        finished = _number(times.get("end_time", times.get("end")))
        ended = exitStatus(job.get("exit_code"), state)
        nodes = job.get("nodes")
        jobs[str(job.get("job_id"))] = SlurmState(
            state=state,
            reason=str(reason or ""),
            exitCode=ended.code,
            signal=ended.signal,
            node=str(nodes or "") or None,
            startTime=float(started) if started else None,
            name=str(job.get("name") or ""),
            submitTime=float(submitted) if submitted else None,
            endTime=float(finished) if finished else None,
            invalidStatus=ended.invalid,
        )
    return jobs


#: The C{sacct --format} of jobs that squeue no longer knows (name last).
ACCOUNTING_FORMAT = "JobID,State,ExitCode,NodeList,Start,Submit,JobName"


def _accountingRecords(text: str, token: str) -> list[list[str]]:
    """
    The records of sacct output whose fields are separated by C{token}
    (C{--delimiter}), the free-text name last. A name may hold newlines:
    a record ends at the last newline before the next record's first field.
    """
    pieces = text.split(token)
    fields = len(ACCOUNTING_FORMAT.split(","))
    if len(pieces) == 1 and not pieces[0].strip():
        return []
    if (len(pieces) - 1) % (fields - 1) != 0:
        raise ValueError(f"unexpected sacct output {text[:100]!r}")
    records = []
    first = pieces[0].strip()
    for start in range(1, len(pieces), fields - 1):
        record = [first, *pieces[start : start + fields - 2]]
        last = pieces[start + fields - 2]
        if start + fields - 1 < len(pieces):  # the next record's JobID follows
            last, _, first = last.rpartition("\n")
        record.append(last.removesuffix("\n"))
        records.append(record)
    return records


def parseAccounting(text: str, token: str) -> dict[str, list[SlurmState]]:
    """
    The jobs of C{sacct --noheader --parsable2 --delimiter=TOKEN
    --format=ACCOUNTING_FORMAT} output, by Slurm job id: a list each, since
    accounting keeps every job that ever had the number (numbering restarts
    when slurmctld's state is reset). Steps (C{14.batch}) are left out.
    C{ExitCode} is C{code:signal}; a "signal" above 31 is Slurm's own launch
    error, not a signal. A token made for each query separates the fields,
    so that no job name can forge another job's record.

    @raise ValueError: the output is not in the format asked for.
    """
    jobs: dict[str, list[SlurmState]] = {}
    for fields in _accountingRecords(text, token):
        jobId, state, exitCode, nodes, start, submit, name = fields
        if not jobId.isdigit():
            continue
        code, _, signal = exitCode.partition(":")
        status = ExitStatus()
        if code.isdigit() and signal.isdigit():
            number = int(signal)
            if number > _LAST_SIGNAL:
                status = ExitStatus(invalid=(int(code) << 8) | number)
            elif number:
                status = ExitStatus(signal=number)
            else:
                status = ExitStatus(code=int(code))
        jobs.setdefault(jobId, []).append(
            SlurmState(
                state=state.split(" ")[0],  # "CANCELLED by 0"
                reason="",
                exitCode=status.code,
                signal=status.signal,
                # (slurmdbd's words for none; the completion log's "(null)":
                # Slurm round 37.)
                node=nodes if nodes not in ("", "None assigned", "(null)") else None,
                startTime=_epoch(start),
                name=name,
                submitTime=_epoch(submit),
                invalidStatus=status.invalid,
            )
        )
    return jobs


def _epoch(text: str) -> float | None:
    return float(text) if text.isdigit() and text != "0" else None


def parseStates(text: str, token: str) -> dict[str, SlurmState]:
    """
    The jobs of the poll's C{squeue --noheader --format=stateFormat(token)}
    output, by Slurm job id (no exit status: squeue has no field for it).
    Jobs whose ids are not plain numbers (array or het job parts) are left
    out.

    @raise ValueError: the output is not in the format asked for.
    """
    jobs: dict[str, SlurmState] = {}
    pieces = text.split(token)
    if len(pieces) % 2 != 1 or any(p.strip() for p in pieces[::2]):
        raise ValueError(f"unexpected squeue output {text[:100]!r}")
    for line in pieces[1::2]:
        fields = line.split("|", 6)
        if len(fields) != 7:
            raise ValueError(f"unexpected squeue line {line[:100]!r}")
        jobId, state, reason, nodes, start, submit, name = fields
        if not jobId.strip().isdigit():
            continue
        jobs[jobId.strip()] = SlurmState(
            state=state.strip(),
            reason=reason.strip(),
            exitCode=None,
            signal=0,
            node=nodes.strip() or None,
            startTime=_epoch(start.strip()),
            name=name,
            submitTime=_epoch(submit.strip()),
        )
    return jobs
