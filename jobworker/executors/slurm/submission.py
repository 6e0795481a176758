"""The sbatch command line of one job (pure)."""

from __future__ import annotations

import math

from ...jobs.limits import Limits
from ...jobs.placement import SlurmRequest
from ...jobs.records import JobRecord


def jobName(jobId: str) -> str:
    """The Slurm job name of job C{jobId}: how a Slurm job is known as ours."""
    return f"jobworker-{jobId}"


def sbatchOptions(
    record: JobRecord,
    directory: str,
    stdout: str,
    slurmLog: str,
    limits: Limits,
    timeout: float | None,
    partition: str | None,
    account: str | None,
    slurm: SlurmRequest | None = None,
) -> list[str]:
    """
    The options of the job's C{sbatch} (each one argv element); the job's
    own C{slurm} choices (already allowed) before the server's defaults.
    """
    options = [
        f"--job-name={jobName(record.id)}",
        # For Slurm's administrators (one argv element: no shell splits it).
        f"--comment=jobworker user={record.owner} job={record.id}",
        f"--output={filenamePattern(stdout)}",
        # Slurm's own messages (slurmstepd's "*** JOB N CANCELLED ***");
        # the job's stderr is the wrapper's -E file.
        f"--error={filenamePattern(slurmLog)}",
        # (No pattern: --chdir and the script's arguments are taken as is.)
        f"--chdir={directory}",
        "--export=ALL",
        # A requeued job would run again untracked, truncating its output.
        "--no-requeue",
        "--open-mode=append",
    ]
    if limits.memory_bytes is not None:
        options.append(f"--mem={math.ceil(limits.memory_bytes / (1 << 20))}M")
    if limits.cpu_millicores is not None:
        options.append(f"--cpus-per-task={math.ceil(limits.cpu_millicores / 1000)}")
    if timeout is not None:
        options.append(f"--time={math.ceil(timeout / 60)}")
    if slurm is not None:
        partition = slurm.partition or partition
        account = slurm.account or account
        for name in ("qos", "gres", "constraint", "nodes", "ntasks"):
            value = getattr(slurm, name)
            if value is not None:
                options.append(f"--{name}={value}")
        if slurm.exclusive:
            options.append("--exclusive")
    return options + placementOptions(partition, account)


def filenamePattern(path: str) -> str:
    """
    C{path} as sbatch's --output and --error take it: a filename pattern,
    where C{%x} is the job's name and C{%%} a C{%}. (A backslash would turn
    the patterns off, and be dropped: L{folders.prepareOutputDir} refuses
    one.)
    """
    return path.replace("%", "%%")


def placementOptions(partition: str | None, account: str | None) -> list[str]:
    """Where the server's jobs go: its partition and account, if set."""
    options = []
    if partition is not None:
        options.append(f"--partition={partition}")
    if account is not None:
        options.append(f"--account={account}")
    return options


def batchScript(
    wrapper: str, cwd: str | None, stderr: str, argvFile: str, envFile: str
) -> list[str]:
    """
    The batch script and its arguments: the wrapper execs the argv file,
    its stderr to C{stderr} (Slurm's own messages go to sbatch's --error).
    """
    script = [wrapper]
    if cwd is not None:
        script += ["-C", cwd]
    return [*script, "-E", stderr, argvFile, envFile]
