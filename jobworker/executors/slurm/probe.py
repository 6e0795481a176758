"""
The start-up check of C{--slurm-output-dir}: a tiny probe job writes a token
into the folder on a node; the server must then see it here.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import uuid

from twisted.internet.task import deferLater
from twisted.logger import Logger

from ...jobs.policy import JobReactor
from .commands import SlurmCommands
from .documents import SlurmError
from .outcomes import FINAL

#: The probe job's name (not C{jobworker-<id>}: no record is ever its).
PROBE_NAME = "jobworker-output-dir-probe"


class OutputDirProbe:
    """
    Submit a probe job that writes a token into the output folder, wait for
    it to end, and say whether the file arrived.

    @param options: the partition and account options jobs get.
    @param patience: seconds to wait for the probe to end (a busy cluster
        may queue it); then it is cancelled and nothing is concluded.
    """

    log = Logger()

    def __init__(
        self,
        reactor: JobReactor,
        commands: SlurmCommands,
        outputDir: str,
        options: list[str],
        interval: float = 1.0,
        patience: float = 300.0,
    ) -> None:
        self._reactor = reactor
        self._commands = commands
        self._outputDir = outputDir
        self._options = options
        self._interval = interval
        self._patience = patience

    async def run(self) -> tuple[bool, str | None]:
        """
        Probe once.

        @return: whether the probe could conclude (Slurm could not be
            reached, or the probe job did not end in time: logged, and
            not), and what is wrong (None: the folder is shared).
        """
        token = uuid.uuid4().hex
        path = os.path.join(self._outputDir, f".probe-{token}")
        try:
            slurmJobId = await self._commands.submit(
                [
                    f"--job-name={PROBE_NAME}",
                    "--output=/dev/null",
                    "--error=/dev/null",
                    "--no-requeue",
                    "--time=1",
                    *self._options,
                    # A shell line: the path quoted (it may hold a space).
                    f"--wrap=echo {token} > {shlex.quote(path)}",
                ],
                [],
            )
        except SlurmError as e:
            if e.unreachable:
                self.log.warn(
                    "--slurm-output-dir not checked yet: {error}", error=str(e)
                )
                return False, None
            # Sent as root: a cluster that refuses root's jobs
            # (DisableRootJobs) refuses it whatever the options, and said so
            # the server's own options were refused, degraded for good
            # while every user's job ran (Slurm user round 40). A user's
            # job refused over them says so instead (the executor's).
            self.log.warn(
                "--slurm-output-dir not checked: Slurm refused the probe job, "
                "sent as root with the server's own options ({options}): {error}",
                options=" ".join(self._options) or "no partition or account",
                error=str(e),
            )
            return True, None
        waited = 0.0
        while waited < self._patience:
            await deferLater(self._reactor, self._interval, lambda: None)
            waited += self._interval
            try:
                state = (await self._commands.states([slurmJobId])).get(slurmJobId)
            except SlurmError:
                continue
            if state is not None and state.state in FINAL:
                return True, self._conclude(
                    path, token, slurmJobId, state.state, state.node
                )
        self.log.warn(
            "--slurm-output-dir not checked: the probe job {slurm} did not "
            "end in {patience:g} s (queued?); cancelled",
            slurm=slurmJobId,
            patience=self._patience,
        )
        with contextlib.suppress(SlurmError):
            await self._commands.cancel(slurmJobId, PROBE_NAME)
        return False, None

    def _conclude(
        self, path: str, token: str, slurmJobId: str, state: str, node: str | None
    ) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                seen = f.read().strip()
            os.unlink(path)
        except OSError:
            seen = None
        if seen == token:
            self.log.info(
                "--slurm-output-dir {path} is shared with the nodes (probe job "
                "{slurm} on {node} wrote to it)",
                path=self._outputDir,
                slurm=slurmJobId,
                node=node,
            )
            return None
        problem = (
            f"--slurm-output-dir {self._outputDir} is not shared with the nodes: "
            f"the probe job {slurmJobId} ended {state} on {node or 'no node'} "
            "but what it wrote there never appeared here (jobs would fail to "
            "launch, or their output would be lost)"
        )
        self.log.error("{problem}", problem=problem)
        return problem
