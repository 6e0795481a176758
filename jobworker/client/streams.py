"""Where C{jw} writes: the job's output, results, and its own one-line messages."""

from __future__ import annotations

import array
import fcntl
import os
import stat
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

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
    os.dup2(devnull, sys.stdout.fileno())


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

    def say(self, line: str) -> None:
        """One line on C{messages}, whatever a server or job put in it."""
        self.messages.write(printable(line) + "\n")
        self.messages.flush()

    def show(self, text: str) -> None:
        """Text (lines, each ending in a newline) on C{out}."""
        self.out.write(text.encode("utf-8"))
        self.out.flush()

    def pipedInput(self) -> bool:
        """
        Whether C{inp} is a pipe or file with bytes waiting (data a user may
        think goes to the job). Never reads it.
        """
        if self.inp is None:
            return False
        try:
            fd = self.inp.fileno()
        except (AttributeError, OSError, ValueError):
            return bool(getattr(self.inp, "getvalue", lambda: b"")())
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                return os.fstat(fd).st_size > os.lseek(fd, 0, os.SEEK_CUR)
            if not stat.S_ISFIFO(mode):
                return False
            waiting = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, waiting)
            return waiting[0] > 0
        except OSError:
            return False

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
        return os.read(fd, size)

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

            return write
        target.flush()  # what was written before goes first

        def writeFd(data: bytes | memoryview) -> None:
            written = os.write(fd, data)
            while written < len(data):  # a signal may cut a write short
                written += os.write(fd, memoryview(data)[written:])

        return writeFd
