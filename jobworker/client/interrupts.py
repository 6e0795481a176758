"""Ctrl-C, SIGTERM and SIGHUP as events a running C{jw} command answers."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

#: The signals that interrupt C{jw}.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupts:
    """
    The interrupts of one C{jw} run. The command in progress may
    L{handle} them itself (C{jw exec --follow} stops its job on the first);
    otherwise L{run<jobworker.client.cli.run>}'s default cancels the command.

    @ivar count: how many interrupts came so far.
    """

    def __init__(self) -> None:
        self.count = 0
        self._default: Callable[[str], None] | None = None
        self._handler: Callable[[str], None] | None = None

    def handle(self, handler: Callable[[str], None] | None) -> None:
        """Answer the next interrupts with C{handler} (None: the default)."""
        self._handler = handler

    def setDefault(self, handler: Callable[[str], None]) -> None:
        """What an interrupt does while no command L{handle}s it."""
        self._default = handler

    def fire(self, name: str) -> None:
        """An interrupt came (C{name}: C{SIGINT}, ...); tests call this."""
        self.count += 1
        handler = self._handler or self._default
        if handler is not None:
            handler(name)

    def install(self, reactor: Any) -> None:
        """Take over the real signals (once the reactor runs: it sets its own)."""

        def onSignal(number: int, frame: Any) -> None:
            reactor.callFromThread(self.fire, signal.Signals(number).name)

        for number in SIGNALS:
            signal.signal(number, onSignal)
