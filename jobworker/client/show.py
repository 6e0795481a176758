"""How C{jw} shows jobs to a person: aligned fields, a table, ages and durations."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any

from .calls import started
from .streams import printable

#: Record fields a person does not need to see (internal or repeated:
#: C{error} is part of the outcome's words).
_HIDDEN = {"stdout_truncated", "stderr_truncated", "error"}

#: Executor-specific fields, shown only when set.
_OPTIONAL = {
    "slurm_job_id",
    "node",
    "pending_reason",
    "error",
    "stopped_by",
    "pid",
    "cwd",
    "name",
    "labels",
    "limits",
    "timeout_seconds",
    "run_as",
    "stdout_dropped",
    "stderr_dropped",
    "output_lost",
    "signal",
    "exit_code",
    "started_at",
    "ended_at",
    "slurm",
}


def jsonLine(document: Any) -> str:
    """One JSON document on one line."""
    return json.dumps(document) + "\n"


def parseTime(stamp: str | None) -> float | None:
    """An RFC 3339 time of the API as seconds since the epoch (None if absent)."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def span(seconds: float) -> str:
    """A duration, shortly: C{0.4s}, C{42s}, C{5m3s}, C{3h12m}, C{2d4h}."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    whole = int(seconds)
    for big, bigSize, small, smallSize in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= bigSize:
            rest = (whole % bigSize) // smallSize
            return f"{whole // bigSize}{big}" + (f"{rest}{small}" if rest else "")
    return f"{whole}s"


def age(stamp: str, now: float) -> str:
    """How long ago an RFC 3339 time was, shortly: C{42s}, C{5m}, C{3h}, C{2d}."""
    then = parseTime(stamp)
    if then is None:
        return "?"
    return _shortly(now - then)


def _shortly(seconds: float) -> str:
    """C{42s}, C{5m}, C{3h}, C{2d} (whole units, rounded down; 0s at least)."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _soon(seconds: float) -> str:
    """
    A time to come as L{_shortly} says it, rounded to the nearest unit: a
    login of 12 hours, less the moment its request took, is C{12h} (it
    was C{11h}: new user round 36).
    """
    for unit, size, most in (("s", 1, 60), ("m", 60, 60), ("h", 3600, 24)):
        count = round(seconds / size)
        if count < most:
            return f"{max(0, count)}{unit}"
    return f"{round(seconds / 86400)}d"


def duration(job: dict[str, Any], now: float) -> str:
    """How long the job ran (so far, if it runs); empty if it never started."""
    start = parseTime(job.get("started_at"))
    if start is None:
        return ""
    end = parseTime(job.get("ended_at")) or now
    return span(end - start)


def commandLine(job: dict[str, Any]) -> str:
    """The command as a shell would need it typed (quoted), printable."""
    return printable(
        " ".join(shellWord(word) for word in [job["command"], *job["args"]])
    )


#: The escapes of bash's C{$'...'} by a letter: those Python shows too
#: (the others as C{\\xHH}, as in jw's other lines).
_LETTERS = {
    "\t": "\\t",
    "\n": "\\n",
    "\r": "\\r",
    "\\": "\\\\",
    "'": "\\'",
}


def shellWord(word: str) -> str:
    """
    C{word} as bash needs it typed: as C{shlex.quote} does, unless it has a
    character that is not printable (a newline, an escape, a direction
    mark): then in bash's C{$'...'}, each such character as its escape.
    (Shown as Python escapes in C{'...'}, C{printf $'a\\nb'} and C{printf
    'a\\nb'} looked alike: new user round 34.)
    """
    if word.isprintable():
        return shlex.quote(word)
    return "$'" + "".join(_escaped(c) for c in word) + "'"


def _escaped(c: str) -> str:
    if c in _LETTERS:
        return _LETTERS[c]
    if c.isprintable():
        return c
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def outcome(job: dict[str, Any]) -> str:
    """What the job's end means, in words."""
    status = str(job["status"])
    if status in ("RUNNING", "PENDING"):
        reason = job.get("pending_reason")
        return status.lower() + (f" ({reason})" if reason else "")
    if job.get("exit_code") is not None:
        text = f"exited with code {job['exit_code']}"
    elif job.get("signal"):
        text = f"killed by {job['signal']}"
    elif started(job):
        text = "ended without an exit status"
    else:
        text = "never ran"
    error = job.get("error") or ""
    if job.get("signal"):
        # The server's words for it ("killed by signal SIGSEGV", or after
        # whose doing it was): once (Slurm user round 33).
        said = f"killed by signal {job['signal']}"
        if error == said:
            error = ""
        elif error.endswith(": " + said):
            error = error[: -len(said) - 2]
    if error.startswith(text + ": "):
        # The server's words already say it ("never ran: ..."): once.
        error = error[len(text) + 2 :]
    if job.get("stopped_by"):
        text += f" (stopped by {job['stopped_by']})"
    if error and error != text:
        text += f": {error}"
    return text


def endLine(final: dict[str, Any]) -> str | None:
    """
    The line jw says beside the exit status of a job it followed or waited
    for, where the status alone would not tell: one someone else stopped
    (an Admin, the server's shutdown), one that ended with no exit status
    (255: the server restarted while it ran; it came with no word), or one
    that failed for a reason its exit status does not say.
    """
    status = final["status"]
    lost = (
        status == "FAILED"
        and final.get("exit_code") is None
        and not final.get("signal")
    )
    if status == "STOPPED" or lost:
        return f"jw: job {final['id']}: {outcome(final)}"
    error = final.get("error") or ""
    unsaid = not error.startswith("exited with code") or "memory limit" in error
    if error and (status == "COMPLETED" or (status == "FAILED" and unsaid)):
        # Why, where the exit status alone does not say: its timeout (a job
        # that caught the TERM exits 143 all the same), its memory limit
        # (137, or a process of the job other than its main one: operator
        # round 40), a signal; on a job that completed, what went wrong all
        # the same (output lost). Said by jw exec -f only, and not always
        # (new user round 29).
        return f"jw: job {final['id']}: {error}"
    return None


def when(stamp: str | None, now: float) -> str:
    """
    An RFC 3339 time of the API as jw shows every time: local, C{2026-12-04
    20:00:59 UTC (1s ago)}, or C{(in 12h)} for one still to come (empty if
    absent or unreadable).
    """
    then = parseTime(stamp)
    if then is None:
        return ""
    return moment(then, now)


def moment(then: float, now: float) -> str:
    """
    The time C{then} (seconds since the epoch) as L{when} shows it: local,
    with how long ago or from now.
    """
    local = datetime.fromtimestamp(then, UTC).astimezone()
    if then > now:
        return f"{local:%Y-%m-%d %H:%M:%S %Z} (in {_soon(then - now)})"
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({_shortly(now - then)} ago)"


def _value(key: str, value: Any, now: float) -> str:
    if key.endswith("_at"):
        return when(value, now)
    if key == "args":
        return shlex.join(value)
    if key == "limits":
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    if key == "labels":
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)  # after, after_ok
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    if isinstance(value, float):
        # As jw's messages say it: 3600, not 3600.0 (new user round 33).
        return f"{value:.15g}"
    return str(value)


def jobLines(job: dict[str, Any], now: float) -> str:
    """C{jw status}: aligned C{key: value} lines, empty optional fields left out."""
    rows: list[tuple[str, str]] = [
        ("id", job["id"]),
        ("status", job["status"]),
        ("outcome", outcome(job)),
        ("command", commandLine(job)),
        ("owner", job["owner"]),
    ]
    if job.get("started_at"):
        rows.append(("duration", duration(job, now)))
    shown = {"id", "status", "command", "args", "owner"}
    for key, value in job.items():
        if key in shown or key in _HIDDEN:
            continue
        if value is None or value in ({}, [], ""):
            continue  # empty: nothing to show, whatever the field
        if key in _OPTIONAL and value in (0, False):
            continue
        if isinstance(value, dict) and not any(v is not None for v in value.values()):
            continue
        if key == "executor" and value == "local":
            continue
        rows.append((key, _value(key, value, now)))
    width = max(len(key) for key, _ in rows)
    return "".join(
        printable(f"{key + ':':<{width + 1}} {value}") + "\n" for key, value in rows
    )


def _shortReason(reason: str) -> str:
    """A pending reason in a table cell: C{#3/7}, C{after 5c08db76}."""
    words = reason.split()
    if reason.startswith("queued: position") and len(words) >= 5:
        return f"#{words[2]}/{words[4]}"
    if reason.startswith("waiting for job") and len(words) >= 4:
        return f"after {words[3][:8]}"
    return reason[:20]


def jobTable(jobs: list[dict[str, Any]], now: float, wide: bool = False) -> str:
    """C{jw list}: one row per job; the command shell-quoted, cut unless C{wide}."""
    header = ["ID", "NAME", "OWNER", "STATUS", "EXIT", "AGE", "DURATION", "COMMAND"]
    rows = [header]
    for job in jobs:
        exitText = (
            str(job["exit_code"])
            if job["exit_code"] is not None
            else (job["signal"] or "")
        )
        if job["status"] == "PENDING" and job.get("pending_reason"):
            exitText = _shortReason(job["pending_reason"])
        command = commandLine(job)
        if not wide and len(command) > 60:
            command = command[:57] + "..."
        rows.append(
            [
                printable(job["id"] if wide else job["id"][:8]),
                printable(job.get("name") or ""),
                printable(job["owner"]),
                printable(job["status"]),
                printable(exitText),
                age(job["created_at"], now),
                duration(job, now),
                command,
            ]
        )
    if not any(row[1] for row in rows[1:]):
        rows = [row[:1] + row[2:] for row in rows]  # no job has a name
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    return "".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:last]))
        + "  "
        + row[last]
        + "\n"
        for row in rows
    )
