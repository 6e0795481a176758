"""How a builder of the server says it cannot start: one error, one line."""

from __future__ import annotations

from typing import NoReturn


class StartupError(Exception):
    """The server cannot start; the message says why, in one line."""


def fatal(message: str) -> NoReturn:
    """A builder refuses to go on: reported by L{makeService}."""
    raise StartupError(message)
