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
    return openRegular(path, flags | os.O_NOFOLLOW, 0o600)


def appendWhole(fd: int, data: bytes) -> None:
    """
    Append C{data} to the journal open as C{fd} (C{O_APPEND}, this server
    its only writer) in one write, whole or not at all. A full disk gives a
    short count, not ENOSPC: the part written is cut off again, so that no
    partial line is left for the next note to be glued onto.

    @raise OSError: it is not written whole (ENOSPC for a short count; the
        part written stays only if the file cannot be cut back).
    """
    written = os.write(fd, data)
    if written == len(data):
        return
    if written:
        try:
            os.ftruncate(fd, os.fstat(fd).st_size - written)
        except OSError:
            pass  # (the caller starts its next line on a fresh one)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class JournalTail:
    """
    The end of a journal appended to with L{appendWhole}: after an append
    that failed the file may end with part of its line (it could not be cut
    back), so the next starts on a fresh one (readers skip an empty line).
    """

    def __init__(self) -> None:
        self.cut = False

    def append(self, fd: int, line: bytes) -> None:
        """
        Append C{line} whole to the journal open as C{fd}.

        @raise OSError: it is not written whole.
        """
        try:
            appendWhole(fd, b"\n" + line if self.cut else line)
        except OSError:
            self.cut = True
            raise
        self.cut = False

    def fresh(self) -> None:
        """The journal was emptied, written anew or removed."""
        self.cut = False


def replaceJournal(path: str, data: bytes) -> None:
    """
    Write the journal C{path} anew: C{data} to C{path}.new, put in its
    place only once written whole (a full disk gives a short count, not
    ENOSPC, and a cut journal must not replace a good one).

    @raise OSError: it is not replaced (C{path} is as it was, and
        C{path}.new removed).
    """
    temporary = path + ".new"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = openRegular(temporary, flags, 0o600)
    try:
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def openRegular(path: str, flags: int, mode: int = 0o600) -> int:
    """
    C{path} opened with C{flags} (and C{O_NONBLOCK}: a FIFO is never waited
    on), if it is a regular file.

    @raise OSError: it cannot be opened, or is no regular file.
    """
    fd = os.open(path, flags | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EPERM, "not a regular file", path)
    except OSError:
        os.close(fd)
        raise
    return fd


def readAtMost(fd: int, limit: int) -> bytes:
    """
    What C{fd} holds, read to its end or past C{limit} bytes: a result
    longer than C{limit} means the file is too big (or grew while read).
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def openOutput(path: str) -> int:
    """
    A job's output file (or order file), for reading: never through a
    symlink, and only a regular file with one link. Where the job owns its
    folder (Slurm's shared output folder, written by the job itself) it
    could put a symlink or a hard link there to a file only root may read,
    or a FIFO that would hang the reader, and the server, root, served it.

    @raise OSError: it is none of the job's output (ELOOP for a symlink).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EPERM, "not the job's own output file", path)
    return fd


def journalLines(path: str) -> list[str]:
    """
    The lines of the journal C{path} (none if it is not there), read without
    waiting on what is no regular file.

    @raise OSError: it cannot be read.
    """
    try:
        with open(openOutput(path), encoding="ascii", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def removeJournal(path: str) -> None:
    """
    Remove the journal C{path}, if it is there.

    @raise OSError: it cannot be removed.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
