"""
The job store's schema: its columns, the statements built from them, the
migrations from each version to the next, and a record to a row and back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from .limits import Limits
from .placement import SlurmRequest
from .records import JobRecord, JobStatus

#: The schema version this code writes. Each entry of L{MIGRATIONS} takes a
#: database from version C{i} to C{i + 1}; version 0 is an empty file.
SCHEMA_VERSION = 9

COLUMNS = (
    "id",
    "owner",
    "command",
    "args",
    "cwd",
    "status",
    "pid",
    "exit_code",
    "signal",
    "error",
    "created_at",
    "started_at",
    "ended_at",
    "stopped_by",
    "stdout_bytes",
    "stderr_bytes",
    "stdout_dropped",
    "stderr_dropped",
    "output_lost",
    "boot_id",
    "proc_start",
    "limits",
    "timeout_seconds",
    "executor",
    "slurm_job_id",
    "node",
    "run_as",
    "stop_requested_at",
    "name",
    "labels",
    "pending_reason",
    "stdin",
    "priority",
    "after_ids",
    "after_ok_ids",
    "queued",
    "queued_env",
    "stop_signal",
    "stop_grace",
    "slurm",
    "queued_limits",
)
# The statements are built once from the constant column list above; every
# value goes through a ? parameter.
SELECT = "SELECT seq, " + ", ".join(COLUMNS) + " FROM jobs"
#: The same columns from any source that joins C{jobs} (C{seq} qualified).
SELECT_FROM = "SELECT jobs.seq AS seq, " + ", ".join(COLUMNS) + " FROM "
#: A new job's labels, one row each (L{_migrateTo7}).
INSERT_LABEL = "INSERT INTO job_labels (key, value, seq) VALUES (?, ?, ?)"
INSERT = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
UPDATE = (
    "UPDATE jobs SET "
    + ", ".join(f"{column} = ?" for column in COLUMNS[1:])
    + " WHERE id = ?"
)


def _migrateTo1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            cwd TEXT,
            status TEXT NOT NULL,
            pid INTEGER,
            exit_code INTEGER,
            signal TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            stopped_by TEXT,
            stdout_bytes INTEGER NOT NULL DEFAULT 0,
            stderr_bytes INTEGER NOT NULL DEFAULT 0,
            stdout_dropped INTEGER NOT NULL DEFAULT 0,
            stderr_dropped INTEGER NOT NULL DEFAULT 0,
            output_lost INTEGER NOT NULL DEFAULT 0,
            boot_id TEXT,
            proc_start INTEGER
        )
        """
    )
    db.execute("CREATE INDEX jobs_status ON jobs (status, seq)")
    db.execute("CREATE INDEX jobs_owner ON jobs (owner, seq)")
    db.execute("CREATE INDEX jobs_ended ON jobs (ended_at) WHERE ended_at IS NOT NULL")


def _migrateTo2(db: sqlite3.Connection) -> None:
    # Resource limits (JSON) and timeouts arrived with per-job cgroups.
    db.execute("ALTER TABLE jobs ADD COLUMN limits TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN timeout_seconds REAL")


def _migrateTo3(db: sqlite3.Connection) -> None:
    # Executors arrived with Slurm: which one runs a job, its Slurm id, node.
    db.execute("ALTER TABLE jobs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local'")
    db.execute("ALTER TABLE jobs ADD COLUMN slurm_job_id TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN node TEXT")


def _migrateTo4(db: sqlite3.Connection) -> None:
    # Identities: the Unix identity each job runs as.
    db.execute("ALTER TABLE jobs ADD COLUMN run_as TEXT")


def _migrateTo5(db: sqlite3.Connection) -> None:
    # A stop in progress survives a restart (Slurm's escalation).
    db.execute("ALTER TABLE jobs ADD COLUMN stop_requested_at REAL")


def _migrateTo6(db: sqlite3.Connection) -> None:
    # Names and labels (JSON) to find jobs by.
    db.execute("ALTER TABLE jobs ADD COLUMN name TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN labels TEXT")
    db.execute("CREATE INDEX jobs_name ON jobs (name, seq) WHERE name IS NOT NULL")
    # Why a queued job waits (Slurm's reason; the local queue's too).
    db.execute("ALTER TABLE jobs ADD COLUMN pending_reason TEXT")
    # Jobs whose stdin the API feeds.
    db.execute("ALTER TABLE jobs ADD COLUMN stdin INTEGER NOT NULL DEFAULT 0")
    # The queue: priority, dependencies, and a queued job's request
    # environment (kept only until it starts: the state dir is 0700).
    db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN after_ids TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN after_ok_ids TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN queued INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN queued_env TEXT")
    db.execute("CREATE INDEX jobs_queued ON jobs (seq) WHERE queued = 1")


def _migrateTo7(db: sqlite3.Connection) -> None:
    # Labels indexed: a ?label= filter read every record's JSON on the
    # reactor's thread (0.6 s at 300,000 jobs, every other request waiting).
    db.execute(
        """
        CREATE TABLE job_labels (
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            seq INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
            PRIMARY KEY (key, value, seq)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX job_labels_seq ON job_labels (seq)")
    db.execute(
        "INSERT INTO job_labels (key, value, seq) "
        "SELECT each.key, each.value, jobs.seq FROM jobs, json_each(jobs.labels) "
        "AS each WHERE jobs.labels IS NOT NULL"
    )
    # A stop's own signal and grace survive a restart (Slurm).
    db.execute("ALTER TABLE jobs ADD COLUMN stop_signal TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN stop_grace REAL")


def _migrateTo8(db: sqlite3.Connection) -> None:
    # A job's "slurm" placement (JSON): a job that waits in jobworker's own
    # queue is submitted with it at its turn (code review round 34: it went
    # to the default partition, without its nodes or GPUs).
    db.execute("ALTER TABLE jobs ADD COLUMN slurm TEXT")


def _migrateTo9(db: sqlite3.Connection) -> None:
    # The limits a queued job asked for (JSON), before the defaults of the
    # server that queued it: its turn fills them in as the server is then
    # (late review 35: a job queued without cgroups ran without limits on a
    # server restarted with them).
    db.execute("ALTER TABLE jobs ADD COLUMN queued_limits TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrateTo1,
    _migrateTo2,
    _migrateTo3,
    _migrateTo4,
    _migrateTo5,
    _migrateTo6,
    _migrateTo7,
    _migrateTo8,
    _migrateTo9,
]


def toRow(record: JobRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.owner,
        record.command,
        json.dumps(record.args),
        record.cwd,
        record.status.value,
        record.pid,
        record.exit_code,
        record.signal,
        record.error,
        record.created_at,
        record.started_at,
        record.ended_at,
        record.stopped_by,
        record.stdout_bytes,
        record.stderr_bytes,
        record.stdout_dropped,
        record.stderr_dropped,
        record.output_lost,
        record.boot_id,
        record.proc_start,
        None if record.limits is None else json.dumps(record.limits),
        record.timeout_seconds,
        record.executor,
        record.slurm_job_id,
        record.node,
        record.run_as,
        record.stop_requested_at,
        record.name,
        json.dumps(record.labels) if record.labels else None,
        record.pending_reason,
        int(record.stdin),
        record.priority,
        json.dumps(record.after) if record.after else None,
        json.dumps(record.after_ok) if record.after_ok else None,
        int(record.queued),
        json.dumps(record.env) if record.queued else None,
        record.stop_signal,
        record.stop_grace,
        json.dumps(record.slurm) if record.slurm else None,
        (
            json.dumps(record.asked_limits)
            if record.queued and record.asked_limits is not None
            else None
        ),
    )


class DamagedRecord(JobRecord):
    """
    A job's record read from a row some column of which no longer parses (a
    bit flipped on disk, a hand edit: SQLite's own checks pass): the columns
    that parse, the others empty, and what was wrong. Never shown, never run:
    the store refuses it (L{jobworker.jobs.store.RecordDamaged}) and lists
    leave it out. It only closes a job that cannot go on, which writes its
    row whole again.

    @ivar problem: the damaged columns, and why each is wrong.
    @ivar text: the damaged columns' text, cut short, for the log (a queued
        job's environment, which may hold secrets, is not quoted).
    """

    problem: str = ""
    text: str = ""

    @property
    def note(self) -> str:
        """What the error of the job it closes says of it."""
        return f"its stored record was damaged: {self.problem}"


#: The columns that hold JSON: what each must hold, and its text when empty.
JSON_COLUMNS: dict[str, tuple[Callable[[object], bool], str, str | None]] = {
    "args": (lambda v: _texts(v), "a list of strings", "[]"),
    "limits": (lambda v: _limitsMap(v), "an object of numbers", None),
    "labels": (lambda v: _textMap(v), "an object of strings", None),
    "after_ids": (lambda v: _texts(v), "a list of strings", None),
    "after_ok_ids": (lambda v: _texts(v), "a list of strings", None),
    "queued_env": (lambda v: _textMap(v), "an object of strings", None),
    "queued_limits": (lambda v: _limitsMap(v), "an object of numbers", None),
    "slurm": (lambda v: _placement(v), "an object of Slurm options", None),
}

#: What a stored C{limits} object may hold.
LIMITS = frozenset(field.name for field in fields(Limits))

#: What a stored C{slurm} object may hold: each field's type.
PLACEMENT: dict[str, type] = {
    **{name: str for name in ("partition", "account", "qos", "gres", "constraint")},
    "nodes": int,
    "ntasks": int,
    "exclusive": bool,
}
assert set(PLACEMENT) == {field.name for field in fields(SlurmRequest)}

#: At most this many characters of a damaged column's text are quoted.
QUOTED = 80


def fromRow(row: sqlite3.Row) -> JobRecord:
    """
    The record a row holds; a L{DamagedRecord} if a column does not parse
    (one damaged row failed every page of the list that crossed it, and the
    start-up if its job was running).
    """
    try:
        record = _fromRow(row, JobRecord)
    except (ValueError, TypeError):
        return damagedRecord(row)
    # (JSON of another shape, a list for a dict, or a number among strings,
    # failed later: a 500.)
    if (
        _texts(record.args)
        and _textMap(record.labels)
        and _texts(record.after)
        and _texts(record.after_ok)
        and _textMap(record.env)
        and (record.limits is None or _limitsMap(record.limits))
        and (record.asked_limits is None or _limitsMap(record.asked_limits))
        and _placement(record.slurm)
    ):
        return record
    return damagedRecord(row)


def _texts(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def _textMap(value: object) -> bool:
    return type(value) is dict and all(
        type(k) is str and type(v) is str for k, v in value.items()
    )


def _limitsMap(value: object) -> bool:
    return type(value) is dict and all(
        k in LIMITS and (v is None or type(v) is int) for k, v in value.items()
    )


def _placement(value: object) -> bool:
    if type(value) is not dict:
        return False
    for k, v in value.items():
        kind = PLACEMENT.get(k)
        if kind is None or type(v) is not kind:
            return False
    return True


def damagedRecord(row: sqlite3.Row) -> DamagedRecord:
    """
    The L{DamagedRecord} of a row: each column that does not parse is
    emptied, and named in its C{problem} and C{text} (the record written
    back loses it: the log keeps it).
    """
    values = dict(zip(row.keys(), tuple(row), strict=True))
    problems, texts = [], []
    for column, (fits, shape, empty) in JSON_COLUMNS.items():
        text = values[column]
        if text is None:
            continue
        try:
            wrong = not fits(json.loads(text))
            why = f"not a JSON {shape}"
        except (ValueError, TypeError) as e:
            wrong, why = True, str(e)
        if wrong:
            problems.append(f"{column}: {why}")
            if column != "queued_env":
                texts.append(f"{column} {_quoted(text)}")
            values[column] = empty
    try:
        JobStatus(values["status"])
    except ValueError:
        problems.append("status: no status")
        texts.append(f"status {_quoted(values['status'])}")
        # What it was is not known: not running (a queued one ends at its
        # turn, any other stays until a DELETE).
        values["status"] = (
            JobStatus.PENDING.value if values["queued"] else JobStatus.FAILED.value
        )
    record = _fromRow(values, DamagedRecord)
    assert isinstance(record, DamagedRecord)
    record.problem = "; ".join(problems)
    record.text = ", ".join(texts)
    return record


def _quoted(value: object) -> str:
    text = repr(value)
    return text if len(text) <= QUOTED else text[: QUOTED - 3] + "..."


def _fromRow(row: sqlite3.Row | Mapping[str, Any], kind: type[JobRecord]) -> JobRecord:
    return kind(
        seq=row["seq"],
        id=row["id"],
        owner=row["owner"],
        command=row["command"],
        args=json.loads(row["args"]),
        cwd=row["cwd"],
        status=JobStatus(row["status"]),
        pid=row["pid"],
        exit_code=row["exit_code"],
        signal=row["signal"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        stopped_by=row["stopped_by"],
        stdout_bytes=row["stdout_bytes"],
        stderr_bytes=row["stderr_bytes"],
        stdout_dropped=row["stdout_dropped"],
        stderr_dropped=row["stderr_dropped"],
        output_lost=row["output_lost"],
        boot_id=row["boot_id"],
        proc_start=row["proc_start"],
        limits=None if row["limits"] is None else json.loads(row["limits"]),
        timeout_seconds=row["timeout_seconds"],
        executor=row["executor"],
        slurm_job_id=row["slurm_job_id"],
        node=row["node"],
        run_as=row["run_as"],
        stop_requested_at=row["stop_requested_at"],
        name=row["name"],
        labels={} if row["labels"] is None else json.loads(row["labels"]),
        pending_reason=row["pending_reason"],
        stdin=bool(row["stdin"]),
        priority=row["priority"],
        after=[] if row["after_ids"] is None else json.loads(row["after_ids"]),
        after_ok=[] if row["after_ok_ids"] is None else json.loads(row["after_ok_ids"]),
        queued=bool(row["queued"]),
        env={} if row["queued_env"] is None else json.loads(row["queued_env"]),
        stop_signal=row["stop_signal"],
        stop_grace=row["stop_grace"],
        slurm={} if row["slurm"] is None else json.loads(row["slurm"]),
        asked_limits=(
            None if row["queued_limits"] is None else json.loads(row["queued_limits"])
        ),
    )
