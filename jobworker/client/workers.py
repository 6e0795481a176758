"""
The concurrent parts of a C{jw} command without a reactor: worker threads
(each on its own connection), and the main thread waiting for them while it
answers Ctrl-C and friends. Nothing here imports Twisted.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .interrupts import SIGNALS, Interrupts


def startThread(target: Callable[..., None], *args: Any) -> None:
    """
    Run C{target(*args)} in a daemon thread that never takes the signals
    of L{SIGNALS}: the kernel gives them to the main thread, whose blocking
    wait they must interrupt (Python runs handlers only there).
    """
    before = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        threading.Thread(target=target, args=args, daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class Worker:
    """
    One piece of work in a daemon thread: a process that exits leaves it
    behind (a stop still waiting, a follower of a job jw left running).

    @ivar done: whether the work has ended (read from the main thread).
    """

    def __init__(
        self,
        work: Callable[[], Any],
        wake: Callable[[], None],
        onError: Callable[[Exception], None] | None = None,
    ) -> None:
        self.done = False
        self.onError = onError
        self._work = work
        self._wake = wake
        self._result: Any = None
        self._error: BaseException | None = None
        self._reported = False
        startThread(self._run)

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as e:  # handed to the main thread, raised there
            self._error = e
        finally:
            self.done = True
            self._wake()

    @property
    def error(self) -> BaseException | None:
        """The work's exception, once L{done} (None: it succeeded)."""
        return self._error

    def outcome(self) -> Any:
        """The work's result, or its exception raised (once L{done})."""
        self._reported = True
        if self._error is not None:
            raise self._error
        return self._result

    def report(self) -> None:
        """Hand a failure to C{onError}, once (in the main thread)."""
        if self.done and not self._reported and self.onError is not None:
            self._reported = True
            if isinstance(self._error, Exception):
                self.onError(self._error)


class Background:
    """
    The workers of one command, and the signals while they run: inside
    C{with Background(interrupts)}, signals are queued and wake L{wait},
    which answers them in the main thread (a handler the command set, else
    a C{KeyboardInterrupt}: the command stops); a worker that ends wakes it
    too.
    """

    def __init__(self, interrupts: Interrupts) -> None:
        self._interrupts = interrupts
        self._workers: list[Worker] = []
        # Never closed: a worker left behind may still write to it at exit.
        self._readFd, self._writeFd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def __enter__(self) -> Background:
        self._interrupts.installWithoutReactor()
        self._interrupts.setDefault(_stop)
        self._interrupts.queueing = True
        signal.set_wakeup_fd(self._writeFd)
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        signal.set_wakeup_fd(-1)
        self._interrupts.queueing = False
        if kind is None:
            self._interrupts.dispatch()  # none came unanswered

    def start(
        self,
        work: Callable[[], Any],
        onError: Callable[[Exception], None] | None = None,
    ) -> Worker:
        """Run C{work} in a worker; C{onError} hears of its failure."""
        worker = Worker(work, self._wake, onError)
        self._workers.append(worker)
        return worker

    def _wake(self) -> None:
        try:
            os.write(self._writeFd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def wait(self, until: Callable[[], bool], timeout: float | None = None) -> bool:
        """
        Answer interrupts and workers' failures in this (the main) thread
        until C{until()} is true (it is asked after each wake-up), or
        C{timeout} seconds have passed; whether C{until()} came true.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._interrupts.dispatch()
            for worker in self._workers:
                worker.report()
            if until():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            select.select([self._readFd], [], [], left)
            try:
                os.read(self._readFd, 4096)
            except BlockingIOError:
                pass


def _stop(name: str) -> None:
    """An interrupt no handler answers: the command stops (exit status 130)."""
    raise KeyboardInterrupt(name)
