"""
The CA, certificate and key files jw is given, read as the server reads its
own (L{jobworker.tls}): a regular file of at most L{MAX_PEM_BYTES}, never
waited on. Without OpenSSL: the short commands start without it.
"""

from __future__ import annotations

import os
import stat

from ..jobs.folders import readAtMost
from ..tlserrors import TLSConfigError

#: The most a certificate, key or CA file may hold: C{jobworker.tls}'s bound
#: (a test checks they agree). C{/dev/zero} as C{--ca} filled the memory.
MAX_PEM_BYTES = 4 << 20


def readPEM(path: str, what: str) -> bytes:
    """
    The bytes of C{path}, a regular file (a symlink to one is followed) of
    at most L{MAX_PEM_BYTES}: a FIFO (C{--ca <(...)}, or a typo naming one)
    is not waited on, a device not read.

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
