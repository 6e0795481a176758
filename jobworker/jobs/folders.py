"""The state dir's private folders, made as they are needed."""

from __future__ import annotations

import os


def privateFolder(path: str) -> None:
    """
    Make the folder C{path}, and each missing one above it, mode 0700 (as
    far as the umask lets): C{os.makedirs} gives those above the leaf the
    default mode, so a jobs folder removed under a running server came
    back 0755.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        privateFolder(os.path.dirname(path))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
