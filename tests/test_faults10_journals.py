"""
Fault injection round 10, finding 2: the crash-safety journals
(C{job-cgroups}, L{MadeCgroups}; C{leftovers}, L{LeftoverJournal}) on a
full disk. There a write that reaches a block it cannot have returns a
short count, not ENOSPC: the note was cut with no warning, the next one
was glued onto it (read() then dropped both jobs), and a rewrite could put
a cut journal in place of a good one.

The short count is injected: C{os.write} writes part of the data to the
journal and returns what it wrote, as the real call does on a full disk.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.local.leftovers import LeftoverJournal
from jobworker.executors.local.madecgroups import SLACK, MadeCgroups
from jobworker.jobs.records import JobRecord

from .test_leftovers import journalRecord


class ShortWrites:
    """
    C{os.write} as on a full disk, for the files named in C{paths} only:
    the next C{count} writes to them write C{keep} bytes (at most) and
    return that short count; every other write is the real one.
    """

    def __init__(self, testCase: SynchronousTestCase, *paths: str) -> None:
        self.paths = {os.path.realpath(p) for p in paths}
        self.count = 0
        self.keep = 10
        self.cut = 0  # writes cut so far
        self._write = os.write
        testCase.patch(os, "write", self.write)

    def write(self, fd: int, data: Any) -> int:
        data = bytes(data)
        if self.count and self._target(fd) and len(data) > self.keep:
            self.count -= 1
            self.cut += 1
            return self._write(fd, data[: self.keep])
        return self._write(fd, data)

    def _target(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") in self.paths
        except OSError:
            return False


def refused(fd: int, length: int) -> None:
    """C{os.ftruncate} refused (an append-only file, say)."""
    raise PermissionError(1, "Operation not permitted")


class Journals(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.mkdir(self.folder)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("jobworker.executors.local")
        ]

    def content(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


class MadeCgroupsShortWriteTests(Journals):
    """L{MadeCgroups} on a full disk."""

    def test_shortNoteThenLater(self) -> None:
        """A cut note is a failed note (logged, as an OSError is), and leaves
        no partial line: the next note, once there is room, is read."""
        path = os.path.join(self.folder, "job-cgroups")
        short = ShortWrites(self, path)
        journal = MadeCgroups(path)
        first, cut, later = (str(uuid.uuid4()) for _ in range(3))
        journal.note(first)
        before = self.content(path)
        short.count = 1
        journal.note(cut)
        self.assertEqual(short.cut, 1)
        self.assertEqual(self.content(path), before)  # nothing of it left
        [warning] = self.warnings()
        self.assertIn(cut, warning)
        self.assertIn(path, warning)
        journal.note(later)
        self.assertEqual(MadeCgroups(path).read(), [first, later])
        self.assertEqual(self.warnings(), [warning])  # logged once

    def test_cutLineNotUndone(self) -> None:
        """Should the cut line stay (the file cannot be cut back), the next
        note still starts on a line of its own."""
        path = os.path.join(self.folder, "job-cgroups")
        short = ShortWrites(self, path)
        self.patch(os, "ftruncate", refused)
        journal = MadeCgroups(path)
        first, cut, later = (str(uuid.uuid4()) for _ in range(3))
        journal.note(first)
        short.count = 1
        journal.note(cut)
        journal.note(later)
        self.assertEqual(MadeCgroups(path).read(), [first, later])

    def test_shortRewrite(self) -> None:
        """A rewrite cut short never replaces the journal: the good one is
        kept (a note appended to it later is read too), the cut copy is
        removed, and it is logged."""
        path = os.path.join(self.folder, "job-cgroups")
        short = ShortWrites(self, path + ".new")
        short.count = 1
        short.keep = 5
        journal = MadeCgroups(path)
        kept = [str(uuid.uuid4()) for _ in range(2)]
        written = []
        for jobId in kept:
            journal.note(jobId)
            written.append(jobId)
        while not short.cut:
            jobId = str(uuid.uuid4())
            journal.note(jobId)
            written.append(jobId)
            journal.done(jobId)
            self.assertLess(len(written), SLACK + 10)  # (a rewrite was tried)
        self.assertEqual(
            self.content(path), "".join(f"{i}\n" for i in written).encode()
        )
        self.assertFalse(os.path.exists(path + ".new"))
        [warning] = self.warnings()
        self.assertIn(path, warning)
        later = str(uuid.uuid4())
        journal.note(later)
        self.assertEqual(MadeCgroups(path).read(), [*written, later])

    def test_cutLastLineSkipped(self) -> None:
        """read() skips a last line cut short (a crash, a full disk)."""
        path = os.path.join(self.folder, "job-cgroups")
        jobId = str(uuid.uuid4())
        with open(path, "w") as f:
            f.write(f"{jobId}\n{uuid.uuid4()}"[:50])
        self.assertEqual(MadeCgroups(path).read(), [jobId])


class LeftoverJournalShortWriteTests(Journals):
    """L{LeftoverJournal} on a full disk."""

    def record(self, n: int) -> JobRecord:
        return journalRecord(n, boot_id="b0" * 16, proc_start=1000 + n)

    def test_shortNoteThenLater(self) -> None:
        """A cut note is a failed note (logged, as an OSError is), and leaves
        no partial line: the next note, once there is room, is read."""
        path = os.path.join(self.folder, "leftovers")
        short = ShortWrites(self, path)
        journal = LeftoverJournal(path)
        journal.note(self.record(1))
        before = self.content(path)
        short.count = 1
        journal.note(self.record(2))
        self.assertEqual(short.cut, 1)
        self.assertEqual(self.content(path), before)  # nothing of it left
        [warning] = self.warnings()
        self.assertIn(self.record(2).id, warning)
        self.assertIn(path, warning)
        journal.note(self.record(3))
        found = LeftoverJournal(path).read()
        self.assertEqual(
            [(n.jobId, n.pid, n.procStart) for n in found],
            [(self.record(1).id, 101, 1001), (self.record(3).id, 103, 1003)],
        )
        self.assertEqual(self.warnings(), [warning])  # logged once

    def test_cutLineNotUndone(self) -> None:
        """Should the cut line stay (the file cannot be cut back), the next
        note still starts on a line of its own."""
        path = os.path.join(self.folder, "leftovers")
        short = ShortWrites(self, path)
        self.patch(os, "ftruncate", refused)
        journal = LeftoverJournal(path)
        journal.note(self.record(1))
        short.count = 1
        journal.note(self.record(2))
        journal.note(self.record(3))
        self.assertEqual(
            [n.jobId for n in LeftoverJournal(path).read()],
            [self.record(1).id, self.record(3).id],
        )

    def test_shortRewrite(self) -> None:
        """A rewrite (a job's leftovers gone) cut short never replaces the
        journal: the good one is kept, the cut copy removed, and logged."""
        path = os.path.join(self.folder, "leftovers")
        journal = LeftoverJournal(path)
        for n in (1, 2, 3):
            journal.note(self.record(n))
        before = self.content(path)
        short = ShortWrites(self, path + ".new")
        short.count = 1
        journal.done(self.record(2).id)
        self.assertEqual(short.cut, 1)
        self.assertEqual(self.content(path), before)
        self.assertFalse(os.path.exists(path + ".new"))
        [warning] = self.warnings()
        self.assertIn(path, warning)
        # Once there is room, the next rewrite names the jobs still noted.
        journal.done(self.record(1).id)
        self.assertEqual(
            [n.jobId for n in LeftoverJournal(path).read()], [self.record(3).id]
        )

    def test_cutLastLineSkipped(self) -> None:
        """read() skips a last line cut short (a crash, a full disk)."""
        path = os.path.join(self.folder, "leftovers")
        with open(path, "w") as f:
            f.write(f"{self.record(1).id} 101 - 0\n{self.record(2).id} 1")
        self.assertEqual(
            [n.jobId for n in LeftoverJournal(path).read()], [self.record(1).id]
        )
