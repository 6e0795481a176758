"""How a builder of the server says it cannot start: one error, one line."""

from __future__ import annotations

import os
import shlex
import stat
from typing import NoReturn

from twisted.logger import Logger

log = Logger(namespace="jobworker.server.tap")

#: How L{secretFile} names the users file.
USERS_FILE = "the users file (password hashes)"


class StartupError(Exception):
    """The server cannot start; the message says why, in one line."""


def fatal(message: str) -> NoReturn:
    """A builder refuses to go on: reported by L{makeService}."""
    raise StartupError(message)


def secretFile(path: str, what: str) -> None:
    """L{secretFileProblem}, its warning logged."""
    warning = secretFileProblem(path, what)
    if warning is not None:
        log.warn("{problem}", problem=warning)


def secretFileProblem(path: str, what: str) -> str | None:
    """
    Refuse a file of secrets (a private key, the users file's password
    hashes) that other users may write, or that another user than root or
    the server's owns, as ssh refuses such a key: whoever could write it
    could put a user or a key of theirs there. If they may read it, the
    warning to give (None: none). Nothing is changed; a file that cannot be
    examined, or is no regular file, is left to its reader to report.

    @raise StartupError: it is refused.
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None  # (a device, a FIFO: its reader refuses it)
    shown = ascii(path)[1:-1]  # (a newline in it stays on the line)
    quoted = shlex.quote(path)
    if status.st_uid not in (0, os.geteuid()):
        fatal(
            f"{what} {shown} is owned by uid {status.st_uid}, who could rewrite "
            f"it: give it to root or to the server's user (chown)"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        fatal(
            f"{what} {shown} may be written by other users (mode {mode:04o}): "
            f"run chmod go-w {ascii(quoted)[1:-1]}"
        )
    folder = _openFolder(path)
    if folder is not None:
        fatal(
            f"{what} {shown} is in {ascii(folder)[1:-1]}, where other users may "
            "put a file of theirs in its place: run chmod go-w (or +t) on it"
        )
    if mode & 0o044:
        return (
            f"{what} {shown} is readable by other users (mode {mode:04o}): run "
            f"chmod 600 {ascii(quoted)[1:-1]}"
        )
    return None


def _openFolder(path: str) -> str | None:
    """
    The first folder on the way to C{path} (as named, and where its
    symlinks lead) that other users may write without the sticky bit, or
    that another user than root or the server's owns; None if none.
    """
    seen: set[str] = set()
    for start in (os.path.abspath(path), os.path.realpath(path)):
        folder = os.path.dirname(start)
        while folder not in seen:
            seen.add(folder)
            try:
                status = os.stat(folder)
            except OSError:
                return None  # (the file's reader says why)
            open_ = status.st_mode & 0o022 and not status.st_mode & stat.S_ISVTX
            if open_ or status.st_uid not in (0, os.geteuid()):
                return folder
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    return None
