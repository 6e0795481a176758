"""jobworker: run Linux processes remotely over an authenticated HTTPS API."""

__version__ = "0.41.0"
