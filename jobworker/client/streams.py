"""Where C{jw} writes: the job's output, results, and its own one-line messages."""

from __future__ import annotations

import array
import fcntl
import os
import select
import stat
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, cast

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


def printable(text: str) -> str:
    """
    C{text} as it may reach a terminal: every character that is not
    printable (controls such as ESC and newline, format characters such as a
    right-to-left override, lone surrogates) shown as its Python escape, so
    job data cannot move the cursor, retitle the window or fake a line.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _stdoutToDevNull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)


def writeAll(out: BinaryIO, data: bytes) -> None:
    """
    Write all of C{data} to C{out}: a buffered stream may take part of it
    and say so by its count, not by an error (a reader gone after the first
    64 KiB; a non-blocking pipe another process left), and the rest was
    lost without a word, exit status 0 (new user round 29). A stream that
    cannot take more now is waited for.

    @raise OSError: it could not be written (C{BrokenPipeError}: the
        reader is gone).
    """
    view = memoryview(data)
    while view:
        try:
            written = out.write(view)
        except BlockingIOError as e:
            written = e.characters_written
            _writable(out)
        if written is None:  # (a raw non-blocking stream, full)
            _writable(out)
            continue
        view = view[written:]


def _writable(out: BinaryIO) -> None:
    """Wait until C{out} can take more."""
    select.select([], [out.fileno()], [])


class OutputFailed(Exception):
    """
    A write to C{jw}'s stdout or stderr failed for another reason than a
    reader gone (a full disk: ENOSPC, an I/O error): C{what} could not be
    written, C{strerror} says why. C{said}: jw has said so already.
    """

    def __init__(self, what: str, error: OSError, said: bool = False) -> None:
        self.what = what
        self.strerror = error.strerror or str(error)
        self.said = said
        super().__init__(self.line())

    def line(self) -> str:
        """What jw says of it."""
        return f"jw: cannot write {self.what}: {self.strerror}"


def _closedStandardStreams() -> list[str]:
    """
    The names of the standard streams the process was started without
    (C{jw <&-}, C{>&-}, C{2>&-}: Python made them None). Each one's file
    descriptor is given /dev/null, so that no file or socket jw opens
    later takes it (and job output or a password prompt goes there).
    """
    closed = []
    for fd, name, mode in (
        (0, "stdin", os.O_RDONLY),
        (1, "stdout", os.O_WRONLY),
        (2, "stderr", os.O_WRONLY),
    ):
        if getattr(sys, name) is not None:
            continue
        closed.append(name)
        try:
            os.fstat(fd)
            continue  # taken already (by what Python opened): leave it
        except OSError:
            pass
        devnull = os.open(os.devnull, mode)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
    return closed


@dataclass
class Streams:
    """
    Where the CLI writes: the process's stdout and stderr by default,
    in-memory buffers in tests.

    @ivar out: the job's stdout and every result.
    @ivar err: the job's stderr (C{exec --follow}, C{logs}).
    @ivar messages: C{jw}'s own one-line messages.
    @ivar abandonOut: called once C{out}'s reader has gone (a broken pipe),
        so that no later flush of C{out} fails.
    """

    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    err: BinaryIO = field(default_factory=lambda: sys.stderr.buffer)
    messages: TextIO = field(default_factory=lambda: sys.stderr)
    abandonOut: Callable[[], None] = _stdoutToDevNull
    inp: BinaryIO | None = field(default_factory=lambda: sys.stdin.buffer)
    #: The last byte of job output written where jw's own lines show too
    #: (L{_showsMessages}; a newline at first), in a cell that streams made
    #: from these share: jw's own line after one that is not begins a line
    #: of its own.
    lastShown: list[int] = field(default_factory=lambda: [10], init=False)
    #: C{jw -q}: jw's informational lines (L{tell}) are not said; its
    #: errors and warnings are (L{say}).
    quiet: bool = field(default=False, init=False)

    @classmethod
    def standard(cls) -> tuple[Streams, list[str]]:
        """
        The process's own streams, and the names of those it was started
        without (L{_closedStandardStreams}): a closed stdin is no input, a
        closed stderr swallows jw's messages, a closed stdout is the
        caller's to refuse.
        """
        closed = _closedStandardStreams()
        devnull = open(os.devnull, "w")  # for the process's life
        nowhere = cast(BinaryIO, devnull.buffer)
        return (
            cls(
                out=nowhere if "stdout" in closed else sys.stdout.buffer,
                err=nowhere if "stderr" in closed else sys.stderr.buffer,
                messages=devnull if "stderr" in closed else sys.stderr,
                inp=None if "stdin" in closed else sys.stdin.buffer,
            ),
            closed,
        )

    def say(self, line: str) -> None:
        """
        One line on C{messages}, whatever a server or job put in it; where
        the job's output left a line unfinished, on a line of its own: on a
        terminal (it read C{partialjw: job ... timed out}: new user round
        32), and in the file or pipe the output shares with it (C{> log
        2>&1}, C{2>&1 | tee log}: new user round 40). Only a writer whose
        output shows with these lines keeps the last byte (L{writer}).
        """
        text = printable(line) + "\n"
        last = self.lastShown
        if last[0] != 10:
            text = "\n" + text
        last[0] = 10
        self.messages.write(text)
        self.messages.flush()

    def tell(self, line: str) -> None:
        """
        One informational line (L{say}): what jw is doing or did, that a
        run which succeeds needs not say ("job ID started", "N shown, more
        exist", a wait's progress). Not said with C{jw -q}: cron mails any
        output, and C{2>/dev/null} hid jw's errors with them (new user
        round 41).
        """
        if not self.quiet:
            self.say(line)

    def show(self, text: str) -> None:
        """
        Text (lines, each ending in a newline) on C{out}.

        @raise OutputFailed: it could not be written (a reader gone is a
            C{BrokenPipeError}, as ever).
        """
        try:
            writeAll(self.out, _encoded(text))
            self.out.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputFailed("to stdout", e) from None

    def strayInput(self) -> bool:
        """
        Whether jw's stdin holds data a user may think goes to the job, who
        is to be told it does not (C{jw exec} without C{-i}). Never reads
        it.

        C{echo data | jw exec -- cat} and C{jw exec -- sort < file} are
        told: the data was handed to jw, and the user expects the job to
        get it. In C{while read x; do jw exec ...; done < list} (or C{cmd
        | while read ...}) what waits is the rest of the list, which the
        loop reads, not the job: jw rightly leaves it, and the warning on
        every pass but the last was noise that only C{</dev/null} on each
        call silenced (new user round 40). So:

          - a regular file, only if it is whole (at its first byte, and
            not empty): a loop's C{read} has moved it;
          - a pipe with bytes waiting, unless the process that started jw
            has it as its own stdin: a loop's shell reads it (a shell that
            hands jw data has its own stdin, the terminal, apart; the
            parent of a simple C{< file} holds it in dash, hence the
            offset for files).

        Neither "only on a terminal" (a terminal has nothing waiting) nor
        "once" (each call of a loop is a new jw) would tell these apart.
        """
        if self.inp is None:
            return False
        fd = self._inputFd()
        if fd is None:
            return bool(getattr(self.inp, "getvalue", lambda: b"")())
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                return os.lseek(fd, 0, os.SEEK_CUR) == 0 < os.fstat(fd).st_size
            if not stat.S_ISFIFO(mode):
                return False
            waiting = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, waiting)
        except OSError:
            return False
        return waiting[0] > 0 and not self._parentReads()

    def _parentReads(self) -> bool:
        """
        Whether jw's parent process has jw's stdin (the same device and
        inode) as its own stdin: it reads it (a loop). Not known (an
        in-memory stdin, no /proc, another user's parent): no.
        """
        fd = self._inputFd()
        parent = os.getppid()
        if fd is None or parent <= 1:
            return False
        try:
            ours, theirs = os.fstat(fd), os.stat(f"/proc/{parent}/fd/0")
        except OSError:
            return False
        return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)

    def readInput(self, reactor: Any, size: int) -> Deferred[bytes]:
        """
        Up to C{size} bytes of C{inp} (b"" at its end), read in a thread so
        the reactor goes on (a terminal or a pipe may block).
        """
        from twisted.internet.defer import succeed
        from twisted.internet.threads import deferToThreadPool

        if self._inputFd() is None:
            return succeed(self.readInputNow(size))
        return deferToThreadPool(
            reactor, reactor.getThreadPool(), self.readInputNow, size
        )

    def readInputNow(self, size: int) -> bytes:
        """Up to C{size} bytes of C{inp} (b"" at its end), blocking."""
        source = self.inp
        if source is None:
            return b""
        fd = self._inputFd()
        if fd is None:
            return source.read(size)
        while True:
            try:
                return os.read(fd, size)
            except BlockingIOError:
                # A stdin left non-blocking (by whoever shares it): waited
                # for here all the same (it ended the feed: new user round
                # 30).
                select.select([fd], [], [])

    def inputIsTerminal(self) -> bool:
        """Whether C{inp} is a terminal (someone types, or not, into it)."""
        fd = self._inputFd()
        return fd is not None and os.isatty(fd)

    def outputFd(self) -> int | None:
        """C{out}'s file descriptor (None: an in-memory stream)."""
        try:
            return self.out.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    def _inputFd(self) -> int | None:
        try:
            return None if self.inp is None else self.inp.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    def sharedDestination(self) -> bool:
        """
        Whether C{out} and C{err} end in one place (the same terminal, file
        or pipe: C{2>&1}), so the order of their bytes can be seen. When it
        cannot be told (in-memory streams), yes.
        """
        if self.out is self.err:
            return True
        try:
            one, two = os.fstat(self.out.fileno()), os.fstat(self.err.fileno())
        except (AttributeError, OSError, ValueError):
            return True
        return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)

    def _showsMessages(self, fd: int) -> bool:
        """
        Whether job output written to C{fd} shows where jw's own lines
        (C{messages}) do: the same file, pipe or terminal (its device and
        inode: C{> log 2>&1}, C{2>&1 | tee log}), or two terminals (as new
        user round 32 had it). In-memory messages show apart.
        """
        try:
            other = self.messages.fileno()
            if os.isatty(fd) and os.isatty(other):
                return True
            one, two = os.fstat(fd), os.fstat(other)
        except (AttributeError, OSError, ValueError):
            return False
        return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)

    def writer(self, stream: str) -> Callable[[bytes | memoryview], None]:
        """
        Write job output of C{stream} (C{stdout}/C{stderr}) as it comes:
        straight to the file descriptor when there is one (no copy into a
        buffer, whatever the size of the chunk). It takes bytes or a view
        of them (written before it returns).
        """
        target = self.err if stream == "stderr" else self.out
        try:
            fd = target.fileno()
        except (AttributeError, OSError, ValueError):

            def write(data: bytes | memoryview) -> None:
                target.write(data)
                target.flush()

            return _failingAsOutput(write)
        target.flush()  # what was written before goes first
        last = self.lastShown if self._showsMessages(fd) else None

        def writeFd(data: bytes | memoryview) -> None:
            view = memoryview(data)
            written = 0
            while written < len(view):  # (a signal may cut a write short)
                try:
                    written += os.write(fd, view[written:])
                except BlockingIOError:
                    # A descriptor another process left non-blocking, its
                    # reader slow: waited for, as writeAll does (it ended
                    # jw's output, "Resource temporarily unavailable":
                    # output review 38).
                    select.select([], [fd], [])
            if last is not None and written:
                last[0] = data[-1]

        return _failingAsOutput(writeFd)


def _failingAsOutput(
    write: Callable[[bytes | memoryview], None],
) -> Callable[[bytes | memoryview], None]:
    """
    C{write}, whose failures other than a reader gone (C{BrokenPipeError})
    are an L{OutputFailed}: a full disk is not a bug, and not a broken
    connection to the server either.
    """

    def writeOrSay(data: bytes | memoryview) -> None:
        try:
            write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputFailed("the job's output", e) from None

    return writeOrSay


class GatedStreams(Streams):
    """
    L{Streams} whose job output (L{writer}) is counted, and can be shut
    (L{shut}): what comes after is dropped, counted as not shown. Each
    writer counts in a cell of its own (each is written from one thread).
    """

    def __init__(self, streams: Streams) -> None:
        super().__init__(
            streams.out,
            streams.err,
            streams.messages,
            streams.abandonOut,
            streams.inp,
        )
        self.lastShown = streams.lastShown
        self.quiet = streams.quiet
        self._shown: list[list[int]] = []
        self.isShut = False

    @property
    def shown(self) -> int:
        """Bytes of the job's output written so far."""
        return sum(cell[0] for cell in self._shown)

    def shut(self) -> None:
        """Write no more job output (what comes is dropped)."""
        self.isShut = True

    def writer(self, stream: str) -> Callable[[bytes | memoryview], None]:
        write = super().writer(stream)
        cell = [0]
        self._shown.append(cell)

        def counted(data: bytes | memoryview) -> None:
            if self.isShut:
                return
            write(data)
            cell[0] += len(data)

        return counted


def _encoded(text: str) -> bytes:
    """
    C{text} as UTF-8; bytes that are not (a setting's, decoded with
    surrogateescape: a Latin-1 file name) as they were. C{jw config}
    failed on them, "unexpected error" (new user round 36). Any other lone
    surrogate (from JSON) is escaped.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")
