"""
Defects the rounds of the thirty-first session found.

The code reviewer's: under a PID namespace (C{--isolate pid}, or a shared
C{--run-as} account, whose jobs each get one) a job that exited on its own
as a stop or its timeout came was still recorded C{STOPPED} (or C{FAILED
"timed out"}) with exit 0: the check of whether the stop's signal could
have ended it read the signal dispositions of the process the server
started, the launcher (or C{unshare}), which ignores the stop signals, not
of the command, further down.

The attacker's: the same check read the leader thread's mask alone. A job
whose leader thread has exited (a zombie thread, showing the mask it had)
while a thread of it waits for SIGTERM in C{sigwait} caught its stop or
timeout and exited 0: recorded C{COMPLETED}, its stop and its timeout
forgotten, and C{jw exec -f} exited 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import treq
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local.process import endsByDefault

from .support import LiveServer, sleep
from .test_launcher import childrenOf, readComm
from .test_launcher import readState as stateOf
from .twistd import Twistd


def commandOf(pid: int, depth: int) -> int | None:
    """The first child's first child... C{depth} levels down from C{pid}."""
    for _ in range(depth):
        children = childrenOf(pid)
        if not children:
            return None
        pid = children[0]
    return pid


class ExitAsTheStopComesInAPidNamespaceTests(TestCase):
    """
    The job's command exits 0 on its own; its exit is held up (the
    process that reaps it is stopped, SIGSTOP from the test) while a stop
    (or its timeout) is sent, then let go: its own outcome, COMPLETED exit
    0, stands, as it does without a PID namespace (review rounds 29, 30).
    It was STOPPED (or FAILED "timed out") with exit 0.
    """

    #: The server's options, and how many forks down from the pid the
    #: server records the command runs.
    options: tuple[str, ...] = ("--isolate=pid",)
    depth = 2

    async def startedAndHeld(self, **fields: object) -> tuple[Twistd, dict, int]:
        """
        A server, a job of C{sleep 1} (with C{fields}), and its command's
        parent stopped: the command's exit is not reaped until it goes on.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root (a PID namespace per job)")
        server = await Twistd(self).start(*self.options)
        job = await server.createJob("sleep", "1", **fields)

        async def command() -> int | None:
            found = commandOf(job["pid"], self.depth)
            if found is not None and found != job["pid"] and readComm(found) == "sleep":
                return found
            return None

        pid = await server.poll(command, 10, "the job's command, sleep")
        parent = commandOf(job["pid"], self.depth - 1)
        assert parent is not None
        os.kill(parent, signal.SIGSTOP)
        self.addCleanup(self.cont, parent)

        async def exited() -> bool:
            return stateOf(pid) == "Z"

        await server.poll(exited, 10, "the command's exit (a zombie, not reaped)")
        self.parent = parent
        return server, job, pid

    def cont(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    async def test_stopAsItExits(self) -> None:
        server, job, _ = await self.startedAndHeld()
        stopping = server.request(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 30}
        )
        await sleep(0.5)  # (the stop's signal sent meanwhile)
        self.cont(self.parent)
        response = await stopping
        record = await treq.json_content(response)
        self.assertEqual(response.code, 200, record)
        self.assertEqual(
            (record["status"], record["exit_code"], record["signal"]),
            ("COMPLETED", 0, None),
            record,
        )

    async def test_timeoutAsItExits(self) -> None:
        started = time.monotonic()
        server, job, _ = await self.startedAndHeld(timeout_seconds=2)
        await sleep(max(0.0, started + 2.5 - time.monotonic()))

        async def timedOut() -> bool:
            return f"job {job['id']} timed out" in server.protocol.log()

        await server.poll(timedOut, 10, "the timeout's stop")
        self.cont(self.parent)
        record = await server.waitEnded(job["id"])
        self.assertEqual(
            (record["status"], record["exit_code"], record["error"]),
            ("COMPLETED", 0, None),
            record,
        )


class ExitAsTheStopComesSharedAccountTests(ExitAsTheStopComesInAPidNamespaceTests):
    """The same for a shared account's job (a PID namespace of its own)."""

    options = ("--run-as=nobody",)


class ExitAsTheStopComesExecChainTests(ExitAsTheStopComesInAPidNamespaceTests):
    """The same through the exec chain (its C{unshare --fork} waits)."""

    options = ("--isolate=pid", "--launcher=off")
    depth = 1


#: SYS_exit (one thread's end, not the process's), by machine.
THREAD_EXIT = {"x86_64": 60, "aarch64": 93}.get(os.uname().machine)

#: A process whose leader thread shows SIGTERM unblocked, not caught, and
#: has exited; the thread left waits for SIGTERM, and exits 0 at it.
LEADER_GONE = f"""
import ctypes, os, signal, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
def wait():
    signal.sigwait({{signal.SIGTERM}})
    os._exit(0)
threading.Thread(target=wait).start()
signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGTERM}})
print("ready", flush=True)
ctypes.CDLL(None).syscall({THREAD_EXIT}, 0)
"""

#: The same, its leader thread alive (waiting for the other).
LEADER_WAITS = """
import os, signal, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
def wait():
    signal.sigwait({signal.SIGTERM})
    os._exit(0)
t = threading.Thread(target=wait)
t.start()
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
print("ready", flush=True)
t.join()
"""


def threadsOf(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def waitsInSigwait(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
            return f.read().startswith("do_sigtimedwait")
    except OSError:
        return False


class EndsByDefaultTests(SynchronousTestCase):
    """L{endsByDefault} on real processes, their threads each looked at."""

    def started(self, *argv: str, ready: bool = False) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        if ready:
            assert child.stdout is not None
            self.assertEqual(child.stdout.readline(), b"ready\n")
        return child

    def settled(self, pid: int, state: str) -> None:
        deadline = time.monotonic() + 10
        while stateOf(pid) != state:
            self.assertLess(time.monotonic(), deadline, f"{pid} never {state}")
            time.sleep(0.01)

    def test_plainProcess(self) -> None:
        """(Control) a sleep: TERM ends it; USR1 too; CHLD does not."""
        child = self.started("sleep", "30")
        self.assertIs(endsByDefault(child.pid, signal.SIGTERM), True)
        self.assertIs(endsByDefault(child.pid, signal.SIGUSR1), True)
        self.assertIs(endsByDefault(child.pid, signal.SIGCHLD), False)

    def test_ignored(self) -> None:
        """(Control) ignored by the process: no."""
        child = self.started("sh", "-c", "trap '' TERM; echo ready; sleep 30")
        assert child.stdout is not None
        child.stdout.readline()
        self.assertIs(endsByDefault(child.pid, signal.SIGTERM), False)

    def test_exitedNotReaped(self) -> None:
        """A zombie has ended already: what it exited with is its own."""
        child = self.started("true")
        self.settled(child.pid, "Z")
        self.assertIs(endsByDefault(child.pid, signal.SIGTERM), True)

    def test_threadWaitsForIt(self) -> None:
        """A thread waits for TERM in sigwait (where it shows unblocked),
        the leader thread does not block it: the kernel gives a process's
        signal to its leader first, and it dies of it."""
        child = self.started("/usr/bin/python3", "-c", LEADER_WAITS, ready=True)
        deadline = time.monotonic() + 10
        while not any(waitsInSigwait(child.pid, tid) for tid in threadsOf(child.pid)):
            self.assertLess(time.monotonic(), deadline, "no thread in sigwait")
            time.sleep(0.01)
        self.assertIs(endsByDefault(child.pid, signal.SIGTERM), True)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(10), -signal.SIGTERM)

    def test_leaderThreadGone(self) -> None:
        """The leader thread exited, showing TERM unblocked; the thread
        left waits for it: no (it was yes, read from the leader alone)."""
        if THREAD_EXIT is None:
            raise SkipTest(f"SYS_exit's number on {os.uname().machine} not known here")
        child = self.started("/usr/bin/python3", "-c", LEADER_GONE, ready=True)
        self.settled(child.pid, "Z")
        self.assertIs(endsByDefault(child.pid, signal.SIGTERM), False)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(10), 0)  # (caught: exit 0, as it says)

    def test_tooManyThreadsNotKnown(self) -> None:
        """Past THREADS_LOOKED_AT threads (a stop's look is on the
        reactor's thread): not known, the stop's outcome stands."""
        from jobworker.executors.local import process

        if THREAD_EXIT is None:
            raise SkipTest(f"SYS_exit's number on {os.uname().machine} not known here")
        child = self.started("/usr/bin/python3", "-c", LEADER_GONE, ready=True)
        self.settled(child.pid, "Z")
        self.patch(process, "THREADS_LOOKED_AT", 1)
        self.assertIsNone(endsByDefault(child.pid, signal.SIGTERM))


class LeaderThreadGoneStopTests(TestCase):
    """
    The attacker's job, live: its stop stays a stop (STOPPED, by whom) and
    its timeout a timeout (FAILED "timed out"), though it exits 0.
    """

    async def started(self, **fields: object) -> tuple[Twistd, dict]:
        if THREAD_EXIT is None:
            raise SkipTest(f"SYS_exit's number on {os.uname().machine} not known here")
        server = await Twistd(self).start()
        job = await server.createJob("/usr/bin/python3", "-c", LEADER_GONE, **fields)

        async def ready() -> bool:
            _, out = await server.json("GET", f"/jobs/{job['id']}", "alice")
            return out["stdout_bytes"] > 0 and stateOf(job["pid"]) == "Z"

        await server.poll(ready, 15, "the job's leader thread gone")
        return server, job

    async def test_stopStays(self) -> None:
        server, job = await self.started()
        code, record = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 30}
        )
        self.assertEqual(code, 200, record)
        self.assertEqual(
            (record["status"], record["exit_code"], record["stopped_by"]),
            ("STOPPED", 0, "alice"),
            record,
        )

    async def test_timeoutStays(self) -> None:
        server, job = await self.started(timeout_seconds=2)
        record = await server.waitEnded(job["id"])
        self.assertEqual(
            (record["status"], record["exit_code"], record["error"]),
            ("FAILED", 0, "timed out after 2 seconds"),
            record,
        )


class CombinedTailWithOffsetTests(TestCase):
    """
    A combined read given both C{tail} and C{offset} skipped C{offset}
    bytes after the tail's start (the body began mid-line), and said
    C{X-Output-Offset: 4>}; a combined tail said C{X-Output-Offset: 0}.
    The tail of each stream is no point of the combined output: the two
    together are refused, and a combined tail names no offset.
    """

    async def ended(self) -> tuple[LiveServer, str]:
        server = LiveServer(self)
        job = await server.createJob("printf", "one\\ntwo\\nthree\\nfour\\n")
        await server.waitEnded(job["id"])
        return server, job["id"]

    async def test_bothRefused(self) -> None:
        server, jobId = await self.ended()
        for form in ("raw", "sse", "frames"):
            code, body = await server.json(
                "GET",
                f"/jobs/{jobId}/logs?stream=combined&tail=2&offset=4&format={form}",
            )
            self.assertEqual(code, 400, (form, body))
            self.assertIn("tail", body["error"])
            self.assertIn("offset", body["error"])

    async def test_tailNamesNoOffset(self) -> None:
        server, jobId = await self.ended()
        response = await server.request(
            "GET", f"/jobs/{jobId}/logs?stream=combined&tail=2"
        )
        self.assertEqual(await treq.content(response), b"three\nfour\n")
        self.assertIsNone(response.headers.getRawHeaders(b"x-output-offset"))
        # (An offset of 0 is no offset: the tail alone.)
        response = await server.request(
            "GET", f"/jobs/{jobId}/logs?stream=combined&tail=2&offset=0"
        )
        self.assertEqual(
            (response.code, await treq.content(response)), (200, b"three\nfour\n")
        )

    async def test_oneStreamKeepsBoth(self) -> None:
        """(Control) one stream: the tail, never before the offset."""
        server, jobId = await self.ended()
        response = await server.request(
            "GET", f"/jobs/{jobId}/logs?stream=stdout&tail=2&offset=10"
        )
        self.assertEqual(await treq.content(response), b"ree\nfour\n")
        self.assertEqual(response.headers.getRawHeaders(b"x-output-offset"), [b"10"])


class DeleteQueuedTests(TestCase):
    """A queued job's DELETE said 'job is still running'."""

    async def test_queuedSaysQueued(self) -> None:
        server = LiveServer(self, "--max-running=1")
        running = await server.createJob("sleep", "30")
        queued = await server.createJob("true")
        self.assertEqual(queued["status"], "PENDING", queued)
        for job, said in ((queued, "job is queued"), (running, "job is still running")):
            code, body = await server.json("DELETE", f"/jobs/{job['id']}")
            self.assertEqual(code, 409, body)
            self.assertEqual(body["error"], f"{said}: stop it first")


#: A squeue or sacct that notes how many arguments it got, and answers none.
FAKE_SLURM_TOOL = """#!/bin/sh
echo "$(basename "$0") $#" >> "$(dirname "$0")/calls"
for a in "$@"; do [ "$a" = --json ] && echo '{"jobs": []}'; done
exit 0
"""


class ManySlurmJobsTests(TestCase):
    """
    Every live Slurm job's id went into one C{--jobs=} argument of squeue
    (and sacct): past 128 KiB (about 14,600 jobs of 8-digit ids) it could
    not be run, and every poll failed (Slurm round 31). Asked in chunks.
    """

    async def test_twentyThousandIds(self) -> None:
        from twisted.internet import reactor

        from jobworker.executors.slurm import commands as module
        from jobworker.executors.slurm.commands import SlurmCommands

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        for name in ("squeue", "sacct"):
            with open(os.path.join(folder, name), "w") as f:
                f.write(FAKE_SLURM_TOOL)
            os.chmod(os.path.join(folder, name), 0o755)  # noqa: S103
        commands = SlurmCommands(reactor, env={"PATH": f"{folder}:/usr/bin:/bin"})
        ids = [str(60_000_000 + n) for n in range(20_000)]
        self.assertEqual(await commands.states(ids), {})
        self.assertEqual(await commands.exits(ids), {})
        self.assertEqual(await commands.accounting(ids), {})
        with open(os.path.join(folder, "calls")) as f:
            calls = f.read().split("\n")[:-1]
        chunks = -(-len(ids) // module.IDS_PER_CALL)
        self.assertEqual(
            sorted(set(calls)),
            ["sacct 6", "squeue 3", "squeue 4"],
        )
        self.assertEqual(len(calls), 3 * chunks)


class UnorderedFollowTests(SynchronousTestCase):
    """
    A Slurm job keeps no order file: a combined follower of it (jw's on a
    terminal, or with C{2>&1}) got nothing until both its files were
    closed, at the job's end (Slurm round 31). Followed, each stream's
    growth is sent as it is seen.
    """

    def follower(self, unordered: bool) -> tuple[list, tuple, object]:
        from jobworker.jobs.combined import CombinedReader, StoredOrder
        from jobworker.jobs.spool import OutputSpool

        from .test_contract import RecordingConsumer

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        spools = tuple(
            OutputSpool(os.path.join(folder, name)) for name in ("stdout", "stderr")
        )
        got: list[tuple[int, bytes]] = []
        reader = CombinedReader(
            spools,  # type: ignore[arg-type]
            StoredOrder(os.path.join(folder, "order")),  # (never written)
            RecordingConsumer(),  # type: ignore[arg-type]
            lambda stream, data: got.append((stream, data)),
            follow=True,
            unordered=unordered,
        )
        reader.start()
        return got, spools, reader

    def test_growthSentAsSeen(self) -> None:
        got, spools, reader = self.follower(unordered=True)
        spools[0].write(b"tick 1\n")
        self.assertEqual(got, [(0, b"tick 1\n")])
        spools[1].write(b"warn\n")
        spools[0].write(b"tick 2\n")
        self.assertEqual(got[1:], [(1, b"warn\n"), (0, b"tick 2\n")])
        for spool in spools:
            spool.close()
        self.assertTrue(reader.done.called)  # type: ignore[attr-defined]


class TimeoutInItsGraceAtACrashTests(TestCase):
    """
    A job's timeout fired, the job ignored its TERM, and the server died in
    the grace: the restart closed it FAILED "the worker restarted while the
    job ran", its timeout forgotten (fault round 31). The timeout is stored
    as it fires, as a stop is.
    """

    async def test_timedOutAfterTheRestart(self) -> None:
        server = await Twistd(self).start("--stop-grace=30")
        job = await server.createJob(
            "sh", "-c", "trap '' TERM; echo ready; sleep 60", timeout_seconds=1
        )

        async def timedOut() -> bool:
            return f"job {job['id']} timed out" in server.protocol.log()

        await server.poll(timedOut, 15, "the timeout")
        _, during = await server.json("GET", f"/jobs/{job['id']}", "ada")
        self.assertEqual(
            (during["status"], during["error"]),
            ("RUNNING", "timed out after 1 second"),
            during,
        )
        os.kill(server.pid, signal.SIGKILL)
        await server.protocol.whenEnded()
        again = await Twistd(self, stateDir=server.stateDir).start()
        code, record = await again.json("GET", f"/jobs/{job['id']}", "ada")
        self.assertEqual(code, 200, record)
        self.assertEqual(record["status"], "FAILED", record)
        self.assertTrue(record["error"].startswith("timed out after 1 second"), record)


class CgroupsKeptForALaterStartTests(TestCase):
    """
    A job ran in a cgroup, the server crashed, and it started again
    without cgroups (--cgroups off, or none usable): the journal of the
    cgroups made was emptied, so no later start with cgroups killed what
    was left in it or removed it (fault round 31). Kept for that start.
    """

    def test_keptWithoutCgroups(self) -> None:
        from jobworker.executors.local.executor import MADE_CGROUPS, LocalExecutor
        from jobworker.executors.local.madecgroups import MadeCgroups

        from .fakes import FakeProcessReactor

        jobsDir = os.path.join(os.path.abspath(self.mktemp()), "jobs")
        os.makedirs(jobsDir)
        journal = os.path.join(os.path.dirname(jobsDir), MADE_CGROUPS)
        jobId = "0b5c7a4e-1d2f-4a3b-9c8d-7e6f5a4b3c2d"
        MadeCgroups(journal).note(jobId)
        executor = LocalExecutor(FakeProcessReactor(), jobsDir, 5.0)
        executor.recover([], "restarted")
        self.assertEqual(MadeCgroups(journal).read(), [jobId])


class SlurmEndTimeTests(SynchronousTestCase):
    """Slurm's end time, read from squeue's JSON, reaches the poll's state."""

    def test_readAndCarried(self) -> None:
        import json

        from jobworker.executors.slurm.documents import SlurmState, parseJobs

        for times in (
            {"start_time": 1000, "end_time": 1005},  # Slurm 22.05
            {  # Slurm 23.02 on
                "start_time": {"set": True, "number": 1000},
                "end_time": {"set": True, "number": 1005},
            },
        ):
            document = {
                "jobs": [
                    {
                        "job_id": 7,
                        "job_state": "COMPLETED",
                        "exit_code": 0,
                        "name": "jobworker-x",
                        **times,
                    }
                ]
            }
            found = parseJobs(json.dumps(document))["7"]
            self.assertEqual(found.endTime, 1005.0, times)
            text = SlurmState("COMPLETED", "", None, 0, None)
            self.assertEqual(text.withExit(found).endTime, 1005.0)
