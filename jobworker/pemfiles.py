"""
Certificate, key and CA files, read as neither side may be hung or flooded
by one: a regular file of at most L{MAX_PEM_BYTES}, never waited on (the
server's and jw's alike). Without OpenSSL: jw's short commands start
without it.
"""

from __future__ import annotations

import os
import stat

from .jobs.folders import readAtMost
from .tlserrors import TLSConfigError

#: The most a certificate, key or CA file may hold (a CA bundle of a
#: system's, some 200 KiB, fits): /dev/zero filled the memory (the server's,
#: and jw's as C{--ca}).
MAX_PEM_BYTES = 4 << 20


def readPEM(path: str, what: str) -> bytes:
    """
    The bytes of C{path}, a regular file (a symlink to one is followed) of
    at most L{MAX_PEM_BYTES}: a FIFO (C{--ca <(...)}, or a typo naming one)
    is not waited on (one hung the server's thread for good, a SIGHUP's
    reload included), a device not read.

    @param what: what the file is, as the message names it ("CA certificate").
    @raise TLSConfigError: it cannot be read, is no regular file, or is too
        big; the message says which, in one line.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TLSConfigError(f"cannot read {what} {path}: not a regular file")
        data = readAtMost(fd, MAX_PEM_BYTES)
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PEM_BYTES:
        raise TLSConfigError(f"{what} {path} is over {MAX_PEM_BYTES >> 20} MiB")
    return data
