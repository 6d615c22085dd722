"""The Telegram assistant's per-chat state, in-process: bounded for thousands of idle chats."""

from __future__ import annotations

import asyncio

import telegram_bot
from chatcore.inbox import Inbox
from chatcore.settings import load_settings
from chatcore.store import SessionStore


def test_idle_conversations_are_evicted_and_reloaded_from_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    settings = load_settings(
        {},
        {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test", "CHATBOT_LOCAL_PORTS": ""},
    )
    path = str(tmp_path / "telegram.db")
    store = SessionStore(path)
    assistant = telegram_bot.Assistant(settings, store, Inbox(path, store.db, store.lock))

    async def talk() -> None:
        first = assistant.state((1, None))
        first.chat._add_user("remember me")  # a message saved as a turn saves it (no model here)
        for chat_id in range(2, telegram_bot.MAX_LOADED + 200):
            assistant.state((chat_id, None))
        assert len(assistant.chats) <= telegram_bot.MAX_LOADED  # bounded
        assert (1, None) not in assistant.chats
        again = assistant.state((1, None))  # reloaded from SQLite when it talks again
        assert [m.content for m in again.chat.conversation.history] == ["remember me"]

    try:
        asyncio.run(talk())
    finally:
        assistant.workers.shutdown()
        store.close()
