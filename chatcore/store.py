"""Sessions: conversations saved in SQLite (WAL, versioned migrations, one process per session) and exports."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from .attachments import Attachment, Kind, human_size
from .conversation import Conversation, Message, Status
from .files import open_private, private_dir, private_file, user_dir
from .settings import DEFAULT_SYSTEM_PROMPT, Settings
from .usage import TurnStats, Usage

# Each entry moves the schema one version forward; PRAGMA user_version records where a file is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, model TEXT, host TEXT, system TEXT,
        created REAL NOT NULL, updated REAL NOT NULL, owner_pid INTEGER);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL, content TEXT NOT NULL, tokens INTEGER, created REAL NOT NULL,
        flags TEXT NOT NULL DEFAULT '');
    CREATE INDEX messages_by_session ON messages(session_id, id);
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        model TEXT, input_tokens INTEGER, output_tokens INTEGER, cost REAL, estimated INTEGER,
        ttft REAL, latency REAL, created REAL NOT NULL);
    """,
    """
    ALTER TABLE sessions ADD COLUMN summary TEXT;
    ALTER TABLE sessions ADD COLUMN summary_covers INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN token_key TEXT;
    ALTER TABLE turns ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE turns ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE turns ADD COLUMN finish_reason TEXT;
    ALTER TABLE turns ADD COLUMN sent_messages INTEGER;
    """,
    # Attachments live with their message: deleting the message (undo, clear, a deleted session)
    # deletes them, and secure_delete zeroes their pages (images included) like the text's.
    """
    CREATE TABLE attachments (
        id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, name TEXT NOT NULL, mime TEXT NOT NULL, data BLOB, text TEXT,
        size INTEGER NOT NULL DEFAULT 0, width INTEGER NOT NULL DEFAULT 0, height INTEGER NOT NULL DEFAULT 0,
        note TEXT NOT NULL DEFAULT '');
    CREATE INDEX attachments_by_message ON attachments(message_id, id);
    """,
    # What each user spent, one row per model call (chatcore/budget.py): no content, only amounts, so a
    # crash or a restart never resets a spending cap, and /clear (which deletes words) leaves it.
    """
    CREATE TABLE spending (
        id INTEGER PRIMARY KEY, user TEXT NOT NULL, at REAL NOT NULL, model TEXT,
        tokens INTEGER NOT NULL, tokens_estimated INTEGER NOT NULL, cost REAL, cost_estimated INTEGER NOT NULL);
    CREATE INDEX spending_by_user ON spending(user, at);
    """,
    # A conversation's own choices: its temperature, and which of model, system and temperature it
    # chose itself (the Telegram assistant keeps those over the configured defaults).
    """
    ALTER TABLE sessions ADD COLUMN temperature REAL;
    ALTER TABLE sessions ADD COLUMN chosen TEXT NOT NULL DEFAULT '';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SessionRow(NamedTuple):
    """One row of the sessions table, as find() reads it."""

    id: int
    name: str
    model: str | None
    host: str | None
    system: str | None
    summary: str | None
    summary_covers: int
    owner_pid: int | None  # the chatbot process that has the session open, if any


READ_ONLY_ERRORS = re.compile(r"readonly|read-only|unable to open|permission", re.I)


class StoreError(Exception):
    """The sessions database cannot be used; the message says why and what to do."""


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


F = TypeVar("F", bound=Callable[..., Any])


def writes(method: F) -> F:
    """A store method that writes: refused on a read-only database (under the lock, like every method)."""

    @functools.wraps(method)
    def checked(self: SessionStore, *args: Any, **kwargs: Any) -> Any:
        if self.readonly:
            raise StoreError(self.readonly_note)
        with self.lock:
            try:
                return method(self, *args, **kwargs)
            except self.sqlite3.Error as exc:  # locked by another program past the busy timeout, disk full
                raise StoreError(f"cannot save to {self.path}: {exc}") from exc

    return checked  # type: ignore[return-value]


def locked(method: F) -> F:
    """Run a store method under the store's lock: one connection serves many threads."""

    @functools.wraps(method)
    def under_lock(self: SessionStore, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return under_lock  # type: ignore[return-value]


class SessionStore:
    """Conversations in one SQLite file: WAL mode, a busy timeout, versioned migrations.

    A session is used by one process at a time: its `owner_pid` is claimed on open and
    released on close; a claim left by a dead process is taken over.
    """

    def __init__(self, path: str):
        import sqlite3

        self.path = path
        self.sqlite3 = sqlite3
        self.lock = threading.RLock()  # a transaction never interleaves with another thread's writes
        self.pid = os.getpid()
        self.readonly = False  # the file or its directory cannot be written: reading works, saving does not
        directory = os.path.dirname(os.path.abspath(path))
        try:
            private_dir(directory)
            for name in (path, path + "-wal", path + "-shm"):  # SQLite gives these the database's mode
                if name == path or os.path.exists(name):
                    private_file(name)
            self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 10000")
            self.db.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten, not left in free pages
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self.db.close()
                raise StoreError(
                    f"the sessions database {path} was written by a newer chatbot (schema "
                    f"{version}, this one knows {SCHEMA_VERSION}): upgrade chatbot or use --db"
                )
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate(version)
            self.readonly = not self._can_write()
        except sqlite3.OperationalError as exc:
            if not os.path.isfile(path) or not READ_ONLY_ERRORS.search(str(exc)):
                raise StoreError(f"cannot open the sessions database {path}: {exc}") from None
            self._open_read_only(path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the sessions database {path} is unreadable ({exc}): it was left untouched; use --db for another file"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot open the sessions database {path}: {exc.strerror or exc}") from None

    def _can_write(self) -> bool:
        """A real write, rolled back: in WAL mode a lock can succeed on a file that cannot be written."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                self.db.execute("ROLLBACK")
            return True
        except self.sqlite3.OperationalError:
            return False

    def _open_read_only(self, path: str) -> None:
        """A database that cannot be written (the file or its directory is read-only): open it for
        reading, without the write-ahead files if they cannot be created."""
        from urllib.parse import quote

        self.readonly = True
        for options in ("mode=ro", "immutable=1"):
            try:
                self.db = self.sqlite3.connect(
                    f"file:{quote(os.path.abspath(path))}?{options}",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                break
            except self.sqlite3.OperationalError:
                continue
        else:
            raise StoreError(f"cannot read the sessions database {path}: it is read-only and SQLite cannot open it")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"the sessions database {path} is read-only and needs an upgrade (schema {version}, "
                f"this chatbot uses {SCHEMA_VERSION}): make it writable once, or use --db"
            )

    @property
    def readonly_note(self) -> str:
        return f"the sessions database {self.path} is read-only: this conversation will not be saved"

    def _migrate(self, version: int) -> None:
        for number in range(version, SCHEMA_VERSION):
            # Each step and its version bump commit together, or not at all.
            self.db.execute("BEGIN IMMEDIATE")
            try:
                current = self.db.execute("PRAGMA user_version").fetchone()[0]
                if current == number:
                    for statement in MIGRATIONS[number].split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {number + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    @locked
    def close(self) -> None:
        try:
            if not self.readonly:
                self.db.execute("UPDATE sessions SET owner_pid = NULL WHERE owner_pid = ?", (self.pid,))
            self.db.close()
        except self.sqlite3.Error:
            pass

    # -- sessions ------------------------------------------------------------------

    @locked
    def find(self, name: str) -> SessionRow | None:
        row = self.db.execute(
            "SELECT id, name, model, host, system, summary, summary_covers, owner_pid FROM sessions WHERE name = ?",
            (name,),
        ).fetchone()
        return SessionRow(*row) if row else None

    @locked
    def latest(self) -> str | None:
        row = self.db.execute("SELECT name FROM sessions ORDER BY updated DESC, id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    @locked
    def open(self, name: str, model: str, host: str, system: str) -> tuple[int, bool]:
        """Create or claim a session; (id, existed). Raises StoreError if another process has it.
        On a read-only database an existing session is found (for reading) but not claimed."""
        if self.readonly:
            row = self.find(name)
            if row is None:
                raise StoreError(self.readonly_note)
            return row.id, True
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.find(name)
            now = time.time()
            if row is None:
                cursor = self.db.execute(
                    "INSERT INTO sessions (name, model, host, system, created, updated, owner_pid) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, model, host, system, now, now, self.pid),
                )
                session_id, existed = int(cursor.lastrowid or 0), False
            else:
                owner = row.owner_pid
                if owner and owner != self.pid and pid_alive(owner):
                    raise StoreError(f"session {name!r} is in use by another chatbot (pid {owner})")
                self.db.execute("UPDATE sessions SET owner_pid = ? WHERE id = ?", (self.pid, row.id))
                session_id, existed = row.id, True
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return session_id, existed

    @locked
    def drop_if_empty(self, session_id: int) -> None:
        """Forget a session that never got a message, so /sessions lists only real conversations."""
        if self.readonly:
            return
        self.db.execute(
            "DELETE FROM sessions WHERE id = ? AND owner_pid = ? AND NOT EXISTS "
            "(SELECT 1 FROM messages WHERE session_id = ?)",
            (session_id, self.pid, session_id),
        )

    @writes
    def take_over_claims(self) -> None:
        """Every session's claim becomes this process's. Only for a caller that owns the whole database
        (the Telegram assistant locks it at start-up): any claim left in it is stale, whatever its
        pid, even one a live unrelated process has been given since."""
        self.db.execute("UPDATE sessions SET owner_pid = ? WHERE owner_pid IS NOT NULL", (self.pid,))

    @locked
    def release(self, session_id: int) -> None:
        if self.readonly:
            return
        self.db.execute("UPDATE sessions SET owner_pid = NULL WHERE id = ? AND owner_pid = ?", (session_id, self.pid))

    @locked
    def load(self, session_id: int) -> tuple[Conversation, list[TurnStats], str]:
        row = self.db.execute(
            "SELECT system, summary, summary_covers, model FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        conversation = Conversation(row[0] or DEFAULT_SYSTEM_PROMPT, summary=row[1], summary_covers=row[2] or 0)
        history = conversation.history
        for row_id, role, content, tokens, token_key, created, flags in self.db.execute(
            "SELECT id, role, content, tokens, token_key, created, flags FROM messages "
            "WHERE session_id = ? ORDER BY id",
            (session_id,),
        ):
            history.append(
                Message(role, content, Status.parse(flags), (token_key, tokens) if token_key else None, created, row_id)
            )
        self._load_attachments(session_id, history)
        turns = [
            TurnStats(
                model, Usage(i or 0, o or 0, c or 0, r or 0, None, bool(e)), cost, ttft, latency or 0.0, sent or 0
            )
            for model, i, o, c, r, e, cost, ttft, latency, sent in self.db.execute(
                "SELECT model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, cost, "
                "ttft, latency, sent_messages FROM turns WHERE session_id = ? ORDER BY id",
                (session_id,),
            )
        ]
        return conversation, turns, row[3]

    @locked
    def load_choices(self, session_id: int) -> tuple[float | None, set[str]]:
        """The session's temperature (None: the configured one) and what it chose itself."""
        row = self.db.execute("SELECT temperature, chosen FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None, set()
        return row[0], {name for name in (row[1] or "").split(",") if name}

    def _load_attachments(self, session_id: int, history: list[Message]) -> None:
        by_row = {m.row_id: m for m in history}
        for message_id, kind, name, mime, data, text, size, width, height, note in self.db.execute(
            "SELECT a.message_id, a.kind, a.name, a.mime, a.data, a.text, a.size, a.width, a.height, a.note "
            "FROM attachments a JOIN messages m ON m.id = a.message_id WHERE m.session_id = ? ORDER BY a.id",
            (session_id,),
        ):
            message = by_row.get(message_id)
            if message is not None:
                message.attachments.append(
                    Attachment(Kind(kind), name, mime, bytes(data or b""), text or "", size, width, height, note)
                )

    @writes
    def add_message(self, session_id: int, message: Message) -> None:
        key, tokens = message.tokens if message.tokens else (None, None)
        in_transaction = self.db.in_transaction
        if message.attachments and not in_transaction:
            self.db.execute("BEGIN IMMEDIATE")  # the message and its attachments are saved together
        try:
            cursor = self.db.execute(
                "INSERT INTO messages (session_id, role, content, tokens, token_key, created, flags) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, message.role, message.content, tokens, key, message.created, message.status),
            )
            message.row_id = cursor.lastrowid
            if message.attachments and message.row_id is not None:
                self.add_attachments(message.row_id, message.attachments)
            self.db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))
            if message.attachments and not in_transaction:
                self.db.execute("COMMIT")
        except BaseException:
            if message.attachments and not in_transaction:
                self.db.execute("ROLLBACK")
            raise

    @writes
    def add_attachments(self, message_id: int, attachments: list[Attachment]) -> None:
        self.db.executemany(
            "INSERT INTO attachments (message_id, kind, name, mime, data, text, size, width, height, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (message_id, a.kind, a.name, a.mime, a.data or None, a.text, a.size, a.width, a.height, a.note)
                for a in attachments
            ],
        )

    @writes
    def update_message(self, message: Message) -> None:
        self.db.execute(
            "UPDATE messages SET content = ?, flags = ?, tokens = NULL WHERE id = ?",
            (message.content, message.status, message.row_id),
        )

    @writes
    def delete_messages(self, row_ids: list[int]) -> None:
        self.db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in row_ids])
        self.forget()

    @locked
    def forget(self) -> None:
        """After a delete: copy the write-ahead log into the database (where secure_delete has zeroed
        the freed text) and truncate it, so the deleted words are in neither file."""
        with contextlib.suppress(self.sqlite3.Error):  # another process is reading: its next checkpoint does the same
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @writes
    def clear(self, session_id: int) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
        self.db.execute("UPDATE sessions SET summary = NULL, summary_covers = 0 WHERE id = ?", (session_id,))
        self.db.execute("COMMIT")
        self.forget()

    @writes
    def add_usage(self, session_id: int, stats: TurnStats, finish_reason: str | None) -> None:
        usage = stats.usage
        self.db.execute(
            "INSERT INTO turns (session_id, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, "
            "cost, estimated, ttft, latency, finish_reason, sent_messages, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                stats.model,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
                stats.cost,
                int(usage.estimated),
                stats.ttft,
                stats.latency,
                finish_reason,
                stats.sent_messages,
                time.time(),
            ),
        )

    @writes
    def set_meta(self, session_id: int, **values: Any) -> None:
        for column, value in values.items():
            assert column in ("model", "system", "name", "temperature", "chosen")
            self.db.execute(f"UPDATE sessions SET {column} = ? WHERE id = ?", (value, session_id))

    @writes
    def save_summary(self, session_id: int, summary: str, covers: int) -> None:
        self.db.execute(
            "UPDATE sessions SET summary = ?, summary_covers = ? WHERE id = ?", (summary, covers, session_id)
        )

    @writes
    def rename(self, session_id: int, name: str) -> None:
        try:
            self.db.execute("UPDATE sessions SET name = ? WHERE id = ?", (name, session_id))
        except self.sqlite3.IntegrityError:
            raise StoreError(f"a session named {name!r} already exists") from None

    @writes
    def delete(self, name: str) -> bool:
        row = self.find(name)
        if row is None:
            return False
        if row.owner_pid and row.owner_pid != self.pid and pid_alive(row.owner_pid):
            raise StoreError(f"session {name!r} is in use by another chatbot (pid {row.owner_pid})")
        self.db.execute("DELETE FROM sessions WHERE id = ?", (row.id,))
        self.forget()
        return True

    @locked
    def listing(self) -> list[tuple[str, str, int, float, float | None]]:
        """(name, model, user turns, last used, cost) for every session, most recent first."""
        return self.db.execute(
            "SELECT s.name, s.model, "
            "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id AND m.role = 'user'), s.updated, "
            "(SELECT SUM(cost) FROM turns t WHERE t.session_id = s.id) "
            "FROM sessions s ORDER BY s.updated DESC, s.id DESC"
        ).fetchall()

    @locked
    def export(self, name: str) -> dict[str, Any]:
        row = self.find(name)
        if row is None:
            raise StoreError(f"no session named {name!r}: see --list-sessions")
        conversation, turns, model = self.load(row.id)
        return export_data(row.name, model, row.host, conversation, turns)

    @writes
    def import_session(self, data: dict[str, Any], name: str | None = None) -> str:
        if data.get("format") != "chatbot-session":
            raise StoreError("not a chatbot session export (expected the JSON that /save FILE.json writes)")
        name = name or data["name"]
        if self.find(name) is not None:
            raise StoreError(f"a session named {name!r} already exists")
        check_alternation([m.get("role") for m in data.get("messages", [])])
        session_id, _ = self.open(name, data.get("model") or "", data.get("host") or "", data.get("system") or "")
        self.db.execute("BEGIN IMMEDIATE")
        for m in data.get("messages", []):
            self.add_message(
                session_id,
                Message(
                    m["role"],
                    m["content"],
                    Status.parse(m.get("flags")),
                    (m["token_key"], m["tokens"]) if m.get("token_key") else None,
                    m.get("created") or time.time(),
                    attachments=[imported_attachment(a) for a in m.get("attachments") or []],
                ),
            )
        for t in data.get("turns", []):
            usage = Usage(
                t["input_tokens"],
                t["output_tokens"],
                t.get("cached_tokens", 0),
                t.get("reasoning_tokens", 0),
                None,
                t.get("estimated", False),
            )
            self.add_usage(
                session_id,
                TurnStats(
                    t["model"],
                    usage,
                    t.get("cost_usd"),
                    t.get("ttft"),
                    t.get("latency") or 0.0,
                    t.get("sent_messages") or 0,
                ),
                None,
            )
        if data.get("summary"):
            self.save_summary(session_id, data["summary"], data.get("summary_covers") or 0)
        self.db.execute("COMMIT")
        self.release(session_id)
        return name


def check_alternation(roles: list[Any]) -> None:
    """An imported history must be one the chat could have written: user and assistant turns taking
    turns, starting with the user (it may end with a user message awaiting its reply)."""
    for index, role in enumerate(roles):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise StoreError(
                f"not a valid conversation: message {index + 1} is {role!r} where {expected!r} was expected "
                f"(user and assistant messages take turns, starting with the user)"
            )


def export_data(
    name: str, model: str, host: str | None, conversation: Conversation, turns: list[TurnStats]
) -> dict[str, Any]:
    """A conversation as the JSON that /save and --export write and --import reads."""
    return {
        "format": "chatbot-session",
        "version": 1,
        "name": name,
        "model": model,
        "host": host,
        "system": conversation.system,
        "summary": conversation.summary,
        "summary_covers": conversation.summary_covers,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "created": m.created,
                "flags": m.status,
                "tokens": m.tokens[1] if m.tokens else None,
                "token_key": m.tokens[0] if m.tokens else None,
                **({"attachments": [exported_attachment(a) for a in m.attachments]} if m.attachments else {}),
            }
            for m in conversation.history
        ],
        "turns": [
            {
                "model": t.model,
                "input_tokens": t.usage.input_tokens,
                "output_tokens": t.usage.output_tokens,
                "cached_tokens": t.usage.cached_tokens,
                "reasoning_tokens": t.usage.reasoning_tokens,
                "estimated": t.usage.estimated,
                "cost_usd": t.cost,
                "ttft": t.ttft,
                "latency": t.latency,
                "sent_messages": t.sent_messages,
            }
            for t in turns
        ],
    }


def exported_attachment(attachment: Attachment) -> dict[str, Any]:
    """An attachment inline in the JSON export: an image's bytes in base64, the others' text."""
    exported: dict[str, Any] = {
        "kind": attachment.kind,
        "name": attachment.name,
        "mime": attachment.mime,
        "size": attachment.size,
    }
    if attachment.kind is Kind.IMAGE:
        exported.update(width=attachment.width, height=attachment.height)
        exported["data_base64"] = base64.b64encode(attachment.data).decode("ascii")
    else:
        exported["text"] = attachment.text
    if attachment.note:
        exported["note"] = attachment.note
    return exported


def imported_attachment(exported: dict[str, Any]) -> Attachment:
    try:
        return Attachment(
            Kind(exported["kind"]),
            str(exported["name"]),
            str(exported["mime"]),
            base64.b64decode(exported.get("data_base64") or ""),
            str(exported.get("text") or ""),
            int(exported.get("size") or 0),
            int(exported.get("width") or 0),
            int(exported.get("height") or 0),
            str(exported.get("note") or ""),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"an attachment in the export cannot be read ({type(exc).__name__}: {exc})") from None


def export_markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# {data['name']}",
        "",
        f"Model: {data['model']} · provider: {data['host']}",
        "",
        f"**System:** {data['system']}",
        "",
    ]
    for message in data["messages"]:
        mark = f" *({message['flags']})*" if message["flags"] else ""
        lines += [f"## {message['role'].capitalize()}{mark}", "", message["content"], ""]
        for attachment in message.get("attachments") or []:  # references only: the JSON export holds them
            lines += [f"> Attached: {attachment['name']} ({attachment['mime']}, {human_size(attachment['size'])})", ""]
    return "\n".join(lines)


def default_db_path(settings: Settings) -> str:
    return settings.db or os.path.join(user_dir("data"), "sessions.db")


def write_export(data: dict[str, Any], path: str) -> None:
    if path.endswith(".json"):
        text = json.dumps(data, indent=2, ensure_ascii=False)
    elif path.endswith((".md", ".markdown", ".txt")):
        text = export_markdown(data)
    else:
        raise ValueError("the file name must end in .json or .md")
    with open_private(os.path.expanduser(path), "w") as export_file:
        export_file.write(text + "\n")
