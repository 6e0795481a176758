"""
Jobs that ended with processes still to kill, noted on disk until they are
gone.

A job's record is final as soon as its main process has ended and its pipes
are closed; what it left behind (a daemon that ignores SIGTERM, with its
output sent elsewhere) gets the stop grace, then SIGKILL. A server that
died inside that grace left those processes running for good: recovery
looks at unfinished records only, and a mapped account's or root's
processes are nobody's to reclaim. The journal names each such job (its
leader's pid, boot and start time, as recovery needs them) until its
leftovers are gone; at start-up the executor kills what it names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.logger import Logger

from ...errors import NotFound
from ...jobs.folders import (
    JournalTail,
    journalLines,
    openJournal,
    removeJournal,
    replaceJournal,
)
from ...jobs.identity import runAsUid
from ...jobs.records import JobRecord
from ...jobs.validation import parseJobId

log = Logger()

#: The journal's file, in the state dir.
LEFTOVERS = "leftovers"


@dataclass(frozen=True)
class Noted:
    """A job noted in the journal: what recovery needs to find its leftovers."""

    jobId: str
    pid: int | None
    bootId: str | None
    procStart: int | None
    #: The uid it ran as (None: not known, or noted by an older server).
    uid: int | None = None


class LeftoverJournal:
    """
    The file C{path}, one line a noted job; emptied once none is left.
    Nothing is written for a job that ends with nothing left (nearly all).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: The jobs noted, each with its line.
        self._noted: dict[str, bytes] = {}
        self._tail = JournalTail()

    def note(self, record: JobRecord) -> None:
        """C{record}'s job ended with processes left to kill."""
        uid = runAsUid(record.run_as)
        line = (
            f"{record.id} {record.pid or 0} {record.boot_id or '-'} "
            f"{record.proc_start or 0} {'-' if uid is None else uid}\n"
        ).encode("ascii", "replace")
        self._noted[record.id] = line
        try:
            fd = openJournal(self.path)
            try:
                self._tail.append(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            log.warn(
                "cannot note job {job}'s leftovers in {path}: {error}",
                job=record.id,
                path=self.path,
                error=e.strerror,
            )

    def done(self, jobId: str) -> None:
        """
        C{jobId}'s leftovers are gone: the file names only the jobs still
        noted (a line kept for a job long done would have a restart kill
        whatever session reused its pid), or is removed.
        """
        if self._noted.pop(jobId, None) is None:
            return
        if not self._noted:
            self.clear()
            return
        try:
            replaceJournal(self.path, b"".join(self._noted.values()))
        except OSError as e:
            # The file as it was: it still names this job too.
            log.warn("cannot rewrite {path}: {error}", path=self.path, error=e.strerror)
            return
        self._tail.fresh()

    def clear(self) -> None:
        """Forget every job noted."""
        self._noted.clear()
        try:
            removeJournal(self.path)
            self._tail.fresh()
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=self.path, error=e.strerror)

    def read(self) -> list[Noted]:
        """The jobs a previous run noted (lines it could not parse skipped)."""
        try:
            lines = journalLines(self.path)
        except OSError as e:
            log.error("cannot read {path}: {error}", path=self.path, error=str(e))
            return []
        found: dict[str, Noted] = {}
        for line in lines:
            fields = line.split()
            if len(fields) == 4:
                fields.append("-")  # (noted by an older server: no uid)
            if len(fields) != 5 or not all(f.isdigit() for f in fields[1:4:2]):
                continue
            jobId, pid, boot, start, uid = fields
            if uid != "-" and not uid.isdigit():
                continue
            try:
                parseJobId(jobId)
            except NotFound:
                continue
            found[jobId] = Noted(
                jobId,
                int(pid) or None,
                None if boot == "-" else boot,
                int(start) or None,
                None if uid == "-" else int(uid),
            )
        return list(found.values())
