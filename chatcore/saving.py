"""Where a chat writes each change to its conversation: one session of a store, or nowhere.

A chat with no store holds `NOT_SAVED`, whose writes do nothing, so the chat's code says what
changes and never whether it is being saved.
"""

from __future__ import annotations

from typing import Any

from .attachments import Attachment
from .conversation import Message
from .store import SessionStore
from .usage import TurnStats


class SavedSession:
    """One session in a SessionStore, claimed by this process."""

    def __init__(self, store: SessionStore, session_id: int):
        self.store, self.id = store, session_id

    def add(self, message: Message) -> None:
        self.store.add_message(self.id, message)

    def update(self, message: Message) -> None:
        if message.row_id is not None:
            self.store.update_message(message)

    def attach(self, message: Message, attachments: list[Attachment]) -> None:
        """More attachments for a saved message (two unanswered messages merged into one)."""
        if message.row_id is not None:
            self.store.add_attachments(message.row_id, attachments)

    def delete(self, messages: list[Message]) -> None:
        rows = [m.row_id for m in messages if m.row_id is not None]
        if rows:
            self.store.delete_messages(rows)

    def clear(self) -> None:
        self.store.clear(self.id)

    def set_meta(self, **values: Any) -> None:
        self.store.set_meta(self.id, **values)

    def save_summary(self, summary: str, covers: int) -> None:
        self.store.save_summary(self.id, summary, covers)

    def add_usage(self, stats: TurnStats, finish_reason: str | None) -> None:
        self.store.add_usage(self.id, stats, finish_reason)

    def rename(self, name: str) -> None:
        self.store.rename(self.id, name)

    def leave(self) -> None:
        """Let go of the session: an empty one is not kept, and the claim is released."""
        self.store.drop_if_empty(self.id)
        self.store.release(self.id)


class NotSaved(SavedSession):
    """A conversation kept in memory only: every write is a no-op."""

    def __init__(self) -> None:
        pass

    def add(self, message: Message) -> None:
        pass

    def update(self, message: Message) -> None:
        pass

    def attach(self, message: Message, attachments: list[Attachment]) -> None:
        pass

    def delete(self, messages: list[Message]) -> None:
        pass

    def clear(self) -> None:
        pass

    def set_meta(self, **values: Any) -> None:
        pass

    def save_summary(self, summary: str, covers: int) -> None:
        pass

    def add_usage(self, stats: TurnStats, finish_reason: str | None) -> None:
        pass

    def rename(self, name: str) -> None:
        pass

    def leave(self) -> None:
        pass


NOT_SAVED = NotSaved()
