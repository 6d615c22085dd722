"""Nothing lost, one bot per database and token: the real bot process killed, stopped and doubled.

Each test starts its own bot (and its own fakes), since each ends it in its own way.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

from server import FakeServer, chat_reply
from telegram_server import TOKEN, FakeTelegram
from test_telegram import BOT, BotProcess, bot_env, final_texts, model_posts_for, started

DEFAULT_REPLY = "Hello from the test server."


def confirmed(telegram: FakeTelegram, update: dict) -> bool:
    """Telegram was told the update was received (a getUpdates asked past it)."""
    return any(int(c.params.get("offset") or 0) > update["update_id"] for c in telegram.calls_to("getUpdates"))


def history(db_path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(str(db_path))
    try:
        return db.execute("SELECT role, flags, content FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


def drafting(telegram: FakeTelegram, chat_id: int, needle: str = "word word word") -> bool:
    return any(needle in c.params["text"] for c in telegram.calls_to("sendMessageDraft", chat_id))


def test_sigkill_mid_reply_then_restart_answers_every_message_once_in_order(tmp_path, fakes):
    telegram, model = fakes
    db = tmp_path / "telegram.db"
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(db))
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("word " * 300, size=5, delay=0.05))
    telegram.send_text(101, "first question")
    telegram.wait_for(lambda: drafting(telegram, 101))
    telegram.send_text(101, "second question")
    third = telegram.send_text(101, "third question")
    telegram.wait_for(lambda: confirmed(telegram, third))  # Telegram will not deliver them again
    process.process.kill()
    process.process.wait(10)
    assert telegram.sent_texts(101) == []  # the user saw only a draft: no reply at all
    model.queue.clear()
    process = started(telegram, BotProcess(env))
    assert final_texts(telegram, 101, 3) == [DEFAULT_REPLY] * 3
    time.sleep(1.0)
    assert len(telegram.sent_texts(101)) == 3  # each answered once
    rows = history(db)
    assert [(role, flags) for role, flags, _ in rows] == [("user", ""), ("assistant", "")] * 3
    assert [content for role, _, content in rows if role == "user"] == [
        "first question",
        "second question",
        "third question",
    ]
    # In order, each with the exchange before it; the cut reply was regenerated, never sent on.
    assert [m["content"] for m in model_posts_for(model, "third question")[-1].body["messages"][1:]] == [
        "first question",
        DEFAULT_REPLY,
        "second question",
        DEFAULT_REPLY,
        "third question",
    ]
    assert process.stop() == 0, process.stderr


def test_sigterm_leaves_queued_messages_for_the_next_start(tmp_path, fakes):
    telegram, model = fakes
    db = tmp_path / "telegram.db"
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(db))
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("word " * 300, size=5, delay=0.05))
    telegram.send_text(102, "tell me a long story")
    telegram.wait_for(lambda: drafting(telegram, 102))
    queued = telegram.send_text(102, "and a short one after it")
    telegram.wait_for(lambda: confirmed(telegram, queued))
    assert process.stop(signal.SIGTERM) == 0, process.stderr
    [shown] = telegram.sent_texts(102)  # the running reply ended as before: partial, marked
    assert shown.startswith("word word")
    assert shown.endswith("⏹ Stopped.")
    assert not model_posts_for(model, "a short one")  # not answered during shutdown...
    process = started(telegram, BotProcess(env))
    texts = final_texts(telegram, 102, 2)  # ...but by the next start
    assert texts[1] == DEFAULT_REPLY
    sent = model_posts_for(model, "a short one")[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[-1]["content"] == "and a short one after it"
    time.sleep(1.0)
    assert len(telegram.sent_texts(102)) == 2  # the stopped reply was not answered again
    assert process.stop() == 0


def test_a_second_bot_on_the_same_database_exits_2_with_one_line(tmp_path, fakes):
    telegram, model = fakes
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(tmp_path / "telegram.db"))
    first = started(telegram, BotProcess(env))
    polls = len(telegram.calls_to("getUpdates"))
    second = subprocess.run([sys.executable, BOT], env=env, capture_output=True, text=True, timeout=30, cwd=env["HOME"])
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1, second.stderr
    assert "another chatbot-telegram" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert TOKEN not in second.stderr
    assert first.process.poll() is None  # the first one goes on
    telegram.send_text(103, "still there?")
    assert final_texts(telegram, 103) == [DEFAULT_REPLY]
    assert len(telegram.calls_to("getUpdates")) > polls
    assert first.stop() == 0


def test_a_session_claimed_by_a_live_unrelated_process_still_answers(tmp_path):
    from chatcore.conversation import Message
    from chatcore.store import SessionStore

    telegram, model = FakeTelegram(), FakeServer()
    db = tmp_path / "telegram.db"
    other = subprocess.Popen(["sleep", "60"])  # a live process that happens to have the old bot's pid
    try:
        store = SessionStore(str(db))
        session_id, _ = store.open("telegram-104", "test-model", "127.0.0.1", "You are helpful.")
        store.add_message(session_id, Message("user", "earlier question"))
        store.add_message(session_id, Message("assistant", "earlier answer"))
        store.db.execute("UPDATE sessions SET owner_pid = ?", (other.pid,))
        store.db.close()  # not store.close(): the claim stays, as a crash leaves it
        env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(db))
        process = started(telegram, BotProcess(env))
        telegram.send_text(104, "/stats")
        assert "Messages kept: 2" in final_texts(telegram, 104)[0]
        telegram.send_text(104, "and now?")
        final_texts(telegram, 104, 2)
        assert [m["content"] for m in model.posts[-1].body["messages"][1:]] == [
            "earlier question",
            "earlier answer",
            "and now?",
        ]
        assert process.stop() == 0
    finally:
        other.kill()
        other.wait()
        telegram.close()
        model.close()


def test_another_poller_on_the_token_stops_the_bot_with_one_line_and_exit_2(tmp_path, fakes):
    telegram, model = fakes
    process = started(telegram, BotProcess(bot_env(tmp_path / "h", telegram, model)))
    telegram.fail(
        "getUpdates",
        409,
        "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        times=1000,
    )
    assert process.process.wait(20) == 2
    process.reader.join(5)
    assert "another process is polling this bot token" in process.stderr
    assert "Traceback" not in process.stderr
    assert TOKEN not in process.stderr


def test_stats_after_a_fallback_names_the_model_that_answered(tmp_path, fakes):
    from server import error_status

    telegram, model = fakes
    env = bot_env(tmp_path / "h", telegram, model, OPENAI_FALLBACK_MODEL="backup-model")
    process = started(telegram, BotProcess(env))
    model.push(error_status(500, "boom"))  # the main model fails; the fallback answers
    telegram.send_text(105, "hello")
    assert final_texts(telegram, 105) == [DEFAULT_REPLY]
    assert model.posts[-1].body["model"] == "backup-model"
    telegram.send_text(105, "/stats")
    assert "Last reply by: backup-model" in final_texts(telegram, 105, 2)[1]
    assert process.stop() == 0


def test_a_group_reply_cut_by_a_crash_replaces_its_partial_message_after_restart(tmp_path, fakes):
    from telegram_server import BOT_USER

    telegram, model = fakes
    group = -1000042
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(tmp_path / "telegram.db"))
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("partial " * 300, size=5, delay=0.05))
    asked = telegram.send_text(group, f"@{BOT_USER['username']} a long answer please", user_id=101)
    telegram.wait_for(lambda: any("partial partial" in t for t in telegram.sent_texts(group)), timeout=20)
    telegram.wait_for(lambda: confirmed(telegram, asked))
    process.process.kill()
    process.process.wait(10)
    model.queue.clear()
    process = started(telegram, BotProcess(env))
    telegram.wait_for(lambda: telegram.sent_texts(group) == [DEFAULT_REPLY], timeout=20)
    time.sleep(1.0)
    assert telegram.sent_texts(group) == [DEFAULT_REPLY]  # the partial message now shows the reply
    assert process.stop() == 0
