"""Why a file could not be read, in words: one message fragment per kind of failure.

Shared by the task, space and design files and the data files they name. Pure: standard library only.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sde_search import tasks
from sde_search.tasks import clip


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (messages are printed one problem per line)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8 and how to fix it (UTF-16 and UTF-32 are recognised by their byte-order mark)."""
    data = bytes(exc.object)
    # UTF-32's little-endian mark starts with UTF-16's, so it is tested first.
    marks = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
    found = next((name for mark, name in marks.items() if data.startswith(mark)), "")
    hint = f" (it looks like {found}: it starts with a byte-order mark)" if found else ""
    line = data[: exc.start].count(b"\n") + 1
    return f"not UTF-8 text{hint}: {exc.reason} at byte {exc.start} (line {line}); save the file as UTF-8"


def file_problem(exc: OSError, path: str | Path, wanted: str) -> str:
    """Why a file could not be opened, in words (``wanted`` names what was expected, e.g. "a YAML file")."""
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return f"file not found: a broken symbolic link (it points to {clip(os.readlink(path), 120)})"
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return f"is a folder, not {wanted}"
    if isinstance(exc, tasks.NotARegularFile):
        return f"is {exc.what}, not a regular file (reading it could block forever); give {wanted}"
    if isinstance(exc, PermissionError):
        return "cannot be read: permission denied (check the read permission of the file and its folders)"
    if exc.errno == errno.ELOOP:
        return "cannot be read: a symbolic link loop (the link leads back to itself)"
    return f"cannot be read ({clip(exc.strerror or str(exc))})"
