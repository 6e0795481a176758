"""
Defects found by the review rounds of the thirty-fourth session, each
reproduced here first (the test failed against the code before its fix).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

import treq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.errors import ServiceUnavailable
from jobworker.executors.local.executor import LocalExecutor
from jobworker.executors.local.leftovers import LeftoverJournal
from jobworker.executors.local.process import GroupNumbers, JobProcessProtocol
from jobworker.executors.local.stalls import StallWatch
from jobworker.executors.slurm.documents import SlurmError, SlurmState
from jobworker.executors.slurm.executor import SlurmExecutor
from jobworker.jobs.manager import JobManager
from jobworker.jobs.placement import SlurmAllowances
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.recovery import (
    currentBootId,
    groupTakenOver,
    leftovers,
    processStartTime,
    sessionMembers,
)
from jobworker.jobs.stopping import StopRequest
from jobworker.jobs.store import JobStore, RecordDamaged
from jobworker.jobs.validation import parseJobRequest
from jobworker.metrics import Metrics
from tests import test_slurmunit as unit
from tests.fakes import FakeProcessReactor
from tests.support import LiveServer, sleep
from tests.test_identity import aliceMappedTo, keyCalls, makeAccount, output
from tests.test_process import GRACE, PID, JobProcessTestCase
from tests.test_recovery import missingPid
from tests.test_slurmdefects18 import SlurmCase
from tests.test_slurmdependencies import DependencyCase
from tests.test_slurmunit import FakeCommands, state

#: A placement every allowance below lets through, and its sbatch options.
PLACEMENT = {
    "partition": "gpu",
    "account": "chem",
    "qos": "high",
    "gres": "gpu:a100:2",
    "constraint": "intel&ib",
    "nodes": 2,
    "ntasks": 4,
    "exclusive": True,
}
PLACED = (
    "--partition=gpu",
    "--account=chem",
    "--qos=high",
    "--gres=gpu:a100:2",
    "--constraint=intel&ib",
    "--nodes=2",
    "--ntasks=4",
    "--exclusive",
)
ALLOWED = SlurmAllowances(
    partition=frozenset({"gpu"}),
    account=frozenset({"chem"}),
    qos=frozenset({"high"}),
    gres=frozenset({"gpu:a100:2"}),
    constraint=frozenset({"intel&ib"}),
    nodes=2,
    ntasks=4,
    exclusive=True,
)


class _SlurmQueue(SynchronousTestCase):
    """A Slurm executor answered by the test, behind a running cap."""

    maxRunning = 1

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.stateDir = os.path.abspath(self.mktemp())
        self.metrics = Metrics()
        self.manager: JobManager | None = None
        self.manager = self.managerWith()

    def managerWith(self, allowances: SlurmAllowances = ALLOWED) -> JobManager:
        executor = SlurmExecutor(
            self.reactor,
            os.path.join(self.stateDir, "shared"),
            grace=5.0,
            partition="debug",
            account="physics",
            pollInterval=1.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
            allowances=allowances,
        )
        manager = JobManager(
            self.reactor,
            self.stateDir,
            executor,
            policy=JobPolicy(maxRunning=self.maxRunning),
            metrics=Metrics() if self.manager else self.metrics,
        )
        manager.start()
        self.addCleanup(manager.close)
        return manager

    def restart(self, allowances: SlurmAllowances = ALLOWED) -> None:
        assert self.manager is not None
        self.successResultOf(self.manager.shutdown())
        self.manager.close()
        self.manager = self.managerWith(allowances)
        self.manager.recover()

    def create(self, owner: str = "alice", **extra: Any) -> Any:
        body = json.dumps({"command": "true", **extra}).encode()
        return self.manager.create(parseJobRequest(body), owner=owner)

    def running(self, slurmId: str) -> Any:
        """A job created, taken by sbatch as C{slurmId}."""
        record = self.create()
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[-1][2].callback(slurmId)
        self.successResultOf(accepted)
        return record

    def unreachable(self, submission: int) -> None:
        """sbatch number C{submission} cannot reach slurmctld, nor its look-up."""
        self.commands.submissions[submission][2].errback(
            SlurmError("sbatch: Unable to contact slurm controller", unreachable=True)
        )
        self.commands.lookUps[-1].errback(SlurmError("down", unreachable=True))


class QueuedSlurmPlacementTests(_SlurmQueue):
    """
    Code review round 34: a Slurm job that waited in jobworker's queue (a
    running cap) was submitted at its turn without its "slurm" placement:
    the default partition and account, one node, no GPUs.
    """

    def test_placementKeptThroughTheQueue(self) -> None:
        self.running("101")
        queued = self.create(slurm=PLACEMENT)
        self.assertTrue(queued.queued)
        self.assertEqual(len(self.commands.submissions), 1)
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("COMPLETED")})
        self.assertEqual(len(self.commands.submissions), 2)
        options = self.commands.submissions[-1][0]
        self.assertEqual([o for o in PLACED if o not in options], [], options)
        self.assertNotIn("--partition=debug", options)

    def test_placementKeptAcrossARestart(self) -> None:
        """Queued when the server stops: the next one submits it placed."""
        self.running("101")
        queued = self.create(slurm=PLACEMENT)
        self.restart()
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("COMPLETED")})
        options = self.commands.submissions[-1][0]
        self.assertIn(f"--job-name=jobworker-{queued.id}", options)
        self.assertEqual([o for o in PLACED if o not in options], [], options)

    def test_allowancesCheckedAtItsTurn(self) -> None:
        """
        The allowances are checked again when its turn comes (a restart
        with fewer of them): refused then, as a new request would be.
        """
        self.running("101")
        queued = self.create(slurm=PLACEMENT)
        self.restart(SlurmAllowances())
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("COMPLETED")})
        record = self.manager.record(queued.id)
        self.assertIs(record.status, JobStatus.FAILED)
        self.assertIn("partition", record.error or "")
        self.assertEqual(len(self.commands.submissions), 1)

    def test_storedAsJSON(self) -> None:
        """The placement's column holds what was given, nothing else."""
        queued = self.create(slurm={"partition": "gpu", "nodes": 2})
        db = sqlite3.connect(os.path.join(self.stateDir, "jobs.sqlite3"))
        self.addCleanup(db.close)
        (text,) = db.execute("SELECT slurm FROM jobs WHERE id = ?", (queued.id,))
        self.assertEqual(json.loads(text[0]), {"partition": "gpu", "nodes": 2})
        plain = self.create()
        (text,) = db.execute("SELECT slurm FROM jobs WHERE id = ?", (plain.id,))
        self.assertIsNone(text[0])

    def test_damagedPlacementNotRun(self) -> None:
        """A placement column of another shape is a damaged record."""
        queued = self.create(slurm={"partition": "gpu"})
        self.manager.close()
        path = os.path.join(self.stateDir, "jobs.sqlite3")
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        for wrong in ('{"partition": 7}', '{"nodes": true}', '{"queue": "x"}', "[]"):
            with db:
                db.execute("UPDATE jobs SET slurm = ? WHERE id = ?", (wrong, queued.id))
            store = JobStore(path)
            try:
                with self.assertRaises(RecordDamaged) as caught:
                    store.get(queued.id)
            finally:
                store.close()
            self.assertIn("slurm", caught.exception.record.problem)


class QueuedTurnWhileUnreachableTests(_SlurmQueue):
    """
    Code review round 34: a queued job whose turn came while Slurm was
    known to be out of reach was FAILED for good ("try again later", said
    to nobody: its client had its 201 long before).
    """

    maxRunning = 2

    def test_heldNotFailed(self) -> None:
        self.running("101")
        second = self.create()
        refused = ensureDeferred(self.manager.accepted(second))
        third = self.create(owner="bob")
        self.assertTrue(third.queued)
        self.unreachable(1)
        self.failureResultOf(refused, ServiceUnavailable)
        record = self.manager.record(third.id)
        self.assertIs(record.status, JobStatus.PENDING, record.error)
        self.assertIn("unreachable", record.pending_reason or "")
        # Slurm answers again: it is submitted at its next try.
        submitted = len(self.commands.submissions)
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback({"101": state("RUNNING")})
        self.reactor.advance(60.0)
        self.assertGreater(len(self.commands.submissions), submitted)


class RefusedNotCountedTests(_SlurmQueue):
    """
    Code review round 34: a new Slurm job answered 503 (Slurm out of reach)
    and forgotten was counted as an ended FAILED job in the metrics.
    """

    def test_forgottenJobNotCounted(self) -> None:
        record = self.create()
        accepted = ensureDeferred(self.manager.accepted(record))
        self.unreachable(0)
        self.failureResultOf(accepted, ServiceUnavailable)
        self.assertEqual(self.manager.page()[0], [])
        ended = [
            line
            for line in self.metrics.render().decode().splitlines()
            if line.startswith("jobworker_jobs_ended_total")
        ]
        self.assertEqual(ended, [])

    def test_jobsAfterItFail(self) -> None:
        """
        A job queued after_ok on it (it was listed PENDING while sbatch
        ran) is not left waiting for ever: it fails, naming why.
        """
        record = self.create()
        accepted = ensureDeferred(self.manager.accepted(record))
        after = self.create(after_ok=[record.id])
        self.unreachable(0)
        self.failureResultOf(accepted, ServiceUnavailable)
        waiting = self.manager.record(after.id)
        self.assertIs(waiting.status, JobStatus.FAILED)
        self.assertIn(record.id, waiting.error or "")


#: A job's script: children made with clone(CLONE_PARENT) (children of the
#: job's parent), which exit at once; the answer, an errno name or "made N".
STRANGERS = """
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PARENT, SIGCHLD = 0x8000, 17
made = 0
for _ in range(20):
    got = libc.syscall(56, PARENT | SIGCHLD, 0, 0, 0, 0)
    if got == 0:
        os._exit(0)
    if got < 0:
        print(errno.errorcode[ctypes.get_errno()], flush=True)
        break
    made += 1
else:
    print("made", made, flush=True)
time.sleep(0.5)
"""


def aliceAs(testCase: TestCase, account: str, uid: int) -> LiveServer:
    """A live server whose alice runs her jobs as a new account (no filter)."""
    makeAccount(testCase, account, uid)
    return LiveServer(testCase, f"--users={aliceMappedTo(testCase, account)}")


async def zombiesLeft(uid: int, seconds: float = 10.0) -> list[int]:
    """The zombies of C{uid} once none is left, or C{seconds} have passed."""
    for _ in range(int(seconds * 10)):
        if not zombiesOf(uid):
            break
        await sleep(0.1)
    return zombiesOf(uid)


def zombiesOf(uid: int) -> list[int]:
    """The pids of the zombies of the machine whose uid is C{uid}."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if (
            fields.get("State", "").strip().startswith("Z")
            and int(fields.get("Uid", "-1").split()[0]) == uid
        ):
            found.append(int(name))
    return found


class CloneParentTests(TestCase):
    """
    Attacker round 34: a job's children made with C{clone(CLONE_PARENT)}
    are the children of the job's parent, the long-lived spawner, which
    waited only for those it forked: they stayed zombies until the server
    stopped, past the job's end, its stop and its pids limit (63 a job
    under C{"pids": 64}; enough ended jobs take every pid of the machine).
    The spawner now reaps every child it did not fork as it ends, and a
    dynamic uid's job gets C{EPERM} for C{CLONE_PARENT}, as for
    C{CLONE_NEWUSER}.
    """

    timeout = 60

    def setUp(self) -> None:
        keyCalls(self)

    async def test_accountsStrangersReaped(self) -> None:
        uid = 64991
        server = aliceAs(self, "jwstranger", uid)
        job = await server.createJob("/usr/bin/python3", "-c", STRANGERS, user="alice")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual((await output(server, job["id"])).strip(), b"made 20")
        self.assertEqual(await zombiesLeft(uid), [])

    async def test_dynamicUidRefused(self) -> None:
        server = LiveServer(self)
        job = await server.createJob("/usr/bin/python3", "-c", STRANGERS, user="bob")
        ended = await server.waitEnded(job["id"])
        self.assertEqual(ended["status"], "COMPLETED", ended)
        self.assertEqual((await output(server, job["id"])).strip(), b"EPERM")


#: A daemon started the usual way: a child makes a session of its own,
#: forks the daemon and leaves; the daemon's pid and session id are printed.
DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        sys.stdout.write(f"{os.getpid()} {os.getsid(0)}\\n")
        sys.stdout.flush()
        os.close(1)
        time.sleep(60)
        os._exit(0)
    os._exit(0)
os.wait()
"""

#: A uid no process of this machine runs as (a dynamic uid's kind).
OTHER_UID = 79993


def daemonSession(testCase: SynchronousTestCase) -> tuple[int, int]:
    """A live daemon whose session's leader is gone: (its pid, the session)."""
    done = subprocess.run(
        [sys.executable, "-c", DAEMON],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=True,
    )
    pid, session = (int(n) for n in done.stdout.split())
    testCase.addCleanup(killQuietly, pid)
    assert processStartTime(session) is None  # (its leader left)
    return pid, session


def killQuietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class SessionTakenOverTests(SynchronousTestCase):
    """
    Fault round 34: once a job's processes were all gone, its leader's pid
    could be taken by a daemon's session leader, which left; the daemon
    stayed in a session (and group) of the job's number with no process of
    that pid. Crash recovery then killed it as the job's leftover (a root
    daemon, the job a dynamic uid's); without cgroups, so did the SIGKILL at
    the end of a grace. Only what runs as the job's uid is the job's.
    """

    def test_recoveryLeavesAnotherUidsSession(self) -> None:
        daemon, session = daemonSession(self)
        bootId = currentBootId()
        sessions = sessionMembers()
        self.assertIn(daemon, sessions[session])
        self.assertEqual(leftovers(session, bootId, 12345, sessions, OTHER_UID), [])
        # Its own uid's: killed, as before.
        self.assertEqual(
            leftovers(session, bootId, 12345, sessions, os.getuid()), [daemon]
        )

    def test_groupTakenOver(self) -> None:
        _, session = daemonSession(self)
        self.assertTrue(groupTakenOver(session, OTHER_UID))
        self.assertFalse(groupTakenOver(session, os.getuid()))
        self.assertFalse(groupTakenOver(missingPid(), OTHER_UID))

    def test_journalKeepsTheUid(self) -> None:
        """The leftovers' journal notes the job's uid; an older line has none."""
        path = self.mktemp()
        journal = LeftoverJournal(path)
        record = JobRecord(
            id="5d1c6a2e-0f3b-4b7d-8e21-9c4a7f0b3d16",
            command="sh",
            args=[],
            owner="bob",
            created_at=1.0,
            pid=4321,
            boot_id="b",
            proc_start=99,
            run_as=f"dynamic:{OTHER_UID}",
        )
        journal.note(record)
        self.assertEqual([n.uid for n in LeftoverJournal(path).read()], [OTHER_UID])
        with open(path, "w") as f:
            f.write(f"{record.id} 4321 b 99\n")
        self.assertEqual(
            [(n.pid, n.uid) for n in LeftoverJournal(path).read()], [(4321, None)]
        )


class GroupTakenOverInGraceTests(JobProcessTestCase):
    """
    Fault round 34, live: without a cgroup, what a job left ended in its
    grace, and a daemon's session took its group's number: the SIGKILL at
    the grace's end went to the daemon. The number is asked about first.
    """

    def setUp(self) -> None:
        super().setUp()
        self.asked: list[tuple[int, int]] = []
        self.takenOver = True
        self.groups = GroupNumbers(None, self.isTakenOver)
        self.job = self.another(groups=self.groups, uid=OTHER_UID)
        self.protocol = JobProcessProtocol(self.job)
        self.start()

    def isTakenOver(self, pgid: int, uid: int) -> bool:
        self.asked.append((pgid, uid))
        return self.takenOver

    def test_notKilled(self) -> None:
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.assertEqual(self.asked, [])  # (not at the job's end)
        self.clock.advance(GRACE)
        self.assertEqual(self.asked, [(PID, OTHER_UID)])
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.successResultOf(self.job.whenCleanedUp())
        self.flushLoggedErrors()

    def test_stillItsOwn(self) -> None:
        self.takenOver = False
        self.end(Failure(ProcessDone(0)))
        self.clock.advance(GRACE)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])

    def test_leaderAliveNotAsked(self) -> None:
        """A stop of a live leader: its pid holds the number, nothing asked."""
        self.job.stop("ada")
        self.clock.advance(GRACE)
        self.assertEqual(self.asked, [])
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])


class _FoundCgroup:
    """A crashed job's cgroup, found: killed and removed (here: noted)."""

    def __init__(self) -> None:
        self.killed = 0

    def kill(self) -> bool:
        self.killed += 1
        return False

    def remove(self) -> bool:
        return True


class _Stub:
    """What L{LocalExecutor._killLeftovers} reads of its executor."""

    def __init__(self, group: _FoundCgroup | None) -> None:
        self._cgroups = self
        self.group = group
        self.log = Logger()

    def find(self, jobId: str) -> _FoundCgroup | None:
        return self.group


class CgroupHoldsItAllTests(SynchronousTestCase):
    """
    Fault round 34, a root job: its uid cannot tell its leftovers from a
    root daemon that took its session's number. A job with a cgroup found
    at recovery, its leader gone, is killed through its cgroup alone.
    """

    def test_sessionLeftToTheCgroup(self) -> None:
        daemon, session = daemonSession(self)
        group = _FoundCgroup()
        killed = LocalExecutor._killLeftovers(
            _Stub(group),  # type: ignore[arg-type]
            "job",
            session,
            currentBootId(),
            12345,
            sessionMembers(),
            os.getuid(),
        )
        self.assertEqual((killed, group.killed), (0, 1))
        self.assertIsNotNone(processStartTime(daemon))

    def test_noCgroupSessionAsBefore(self) -> None:
        """Without one, its uid's session members are its leftovers."""
        _, session = daemonSession(self)
        killed = LocalExecutor._killLeftovers(
            _Stub(None),  # type: ignore[arg-type]
            "job",
            session,
            currentBootId(),
            12345,
            sessionMembers(),
            os.getuid(),
        )
        self.assertEqual(killed, 1)


def fakeSlurmTool(
    testCase: TestCase, name: str, script: str
) -> tuple[str, dict[str, str]]:
    """A folder with Slurm's tool C{name} as C{script}, and a PATH with it first."""
    folder = os.path.abspath(testCase.mktemp())
    os.makedirs(folder)
    with open(os.path.join(folder, name), "w") as f:
        f.write(script)
    os.chmod(os.path.join(folder, name), 0o755)  # noqa: S103
    return folder, {"PATH": f"{folder}:/usr/bin:/bin"}


#: A squeue that hangs (munged gone), with a child that holds its stderr;
#: it writes both pids where the test reads them.
HUNG_SQUEUE = """#!/bin/sh
sleep 300 &
echo "$$ $!" > "$(dirname "$0")/pids"
sleep 300
"""


class HungSqueueTests(TestCase):
    """
    Slurm round 34: a squeue that hung was killed with the sieve at the
    command's deadline only in part: the sieve died, its squeue (and what
    that squeue started) held the server's stderr pipe, and the poll waited
    for it, and so did every later one (no job's state moved, /healthz ok).
    The deadline kills the sieve's group, and stops waiting for its pipes.
    """

    timeout = 60

    async def test_deadlineEndsTheCall(self) -> None:
        from twisted.internet import reactor

        from jobworker.executors.slurm.commands import SlurmCommands
        from jobworker.executors.slurm.documents import SlurmError

        folder, env = fakeSlurmTool(self, "squeue", HUNG_SQUEUE)
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        commands = SlurmCommands(reactor, env=env, timeout=2.0)
        with self.assertRaises(SlurmError) as caught:
            await commands.exits(["101"])
        self.assertIn("timed out", str(caught.exception))
        with open(os.path.join(folder, "pids")) as f:
            pids = [int(n) for n in f.read().split()]
        for pid in pids:
            self.addCleanup(killQuietly, pid)
        for _ in range(100):
            if all(processStartTime(pid) is None for pid in pids):
                break
            await sleep(0.05)
        self.assertEqual([p for p in pids if processStartTime(p) is not None], [])


class DependencyUnseenSinceRestartTests(DependencyCase):
    """
    Slurm round 34: after a restart, before the first poll, a new job
    after_ok a job that had failed (and been purged from Slurm) while the
    server was down was handed to Slurm with the purged id, which Slurm
    takes as met: it ran. A dependency is given to Slurm only while Slurm's
    queue has it (sbatch just took it, or the last poll listed it);
    otherwise jobworker's queue holds the new job.
    """

    def test_unseenDependencyWaitsInTheQueue(self) -> None:
        a = self.create("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.restart()
        b = self.create("echo", "b", after_ok=(a.id,))
        self.assertEqual(len(self.commands.submissions), 1)
        self.assertTrue(self.manager.record(b.id).queued)
        # The first poll: Slurm has forgotten it, accounting says it failed.
        self.commands.accounted["101"] = [state("FAILED", 1)]
        self.poll({})
        self.assertIs(self.manager.record(a.id).status, JobStatus.FAILED)
        seen = self.manager.record(b.id)
        self.assertIs(seen.status, JobStatus.FAILED)
        self.assertEqual(seen.error, f"dependency {a.id} ended FAILED")
        self.assertEqual(len(self.commands.submissions), 1)

    def test_seenDependencyHeldBySlurm(self) -> None:
        """Once a poll has seen it in Slurm's queue, Slurm holds as before."""
        a = self.create("sleep", "100")
        self.restart()
        self.poll({"101": state("RUNNING")})
        self.create("echo", "b", after_ok=(a.id,))
        self.assertEqual(len(self.commands.submissions), 2)
        self.assertEqual(
            self.dependency(1),
            ["--dependency=afterok:101", "--kill-on-invalid-dep=yes"],
        )

    def test_goneFromTheQueue(self) -> None:
        """A dependency squeue no longer lists (accounting unread): held here."""
        a = self.create("sleep", "100")

        async def unread(ids: list[str]) -> Any:
            raise SlurmError("sacct: slurmdbd down")

        self.patch(self.commands, "accounting", unread)
        self.poll({})
        self.assertIs(self.manager.record(a.id).status, JobStatus.PENDING)
        b = self.create("echo", "b", after_ok=(a.id,))
        self.assertEqual(len(self.commands.submissions), 1)
        self.assertTrue(self.manager.record(b.id).queued)


#: A job's script: a write to stdout from a page of FILE not in memory, read
#: in at the job's own I/O limit, once the server comes to read its pipe.
PIPE_HOLD = """
import fcntl, mmap, os, struct, sys, termios
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
pages = mmap.mmap(fd, size, prot=mmap.PROT_READ)
pages.madvise(mmap.MADV_RANDOM)
for _ in range(100000):
    os.write(1, b"x")
    queued = struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"\\0" * 4))[0]
    if queued:
        break
os.write(1, memoryview(pages)[16 << 20 : (16 << 20) + 4096])
"""


def pageFile(testCase: Any, script: str, stdin: bytes = b"") -> str:
    """
    A 32 MiB file a job C{script} reads pages of at its own C{io_read_bps}
    (in /var/lib: not in /tmp nor /var/tmp, a job has its own), removed at
    C{testCase}'s cleanup. The job's own reads are as slow (its
    interpreter's files too): those in memory first, by the same script run
    here (given C{stdin}).
    """
    folder = tempfile.mkdtemp(prefix="jobworker-test-", dir="/var/lib")
    testCase.addCleanup(shutil.rmtree, folder, True)
    os.chmod(folder, 0o755)  # noqa: S103
    path = os.path.join(folder, "pages")
    with open(path, "wb") as f:
        f.write(os.urandom(32 << 20))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)
    subprocess.run(
        ["/usr/bin/python3", "-c", script, path],
        input=stdin,
        stdout=subprocess.PIPE,
        check=True,
        timeout=30,
    )
    return path


class StallWatchTests(SynchronousTestCase):
    """L{StallWatch.look}: a read held long, the reactor in the kernel."""

    def setUp(self) -> None:
        self.now = 100.0
        self.waiting = True
        #: The threads found waiting (None: every one, while C{waiting}).
        self.waitingThreads: set[int] | None = None
        self.killed: list[float] = []
        self.watch = StallWatch(
            waiting=lambda tid: (
                self.waiting
                and (self.waitingThreads is None or tid in self.waitingThreads)
            ),
            now=lambda: self.now,
            watching=False,
        )
        self.slot = self.watch.slot(1)

    def reading(self) -> None:
        self.slot.reads += 1
        self.slot.stalled = self.killed.append

    def test_oneLongRead(self) -> None:
        self.reading()
        self.watch.look()
        self.now += 0.75
        self.watch.look()
        self.assertEqual(self.killed, [])
        self.now += 0.25
        self.watch.look()
        self.assertEqual(self.killed, [1.0])
        self.now += 1
        self.watch.look()  # (once: it is being killed)
        self.assertEqual(self.killed, [1.0])

    def test_manyShortReads(self) -> None:
        """Found waiting by a look now and then (a copy's moment): never
        as many as a second's worth within 10 s (attacker round 38)."""
        for n in range(40):
            self.reading()
            self.waiting = n % 4 == 0
            self.watch.look()
            self.now += 1.0
        self.assertEqual(self.killed, [])

    def test_reactorNotInTheKernel(self) -> None:
        """Slow but running (the machine busy): not the job's doing."""
        self.waiting = False
        self.reading()
        self.watch.look()
        self.now += 5
        self.watch.look()
        self.assertEqual(self.killed, [])

    def test_noRead(self) -> None:
        self.watch.look()
        self.now += 5
        self.watch.look()
        self.assertEqual(self.killed, [])

    def test_eachThreadAlone(self) -> None:
        """A pump thread's long read, the reactor's short ones: the pump's job."""
        pump = self.watch.slot(2)
        held: list[float] = []
        pump.reads += 1
        pump.stalled = held.append
        self.waitingThreads = {2}
        for _ in range(5):
            self.reading()
            self.watch.look()
            self.now += 0.5
        self.assertEqual((self.killed, held), ([], [1.0]))
        self.watch.drop(pump)
        self.watch.look()


class PipeHeldTests(TestCase):
    """
    Attacker round 34: a job wrote to its stdout from a page of a file not
    in memory, under its own io_read_bps of 1: the copy's page fault held
    the pipe's lock for an hour, and the server's read of that pipe waited
    in the kernel, every request with it (no stop could reach the job).
    The job is killed once the reactor has waited on it for a second, and
    ends FAILED saying why; the server answers again.
    """

    timeout = 60

    def setUp(self) -> None:
        keyCalls(self)

    async def test_holderKilled(self) -> None:
        # (A read rate, and 1 byte/s under the default --min-io-bps:
        # allowed here, the stall watch's case.)
        server = LiveServer(self, "--min-io-bps=1", "--allow-io-bps")
        path = pageFile(self, PIPE_HOLD)
        for _ in range(3):
            code, job = await server.json(
                "POST",
                "/jobs",
                "alice",
                {
                    "command": "/usr/bin/python3",
                    "args": ["-c", PIPE_HOLD, path],
                    "limits": {"io_read_bps": 1},
                },
            )
            if code == 400 and "io_read_bps" in job.get("error", ""):
                raise SkipTest(f"no I/O limits here: {job['error']}")
            self.assertEqual(code, 201, job)
            try:
                ended = await server.waitEnded(job["id"], timeout=15)
                break
            except AssertionError:
                # The job's own race, not the server's: the server read
                # what was queued between the job's look and its held
                # write, then had nothing to read while the write held
                # the lock (no read of it waited: nothing to kill; CI at
                # aace195). Tried again; a server that never kills such
                # a job fails each try.
                await server.json(
                    "POST", f"/jobs/{job['id']}/stop", "ada", {"signal": "KILL"}
                )
        else:
            self.fail("the job that held its pipe was never killed in 3 tries")
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=stderr", "ada"
        )
        stderr = await treq.content(response)
        self.assertEqual(ended["status"], "FAILED", (ended, stderr))
        self.assertIn("held its output or input pipe's lock", ended["error"], stderr)
        code, health = await server.json("GET", "/healthz", "ada")
        self.assertEqual(code, 200, health)


#: A job that handles TERM: it says so and exits 0.
TRAPS_TERM = (
    "trap 'echo got-TERM; exit 0' TERM; echo started; while :; do sleep 0.05; done"
)


class StopAsThePidNamespaceIsMadeTests(TestCase):
    """
    Code review round 34: under C{--isolate pid}, a stop that came while the
    launcher was making the namespace was ignored there and lost: the
    command ran, never got its TERM, and was killed at the end of the grace
    (up to an hour). And one that handled the TERM, set up just after the
    stop was judged, exited 0 and ended COMPLETED (its after_ok jobs ran).
    The launcher blocks the stop signals and passes them on to the command
    once it is forked; a process that has not run the command yet is no
    judge of whether the stop ends it.
    """

    timeout = 120

    def setUp(self) -> None:
        keyCalls(self)

    async def stopAtOnce(self, server: LiveServer, *argv: str) -> dict[str, Any]:
        job = await server.createJob(*argv, user="alice")
        code, body = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 60}
        )
        self.assertIn(code, (200, 202), body)
        return await server.waitEnded(job["id"], timeout=30)

    async def test_stopNeverLost(self) -> None:
        server = LiveServer(self, "--isolate=pid")
        for _ in range(12):
            ended = await self.stopAtOnce(server, "sleep", "30")
            self.assertEqual(
                (ended["status"], ended["signal"]), ("STOPPED", "SIGTERM"), ended
            )

    async def test_handledStopIsAStop(self) -> None:
        server = LiveServer(self, "--isolate=pid")
        for _ in range(12):
            ended = await self.stopAtOnce(server, "sh", "-c", TRAPS_TERM)
            self.assertEqual(ended["status"], "STOPPED", ended)


class NewUserServerWordsTests(SynchronousTestCase):
    """New user round 34: two of the server's own words."""

    def test_assignmentAsACommand(self) -> None:
        """C{jw exec -- FOO=1 env}, an ssh habit: the way to set one is said."""
        from jobworker.executors.local.sandbox import checkCommand

        why = checkCommand("FOO=1")
        self.assertIsNotNone(why)
        self.assertIn("--env NAME=VALUE", why or "")
        self.assertIn("'FOO=1'", why or "")
        self.assertIsNone(checkCommand("env"))

    def test_descriptorsPerJobInHelp(self) -> None:
        """--max-running's help said 8 descriptors a job; the code counts 9."""
        from jobworker.server.descriptors import PER_JOB
        from jobworker.server.options import Options

        [help] = [o[3] for o in Options.optParameters if o[0] == "max-running"]
        self.assertIn(f"{PER_JOB} each", help)


class StopOfAJobJustStartedTests(SlurmCase):
    """
    Slurm round 34: a job Slurm had started, the last poll still seeing it
    queued (PENDING here), was stopped with a plain scancel: no --signal,
    no grace, though jw said "KILL follows after the grace". Slurm is asked
    afresh: a job that runs gets the stop's signal and grace.
    """

    def test_runningGetsTheStopsSignal(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("PENDING")})
        self.commands.nowSays = {"101": state("RUNNING")}
        self.manager.stop(
            record.id, "alice", StopRequest(signal=signal.SIGUSR1, grace=30.0)
        )
        self.assertEqual(self.commands.signals, [("101", "USR1")])
        self.assertEqual(self.commands.cancels, [])

    def test_killAsksNothing(self) -> None:
        """
        A KILL is a cancel either way: no squeue first, which may hang for
        its 60 s deadline (late review 34).
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("PENDING")})
        self.manager.stop(record.id, "alice", StopRequest(signal=signal.SIGKILL))
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertEqual(self.commands.lookedAt, [])

    def test_queuedCancelled(self) -> None:
        record = self.submit("sleep", "100")
        self.poll({"101": state("PENDING")})
        self.manager.stop(record.id, "alice", StopRequest(grace=30.0))
        self.assertEqual(self.commands.signals, [])
        self.assertEqual(self.commands.cancels, ["101"])


#: A site's sbatch wrapper: a banner, then sbatch's own answer.
BANNER_SBATCH = """#!/bin/sh
echo "Welcome to the cluster. Jobs are accounted to your group."
echo "4242;cluster1"
"""


class SbatchBannerTests(TestCase):
    """
    Slurm round 34: an sbatch that printed a line before the job id (a
    site's wrapper) was "Slurm refused the job", FAILED, while Slurm ran
    the job. The id is its last line that is one; an answer with none is
    looked up by name before it is said no to (and cancelled by name).
    """

    async def test_idAfterABanner(self) -> None:
        from twisted.internet import reactor

        from jobworker.executors.slurm.commands import SlurmCommands

        _, env = fakeSlurmTool(self, "sbatch", BANNER_SBATCH)
        commands = SlurmCommands(reactor, env=env)
        self.assertEqual(await commands.submit([], ["/bin/true"]), "4242")


class UnreadSbatchAnswerTests(_SlurmQueue):
    maxRunning = 10

    def test_lookedUpByName(self) -> None:
        record = self.create()
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[-1][2].errback(
            SlurmError("sbatch: unexpected answer 'Welcome'", unread=True)
        )
        self.assertEqual(len(self.commands.lookUps), 1)
        self.commands.lookUps[-1].callback(
            {"77": state("PENDING", jobName=f"jobworker-{record.id}")}
        )
        self.assertEqual(self.successResultOf(accepted).slurm_job_id, "77")


class HungAccountingTests(SynchronousTestCase):
    """
    Slurm round 34: accounting (sacct) was asked within each poll and
    waited for: one that hung (slurmdbd gone: its 60 s deadline) held every
    other job's state back by that long at each poll ("echo hi" read
    PENDING 92 s after it ended). Accounting is asked apart; the poll goes
    on, and takes its answer in once it comes.
    """

    setUp = unit.ExecutorTests.setUp
    makeManager = unit.ExecutorTests.makeManager
    submit = unit.ExecutorTests.submit
    poll = unit.ExecutorTests.poll

    def test_otherJobsNotHeldBack(self) -> None:
        purged = self.submit("false")
        self.poll({"101": state("RUNNING")})
        asked: list[Deferred[dict[str, list[SlurmState]]]] = []

        def accounting(ids: list[str]) -> Deferred[dict[str, list[SlurmState]]]:
            d: Deferred[dict[str, list[SlurmState]]] = Deferred()
            asked.append(d)
            return d

        self.patch(self.commands, "accounting", accounting)
        other = self.submit("true")
        # 101 is gone from squeue: accounting is asked, and hangs.
        self.poll({"102": state("RUNNING")})
        self.assertEqual(len(asked), 1)
        self.assertIs(self.manager.record(other.id).status, JobStatus.RUNNING)
        self.poll({"102": state("COMPLETED")})
        self.assertIs(self.manager.record(other.id).status, JobStatus.COMPLETED)
        self.assertEqual(len(asked), 1)  # (not asked again while in flight)
        self.assertIs(self.manager.record(purged.id).status, JobStatus.RUNNING)
        # It answers: the next poll takes it in.
        asked[0].callback(
            {"101": [state("FAILED", 3, jobName=f"jobworker-{purged.id}")]}
        )
        self.poll({})
        final = self.manager.record(purged.id)
        self.assertEqual((final.status, final.exit_code), (JobStatus.FAILED, 3))


#: Children made with clone(CLONE_PARENT) that all exit at time argv[1].
TOGETHER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PARENT, SIGCHLD = 0x8000, 17
at = float(sys.argv[1])
for _ in range(40):
    got = libc.syscall(56, PARENT | SIGCHLD, 0, 0, 0, 0)
    if got == 0:
        time.sleep(max(0, at - time.time()))
        os._exit(0)
print("made", flush=True)
time.sleep(60)
"""


class StrangersBehindAnUnreapedEndTests(TestCase):
    """
    Session review 34: while an earlier job's end waited for the server's
    'R' (the reactor busy for a second), strangers whose SIGCHLDs came as
    one were not reaped: the look stopped at that job's zombie, and none
    was taken again. The spawner now reaps every child /proc lists that it
    did not fork, at each SIGCHLD and each 'R'.
    """

    timeout = 60

    def setUp(self) -> None:
        keyCalls(self)

    async def test_reapedOnceTheEarlierEndIsTakenIn(self) -> None:
        uid = 64996
        server = aliceAs(self, "jwtogether", uid)
        first = await server.createJob("sleep", "1", user="bob")
        at = time.time() + 1.5
        await server.createJob(
            "/usr/bin/python3", "-c", TOGETHER, f"{at}", user="alice"
        )
        await sleep(0.8)
        time.sleep(1.5)  # (the reactor busy as both end: a slow request)
        await server.waitEnded(first["id"])
        self.assertEqual(await zombiesLeft(uid), [])


#: Steady output, 8 MiB a second in 64 KiB writes, for 8 s.
STEADY = """
import os, time
chunk = b"x" * 65536
end = time.monotonic() + 8
while time.monotonic() < end:
    os.write(1, chunk)
    time.sleep(1 / 128)
print("done", flush=True)
"""


class FrozenSpoolTests(TestCase):
    """
    Session review 34: the pipe-stall watch killed a job that did nothing
    wrong when the server's own spool filesystem stalled (frozen for 2 s,
    as a snapshot agent does): its output thread waited in the kernel to
    write the spool. Only a wait for a pipe, on the reactor's thread,
    counts; an output thread serves one job's stream, and is not watched.
    """

    timeout = 90

    def setUp(self) -> None:
        keyCalls(self)
        for tool in ("mkfs.ext4", "fsfreeze", "truncate"):
            if shutil.which(tool) is None:
                raise SkipTest(f"no {tool} to make a filesystem to freeze")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        image = os.path.join(folder, "spool.img")
        self.mount = os.path.join(folder, "mnt")
        os.makedirs(self.mount)
        subprocess.run(["truncate", "-s", "512M", image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        mounted = subprocess.run(
            ["mount", "-o", "loop", image, self.mount], capture_output=True
        )
        if mounted.returncode != 0:
            raise SkipTest(f"no loop mount here: {mounted.stderr.decode().strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", self.mount])
        self.addCleanup(
            subprocess.run, ["fsfreeze", "-u", self.mount], capture_output=True
        )

    async def test_frozenSpoolNotTheJobsFault(self) -> None:
        state = os.path.join(self.mount, "state")
        server = LiveServer(self, "--max-log-bytes=1073741824", stateDir=state)
        self.addCleanup(shutil.rmtree, state, True)
        job = await server.createJob("/usr/bin/python3", "-c", STEADY, user="alice")
        await sleep(2.0)
        subprocess.Popen(
            ["sh", "-c", f"fsfreeze -f {self.mount}; sleep 2; fsfreeze -u {self.mount}"]
        )
        ended = await server.waitEnded(job["id"], timeout=40)
        self.assertEqual(ended["status"], "COMPLETED", ended)
