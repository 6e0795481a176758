"""
The shared output folder of the Slurm executor: its top (and the batch
script's copy in it), and each job's folder with its argv and env files.
"""

from __future__ import annotations

import errno
import os
import stat
from importlib import resources

from twisted.logger import Logger

#: The batch script every job runs: exec the argv file with the env file.
WRAPPER = str(resources.files("jobworker").joinpath("data/slurm-exec.sh"))

log = Logger()


def prepareOutputDir(top: str, serverUid: int) -> str:
    """
    Make the top folder traversable but not listable by others (0711):
    each job's folder belongs to its owner, who must reach it on the
    node. Put in it a copy of the batch script that every account can
    read (sbatch reads it as the job's owner; the installed one may sit
    where they cannot).

    @return: the copy's path.
    @raise OSError: the folder cannot be made or written, or its path holds
        a backslash (which Slurm drops from an --output path).
    """
    if "\\" in top:
        raise OSError(
            errno.EINVAL,
            f"{top} holds a backslash, which Slurm drops from the output "
            "file names it is given (sbatch --output): choose a path without one",
        )
    os.makedirs(top, mode=0o711, exist_ok=True)
    mode = stat.S_IMODE(os.stat(top).st_mode)
    if mode != 0o711:
        os.chmod(top, 0o711)  # noqa: S103 (searchable, not listable)
        log.info(
            "--slurm-output-dir {path}: mode {old:o} changed to 711 "
            "(reachable, not listable, by the jobs' accounts)",
            path=top,
            old=mode,
        )
    if serverUid == 0:
        for folder in _ancestors(top):
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                log.warn(
                    "--slurm-output-dir {path}: {folder} is not searchable "
                    "by others (o+x), so jobs of mapped accounts cannot "
                    "reach their folders",
                    path=top,
                    folder=folder,
                )
                break
    with open(WRAPPER, "rb") as f:
        script = f.read()
    copy = os.path.join(top, "slurm-exec.sh")
    temporary = f"{copy}.{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with os.fdopen(os.open(temporary, flags, 0o644), "wb") as f:
        f.write(script)
    os.chmod(temporary, 0o644)  # whatever the umask
    os.replace(temporary, copy)
    return copy


def makeJobFolder(
    directory: str, owner: tuple[int, int] | None, files: dict[str, list[str]]
) -> None:
    """
    The job's folder (0700) and its argv and env files (0600, NUL
    separated), all given to C{owner} (uid, gid) if set: the files hold
    secrets, which the job reads, then removes.
    """
    os.mkdir(directory, 0o700)  # a new job id: never there before
    os.chmod(directory, 0o700)  # whatever the umask
    for path, items in files.items():
        _writeNulSeparated(path, items, owner)
    if owner is not None:
        os.chown(directory, *owner)


def removeSecrets(directory: str) -> None:
    """Remove a job's argv and env files, if still there."""
    for name in ("argv", "env"):
        path = os.path.join(directory, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=path, error=e.strerror)


def _ancestors(path: str) -> list[str]:
    """The folders above C{path}, from C{/} down."""
    found = []
    parent = os.path.dirname(path)
    while parent != path:
        found.append(parent)
        path, parent = parent, os.path.dirname(parent)
    return found[::-1]


def _writeNulSeparated(
    path: str, items: list[str], owner: tuple[int, int] | None = None
) -> None:
    """A new file (0600, given to C{owner} if set) of NUL-terminated items."""
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    with os.fdopen(fd, "wb") as f:
        if owner is not None:
            os.fchown(fd, *owner)
        f.write(b"".join(item.encode("utf-8") + b"\0" for item in items))
