"""jobworker's tests (trial)."""
