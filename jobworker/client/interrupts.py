"""Ctrl-C, Ctrl-\\, SIGTERM and SIGHUP as events a running C{jw} command answers."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

#: The signals that interrupt C{jw}.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Interrupts:
    """
    The interrupts of one C{jw} run. The command in progress may
    L{handle} them itself (C{jw exec --follow} stops its job on the first);
    otherwise L{run<jobworker.client.cli.run>}'s default cancels the command
    (without a reactor: a C{KeyboardInterrupt}, see L{installWithoutReactor}).

    @ivar count: how many interrupts came so far.
    """

    def __init__(self) -> None:
        self.count = 0
        #: The first interrupt's name (C{SIGINT}, ...), once one came.
        self.first: str | None = None
        self._default: Callable[[str], None] | None = None
        self._handler: Callable[[str], None] | None = None
        self._queued: list[str] = []
        #: Whether signals wait for L{dispatch} (L{installWithoutReactor}).
        self.queueing = False
        #: Whether, while L{queueing}, one signal waits at most: the next
        #: stops the command at once (a user who insists is not made to
        #: wait out a request's timeout: session review 36).
        self.queueOne = False

    def _count(self, name: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = name

    @property
    def status(self) -> int:
        """
        The exit status of a command the interrupts ended, as a shell's for
        a command a signal ended: 128 + the first one's number (130 for
        Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
        """
        try:
            return 128 + signal.Signals[self.first or "SIGINT"].value
        except KeyError:
            return 128 + signal.SIGINT

    def handle(self, handler: Callable[[str], None] | None) -> None:
        """
        Answer the next interrupts with C{handler} (None: the default).
        Interrupts queued (L{installWithoutReactor}) while a handler was in
        force go to it first; those queued while none was wait for the next
        L{dispatch}, as a reactor would have run them after this call.
        """
        if self._handler is not None:
            self.dispatch()
        self._handler = handler

    def setDefault(self, handler: Callable[[str], None]) -> None:
        """What an interrupt does while no command L{handle}s it."""
        self._default = handler

    def fire(self, name: str) -> None:
        """An interrupt came (C{name}: C{SIGINT}, ...); tests call this."""
        self._count(name)
        handler = self._handler or self._default
        if handler is not None:
            handler(name)

    def install(self, reactor: Any) -> None:
        """Take over the real signals (once the reactor runs: it sets its own)."""

        def onSignal(number: int, frame: Any) -> None:
            reactor.callFromThread(self.fire, signal.Signals(number).name)

        for number in SIGNALS:
            signal.signal(number, onSignal)

    def installWithoutReactor(self) -> None:
        """
        Take over the real signals in a run with no reactor (from the main
        thread): a signal stops the command at once, as a
        C{KeyboardInterrupt}; while L{queueing}, it is queued instead, for
        the main thread to L{dispatch} when it next waits (it sets
        C{signal.set_wakeup_fd} to be woken), so that no handler runs in the
        middle of whatever the main thread was doing.
        """

        def onSignal(number: int, frame: Any) -> None:
            name = signal.Signals(number).name
            if self.queueing and not (self.queueOne and self._queued):
                self._queued.append(name)
                return
            for queued in self._queued:  # (came first)
                self._count(queued)
            self._queued.clear()
            self._count(name)
            raise KeyboardInterrupt(name)

        for number in SIGNALS:
            signal.signal(number, onSignal)

    def dispatch(self) -> None:
        """Answer the queued interrupts (L{installWithoutReactor}), in order."""
        while self._queued:
            self.fire(self._queued.pop(0))
