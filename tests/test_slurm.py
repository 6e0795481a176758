"""
The Slurm executor against a real one-node Slurm cluster (slurm-ci/up.sh).

Run by the C{slurm} tox environment (C{slurm-ci/run-tests.sh}), which starts
munge, slurmctld and slurmd on loopback and sets C{SLURM_CONF} and
C{JW_SLURM_CI_STATE}. Without them every test is skipped, saying why.

Its users file maps alice and bob to the cluster's Unix accounts C{jwalice}
and C{jwbob} (made by up.sh); ada (Admin) and rita (Reader) have none.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from jobworker.auth.users import DEVELOPMENT_USERS
from jobworker.executors.slurm.commands import SlurmCommands
from jobworker.executors.slurm.probe import OutputDirProbe

from .support import ROOT, LiveServer, sleep

STATE = os.environ.get("JW_SLURM_CI_STATE")
UNAVAILABLE = os.environ.get("JW_SLURM_UNAVAILABLE")
#: Where the tests' --slurm-output-dir folders go: below folders the test
#: accounts can traverse (run-tests.sh makes it), wherever the checkout is.
OUTPUT = os.environ.get("JW_SLURM_OUTPUT")

#: The Unix accounts of the mapped users.
ACCOUNTS = {"alice": "jwalice", "bob": "jwbob"}


def mappedUsers(path: str) -> str:
    """Write the development users, alice and bob mapped to their accounts."""
    lines = []
    for line in DEVELOPMENT_USERS.splitlines():
        name = line.split(":", 1)[0]
        lines.append(f"{line}:{ACCOUNTS[name]}" if name in ACCOUNTS else line)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def squeueJobs() -> dict[str, dict[str, Any]]:
    """Every job Slurm knows, as C{squeue --json} describes it, by id."""
    out = subprocess.run(
        ["squeue", "--json", "--states=all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {str(job["job_id"]): job for job in json.loads(out)["jobs"]}


def slurmctldLog() -> str:
    assert STATE is not None
    return os.path.join(STATE, "log", "slurmctld.log")


def killRequests(slurmJobId: str, since: int = 0) -> list[int]:
    """
    The uids slurmctld logged a kill (scancel) request of the job from,
    since offset C{since} of its log (job numbers repeat after a reset).
    """
    with open(slurmctldLog(), encoding="utf-8") as f:
        f.seek(since)
        return [
            int(uid)
            for job, uid in re.findall(
                r"REQUEST_KILL_JOB JobId=(\d+) uid (\d+)", f.read()
            )
            if job == slurmJobId
        ]


def slurmScript(name: str, *args: str) -> None:
    """Run slurm-ci/NAME.sh on the test cluster's state dir."""
    assert STATE is not None
    subprocess.run(
        ["bash", os.path.join(ROOT, "slurm-ci", name), STATE, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "SLURM_MESSAGE_TIMEOUT": "2"},
    )


def resetCluster() -> None:
    """
    Lose slurmctld's state, as a reinstalled or wiped controller would: every
    job is cancelled and forgotten, and job numbers start again from 1 (the
    job completion log, like accounting, keeps what ended).
    """
    assert STATE is not None
    slurmScript("down.sh")
    # slurmctld's saved state, and the node's (a job id slurmd still
    # remembers would clash with the new job of that number).
    for saved in ("state", "spool"):
        folder = os.path.join(STATE, saved)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    slurmScript("up.sh")


def foreignJob(*argv: str) -> str:
    """Submit someone else's job (root's, not jobworker's): its Slurm id."""
    return subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", "--job-name=foreign", *argv],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def nodeCPUs() -> int:
    """The CPUs of the test cluster's (single) node, as Slurm counts them."""
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "node"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"(?:^| )CPUTot=(\d+)", out)
    assert match is not None, out
    return int(match.group(1))


class SlurmCase(TestCase):
    """
    A jobworker server with the Slurm executor on the test cluster, and
    ways to watch its jobs (no tests of its own: other modules build on it).
    """

    timeout = 240

    def setUp(self) -> None:
        if STATE is None or "SLURM_CONF" not in os.environ:
            reason = UNAVAILABLE or (
                "no Slurm test cluster: run these through `tox -e slurm` "
                "(slurm-ci/run-tests.sh starts one)"
            )
            print(f"\nSKIPPED Slurm integration tests: {reason}")
            raise SkipTest(reason)
        if OUTPUT is not None:
            self.outputDir = tempfile.mkdtemp(dir=OUTPUT)
            self.addCleanup(shutil.rmtree, self.outputDir, True)
        else:
            self.outputDir = os.path.abspath(self.mktemp())
        self.stateDir = os.path.abspath(self.mktemp())
        os.makedirs(self.stateDir)
        self.users = mappedUsers(os.path.join(self.stateDir, "users"))
        #: Where slurmctld's log stood when the test began.
        self.logStart = os.path.getsize(slurmctldLog())

    def server(self, *extra: str) -> LiveServer:
        return LiveServer(
            self,
            "--executor=slurm",
            f"--slurm-output-dir={self.outputDir}",
            "--slurm-poll=0.5",
            # One test probes; the others' job numbers stay theirs.
            *(() if "--probe" in extra else ("--slurm-no-probe",)),
            f"--users={self.users}",
            *(option for option in extra if option != "--probe"),
            grace=2.0,
            stateDir=self.stateDir,
        )

    async def printed(self, jobId: str, lines: int, timeout: float = 60.0) -> str:
        """What the (running) job has printed once it is C{lines} lines."""
        path = os.path.join(self.outputDir, jobId, "stdout")
        text = ""
        for _ in range(int(timeout / 0.1)):
            with contextlib.suppress(FileNotFoundError), open(path) as f:
                text = f.read()
            if text.count("\n") >= lines:
                return text
            await sleep(0.1)
        raise AssertionError(f"job {jobId} printed only {text!r}")

    async def waitFor(
        self,
        server: LiveServer,
        jobId: str,
        statuses: tuple[str, ...],
        timeout: float = 90.0,
    ) -> dict[str, Any]:
        for _ in range(int(timeout / 0.25)):
            code, job = await server.json("GET", f"/jobs/{jobId}", "ada")
            assert code == 200, (code, job)
            if job["status"] in statuses:
                return job  # type: ignore[no-any-return]
            await sleep(0.25)
        raise AssertionError(f"job {jobId} never reached {statuses}: {job}")

    async def output(
        self, server: LiveServer, jobId: str, stream: str, user: str = "alice"
    ) -> bytes:
        response = await server.request(
            "GET", f"/jobs/{jobId}/logs?stream={stream}&follow=true", user
        )
        content: bytes = await treq.content(response)
        self.assertEqual(response.code, 200, content)
        return content


class SlurmTests(SlurmCase):
    async def test_combinedFollowedAsItGrows(self) -> None:
        """
        A combined follower (jw's on a terminal) gets a running job's
        output as it grows: it got nothing until the job ended (a Slurm job
        keeps no order file; Slurm round 31).
        """
        server = self.server()
        job = await server.createJob(
            "sh", "-c", "echo first; echo warn >&2; sleep 30; echo last"
        )
        await self.waitFor(server, job["id"], ("RUNNING",))
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=combined&follow=true"
        )
        self.assertEqual(response.code, 200)
        got = bytearray()
        done: Deferred[None] = treq.collect(response, got.extend)
        for _ in range(150):
            if b"first\n" in got and b"warn\n" in got:
                break
            await sleep(0.1)
        self.assertFalse(done.called, bytes(got))  # (the job runs on)
        self.assertEqual(sorted(bytes(got).splitlines()), [b"first", b"warn"])
        code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(code, 200, stopped)
        await done

    async def test_pendingRunningCompleted(self) -> None:
        """A job queued behind one holding every CPU: PENDING, RUNNING, COMPLETED."""
        server = self.server()
        cpus = nodeCPUs() * 1000
        blocker = await server.createJob("sleep", "60", limits={"cpu_millicores": cpus})
        await self.waitFor(server, blocker["id"], ("RUNNING",))
        job = await server.createJob(
            "sh", "-c", 'printf "%s|" "$@"', "sh", "a b", "$HOME", "it's"
        )
        self.assertEqual(job["status"], "PENDING")
        self.assertEqual(job["executor"], "slurm")
        self.assertTrue(job["slurm_job_id"].isdigit())
        await sleep(1.5)
        code, again = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual(again["status"], "PENDING")
        code, stopped = await server.json("POST", f"/jobs/{blocker['id']}/stop")
        self.assertEqual(code, 200, stopped)
        self.assertEqual(stopped["status"], "STOPPED")
        final = await self.waitFor(server, job["id"], ("COMPLETED", "FAILED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(final["exit_code"], 0)
        self.assertTrue(final["node"])
        self.assertIsNotNone(final["started_at"])
        self.assertEqual(
            await self.output(server, job["id"], "stdout"), b"a b|$HOME|it's|"
        )

    async def test_exitCodeAndFollow(self) -> None:
        """Following gives every byte once, then the end; exit 3 is FAILED, 3."""
        server = self.server()
        job = await server.createJob(
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done; "
            "echo bad >&2; exit 3",
        )
        out = await self.output(server, job["id"], "stdout")
        self.assertEqual(out, b"".join(b"line %d\n" % i for i in range(1, 6)))
        final = await self.waitFor(server, job["id"], ("FAILED", "COMPLETED"))
        self.assertEqual((final["status"], final["exit_code"]), ("FAILED", 3))
        self.assertEqual(await self.output(server, job["id"], "stderr"), b"bad\n")
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?format=sse&stream=stdout"
        )
        events = (await treq.content(response)).decode()
        self.assertIn("event: end", events)

    async def test_stopTermIgnoringJob(self) -> None:
        """A job ignoring SIGTERM is killed after the grace: STOPPED."""
        server = self.server()
        job = await server.createJob("sh", "-c", "trap '' TERM; echo up; sleep 300")
        await self.waitFor(server, job["id"], ("RUNNING",))
        code, final = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(code, 200, final)
        self.assertEqual(final["status"], "STOPPED")
        self.assertEqual(final["stopped_by"], "alice")

    async def test_jobsThatCannotStart(self) -> None:
        """A missing command fails (127); a request Slurm refuses is FAILED, why."""
        server = self.server()
        missing = await server.createJob("jobworker-no-such-command")
        final = await self.waitFor(server, missing["id"], ("FAILED", "COMPLETED"))
        self.assertEqual((final["status"], final["exit_code"]), ("FAILED", 127))
        code, huge = await server.json(
            "POST",
            "/jobs",
            "alice",
            {"command": "true", "limits": {"memory_bytes": 1 << 50}},
        )
        self.assertEqual(code, 201, huge)
        self.assertEqual(huge["status"], "FAILED")
        self.assertIn("Slurm refused the job", huge["error"])
        code, body = await server.json(
            "POST", "/jobs", "alice", {"command": "true", "limits": {"pids": 5}}
        )
        self.assertEqual(code, 400, body)

    async def test_restartReattaches(self) -> None:
        """Jobs keep running through a jobworker restart and are re-attached."""
        server = self.server()
        job = await server.createJob("sh", "-c", "sleep 3; echo done")
        await self.waitFor(server, job["id"], ("RUNNING",))
        await server.stop()
        server = self.server()
        code, seen = await server.json("GET", f"/jobs/{job['id']}")
        self.assertEqual(code, 200)
        self.assertIn(seen["status"], ("RUNNING", "COMPLETED"))
        final = await self.waitFor(server, job["id"], ("COMPLETED", "FAILED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(await self.output(server, job["id"], "stdout"), b"done\n")

    async def test_slurmDown(self) -> None:
        """slurmctld down: 503 for new jobs, records kept, recovery after."""
        server = self.server()
        job = await server.createJob("sh", "-c", "sleep 4; echo survived")
        await self.waitFor(server, job["id"], ("RUNNING",))
        slurmScript("down.sh", "--keep-jobs")
        try:
            # The poll finds slurmctld gone: /healthz says so ...
            for _ in range(120):
                code, health = await server.json("GET", "/healthz", None)
                if health["status"] != "ok":
                    break
                await sleep(0.25)
            self.assertEqual((code, health["status"]), (200, "degraded"), health)
            self.assertEqual(health["executor"], "slurm")
            self.assertIn("Unable to contact slurm controller", health["reason"])
            response = await server.request("GET", "/metrics", "ada")
            metrics = (await treq.content(response)).decode()
            self.assertIn('jobworker_executor_up{executor="slurm"} 0.0', metrics)
            # ... and new jobs are refused at once, no sbatch waiting.
            started = time.monotonic()
            code, body = await server.json(
                "POST", "/jobs", "alice", {"command": "true"}
            )
            self.assertLess(time.monotonic() - started, 1.0)
            self.assertEqual(code, 503, body)
            self.assertIn("Slurm is unreachable", body["error"])
            code, listing = await server.json("GET", "/jobs")
            self.assertEqual([j["id"] for j in listing["jobs"]], [job["id"]])
        finally:
            slurmScript("up.sh")
        final = await self.waitFor(server, job["id"], ("COMPLETED", "FAILED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(await self.output(server, job["id"], "stdout"), b"survived\n")
        again = await server.createJob("echo", "back")
        final = await self.waitFor(server, again["id"], ("COMPLETED", "FAILED"))
        self.assertEqual(final["status"], "COMPLETED")
        self.assertEqual(json.loads(json.dumps(final))["executor"], "slurm")

    async def test_jobsRunAsTheirOwners(self) -> None:
        """
        alice's job is jwalice's in Slurm (squeue, the comment, the process,
        its home, its folder), bob's jwbob's; the argv and env files are gone
        once the job runs, and the stop is asked by the owner's uid.
        """
        server = self.server()
        script = "id -un; pwd; echo $HOME; sleep 60"
        jobs = {
            user: await server.createJob(
                "sh", "-c", script, user=user, env={"TOKEN": "s3cret"}
            )
            for user in ACCOUNTS
        }
        for user, job in jobs.items():
            account = pwd.getpwnam(ACCOUNTS[user])
            self.assertEqual(job["run_as"], account.pw_name)
            await self.waitFor(server, job["id"], ("RUNNING",))
            printed = await self.printed(job["id"], 3)
            home = account.pw_dir
            self.assertEqual(printed, f"{account.pw_name}\n{home}\n{home}\n")
            folder = os.path.join(self.outputDir, job["id"])
            self.assertEqual(
                sorted(os.listdir(folder)), ["slurm.log", "stderr", "stdout"]
            )
            st = os.stat(folder)
            self.assertEqual((st.st_uid, st.st_gid), (account.pw_uid, account.pw_gid))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
            slurm = squeueJobs()[job["slurm_job_id"]]
            self.assertEqual(slurm["user_name"], account.pw_name)
            self.assertEqual(slurm["comment"], f"jobworker user={user} job={job['id']}")
        self.assertEqual(stat.S_IMODE(os.stat(self.outputDir).st_mode), 0o711)
        listed = subprocess.run(
            ["squeue", "-h", "-u", "jwalice", "-o", "%i"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        self.assertIn(jobs["alice"]["slurm_job_id"], listed)
        self.assertNotIn(jobs["bob"]["slurm_job_id"], listed)
        for user, job in jobs.items():
            code, final = await server.json("POST", f"/jobs/{job['id']}/stop", user)
            self.assertEqual((code, final["status"]), (200, "STOPPED"), final)
            uid = pwd.getpwnam(ACCOUNTS[user]).pw_uid
            self.assertEqual(
                set(killRequests(job["slurm_job_id"], self.logStart)), {uid}
            )

    async def test_bobCannotTouchAlicesJob(self) -> None:
        """
        bob's job can neither list nor read alice's output folder, nor cancel
        or signal her Slurm job: she keeps running until she stops it.
        """
        server = self.server()
        alices = await server.createJob(
            "sh", "-c", "echo alice-secret; sleep 60", env={"DB_PASSWORD": "hunter2"}
        )
        await self.waitFor(server, alices["id"], ("RUNNING",))
        await self.printed(alices["id"], 1)
        folder = os.path.join(self.outputDir, alices["id"])
        attack = (
            'ls "$1"; echo "ls=$?"; cat "$1/stdout"; echo "cat=$?"; '
            'scancel "$2"; echo "scancel=$?"; '
            'scancel --full --signal=KILL "$2"; echo "signal=$?"'
        )
        bobs = await server.createJob(
            "sh",
            "-c",
            attack,
            "attack",
            folder,
            alices["slurm_job_id"],
            user="bob",
            env={"SLURM_CONF": os.environ["SLURM_CONF"]},
        )
        final = await self.waitFor(server, bobs["id"], ("COMPLETED", "FAILED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        out = (await self.output(server, bobs["id"], "stdout", "bob")).decode()
        self.assertNotIn("alice-secret", out)
        results = dict(line.split("=") for line in out.split())
        self.assertEqual(sorted(results), ["cat", "ls", "scancel", "signal"])
        for what, code in results.items():
            self.assertNotEqual(code, "0", (what, out))
        err = (await self.output(server, bobs["id"], "stderr", "bob")).decode()
        self.assertIn("Permission denied", err)
        self.assertIn("Access/permission denied", err)
        await sleep(1.0)  # a poll or two: alice's job would be seen gone
        code, still = await server.json("GET", f"/jobs/{alices['id']}")
        self.assertEqual(still["status"], "RUNNING", still)
        self.assertEqual(squeueJobs()[alices["slurm_job_id"]]["job_state"], "RUNNING")
        code, stopped = await server.json("POST", f"/jobs/{alices['id']}/stop")
        self.assertEqual((code, stopped["status"]), (200, "STOPPED"), stopped)
        self.assertEqual(stopped["stopped_by"], "alice")

    async def test_unmappedRefused(self) -> None:
        """A user without a mapped account may not run Slurm jobs: 403, why."""
        server = self.server()
        code, body = await server.json("POST", "/jobs", "ada", {"command": "true"})
        self.assertEqual(code, 403, body)
        self.assertIn("no Unix account mapped in the users file", body["error"])
        code, listing = await server.json("GET", "/jobs", "ada")
        self.assertEqual(listing["jobs"], [])

    async def test_sharedAccount(self) -> None:
        """
        --slurm-shared-account: the unmapped run as the service account
        (this server's user); the mapped still as their own.
        """
        # As root the service account is root: that needs saying twice.
        extra = ("--allow-root-jobs",) if os.getuid() == 0 else ()
        server = self.server("--slurm-shared-account", *extra)
        me = pwd.getpwuid(os.getuid()).pw_name
        ada = await server.createJob("id", "-un", user="ada")
        self.assertEqual(ada["run_as"], me)
        alice = await server.createJob("id", "-un")
        for user, job, account in (("ada", ada, me), ("alice", alice, "jwalice")):
            final = await self.waitFor(server, job["id"], ("COMPLETED", "FAILED"))
            self.assertEqual(final["status"], "COMPLETED", final)
            out = await self.output(server, job["id"], "stdout", user)
            self.assertEqual(out.decode(), f"{account}\n")

    async def test_recoveredJobStoppedAsItsOwner(self) -> None:
        """After a restart, a job is still stopped (scancel) as its account."""
        server = self.server()
        job = await server.createJob("sleep", "60")
        await self.waitFor(server, job["id"], ("RUNNING",))
        await server.stop()
        server = self.server()
        code, final = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual((code, final["status"]), (200, "STOPPED"), final)
        self.assertEqual(final["run_as"], "jwalice")
        uid = pwd.getpwnam("jwalice").pw_uid
        self.assertEqual(set(killRequests(job["slurm_job_id"], self.logStart)), {uid})

    async def test_reusedNumberNotFollowed(self) -> None:
        """
        slurmctld loses its state while jobworker is down; a foreign job gets
        the number jobworker's job had: the record ends FAILED "Slurm no
        longer knows job N", and the foreign job is neither followed nor
        signalled (jw stop is refused: the job has ended).
        """
        resetCluster()
        server = self.server()
        job = await server.createJob("sleep", "300")
        self.assertEqual(job["slurm_job_id"], "1")
        await self.waitFor(server, job["id"], ("RUNNING",))
        await server.stop()
        resetCluster()
        foreign = foreignJob("--wrap", "sleep 300")
        self.assertEqual(foreign, job["slurm_job_id"])
        since = os.path.getsize(slurmctldLog())
        for _ in range(120):
            seen = squeueJobs()[foreign]
            if seen["job_state"] == "RUNNING":
                break
            await sleep(0.25)
        else:
            self.fail(f"the foreign job never ran: {seen['state_reason']}")
        server = self.server()
        final = await self.waitFor(server, job["id"], ("FAILED", "COMPLETED"), 30)
        self.assertEqual(final["status"], "FAILED", final)
        self.assertIn("Slurm no longer knows job 1", final["error"])
        self.assertIsNone(final["exit_code"])
        code, body = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(code, 409, body)
        await sleep(1.5)
        self.assertEqual(squeueJobs()[foreign]["job_state"], "RUNNING")
        self.assertEqual(killRequests(foreign, since), [])
        subprocess.run(["scancel", foreign], check=True)

    async def test_endedWhileDownFromAccounting(self) -> None:
        """
        A job that ended while jobworker was down, then was forgotten by
        slurmctld, keeps its exit code: read from accounting (here the job
        completion log, sacct --completion), not "no longer knows".
        """
        server = self.server()
        job = await server.createJob("sh", "-c", "sleep 2; exit 3")
        await self.waitFor(server, job["id"], ("RUNNING",))
        await server.stop()
        for _ in range(60):
            state = squeueJobs().get(job["slurm_job_id"], {}).get("job_state")
            if state == "FAILED":
                break
            await sleep(0.5)
        resetCluster()
        server = self.server()
        final = await self.waitFor(server, job["id"], ("FAILED", "COMPLETED"), 30)
        self.assertEqual((final["status"], final["exit_code"]), ("FAILED", 3), final)

    async def test_cancelLineOutOfStderrAndSlurmEnvironment(self) -> None:
        """
        The job sees SLURM_JOB_ID, SLURM_CPUS_PER_TASK and TMPDIR as Slurm
        sets them, and the request's env; when it is stopped, Slurm's
        "*** JOB N CANCELLED ***" is not in its stderr.
        """
        server = self.server()
        job = await server.createJob(
            "sh",
            "-c",
            'echo "id=$SLURM_JOB_ID cpus=$SLURM_CPUS_PER_TASK tmp=$TMPDIR k=$K"; '
            "echo started >&2; sleep 300",
            env={"K": "v"},
            limits={"cpu_millicores": 1000},
        )
        await self.waitFor(server, job["id"], ("RUNNING",))
        printed = await self.printed(job["id"], 1)
        self.assertEqual(printed, f"id={job['slurm_job_id']} cpus=1 tmp=/tmp k=v\n")
        code, final = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual((code, final["status"]), (200, "STOPPED"), final)
        err = await self.output(server, job["id"], "stderr")
        self.assertEqual(err, b"started\n")

    async def test_pendingReasonAndLaunchFailure(self) -> None:
        """
        A job queued behind a blocker says why it waits (pending_reason); its
        folder removed before it starts, Slurm cannot launch it (raw status
        4021): FAILED, saying what Slurm said, never "killed by a signal".
        """
        server = self.server()
        cpus = nodeCPUs() * 1000
        blocker = await server.createJob("sleep", "60", limits={"cpu_millicores": cpus})
        await self.waitFor(server, blocker["id"], ("RUNNING",))
        job = await server.createJob("echo", "never")
        for _ in range(40):
            code, seen = await server.json("GET", f"/jobs/{job['id']}")
            if seen["pending_reason"]:
                break
            await sleep(0.25)
        self.assertEqual(seen["status"], "PENDING")
        self.assertIn(seen["pending_reason"], ("Resources", "Priority"))
        shutil.rmtree(os.path.join(self.outputDir, job["id"]))
        code, stopped = await server.json("POST", f"/jobs/{blocker['id']}/stop")
        self.assertEqual(code, 200, stopped)
        final = await self.waitFor(server, job["id"], ("FAILED", "COMPLETED"))
        self.assertEqual(final["status"], "FAILED", final)
        self.assertIsNone(final["signal"])
        self.assertIsNone(final["pending_reason"])
        self.assertIn("could not launch", final["error"])
        self.assertIn("JobLaunchFailure", final["error"])

    async def test_outputDirProbe(self) -> None:
        """
        At start-up a probe job writes into --slurm-output-dir on a node and
        the server finds it there: healthy, the probe's file gone.
        """

        def probes() -> dict[str, str]:
            out = subprocess.run(
                [
                    "squeue",
                    "--noheader",
                    "--states=all",
                    "--name=jobworker-output-dir-probe",
                    "--format=%i %T",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            return dict(line.split() for line in out.splitlines())

        before = probes()
        server = self.server("--probe")
        for _ in range(120):
            new = {i: s for i, s in probes().items() if i not in before}
            if list(new.values()) == ["COMPLETED"]:
                break
            await sleep(0.25)
        else:
            self.fail(f"no probe job ran: {new}")
        # The server's next look at it removes its files (however late).
        for _ in range(120):
            left = [n for n in os.listdir(self.outputDir) if n.startswith(".probe-")]
            if not left:
                break
            await sleep(0.25)
        self.assertEqual(left, [])
        code, health = await server.json("GET", "/healthz", None)
        self.assertEqual((code, health), (200, {"status": "ok"}))

    async def test_perJobSlurmOptions(self) -> None:
        """
        A job's "slurm" choices within the server's allowances reach sbatch
        exactly (squeue shows them); outside them: 400, nothing submitted.
        """
        server = self.server(
            "--slurm-allow-partitions=debug",
            "--slurm-allow-accounts=physics chem",
            "--slurm-max-ntasks=2",
            "--slurm-allow-exclusive",
        )
        slurm = {
            "partition": "debug",
            "account": "physics",
            "nodes": 1,
            "ntasks": 2,
            "exclusive": True,
        }
        job = await server.createJob("sleep", "30", slurm=slurm)
        slurmId = job["slurm_job_id"]
        seen = subprocess.run(
            ["squeue", "-h", f"--jobs={slurmId},{slurmId}", "-o", "%P|%a|%D|%C|%h"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.assertEqual(seen, "debug|physics|1|2|NO")
        for refused in ({"account": "biology"}, {"ntasks": 3}, {"nodes": 2}):
            code, body = await server.json(
                "POST", "/jobs", "alice", {"command": "true", "slurm": refused}
            )
            self.assertEqual(code, 400, body)
            self.assertIn("slurm.", body["error"])
        code, listing = await server.json("GET", "/jobs")
        self.assertEqual([j["id"] for j in listing["jobs"]], [job["id"]])
        with open(os.path.join(self.stateDir, "audit.log"), encoding="utf-8") as f:
            events = [json.loads(line) for line in f]
        [create] = [e for e in events if e.get("job") == job["id"]]
        self.assertEqual(create["slurm"], slurm)
        code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop")
        self.assertEqual(code, 200, stopped)

    async def test_forgedNameForgesNothing(self) -> None:
        """
        alice's job renames itself to a name holding a newline and a forged
        squeue line saying bob's job COMPLETED: bob's record stays RUNNING.
        """
        server = self.server()
        bobs = await server.createJob("sleep", "60", user="bob")
        bobs = await self.waitFor(server, bobs["id"], ("RUNNING",))
        submitted = squeueJobs()[bobs["slurm_job_id"]]["submit_time"]
        forged = (
            f"x\n{bobs['slurm_job_id']}|COMPLETED|None|vm|{submitted}|{submitted}|"
            f"jobworker-{bobs['id']}"
        )
        alices = await server.createJob(
            "sh",
            "-c",
            'scontrol update JobId="$SLURM_JOB_ID" JobName="$1" && echo renamed; '
            "sleep 60",
            "rename",
            forged,
            env={"SLURM_CONF": os.environ["SLURM_CONF"]},
        )
        self.assertEqual(await self.printed(alices["id"], 1), "renamed\n")
        self.assertEqual(squeueJobs()[alices["slurm_job_id"]]["name"], forged)
        # Renamed, alice's Slurm job is no longer her record's.
        ended = await self.waitFor(server, alices["id"], ("FAILED",), 30)
        self.assertIn("no longer knows", ended["error"])
        await sleep(2.0)  # several polls, the forged line in each squeue
        _, still = await server.json("GET", f"/jobs/{bobs['id']}", "bob")
        self.assertEqual(still["status"], "RUNNING", still)
        subprocess.run(["scancel", alices["slurm_job_id"]], check=True)


class ReviewTests(SlurmCase):
    """A Slurm user's review (session 18), on the real cluster."""

    async def test_stopSuspendedJob(self) -> None:
        """
        A job an operator suspended (scontrol suspend) is stopped: Slurm
        refuses to signal a suspended job (scancel retries "Job is in
        transitional state" past the command's deadline: it was a 503
        "Slurm is unreachable" after 60 s), so it is cancelled. STOPPED.
        """
        server = self.server()
        job = await server.createJob("sh", "-c", "echo up; sleep 300")
        job = await self.waitFor(server, job["id"], ("RUNNING",))
        await self.printed(job["id"], 1)
        slurmJobId = job["slurm_job_id"]
        subprocess.run(["scontrol", "suspend", slurmJobId], check=True)
        self.addCleanup(subprocess.run, ["scancel", slurmJobId], check=False)
        self.assertEqual(squeueJobs()[slurmJobId]["job_state"], "SUSPENDED")
        code, final = await server.json(
            "POST", f"/jobs/{job['id']}/stop", "alice", {"grace_seconds": 30}
        )
        self.assertEqual(code, 200, final)
        self.assertEqual((final["status"], final["stopped_by"]), ("STOPPED", "alice"))
        self.assertEqual(squeueJobs()[slurmJobId]["job_state"], "CANCELLED")

    async def test_suspendedAndResumed(self) -> None:
        """
        A job Slurm suspended read as plain RUNNING: its record says
        "suspended in Slurm" (pending_reason) until Slurm resumes it.
        """
        server = self.server()
        job = await server.createJob("sh", "-c", "echo up; sleep 300")
        job = await self.waitFor(server, job["id"], ("RUNNING",))
        await self.printed(job["id"], 1)
        slurmJobId = job["slurm_job_id"]
        self.addCleanup(subprocess.run, ["scancel", slurmJobId], check=False)

        async def reasonBecomes(wanted: str | None) -> dict[str, Any]:
            """The record, once its pending_reason starts with C{wanted}."""
            for _ in range(100):
                _, seen = await server.json("GET", f"/jobs/{job['id']}", "alice")
                reason = seen.get("pending_reason")
                if reason == wanted or (wanted and (reason or "").startswith(wanted)):
                    return seen
                await sleep(0.2)
            self.fail(f"pending_reason stayed {reason!r}, not {wanted!r}")

        subprocess.run(["scontrol", "suspend", slurmJobId], check=True)
        seen = await reasonBecomes("suspended in Slurm")
        self.assertEqual(seen["status"], "RUNNING")
        subprocess.run(["scontrol", "resume", slurmJobId], check=True)
        seen = await reasonBecomes(None)
        self.assertEqual(seen["status"], "RUNNING")

    async def test_outputDirWithSpaceAndPercent(self) -> None:
        """
        An output folder named with a space and C{%x}: sbatch reads C{%x}
        in --output as the job's name (the node could not open that file,
        and the job failed to launch). The job runs, its output where the
        server reads it.
        """
        assert OUTPUT is not None, "run through slurm-ci/run-tests.sh"
        self.outputDir = tempfile.mkdtemp(dir=OUTPUT, prefix="jobs 50%x ")
        self.addCleanup(shutil.rmtree, self.outputDir, True)
        server = self.server()
        job = await server.createJob("sh", "-c", "echo out; echo err >&2")
        final = await self.waitFor(server, job["id"], ("COMPLETED", "FAILED"))
        self.assertEqual((final["status"], final["exit_code"]), ("COMPLETED", 0))
        self.assertEqual(await self.output(server, job["id"], "stdout"), b"out\n")
        self.assertEqual(await self.output(server, job["id"], "stderr"), b"err\n")
        # The start-up probe's token file too (its shell line split the
        # path at the space: "not shared").
        probe = OutputDirProbe(
            reactor,  # type: ignore[arg-type]
            SlurmCommands(reactor),  # type: ignore[arg-type]
            self.outputDir,
            [],
            interval=0.25,
            patience=60.0,
        )
        self.assertEqual(await probe.run(), (True, None))
