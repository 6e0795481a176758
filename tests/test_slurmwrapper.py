"""The Slurm batch script (data/slurm-exec.sh), run here as a node would."""

from __future__ import annotations

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.slurm.folders import WRAPPER


def nulFile(path: str, items: list[str]) -> str:
    with open(path, "wb") as f:
        f.write(b"".join(item.encode() + b"\0" for item in items))
    return path


class WrapperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def batch(
        self, argv: list[str], env: list[str]
    ) -> subprocess.CompletedProcess[bytes]:
        """The wrapper as slurmstepd starts it: Slurm's variables set."""
        slurmEnv = {
            "PATH": "/usr/bin:/bin",
            "SLURM_JOB_ID": "77",
            "SLURM_CPUS_PER_TASK": "2",
            "TMPDIR": "/tmp/job77",
            "HOME": "/root",
            "SECRET_OF_THE_SERVER": "x",
        }
        return subprocess.run(
            [
                "bash",
                WRAPPER,
                "-C",
                self.dir,
                "-E",
                os.path.join(self.dir, "stderr"),
                nulFile(os.path.join(self.dir, "argv"), argv),
                nulFile(os.path.join(self.dir, "env"), env),
            ],
            capture_output=True,
            env=slurmEnv,
            check=False,
        )

    def test_slurmVariablesKeptEnvOtherwiseExact(self) -> None:
        """
        The job gets SLURM_* and TMPDIR as Slurm set them, the request's
        env (which wins), and nothing else of the batch environment.
        """
        done = self.batch(
            ["/usr/bin/env", "-0"], ["A=1", "MULTI=l1\nl2", "TMPDIR=/mine"]
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        env = dict(
            item.split("=", 1) for item in done.stdout.decode().split("\0") if item
        )
        self.assertEqual(
            env,
            {
                "SLURM_JOB_ID": "77",
                "SLURM_CPUS_PER_TASK": "2",
                "TMPDIR": "/mine",
                "A": "1",
                "MULTI": "l1\nl2",
            },
        )
        self.assertFalse(os.path.exists(os.path.join(self.dir, "argv")))

    def test_stderrIsTheJobsOnly(self) -> None:
        """
        The job's stderr goes to the -E file (appended); what the batch
        step itself prints (slurmstepd's messages) stays out of it.
        """
        with open(os.path.join(self.dir, "stderr"), "wb") as f:
            f.write(b"before\n")
        done = self.batch(["sh", "-c", "echo out; echo err >&2; exit 3"], [])
        self.assertEqual(done.returncode, 3)
        self.assertEqual(done.stdout, b"out\n")
        self.assertEqual(done.stderr, b"")
        with open(os.path.join(self.dir, "stderr"), "rb") as f:
            self.assertEqual(f.read(), b"before\nerr\n")

    def test_missingCommandSaysSoInStderr(self) -> None:
        done = self.batch(["jobworker-no-such-command"], [])
        self.assertEqual(done.returncode, 127)
        with open(os.path.join(self.dir, "stderr"), "rb") as f:
            self.assertIn(b"jobworker-no-such-command", f.read())
