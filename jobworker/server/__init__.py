"""The server: twistd options and services, the Klein API, HTTP plumbing."""
