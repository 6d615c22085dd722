"""Spending caps (#22), the engine's side: what a user spent today and this month, counted from every
model call a Chat makes, and the decision whether the next call may go. The clock is injected, so
a day or a month ends when the test says; the calls are real (the SDK against the test server)
and the spending lives in a real SQLite file."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime

import pytest
from conftest import cancel_once_asked
from server import chat_reply, error_status

from chatcore.budget import Budget, OverBudget, Payer, caps_in_force
from chatcore.chat import Chat
from chatcore.provider import Failure
from chatcore.settings import resolve_settings
from chatcore.store import SessionStore
from chatcore.turn import Cancel
from chatcore.usage import TurnStats, Usage

pytestmark = pytest.mark.usefixtures("chat_env")  # the request log and caches land in the test's own home
ADA = Payer("101")
CENT_A_TOKEN = {"price_in": "10000", "price_out": "10000"}  # USD per million tokens: $0.01 a token


def at(text: str) -> float:
    """Seconds since the epoch of a UTC time written as 2026-03-15 23:50."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: str):
        self.now = at(start)

    def __call__(self) -> float:
        return self.now

    def set(self, text: str) -> None:
        self.now = at(text)


def settings_for(base_url: str = "http://127.0.0.1:9/v1", **given: str):
    flags = {"base_url": base_url, "model": "test-model", "retries": "0", **given}
    return resolve_settings(flags, {}, {})


@pytest.fixture
def chat_env(env, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def store(tmp_path):
    database = SessionStore(str(tmp_path / "telegram.db"))
    yield database
    database.close()


def spend(budget: Budget, cost: float | None, tokens: int = 50, payer: Payer = ADA, reported: bool = True) -> None:
    """A model call's figures as Chat._account hands them over."""
    stats = TurnStats("test-model", Usage(tokens - 10, 10), cost, 0.1, 0.5, 2)
    budget.record(payer, stats, reported=reported)


def test_the_daily_cap_resets_at_midnight_utc_and_the_monthly_one_on_the_first(store):
    clock = Clock("2026-03-15 23:50")
    settings = settings_for(telegram_budget_daily="0.5", telegram_budget_monthly="1", **CENT_A_TOKEN)
    budget = Budget(settings, store, clock)
    budget.check(ADA)  # nothing spent yet
    spend(budget, 0.6)
    with pytest.raises(OverBudget) as refused:
        budget.check(ADA)
    note = str(refused.value)
    assert "daily spending limit" in note
    assert "$0.6000 used of $0.5000" in note
    assert "at 00:00 UTC, in 10 min" in note
    clock.set("2026-03-16 00:00")  # a new UTC day: the daily cap starts again, the month goes on
    budget.check(ADA)
    standing = budget.standing(ADA)
    assert standing.lines() == [
        "Left today: $0.5000 of $0.5000 · resets 00:00 UTC",
        "Left this month: $0.4000 of $1.0000 · resets 1 April 00:00 UTC",
    ]
    spend(budget, 0.45)
    with pytest.raises(OverBudget) as refused:
        budget.check(ADA)
    assert "monthly spending limit" in str(refused.value)
    assert "$1.0500 used of $1.0000" in str(refused.value)
    assert "on 1 April at 00:00 UTC, in 16 days" in str(refused.value)
    clock.set("2026-03-31 23:59")
    with pytest.raises(OverBudget):
        budget.check(ADA)
    clock.set("2026-04-01 00:00")  # a new month
    budget.check(ADA)
    assert budget.standing(ADA).lines()[1] == "Left this month: $1.0000 of $1.0000 · resets 1 May 00:00 UTC"


def test_both_caps_reached_names_the_one_that_resets_last(store):
    clock = Clock("2026-12-30 12:00")
    budget = Budget(
        settings_for(telegram_budget_daily="0.5", telegram_budget_monthly="0.5", **CENT_A_TOKEN), store, clock
    )
    spend(budget, 0.7)
    note = budget.standing(ADA).note()
    assert "monthly spending limit" in note
    assert "on 1 January at 00:00 UTC" in note  # December ends the year


def test_spending_is_per_user_and_survives_a_restart(tmp_path):
    path = str(tmp_path / "telegram.db")
    clock = Clock("2026-05-05 10:00")
    settings = settings_for(telegram_budget_daily="0.5", **CENT_A_TOKEN)
    first = SessionStore(path)
    spend(Budget(settings, first, clock), 0.5)
    first.close()
    again = SessionStore(path)  # the process was restarted (or killed: every call is committed as it is made)
    try:
        budget = Budget(settings, again, clock)
        with pytest.raises(OverBudget):
            budget.check(ADA)
        budget.check(Payer("102"))  # another user has spent nothing
    finally:
        again.close()


def test_the_owners_are_exempt_and_still_counted(store):
    budget = Budget(settings_for(telegram_budget_daily="0.5", **CENT_A_TOKEN), store, Clock("2026-05-05 10:00"))
    owner = Payer("150", exempt=True)
    spend(budget, 3.0, payer=owner)
    budget.check(owner)
    standing = budget.standing(owner)
    assert standing.reached is None
    assert standing.lines() == ["Spending cap: none for you (the bot's owners, TELEGRAM_ADMINS, are exempt)"]
    assert standing.spent[0].spent == pytest.approx(3.0)


def test_a_local_server_without_prices_is_capped_in_tokens_or_not_at_all_and_says_so(store):
    local = "http://127.0.0.1:11434/v1"
    caps, notes = caps_in_force(settings_for(local, telegram_budget_daily="0.5", telegram_budget_daily_tokens="100"))
    assert [(c.unit, c.limit) for c in caps] == [("tokens", 100)]
    assert notes[0] == "spending caps per user: 100 tokens daily (UTC days and months; TELEGRAM_ADMINS exempt)"
    assert notes[1].startswith("only the token caps apply: TELEGRAM_BUDGET_DAILY is in USD, and prices at 127.0.0.1")
    caps, notes = caps_in_force(settings_for(local, telegram_budget_daily="0.5"))
    assert caps == ()
    assert len(notes) == 1
    assert notes[0].startswith("no spending cap: TELEGRAM_BUDGET_DAILY is in USD")
    caps, notes = caps_in_force(settings_for(local, telegram_budget_daily="0.5", **CENT_A_TOKEN))
    assert [(c.unit, c.limit) for c in caps] == [("usd", 0.5)]  # prices configured: dollars again
    assert caps_in_force(settings_for(local)) == ((), [])  # nothing set: nothing to say
    budget = Budget(settings_for(local, telegram_budget_daily_tokens="100"), store, Clock("2026-05-05 10:00"))
    spend(budget, None, tokens=60)
    assert budget.standing(ADA).lines() == ["Left today: 40 tokens of 100 tokens · resets 00:00 UTC"]
    spend(budget, None, tokens=60)
    assert "daily token limit: 120 tokens used of 100 tokens" in budget.standing(ADA).note()


# -- through a Chat: every model call counts, and none is made past a cap ----------------------


def spending_rows(store: SessionStore) -> list[tuple]:
    with closing(sqlite3.connect(store.path)) as connection:
        return connection.execute(
            "SELECT user, tokens, tokens_estimated, cost, cost_estimated FROM spending ORDER BY id"
        ).fetchall()


def budget_chat(server, store, clock: Clock | None = None, **given: str) -> Chat:
    settings = settings_for(server.base_url, **CENT_A_TOKEN, **given)
    budget = Budget(settings, store, clock or Clock("2026-05-05 10:00"))
    return Chat(settings, lambda _text: None, store=store, budget=budget)


def quiet(_kind: object, _text: str) -> None:
    pass


def test_past_the_cap_no_model_call_is_made_and_the_message_is_taken_back(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="0.5")
    chat.open_session("telegram-101")
    server.push(chat_reply("first answer", prompt_tokens=40, completion_tokens=10))  # 50 tokens: $0.50
    chat.send("first", quiet, payer=ADA)
    asked = len(server.posts)
    with pytest.raises(OverBudget) as refused:
        chat.send("second", quiet, payer=ADA)
    assert "daily spending limit" in str(refused.value)
    assert len(server.posts) == asked  # no model call
    assert [m.content for m in chat.conversation.history] == ["first", "first answer"]
    assert spending_rows(store) == [("101", 50, 0, pytest.approx(0.5), 1)]
    chat.send("from the owner", quiet, payer=Payer("150", exempt=True))  # the owner is not capped
    assert len(server.posts) == asked + 1
    chat.leave()


def test_reported_cost_counts_as_reported_prices_and_missing_usage_as_estimates(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="5")
    server.push(chat_reply("reported", prompt_tokens=40, completion_tokens=10, usage_extra={"cost": 0.02}))
    chat.send("one", quiet, payer=ADA)
    standing = chat.budget.standing(ADA) if chat.budget else None
    assert standing is not None
    assert standing.lines() == ["Left today: $4.9800 of $5.0000 · resets 00:00 UTC"]  # the provider's word: exact
    server.push(chat_reply("priced", prompt_tokens=40, completion_tokens=10))
    chat.send("two", quiet, payer=ADA)
    server.push(chat_reply("no usage at all", usage="absent"))
    chat.send("three", quiet, payer=ADA)
    rows = spending_rows(store)
    assert rows[0] == ("101", 50, 0, pytest.approx(0.02), 0)
    assert rows[1] == ("101", 50, 0, pytest.approx(0.5), 1)  # from the configured prices: an estimate
    assert rows[2][2] == 1  # the tokens themselves were estimated
    assert rows[2][4] == 1
    [line] = chat.budget.standing(ADA).lines() if chat.budget else []
    assert line.startswith("Left today: ~$")
    assert "(~ estimated)" in line


def test_a_stopped_reply_and_a_summary_request_are_counted_like_any_call(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="100", max_messages="2", summarize="1")
    server.push(chat_reply("word " * 400, size=5, delay=0.02))
    cancel = Cancel()
    cancel_once_asked(server, cancel)
    result = chat.send("talk", quiet, cancel=cancel, payer=ADA)
    assert result.interrupted
    rows = spending_rows(store)
    assert len(rows) == 1
    assert rows[0][2] == 1  # no usage came before the stop: estimated, and counted all the same
    assert rows[0][1] > 0
    for text in ("two", "three"):  # the third turn drops older ones: a summary request first
        chat.send(text, quiet, payer=ADA)
    summaries = [p for p in server.posts if "Summarise this conversation" in str(p.body["messages"][0])]
    assert summaries
    assert len(spending_rows(store)) == len(server.posts)  # every model call, and only those


def test_a_cap_reached_by_the_summary_stops_the_turn_before_its_reply_is_asked(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="1.2", max_messages="2", summarize="1")
    server.push(chat_reply("answer one", prompt_tokens=40, completion_tokens=10))  # $0.50
    chat.send("one", quiet, payer=ADA)
    server.push(chat_reply("a summary", prompt_tokens=70, completion_tokens=10))  # $0.80: the cap is reached
    with pytest.raises(OverBudget):
        chat.send("two", quiet, payer=ADA)  # "one" drops out of the window: summarised first
    assert "Summarise this conversation" in str(server.posts[-1].body["messages"][0])
    assert len(server.posts) == 2  # the summary went (under the cap when asked); the reply did not
    assert [m.content for m in chat.conversation.history] == ["one", "answer one"]


def test_over_the_cap_not_even_the_summary_is_asked(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="1", max_messages="2", summarize="1")
    server.push(chat_reply("answer one", prompt_tokens=40, completion_tokens=10))  # $0.50
    chat.send("one", quiet, payer=ADA)
    assert chat.budget is not None
    spend(chat.budget, 0.5)  # spent meanwhile in another chat of the same user
    with pytest.raises(OverBudget):
        chat.send("two", quiet, payer=ADA)  # "one" would drop out of the window and be summarised
    assert len(server.posts) == 1


def test_chats_of_one_user_answering_at_once_overshoot_by_at_most_the_calls_in_flight(server, store):
    import threading

    settings = settings_for(server.base_url, telegram_budget_daily="0.5", **CENT_A_TOKEN)
    budget = Budget(settings, store, Clock("2026-05-05 10:00"))
    chats = [Chat(settings, lambda _text: None, store=store, budget=budget) for _ in range(2)]
    for _ in chats:
        server.push(chat_reply("slow and costly", prompt_tokens=40, completion_tokens=10, size=2, delay=0.2))
    both = [threading.Thread(target=chat.send, args=("go", quiet), kwargs={"payer": ADA}) for chat in chats]
    for thread in both:  # both checked before either was counted: both go
        thread.start()
    for thread in both:
        thread.join(20)
    assert len(server.posts) == 2
    assert budget.standing(ADA).spent[0].spent == pytest.approx(1.0)  # over by the one call in flight
    for chat in chats:  # and no call after that
        with pytest.raises(OverBudget):
            chat.send("more", quiet, payer=ADA)
    assert len(server.posts) == 2


def test_a_cloud_model_missing_from_the_price_table_is_said_once_at_start():
    unknown = resolve_settings(
        {"base_url": "https://api.example.invalid/v1", "model": "no-such-model-4711", "telegram_budget_daily": "1"},
        {},
        {},
    )
    caps, notes = caps_in_force(unknown)
    assert [(c.unit, c.limit) for c in caps] == [("usd", 1.0)]  # the provider may still report each cost
    assert notes[1].startswith("no-such-model-4711 is not in the price table: only requests whose cost")
    known = resolve_settings(
        {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "telegram_budget_daily": "1"}, {}, {}
    )
    assert caps_in_force(known)[1] == [
        "spending caps per user: $1.0000 daily (UTC days and months; TELEGRAM_ADMINS exempt)"
    ]


def test_a_cap_of_0_says_only_the_owners_may_use_the_model_never_that_it_resets(store):
    budget = Budget(
        settings_for(telegram_budget_daily="5", telegram_budget_monthly="0", **CENT_A_TOKEN),
        store,
        Clock("2026-05-05 10:00"),
    )
    standing = budget.standing(ADA)  # nothing spent, and still no call may go
    assert standing.reached is not None
    note = standing.note()
    assert note == "Sorry, only this assistant's owners may use the model here: your messages are not sent to it."
    assert "resets" not in note
    assert standing.lines() == [
        "Left today: $5.0000 of $5.0000 · resets 00:00 UTC",
        "Left this month: none: only the bot's owners may use the model (a cap of $0)",
    ]
    spend(budget, 6.0)  # the daily cap reached too, and it resets sooner: the cap of 0 still decides
    assert budget.standing(ADA).note() == note


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("telegram_budget_daily", "inf", "expected a number >= 0"),  # "no cap" is unset, not infinity
        ("telegram_budget_monthly", "1e999", "expected a number >= 0"),
        ("telegram_budget_daily", "nan", "expected a number >= 0"),
        ("telegram_budget_daily_tokens", "-5", "expected an integer >= 0"),
    ],
)
def test_a_cap_that_is_not_a_finite_amount_is_refused_in_one_line(name, value, expected):
    from chatcore.settings import ConfigError

    with pytest.raises(ConfigError) as refused:
        resolve_settings({"base_url": "http://127.0.0.1:9/v1", "model": "test-model"}, {name.upper(): value}, {})
    assert str(refused.value).startswith(f"{name.upper()}={value!r} is not valid")
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_request_that_ran_out_of_time_is_counted_like_a_stopped_one(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="100", first_token_timeout="0.5")
    late = chat_reply("too late", prompt_tokens=40, completion_tokens=10)
    late.header_delay = 2.0  # the server has the prompt, and is still on it when the deadline comes
    server.push(late)
    with pytest.raises(Failure) as failed:
        chat.send("a question for a slow server", quiet, payer=ADA)
    assert failed.value.kind == "deadline"
    [(user, tokens, tokens_estimated, cost, cost_estimated)] = spending_rows(store)
    assert (user, tokens_estimated, cost_estimated) == ("101", 1, 1)  # its prompt, estimated, as for a /cancel
    assert tokens > 0
    assert cost == pytest.approx(tokens * 0.01)
    server.push(error_status(500, "the provider is down"))  # refused outright: nothing was done, nothing counted
    with pytest.raises(Failure):
        chat.send("and now?", quiet, payer=ADA)
    assert len(spending_rows(store)) == 1


def test_owners_given_as_everyone_are_said_at_start_to_leave_no_one_capped():
    caps, notes = caps_in_force(settings_for(telegram_budget_daily="0.5", telegram_admins="*", **CENT_A_TOKEN))
    assert [(c.unit, c.limit) for c in caps] == [("usd", 0.5)]
    assert notes[-1] == (
        "TELEGRAM_ADMINS is *: everyone is an owner, so no one is capped; name the owners by user id or @username"
    )
    assert len(caps_in_force(settings_for(telegram_budget_daily="0.5", telegram_admins="150", **CENT_A_TOKEN))[1]) == 1


def test_a_message_whose_prompt_alone_would_pass_the_cap_is_not_sent(server, store):
    chat = budget_chat(server, store, telegram_budget_daily="5", telegram_budget_monthly_tokens="100000")
    server.push(chat_reply("first answer", prompt_tokens=30, completion_tokens=10))  # $0.40
    chat.send("first", quiet, payer=ADA)
    with pytest.raises(OverBudget) as refused:  # ~2,000 tokens: $20 before a word of the reply, with $4.60 left
        chat.send("word " * 2000, quiet, payer=ADA)
    assert len(server.posts) == 1  # not sent: a cap is overshot by a reply, never by a prompt
    assert [m.content for m in chat.conversation.history] == ["first", "first answer"]
    note = str(refused.value)
    assert note.startswith(
        "Sorry, this message would take you past your daily spending limit: ~$0.4000 used of $5.0000 "
        "(estimated), and sending it (with the conversation so far) would cost about $2"
    )
    assert "A shorter message, or /clear first, costs less. The limit resets at 00:00 UTC, in 14 h 0 min." in note
    server.push(chat_reply("second answer", prompt_tokens=30, completion_tokens=10))
    chat.send("a short one", quiet, payer=ADA)  # well within what is left: sent
    assert len(server.posts) == 2
    owner = Payer("150", exempt=True)
    chat.send("word " * 2000, quiet, payer=owner)  # the owners are never capped, however long the message
    assert len(server.posts) == 3


def test_a_reset_days_away_is_said_in_days_rounded_to_the_nearest():
    from chatcore.budget import when

    resets = datetime(2026, 4, 1, tzinfo=UTC)
    assert when(resets, datetime(2026, 3, 29, 0, 30, tzinfo=UTC)) == "on 1 April at 00:00 UTC, in 3 days"  # 71.5 h
    assert when(resets, datetime(2026, 3, 29, 23, 0, tzinfo=UTC)) == "on 1 April at 00:00 UTC, in 2 days"  # 49 h
    assert when(resets, datetime(2026, 3, 25, 13, 0, tzinfo=UTC)) == "on 1 April at 00:00 UTC, in 6 days"  # 6 d 11 h
