"""The state dir's private folders, made as they are needed, and its journals."""

from __future__ import annotations

import errno
import os
import stat


def privateFolder(path: str) -> None:
    """
    Make the folder C{path}, and each missing one above it, mode 0700 (as
    far as the umask lets): C{os.makedirs} gives those above the leaf the
    default mode, so a jobs folder removed under a running server came
    back 0755.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent in ("", path):
            raise  # (a relative path from a working folder that is gone)
        privateFolder(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass


def openJournal(path: str) -> int:
    """
    A journal of the state dir (C{deleted-output}, C{leftovers}) opened for
    appending, 0600: never waiting on what is no regular file (a FIFO there
    held the reactor for good), nor following a symlink.

    @raise OSError: it cannot be opened, or is no regular file.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EPERM, "not a regular file", path)
    except OSError:
        os.close(fd)
        raise
    return fd
