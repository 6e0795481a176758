"""The one error of TLS set-up (a file that cannot be used), without Twisted."""

from __future__ import annotations


class TLSConfigError(ValueError):
    """A certificate or key cannot be used; the message says which and why."""
