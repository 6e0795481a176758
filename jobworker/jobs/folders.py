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


#: How a folder of a tree being removed is opened: never through a link.
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def removeTree(path: str) -> None:
    """
    Remove the folder C{path} and everything in it (already gone is fine),
    as C{shutil.rmtree} does, but without recursion: a job's own output
    folder (a Slurm job's is its account's) held 1,500 folders one in the
    other, and C{rmtree}'s C{RecursionError} was a 500 of C{DELETE}, and
    stopped every later clean-up at it (Slurm user round 38). Each folder
    is opened by its parent's descriptor, never through a symbolic link,
    and left by C{..} only if that is the folder it came from: two
    descriptors open at a time, whatever the depth.

    @raise OSError: something in it could not be removed (or a folder was
        moved while it was being removed).
    """
    try:
        fd = os.open(path, _FOLDER)
    except FileNotFoundError:
        return
    # Each folder on the way down: (its name in its parent, its identity,
    # the folders in it still to remove).
    frames: list[tuple[str, tuple[int, int], list[str]]] = []
    try:
        frames.append(("", _identity(fd), _emptied(fd)))
        while frames:
            name, _, pending = frames[-1]
            if pending:
                child = pending.pop()
                try:
                    inner = os.open(child, _FOLDER, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    os.unlink(child, dir_fd=fd)  # (no folder now: a link)
                    continue
                os.close(fd)
                fd = inner
                frames.append((child, _identity(fd), _emptied(fd)))
                continue
            frames.pop()
            if not frames:
                break
            parent = os.open("..", _FOLDER, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != frames[-1][1]:
                raise OSError(errno.ESTALE, f"a folder in {path} was moved meanwhile")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _identity(fd: int) -> tuple[int, int]:
    """A folder's device and inode."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _emptied(fd: int) -> list[str]:
    """Remove what the folder C{fd} holds but folders; their names."""
    folders = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return folders
