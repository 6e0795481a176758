"""User names: what the users file, tokens and queries accept (pure)."""

from __future__ import annotations

import re

#: A jobworker user name.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
