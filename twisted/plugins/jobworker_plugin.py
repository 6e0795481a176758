"""twistd dropin for ``twistd -n jobworker --tls``: L{jobworker.server.tap}."""

from twisted.application.service import ServiceMaker

jobworker = ServiceMaker(
    "jobworker",
    "jobworker.server.tap",
    "Remote job execution server: HTTPS REST API over TLS 1.3.",
    "jobworker",
)
