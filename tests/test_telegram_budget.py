"""Spending caps in the Telegram assistant (#22): the real bot process against the fake Bot API and the
fake model server (which counts the requests it gets), with the spending in the bot's own SQLite
file. Prices are configured at a cent a token, so a reply of 40 + 10 tokens costs $0.50."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from server import chat_reply
from telegram_server import BOT_USER
from test_attachments_files import png
from test_telegram import BotProcess, bot_env, final_texts, started
from test_telegram import fresh_queue as fresh_queue  # autouse: the model's queue emptied around every test
from test_telegram_attachments import photo_sizes

GROUP = -1000042
OWNER = 150
PRICED = {
    "INPUT_PRICE_PER_MILLION": "10000",
    "OUTPUT_PRICE_PER_MILLION": "10000",
    "TELEGRAM_BUDGET_DAILY": "0.5",
    "TELEGRAM_BUDGET_MONTHLY": "2",
    "TELEGRAM_ADMINS": f"{OWNER},@Boss",
}


def half_a_dollar(text: str = "an answer") -> object:
    return chat_reply(text, prompt_tokens=40, completion_tokens=10)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("telegram-budget-home")


@pytest.fixture(scope="module")
def bot(telegram, model, home):
    process = started(telegram, BotProcess(bot_env(home, telegram, model, **PRICED)))
    yield process
    assert process.stop() == 0, process.stderr
    assert "Traceback" not in process.stderr


def database(home) -> str:
    return str(next(home.rglob("telegram.db")))


def rows(home, sql: str, *args: object) -> list[tuple]:
    with closing(sqlite3.connect(database(home))) as connection:
        return connection.execute(sql, args).fetchall()


def test_the_caps_are_said_once_in_the_log_at_start(bot):
    lines = [line for line in bot.lines if "spending caps per user" in line]
    assert len(lines) == 1
    assert "$0.5000 daily, $2.0000 monthly (UTC days and months; TELEGRAM_ADMINS exempt)" in lines[0]


def test_past_the_daily_cap_a_polite_note_and_no_model_call(bot, telegram, model, home):
    model.push(half_a_dollar("the first answer"))
    telegram.send_text(121, "first")
    assert final_texts(telegram, 121) == ["the first answer"]
    asked = len(model.posts)
    update = telegram.send_text(121, "second")
    [_, note] = final_texts(telegram, 121, 2)
    assert note.startswith("Sorry, you've reached your daily spending limit: ~$0.5000 used of $0.5000 (estimated).")
    assert "It resets at 00:00 UTC, in " in note
    assert len(model.posts) == asked  # the model was not called
    telegram.wait_for(lambda: rows(home, "SELECT state FROM inbox WHERE update_id = ?", update["update_id"]))
    assert rows(home, "SELECT state FROM inbox WHERE update_id = ?", update["update_id"]) == [("done",)]
    history = rows(
        home, "SELECT m.content FROM messages m JOIN sessions s ON s.id = m.session_id WHERE s.name = ?", "telegram-121"
    )
    assert history == [("first",), ("the first answer",)]  # the refused message is not kept
    telegram.send_text(121, "/stats")
    stats = final_texts(telegram, 121, 3)[2]
    assert "Left today: ~$0 of $0.5000 (~ estimated) · resets 00:00 UTC" in stats
    assert "Left this month: ~$1.5000 of $2.0000 (~ estimated)" in stats


def test_past_the_cap_a_photo_is_not_even_downloaded(bot, telegram, model):
    model.push(half_a_dollar())
    telegram.send_text(127, "spend it")
    final_texts(telegram, 127)
    asked, fetched = len(model.posts), len(telegram.calls_to("getFile"))
    telegram.send_text(127, None, photo=photo_sizes(telegram, png(64, 64)), caption="and this?")
    [_, note] = final_texts(telegram, 127, 2)
    assert "daily spending limit" in note
    assert len(telegram.calls_to("getFile")) == fetched  # nothing fetched, nothing transcribed
    assert len(model.posts) == asked


def test_an_edit_past_the_cap_keeps_the_exchange_it_would_have_redone(bot, telegram, model, home):
    model.push(half_a_dollar("the answer"))
    update = telegram.send_text(128, "the question")
    final_texts(telegram, 128)
    asked = len(model.posts)
    telegram.edit(update, "the question, edited")
    [_, note] = final_texts(telegram, 128, 2)
    assert "daily spending limit" in note
    assert len(model.posts) == asked
    history = rows(
        home, "SELECT m.content FROM messages m JOIN sessions s ON s.id = m.session_id WHERE s.name = ?", "telegram-128"
    )
    assert history == [("the question",), ("the answer",)]


def test_the_cap_is_per_user_across_all_chats(bot, telegram, model):
    model.push(half_a_dollar("in the group"))
    telegram.send_text(GROUP, f"@{BOT_USER['username']} spend it here", user_id=122, first_name="Bea")
    assert final_texts(telegram, GROUP)[-1] == "in the group"
    asked = len(model.posts)
    telegram.send_text(122, "and now in private")
    [note] = final_texts(telegram, 122)
    assert "daily spending limit" in note
    telegram.send_text(GROUP, f"@{BOT_USER['username']} my turn", user_id=123, first_name="Cy")
    final_texts(telegram, GROUP, len(telegram.sent_texts(GROUP)) + 1)
    assert len(model.posts) == asked + 1  # another member of the group is not capped by Bea's spending


def test_the_owners_are_exempt_and_stats_says_so(bot, telegram, model):
    for text in ("one", "two", "three"):
        model.push(half_a_dollar(f"answer {text}"))
        telegram.send_text(OWNER, text)
    assert final_texts(telegram, OWNER, 3) == ["answer one", "answer two", "answer three"]
    telegram.send_text(OWNER, "/stats")
    stats = final_texts(telegram, OWNER, 4)[3]
    assert "Spending cap: none for you (the bot's owners, TELEGRAM_ADMINS, are exempt)" in stats
    for text in ("one", "two"):  # an owner named by @username (matched as TELEGRAM_ALLOWED_USERS is)
        model.push(half_a_dollar(f"answer {text}"))
        telegram.send_text(129, text, username="boss")
    assert final_texts(telegram, 129, 2) == ["answer one", "answer two"]


def test_a_reported_cost_counts_exactly_and_an_estimate_is_labelled(bot, telegram, model):
    model.push(chat_reply("reported", prompt_tokens=40, completion_tokens=10, usage_extra={"cost": 0.1}))
    telegram.send_text(124, "what does it cost?")
    final_texts(telegram, 124)
    telegram.send_text(124, "/stats")
    stats = final_texts(telegram, 124, 2)[1]
    assert "Left today: $0.4000 of $0.5000 · resets 00:00 UTC" in stats  # the provider's own figure
    assert "Left this month: $1.9000 of $2.0000" in stats
    model.push(chat_reply("no usage", usage="absent"))
    telegram.send_text(124, "/clear")  # a short prompt: at a cent a token, the history alone would pass the cap
    final_texts(telegram, 124, 3)
    telegram.send_text(124, "and without usage?")
    assert final_texts(telegram, 124, 4)[3] == "no usage"
    telegram.send_text(124, "/stats")
    stats = final_texts(telegram, 124, 5)[4]
    assert "Left today: ~$" in stats  # the estimated tokens are priced: an estimate, and labelled
    assert "(~ estimated)" in stats


def test_what_was_spent_yesterday_does_not_count_today(bot, telegram, model, home):
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = (midnight - timedelta(seconds=60)).timestamp()  # 23:59 UTC yesterday: $0.60, over a day's cap
    with closing(sqlite3.connect(database(home))) as connection:
        connection.execute(
            "INSERT INTO spending (user, at, model, tokens, tokens_estimated, cost, cost_estimated) "
            "VALUES ('125', ?, 'test-model', 60, 0, 0.6, 0)",
            (yesterday,),
        )
        connection.commit()
    model.push(chat_reply("a new answer", prompt_tokens=5, completion_tokens=5))  # $0.10
    telegram.send_text(125, "a new day")
    assert final_texts(telegram, 125) == ["a new answer"]  # answered: today's cap is fresh
    telegram.send_text(125, "/stats")
    stats = final_texts(telegram, 125, 2)[1]
    assert "Left today: ~$0.4000 of $0.5000" in stats
    same_month = (midnight - timedelta(seconds=60)).month == now.month
    assert (
        "Left this month: ~$1.3000 of $2.0000" in stats
    ) == same_month  # yesterday counts toward the month, if it was this one


def test_a_stopped_reply_is_counted(bot, telegram, model, home):
    model.push(chat_reply("word " * 300, size=5, delay=0.05))
    telegram.send_text(126, "talk")
    telegram.wait_for(lambda: any("word word" in c.params["text"] for c in telegram.calls_to("sendMessageDraft", 126)))
    telegram.send_text(126, "/cancel")
    assert final_texts(telegram, 126)[0].endswith("⏹ Stopped.")
    telegram.wait_for(lambda: rows(home, "SELECT tokens, tokens_estimated FROM spending WHERE user = '126'"))
    [(tokens, estimated)] = rows(home, "SELECT tokens, tokens_estimated FROM spending WHERE user = '126'")
    assert tokens > 0
    assert estimated == 1


# -- bots of their own: a restart, a local server without prices -----------------------------------


def test_token_caps_for_unknown_prices_and_a_restart_keeps_the_spending(tmp_path, fakes):
    telegram, model = fakes
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_BUDGET_DAILY="0.5", TELEGRAM_BUDGET_DAILY_TOKENS="100")
    process = started(telegram, BotProcess(env))
    assert "spending caps per user: 100 tokens daily" in process.stderr
    assert "only the token caps apply: TELEGRAM_BUDGET_DAILY is in USD" in process.stderr
    model.push(chat_reply("a local answer", prompt_tokens=100, completion_tokens=20))
    telegram.send_text(101, "hello local model")
    assert final_texts(telegram, 101) == ["a local answer"]
    assert process.stop() == 0, process.stderr
    process = started(telegram, BotProcess(env))  # restarted: the spending is still there
    telegram.send_text(101, "again")
    [_, note] = final_texts(telegram, 101, 2)
    assert note.startswith("Sorry, you've reached your daily token limit: 120 tokens used of 100 tokens.")
    assert len(model.posts) == 1
    assert process.stop() == 0, process.stderr


def test_a_dollar_cap_without_prices_is_no_cap_and_the_log_says_so_once(tmp_path, fakes):
    telegram, model = fakes
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_BUDGET_DAILY="0.01")
    process = started(telegram, BotProcess(env))
    for text in ("one", "two"):
        model.push(chat_reply(f"answer {text}", prompt_tokens=4000, completion_tokens=1000))
        telegram.send_text(101, text)
    assert final_texts(telegram, 101, 2) == ["answer one", "answer two"]
    telegram.send_text(101, "/stats")
    assert "Spending cap: none" in final_texts(telegram, 101, 3)[2]
    assert process.stop() == 0, process.stderr
    said = [line for line in process.lines if "no spending cap" in line]
    assert len(said) == 1
    assert "TELEGRAM_BUDGET_DAILY is in USD, and prices at 127.0.0.1" in said[0]


def test_a_spending_row_the_database_refuses_still_delivers_the_paid_reply_and_still_counts(tmp_path, fakes):
    telegram, model = fakes
    db = tmp_path / "telegram.db"
    process = started(telegram, BotProcess(bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(db), **PRICED)))
    with closing(sqlite3.connect(db)) as connection:  # the table refuses every row, as a failing disk would
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON spending BEGIN SELECT RAISE(FAIL, 'disk I/O error'); END"
        )
        connection.commit()
    model.push(half_a_dollar("the paid answer"))
    telegram.send_text(131, "first")
    assert final_texts(telegram, 131) == ["the paid answer"]  # the call was made and paid for: it is shown
    telegram.send_text(131, "second")
    [_, note] = final_texts(telegram, 131, 2)
    assert "daily spending limit: ~$0.5000 used of $0.5000" in note  # counted all the same, in memory
    assert len(model.posts) == 1
    with closing(sqlite3.connect(db)) as connection:  # the database takes rows again
        connection.execute("DROP TRIGGER refuse")
        connection.commit()
    model.push(half_a_dollar("the owner's answer"))
    telegram.send_text(OWNER, "a call of anyone's")
    assert final_texts(telegram, OWNER) == ["the owner's answer"]
    assert process.stop() == 0, process.stderr
    with closing(sqlite3.connect(db)) as connection:  # what was kept in memory was written with the next call
        saved = connection.execute("SELECT user, tokens FROM spending ORDER BY id").fetchall()
    assert saved == [("131", 50), (str(OWNER), 50)]
    said = [line for line in process.lines if "spending not saved" in line]
    assert len(said) == 1
    assert "disk I/O error" in said[0]
    assert "Traceback" not in process.stderr


def test_a_group_reply_cut_by_a_crash_and_past_the_cap_on_restart_becomes_the_note(tmp_path, fakes):
    from test_telegram_delivery import confirmed

    telegram, model = fakes
    db = tmp_path / "telegram.db"
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(db), **PRICED)
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("word " * 300, size=5, delay=0.05))
    update = telegram.send_text(GROUP, f"@{BOT_USER['username']} a long story", user_id=132, first_name="Di")
    telegram.wait_for(lambda: any(text.startswith("word word") for text in telegram.sent_texts(GROUP)))
    telegram.wait_for(lambda: confirmed(telegram, update))
    telegram.wait_for(lambda: rows(tmp_path, "SELECT 1 FROM inbox WHERE reply_message IS NOT NULL"))
    process.process.kill()  # SIGKILL mid-reply: the group shows half a reply
    process.process.wait(10)
    with closing(sqlite3.connect(db)) as connection:  # meanwhile Di's other chats spent the day's cap
        connection.execute(
            "INSERT INTO spending (user, at, model, tokens, tokens_estimated, cost, cost_estimated) "
            "VALUES ('132', ?, 'test-model', 60, 0, 0.6, 0)",
            (datetime.now(UTC).timestamp(),),
        )
        connection.commit()
    process = started(telegram, BotProcess(env))
    telegram.wait_for(lambda: any("spending limit" in text for text in telegram.sent_texts(GROUP)))
    time.sleep(1.0)
    [shown] = telegram.sent_texts(GROUP)  # the half reply became the note: none is left behind
    assert shown.startswith("Sorry, you've reached your daily spending limit: $0.6000 used of $0.5000.")
    assert process.stop() == 0, process.stderr


def test_a_long_paste_that_alone_would_pass_the_cap_is_not_sent_and_the_note_says_why(bot, telegram, model):
    model.push(chat_reply("a cheap answer", prompt_tokens=10, completion_tokens=5))  # $0.15 of $0.50
    telegram.send_text(133, "hi")
    assert final_texts(telegram, 133) == ["a cheap answer"]
    asked = len(model.posts)
    telegram.send_text(133, "word " * 800)  # ~800 tokens: about $8 before a word of the reply
    [_, note] = final_texts(telegram, 133, 2)
    assert note.startswith(  # past both caps: the one that resets last is named
        "Sorry, this message would take you past your monthly spending limit: ~$0.1500 used of $2.0000 "
        "(estimated), and sending it (with the conversation so far) would cost about $"
    )
    assert "A shorter message, or /clear first, costs less. The limit resets on 1 " in note
    assert len(model.posts) == asked
    model.push(chat_reply("still answered", prompt_tokens=2, completion_tokens=2))
    telegram.send_text(133, "/clear")
    final_texts(telegram, 133, 3)
    telegram.send_text(133, "ok")  # a short message on a fresh conversation fits in what is left ($0.35)
    assert final_texts(telegram, 133, 4)[3] == "still answered"


def test_an_edit_into_a_paste_the_cap_refuses_keeps_the_exchange_it_would_have_redone(bot, telegram, model, home):
    model.push(chat_reply("a cheap answer", prompt_tokens=10, completion_tokens=5))  # $0.15 of $0.50
    update = telegram.send_text(134, "the question")
    final_texts(telegram, 134)
    asked = len(model.posts)
    telegram.edit(update, "word " * 800)  # the early check passes; the prompt alone would pass the cap
    [_, note] = final_texts(telegram, 134, 2)
    assert "would take you past" in note
    assert len(model.posts) == asked
    history = rows(
        home, "SELECT m.content FROM messages m JOIN sessions s ON s.id = m.session_id WHERE s.name = ?", "telegram-134"
    )
    assert history == [("the question",), ("a cheap answer",)]
