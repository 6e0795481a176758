"""
The Slurm executor against a real one-node Slurm cluster (slurm-ci/up.sh).

Run by the C{slurm} tox environment (C{slurm-ci/run-tests.sh}), which starts
munge, slurmctld and slurmd on loopback and sets C{SLURM_CONF} and
C{JW_SLURM_CI_STATE}. Without them every test is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import treq
from twisted.trial.unittest import SkipTest, TestCase

from .support import ROOT, LiveServer, sleep

STATE = os.environ.get("JW_SLURM_CI_STATE")
UNAVAILABLE = os.environ.get("JW_SLURM_UNAVAILABLE")


def slurmScript(name: str, *args: str) -> None:
    """Run slurm-ci/NAME.sh on the test cluster's state dir."""
    assert STATE is not None
    subprocess.run(
        ["bash", os.path.join(ROOT, "slurm-ci", name), STATE, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "SLURM_MESSAGE_TIMEOUT": "2"},
    )


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


class SlurmTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        if STATE is None or "SLURM_CONF" not in os.environ:
            reason = UNAVAILABLE or (
                "no Slurm test cluster: run these through `tox -e slurm` "
                "(slurm-ci/run-tests.sh starts one)"
            )
            print(f"\nSKIPPED Slurm integration tests: {reason}")
            raise SkipTest(reason)
        self.outputDir = os.path.abspath(self.mktemp())
        self.stateDir = os.path.abspath(self.mktemp())

    def server(self) -> LiveServer:
        return LiveServer(
            self,
            "--executor=slurm",
            f"--slurm-output-dir={self.outputDir}",
            "--slurm-poll=0.5",
            grace=2.0,
            stateDir=self.stateDir,
        )

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

    async def output(self, server: LiveServer, jobId: str, stream: str) -> bytes:
        response = await server.request(
            "GET", f"/jobs/{jobId}/logs?stream={stream}&follow=true"
        )
        self.assertEqual(response.code, 200)
        return await treq.content(response)  # type: ignore[no-any-return]

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
            code, body = await server.json(
                "POST", "/jobs", "alice", {"command": "true"}
            )
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
