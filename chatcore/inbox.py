"""The inbox: every message a front-end has been handed, in SQLite before its source is told it arrived.

A chat service that confirms what it delivered (Telegram's getUpdates offset) forgets a message as
soon as it is confirmed, usually long before it is answered. The inbox is the front-end's own
record: a message is written here first, marked `done` once it is settled (answered, or decided
not to be answered), and on start-up every message still `pending` is handed back, in order.

A row keeps what is needed to answer again: the update as received (its `payload`), which
conversation it belongs to, and, once a turn began, the history row of the user message that turn
added (so a reply cut by a crash can be taken back out and regenerated) and the chat message the
reply was being streamed into (so the regenerated reply replaces the partial one there). A settled row keeps
only its ids, so a message delivered twice is recognised: its text is deleted at once (with
`secure_delete`, the words are overwritten, not left in free pages).

It also holds the lock that makes one process the owner of a database (`lock_database`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .files import private_file

if TYPE_CHECKING:  # sqlite3 is imported when an inbox is opened: importing the engine does nothing
    import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    update_id INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    message_id INTEGER,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    user_row INTEGER,
    reply_message INTEGER,
    received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_by_message ON inbox(conversation, message_id);
"""
KEEP_SETTLED = 3 * 24 * 3600  # seconds: Telegram redelivers an unconfirmed update for 24 hours


@dataclass
class Received:
    """One message in the inbox."""

    update_id: int
    conversation: str
    message_id: int | None
    payload: str
    user_row: int | None
    reply_message: int | None  # the message its reply was being streamed into, if any


class DatabaseInUse(Exception):
    """Another process owns the database."""


def lock_database(path: str) -> int:
    """Make this process the database's only user: an exclusive lock on `PATH.lock`, held until exit.

    Returns the lock file's descriptor (keep it open). Raises DatabaseInUse naming the other process."""
    import fcntl

    lock_path = private_file(path + ".lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
        os.close(descriptor)
        raise DatabaseInUse(other) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    return descriptor


class Inbox:
    """Received messages in an SQLite file (the front-end's own database): thread-safe, one process."""

    def __init__(self, path: str, connection: sqlite3.Connection | None = None, lock: Any = None):
        """Open the inbox in the database at `path`; or share a connection already open on it (and the
        lock that guards it), so that two connections of one process never wait on each other's writes."""
        import sqlite3

        self.sqlite3 = sqlite3
        self.lock = lock or threading.Lock()
        self.owned = connection is None
        if connection is None:
            private_file(path)
            connection = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA busy_timeout = 10000")
            connection.execute("PRAGMA secure_delete = ON")
            connection.execute("PRAGMA journal_mode = WAL")
        self.db = connection
        with self.lock:
            self.db.executescript(SCHEMA)
            self.db.execute("DELETE FROM inbox WHERE state = 'done' AND received < ?", (time.time() - KEEP_SETTLED,))

    def record(self, received: list[tuple[int, str, int | None, str]]) -> set[int]:
        """Write down (update_id, conversation, message_id, payload) rows in one transaction; returns
        the ids that were new (the others were delivered before)."""
        new: set[int] = set()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for update_id, conversation, message_id, payload in received:
                    cursor = self.db.execute(
                        "INSERT OR IGNORE INTO inbox (update_id, conversation, message_id, payload, received) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (update_id, conversation, message_id, payload, time.time()),
                    )
                    if cursor.rowcount:
                        new.add(update_id)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return new

    def started(self, update_ids: list[int], user_row: int | None) -> None:
        """A turn for these messages added this user message to the history."""
        with self.lock:
            self.db.executemany(
                "UPDATE inbox SET user_row = ? WHERE update_id = ?", [(user_row, i) for i in update_ids]
            )

    def streamed(self, update_ids: list[int], message_id: int) -> None:
        """The reply to these messages is being streamed into this chat message (edited as it grows)."""
        with self.lock:
            self.db.executemany(
                "UPDATE inbox SET reply_message = ? WHERE update_id = ?", [(message_id, i) for i in update_ids]
            )

    def done(self, update_ids: list[int]) -> None:
        """Settled: never handed back again; the text is deleted."""
        with self.lock:
            self.db.executemany(
                "UPDATE inbox SET state = 'done', payload = '' WHERE update_id = ?", [(i,) for i in update_ids]
            )

    def settled(self, update_ids: list[int]) -> set[int]:
        """Which of these were settled already."""
        with self.lock:
            return {
                i
                for i in update_ids
                if self.db.execute("SELECT 1 FROM inbox WHERE update_id = ? AND state = 'done'", (i,)).fetchone()
            }

    def pending(self) -> list[Received]:
        """Every message not settled, oldest first."""
        with self.lock:
            rows = self.db.execute(
                "SELECT update_id, conversation, message_id, payload, user_row, reply_message FROM inbox "
                "WHERE state = 'pending' ORDER BY update_id"
            ).fetchall()
        return [Received(*row) for row in rows]

    def user_row_of(self, conversation: str, message_id: int) -> int | None:
        """The history row of the user message a chat message became (the latest turn for it)."""
        with self.lock:
            row = self.db.execute(
                "SELECT user_row FROM inbox WHERE conversation = ? AND message_id = ? AND user_row IS NOT NULL "
                "ORDER BY update_id DESC LIMIT 1",
                (conversation, message_id),
            ).fetchone()
        return row[0] if row else None

    def forget(self, conversation: str) -> None:
        """A conversation was cleared: nothing of it is handed back, no text of it stays."""
        with self.lock:
            self.db.execute(
                "UPDATE inbox SET state = 'done', payload = '', user_row = NULL WHERE conversation = ?", (conversation,)
            )
            with contextlib.suppress(self.sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        if not self.owned:
            return  # the connection's owner closes it
        with contextlib.suppress(self.sqlite3.Error):
            self.db.close()
