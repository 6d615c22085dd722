"""Where the programs keep their files, owner-only: directories 0700, files 0600 from the first byte.

Conversations hold whatever people paste into them, so nothing the programs write may be readable
by another user of the machine. Files are created with `os.open(..., 0o600)` (never created and
then changed); SQLite gives a database's `-wal` and `-shm` files the database file's own mode, so
creating the database 0600 covers them. Directories and files found with looser modes are
tightened, and the "chatbot.files" logger says so in one line (each front-end shows its records in
its own way; with no handler, Python writes warnings to stderr). On Windows, POSIX modes do not apply: files inherit
the ACL of the user's profile directories, which other ordinary users cannot read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from typing import IO

APP = "chatbot"
DIRECTORY_MODE, FILE_MODE = 0o700, 0o600


log = logging.getLogger("chatbot.files")
_checked: set[str] = set()  # paths already made private in this process


def user_dir(kind: str) -> str:
    """The platform's per-user directory of this kind ("data", "state", "cache", "log") for the app."""
    import platformdirs

    return str(getattr(platformdirs, f"user_{kind}_dir")(APP, appauthor=False))


def _tighten(path: str, mode: int, what: str) -> None:
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if os.name == "posix" and current & 0o077:
        try:
            os.chmod(path, mode)
            log.warning("%s %s was readable by other users (%04o): made owner-only (%04o)", what, path, current, mode)
        except OSError as exc:
            log.warning(
                "%s %s is readable by other users (%04o) and could not be changed: %s",
                what,
                path,
                current,
                exc.strerror,
            )


def private_dir(path: str) -> str:
    """Create `path` (and any missing parents up to the app's own directory) owner-only; tighten it if
    it exists with a looser mode. Returns the path."""
    path = os.path.abspath(path)
    if path in _checked:
        return path
    missing = []
    cursor = path
    while not os.path.isdir(cursor):
        missing.append(cursor)
        parent = os.path.dirname(cursor)
        if parent == cursor:
            break
        cursor = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIRECTORY_MODE)
    for directory in _own_directories(path):  # created above, or found with a looser mode
        _tighten(directory, DIRECTORY_MODE, "directory")
    _checked.add(path)
    return path


def _own_directories(path: str) -> list[str]:
    """`path` and its ancestors up to the one named for the app (…/chatbot for …/chatbot/log);
    nothing for a directory outside one (a --db the user chose: its directory is theirs)."""
    own = [path]
    cursor = path
    while os.path.basename(cursor) != APP:
        parent = os.path.dirname(cursor)
        if parent == cursor:
            return []
        cursor = parent
        own.append(cursor)
    return own


def private_file(path: str) -> str:
    """Make sure `path` exists owner-only (created 0600 if missing, tightened if looser)."""
    if path in _checked:
        return path
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        os.close(descriptor)
    except OSError:
        return path  # the caller's own open reports the problem in its words
    _tighten(path, FILE_MODE, "file")
    _checked.add(path)
    return path


def open_private(path: str, mode: str = "a") -> IO[str]:
    """open() for a text file the app writes: created 0600 (an existing file is truncated for "w")."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    descriptor = os.open(path, flags, FILE_MODE)
    if mode == "w" and os.name == "posix":
        os.fchmod(descriptor, FILE_MODE)  # an export written over an older file is private too
    return os.fdopen(descriptor, mode, encoding="utf-8")
