"""The local executor: processes, cgroups, the sandbox."""
