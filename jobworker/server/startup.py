"""How a builder of the server says it cannot start: one error, one line."""

from __future__ import annotations

import os
import stat
from typing import NoReturn

from twisted.logger import Logger

log = Logger(namespace="jobworker.server.tap")


class StartupError(Exception):
    """The server cannot start; the message says why, in one line."""


def fatal(message: str) -> NoReturn:
    """A builder refuses to go on: reported by L{makeService}."""
    raise StartupError(message)


def secretFile(path: str, what: str) -> None:
    """
    Refuse a file of secrets (a private key, the users file's password
    hashes) that other users may write, or that another user than root or
    the server's owns, as ssh refuses such a key: whoever could write it
    could put a user or a key of theirs there. Warn if they
    may read it. Nothing is changed; a file that cannot be examined, or is
    no regular file, is left to its reader to report.
    """
    try:
        status = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(status.st_mode):
        return  # (a device, a FIFO: its reader refuses it)
    if status.st_uid not in (0, os.geteuid()):
        fatal(
            f"{what} {path} is owned by uid {status.st_uid}, who could rewrite "
            f"it: give it to root or to the server's user (chown)"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        fatal(
            f"{what} {path} may be written by other users (mode {mode:04o}): "
            f"run chmod go-w {path}"
        )
    if mode & 0o044:
        log.warn(
            "{what} {path} is readable by other users (mode {mode}): run "
            "chmod 600 {path}",
            what=what,
            path=path,
            mode=f"{mode:04o}",
        )
