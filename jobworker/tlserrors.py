"""The one error of TLS set-up (a file that cannot be used), without Twisted."""

from __future__ import annotations


class TLSConfigError(ValueError):
    """A certificate or key cannot be used; the message says which and why."""


#: The alerts a server sends about the client's certificate (OpenSSL's
#: names, lower case, as both ssl and pyOpenSSL word them).
_CERTIFICATE_REFUSED = (
    "alert unknown ca",
    "alert bad certificate",
    "alert unsupported certificate",
    "alert certificate expired",
    "alert certificate revoked",
    "alert certificate unknown",
    "alert access denied",
)


def handshakeHint(text: str) -> str | None:
    """
    What a failed handshake's error text (C{ssl} or pyOpenSSL) says the
    server thought of the client's certificate, in words a user can act
    on; None: nothing of the sort.
    """
    text = text.lower()
    if "alert certificate required" in text:
        return (
            "the server requires a client certificate: give --cert and --key "
            "(JW_CERT, JW_KEY)"
        )
    if any(alert in text for alert in _CERTIFICATE_REFUSED):
        return (
            "the server refused the client certificate (not issued by its "
            "--client-ca for client use, or expired)"
        )
    return None
