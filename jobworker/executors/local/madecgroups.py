"""
Job cgroups made by this server, noted on disk until they are removed.

A job's cgroup is made before the store has its record (the job starts
behind its gate, in the cgroup, once the record is stored). A server killed
in between left a cgroup no record names: recovery, which looks at records
and at the leftovers journal, never removed it. The journal names the job
before its cgroup is made, until the job is cleaned up (its cgroup
removed); at start-up the executor removes the cgroup of every job it names
that recovery does not see to otherwise.

It names only what this server (its state dir) made: the jobs' cgroup
folder may be shared with other servers (several in one cgroup, as a test
suite runs them), whose jobs' folders are never this server's to remove.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from ...errors import NotFound
from ...jobs.folders import (
    JournalTail,
    journalLines,
    openJournal,
    removeJournal,
    replaceJournal,
)
from ...jobs.validation import parseJobId

log = Logger()

#: The journal's file, in the state dir.
MADE_CGROUPS = "job-cgroups"

#: Lines of jobs done the file may hold beyond twice the jobs noted before
#: it is written anew (appending is one write a job; done is free).
SLACK = 1024


class MadeCgroups:
    """
    The file C{path}, one line a job whose cgroup was (about to be) made;
    emptied whenever no job is noted, written anew when mostly done lines.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: The jobs noted and not done.
        self._noted: set[str] = set()
        #: Lines in the file (noted, and done since it was last written).
        self._lines = 0
        #: The file, kept open (a job's start is one write: no open, close
        #: or unlink on the start path); None until the first note.
        self._fd: int | None = None
        self._tail = JournalTail()

    def note(self, jobId: str) -> None:
        """C{jobId}'s cgroup is about to be made."""
        self._noted.add(jobId)
        self._lines += 1
        line = f"{jobId}\n".encode("ascii", "replace")
        try:
            if self._fd is None:
                self._fd = openJournal(self.path)
            self._tail.append(self._fd, line)
        except OSError as e:
            log.warn(
                "cannot note job {job}'s cgroup in {path}: {error}",
                job=jobId,
                path=self.path,
                error=e.strerror,
            )

    def done(self, jobId: str) -> None:
        """C{jobId} is cleaned up: nothing of its cgroup is left."""
        if jobId not in self._noted:
            return
        self._noted.discard(jobId)
        if not self._noted:
            self.emptied()
        elif self._lines > 2 * len(self._noted) + SLACK:
            self._rewrite()

    def _rewrite(self) -> None:
        data = "".join(f"{i}\n" for i in self._noted).encode("ascii")
        try:
            replaceJournal(self.path, data)
        except OSError as e:
            log.warn("cannot rewrite {path}: {error}", path=self.path, error=e.strerror)
            return
        self._close()  # (the next note opens the new file)
        self._lines = len(self._noted)
        self._tail.fresh()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def emptied(self) -> None:
        """No job is noted: the file is emptied (kept, and open)."""
        self._lines = 0
        if self._fd is None:
            self.clear()
            return
        try:
            os.ftruncate(self._fd, 0)
            self._tail.fresh()
        except OSError as e:
            log.warn("cannot empty {path}: {error}", path=self.path, error=e.strerror)

    def clear(self) -> None:
        """Forget every job noted, and remove the file."""
        self._noted.clear()
        self._lines = 0
        self._close()
        try:
            removeJournal(self.path)
            self._tail.fresh()
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=self.path, error=e.strerror)

    def read(self) -> list[str]:
        """The jobs a previous run noted and did not see done (bad lines skipped)."""
        try:
            lines = journalLines(self.path)
        except OSError as e:
            log.error("cannot read {path}: {error}", path=self.path, error=str(e))
            return []
        found: dict[str, None] = {}
        for line in lines:
            try:
                found[parseJobId(line.strip())] = None
            except NotFound:
                continue
        return list(found)
