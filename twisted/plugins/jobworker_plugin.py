"""twistd dropin for ``twistd -n jobworker --tls``; the code is in L{jobworker.tap}."""

from twisted.application.service import ServiceMaker

jobworker = ServiceMaker(
    "jobworker",
    "jobworker.tap",
    "Remote job execution server: HTTPS REST API over TLS 1.3.",
    "jobworker",
)
