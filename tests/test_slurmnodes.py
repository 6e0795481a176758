"""
The Slurm executor against a real two-node Slurm cluster on this machine
(slurm-ci/nodes2.sh: slurmctld, and slurmd n1 and n2 in network namespaces
of their own, sharing the file system).

Run by the C{slurm} tox environment (C{slurm-ci/run-tests.sh}), which sets
C{JW_SLURM_NODES_STATE} and C{SLURM_CONF}; without them every test is
skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any

import treq
from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from .support import ROOT, LiveServer, sleep
from .test_slurm import mappedUsers

STATE = os.environ.get("JW_SLURM_NODES_STATE")
OUTPUT = os.environ.get("JW_SLURM_OUTPUT")


def nodes2(*args: str) -> None:
    """Run slurm-ci/nodes2.sh on the two-node cluster's state dir."""
    assert STATE is not None
    subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "slurm-ci", "nodes2.sh"),
            args[0],
            STATE,
            *args[1:],
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def cancelAll() -> None:
    jobs = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False
    ).stdout.split()
    if jobs:
        subprocess.run(["scancel", *jobs], check=False)


class TwoNodeTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        if STATE is None or "SLURM_CONF" not in os.environ:
            reason = (
                "no two-node Slurm test cluster: run these through `tox -e "
                "slurm` (slurm-ci/run-tests.sh starts one)"
            )
            print(f"\nSKIPPED two-node Slurm tests: {reason}")
            raise SkipTest(reason)
        nodes2("up")  # both nodes up, whatever the last test did
        self.addCleanup(cancelAll)
        self.outputDir = tempfile.mkdtemp(dir=OUTPUT)
        self.addCleanup(shutil.rmtree, self.outputDir, True)
        self.stateDir = os.path.abspath(self.mktemp())
        os.makedirs(self.stateDir)
        self.users = mappedUsers(os.path.join(self.stateDir, "users"))

    def server(self) -> LiveServer:
        return LiveServer(
            self,
            "--executor=slurm",
            f"--slurm-output-dir={self.outputDir}",
            "--slurm-poll=0.5",
            "--slurm-no-probe",
            "--slurm-max-nodes=2",
            f"--users={self.users}",
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

    async def onePerNode(self, server: LiveServer, script: str) -> list[dict[str, Any]]:
        """Two one-CPU jobs (each node has one CPU): one lands on each node."""
        jobs = [
            await server.createJob("sh", "-c", script, limits={"cpu_millicores": 1000})
            for _ in range(2)
        ]
        running = [await self.waitFor(server, j["id"], ("RUNNING",)) for j in jobs]
        self.assertEqual(sorted(j["node"] for j in running), ["n1", "n2"])
        return running

    async def test_jobsOnBothNodesFollowedAndStopped(self) -> None:
        """
        Jobs land on both nodes (the record's node); each is followed to its
        last byte and stopped (STOPPED), whichever node it runs on.
        """
        server = self.server()
        jobs = await self.onePerNode(
            server, "for i in 1 2 3; do echo line $i; sleep 0.2; done; sleep 300"
        )
        follows = []
        for job in jobs:
            response = await server.request(
                "GET", f"/jobs/{job['id']}/logs?stream=stdout&follow=true"
            )
            self.assertEqual(response.code, 200)
            follows.append(defer.ensureDeferred(treq.content(response)))
        for job in jobs:  # its three lines written (they come every 0.2 s)
            for _ in range(300):
                _, record = await server.json("GET", f"/jobs/{job['id']}")
                if record["stdout_bytes"] >= len(b"line 1\n") * 3:
                    break
                await sleep(0.1)
        for job in jobs:
            code, stopped = await server.json("POST", f"/jobs/{job['id']}/stop")
            self.assertEqual((code, stopped["status"]), (200, "STOPPED"), stopped)
        for follow in follows:
            self.assertEqual(await follow, b"line 1\nline 2\nline 3\n")

    async def test_twoNodeJob(self) -> None:
        """A job asking for two nodes gets both; its record names them."""
        server = self.server()
        job = await server.createJob(
            "sh",
            "-c",
            'echo "$SLURM_JOB_NODELIST $SLURM_JOB_NUM_NODES"',
            slurm={"nodes": 2},
        )
        final = await self.waitFor(server, job["id"], ("COMPLETED", "FAILED"))
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(final["node"], "n[1-2]")
        response = await server.request(
            "GET", f"/jobs/{job['id']}/logs?stream=stdout&follow=true"
        )
        self.assertEqual(await treq.content(response), b"n[1-2] 2\n")

    async def test_nodeDown(self) -> None:
        """
        One node dies (everything in its namespace killed): its job ends
        FAILED saying its node failed; the other node's job runs on, and is
        stopped normally.
        """
        server = self.server()
        jobs = await self.onePerNode(server, "echo up; sleep 300")
        lost, kept = jobs
        self.addCleanup(nodes2, "up")
        nodes2("kill-node", lost["node"])
        final = await self.waitFor(server, lost["id"], ("FAILED", "COMPLETED"), 120)
        self.assertEqual(final["status"], "FAILED", final)
        self.assertIn(f"its node {lost['node']} failed", final["error"])
        self.assertIn("NODE_FAIL", final["error"])
        code, still = await server.json("GET", f"/jobs/{kept['id']}")
        self.assertEqual((still["status"], still["node"]), ("RUNNING", kept["node"]))
        code, stopped = await server.json("POST", f"/jobs/{kept['id']}/stop")
        self.assertEqual((code, stopped["status"]), (200, "STOPPED"), stopped)
