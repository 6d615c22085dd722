"""The Telegram assistant: the real bot process against a fake Bot API and the fake model server.

Both fakes speak real HTTP on 127.0.0.1; python-telegram-bot and the SDK are not mocked. One bot
process serves most tests (each test uses chat ids of its own); tests of start-up, shutdown and
configuration start their own.
"""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, clean_environment
from server import CUT, FakeServer, chat_reply, error_status
from telegram_server import BOT_USER, TOKEN, FakeTelegram

BOT = str(ROOT / "telegram_bot.py")
GROUP, OTHER_GROUP = -1000042, -1000077
ALLOWED = ",".join([*(str(n) for n in range(100, 160)), "@grace", str(GROUP)])
STRANGER = 999


class BotProcess:
    """`python telegram_bot.py` with its stderr collected as it runs."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, BOT],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=env["HOME"],
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:  # closed once the bot has gone
            for line in self.process.stderr:
                self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        status = self.process.wait(timeout)
        self.reader.join(5)
        return status


def bot_env(home, telegram: FakeTelegram, model: FakeServer, **extra: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = clean_environment(home, home / "tiktoken")
    env.update(
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=telegram.api_url,
        TELEGRAM_ALLOWED_USERS=ALLOWED,
        OPENAI_BASE_URL=model.base_url,
        OPENAI_MODEL="test-model",
        OPENAI_MAX_RETRIES="0",
        **extra,
    )
    return env


def started(telegram: FakeTelegram, bot: BotProcess) -> BotProcess:
    telegram.wait_for(lambda: telegram.calls_to("getUpdates") or bot.process.poll() is not None)
    assert bot.process.poll() is None, bot.stderr
    return bot


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("telegram-home")


@pytest.fixture(scope="module")
def bot(telegram, model, home):
    process = started(telegram, BotProcess(bot_env(home, telegram, model, TELEGRAM_RATE_LIMIT="5")))
    yield process
    assert process.stop() == 0, process.stderr
    for line in process.lines:  # whatever happened in the module, no secret was ever logged
        assert TOKEN not in line
        assert TOKEN.split(":")[1] not in line


@pytest.fixture(autouse=True)
def fresh_queue(model):
    model.queue.clear()
    yield
    model.queue.clear()


def final_texts(telegram: FakeTelegram, chat_id: int, count: int = 1, timeout: float = 15) -> list[str]:
    """Wait until the chat shows `count` messages (edits settle too), and return their texts."""
    telegram.wait_for(lambda: len(telegram.sent_texts(chat_id)) >= count, timeout)
    time.sleep(0.3)
    return telegram.sent_texts(chat_id)


def model_posts_for(model: FakeServer, needle: str) -> list:
    return [p for p in model.posts if any(needle in str(m.get("content")) for m in p.body.get("messages", []))]


# -- start-up, configuration, shutdown --------------------------------------------------


def test_start_sequence_then_polling(tmp_path, fakes):
    telegram, model = fakes
    process = started(telegram, BotProcess(bot_env(tmp_path / "h", telegram, model)))
    methods = [c.method for c in telegram.calls]
    first_poll = methods.index("getUpdates")
    assert methods[0] == "getMe"
    assert {"deleteWebhook", "setMyCommands"} <= set(methods[:first_poll])
    commands = telegram.calls_to("setMyCommands")[0].params["commands"]
    import telegram_bot

    assert [c["command"] for c in commands] == [command.name for command in telegram_bot.COMMANDS]
    assert process.stop(signal.SIGINT) == 0
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("TELEGRAM_BOT_TOKEN", None, "TELEGRAM_BOT_TOKEN is not set"),
        ("both", None, "TELEGRAM_BOT_TOKEN is not set"),
        ("TELEGRAM_BOT_TOKEN", "not-a-token", "TELEGRAM_BOT_TOKEN does not look like a bot token"),
        ("OPENAI_API_KEY", None, "OPENAI_API_KEY is not set"),
        ("TELEGRAM_ALLOWED_USERS", "101,bob", "TELEGRAM_ALLOWED_USERS='101,bob' is not valid"),
    ],
)
def test_configuration_errors_are_one_line_and_exit_2(tmp_path, setting, value, needle, fakes):
    telegram, model = fakes
    env = bot_env(tmp_path / "h", telegram, model)
    if setting in ("OPENAI_API_KEY", "both"):
        env["OPENAI_BASE_URL"] = "https://api.example.invalid/v1"
    if setting == "both":
        setting = "TELEGRAM_BOT_TOKEN"
    if value is None:
        env.pop(setting, None)
    else:
        env[setting] = value
    result = subprocess.run([sys.executable, BOT], env=env, capture_output=True, text=True, timeout=30, cwd=env["HOME"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert TOKEN not in result.stderr
    assert not telegram.calls  # nothing was sent anywhere


def test_token_telegram_rejects_exits_2_without_showing_it(tmp_path):
    telegram, model = FakeTelegram(token="111:another-token-the-server-does-not-know"), FakeServer()
    try:
        env = bot_env(tmp_path / "h", telegram, model)
        result = subprocess.run(
            [sys.executable, BOT], env=env, capture_output=True, text=True, timeout=30, cwd=env["HOME"]
        )
        assert result.returncode == 2, result.stderr
        assert "Telegram rejected TELEGRAM_BOT_TOKEN (401 at getMe)" in result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert "Traceback" not in result.stderr
        assert TOKEN not in result.stderr
        assert TOKEN.split(":")[1] not in result.stderr
    finally:
        telegram.close()
        model.close()


def test_sigterm_mid_reply_keeps_the_partial_text_and_exits_0_and_history_survives_restart(tmp_path, fakes):
    telegram, model = fakes
    home = tmp_path / "h"
    env = bot_env(home, telegram, model)
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("word " * 200, size=5, delay=0.05))
    telegram.send_text(101, "tell me a long story")
    telegram.wait_for(
        lambda: any("word word word" in c.params["text"] for c in telegram.calls_to("sendMessageDraft", 101))
    )
    assert process.stop(signal.SIGTERM) == 0, process.stderr
    [shown] = telegram.sent_texts(101)  # the partial reply was still sent, marked
    assert shown.startswith("word word")
    assert shown.endswith("⏹ Stopped.")
    db = sqlite3.connect(str(next((home / "data").rglob("telegram.db"))))
    rows = db.execute("SELECT role, flags, content FROM messages ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("user", ""), ("assistant", "interrupted")]
    assert rows[1][2].startswith("word word")
    assert len(rows[1][2]) < len("word " * 200)
    db.close()
    # Restarted, the chat goes on from its saved history.
    process = started(telegram, BotProcess(env))
    telegram.send_text(101, "and then?")
    final_texts(telegram, 101, 2)
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user", "assistant", "user"]
    assert process.stop() == 0


# -- conversations ------------------------------------------------------------------------


def test_private_reply_streams_into_a_draft_then_arrives_as_one_formatted_message(bot, telegram, model):
    text = "# Plan\n\nFirst **bold** step, then `code`.\n\n" + "More words here. " * 12
    model.push(chat_reply(text, size=4, delay=0.03, prompt_tokens=20, completion_tokens=40))
    telegram.send_text(101, "make a plan")
    [final] = final_texts(telegram, 101)
    assert "Plan" in final
    assert "**" not in final
    assert "First bold step, then code." in final
    sent = telegram.calls_to("sendMessage", 101)[-1]
    utf16 = len(final[: final.index("bold")].encode("utf-16-le")) // 2  # offsets count UTF-16 units
    assert {"type": "bold", "offset": utf16, "length": 4} in sent.params["entities"]
    typing = telegram.calls_to("sendChatAction", 101)
    drafts = telegram.calls_to("sendMessageDraft", 101)
    assert typing
    assert typing[0].params["action"] == "typing"
    assert typing[0].at < drafts[0].at
    assert len(drafts) >= 2
    assert len({d.params["draft_id"] for d in drafts}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(drafts)]
    assert min(gaps) >= 0.3  # at most about 3 updates a second
    assert drafts[-1].at < sent.at
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user"]
    assert model.posts[-1].body["max_tokens"] == 1000
    assert model.posts[-1].body["temperature"] == 0.4
    # The next message carries the exchange before it.
    telegram.send_text(101, "and the second step?")
    final_texts(telegram, 101, 2)
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user", "assistant", "user"]


def test_commands_answer_without_the_model(bot, telegram, model):
    telegram.send_text(102, "hi")
    final_texts(telegram, 102)
    posts = len(model.posts)
    for command in ("/start", "/help", "/model", "/stats", "/cancel"):
        telegram.send_text(102, command)
    texts = final_texts(telegram, 102, 6)
    start, help_, model_, stats, cancel = texts[1:6]
    assert "test-model" in start
    assert "/clear" in start
    assert "/cancel" in help_
    assert model_.startswith("Model: test-model at 127.0.0.1")
    assert "Messages kept: 2" in stats
    assert "Requests: 1" in stats
    assert "Tokens: 12 in · 6 out" in stats
    assert "Cost: cost unknown" in stats
    assert "Nothing to stop" in cancel
    assert len(model.posts) == posts


def test_clear_forgets_only_that_chat(bot, telegram, model):
    for chat in (103, 104):
        telegram.send_text(chat, f"remember {chat}")
        final_texts(telegram, chat)
    telegram.send_text(103, "/clear")
    assert "Conversation cleared" in final_texts(telegram, 103, 2)[1]
    telegram.send_text(103, "who am I?")
    final_texts(telegram, 103, 3)
    telegram.send_text(104, "who am I?")
    final_texts(telegram, 104, 2)
    assert len(model_posts_for(model, "remember 103")) == 1  # never sent again after /clear
    assert any("remember 104" in m["content"] for m in model.posts[-1].body["messages"])


def test_strangers_get_their_id_and_never_reach_the_model(bot, telegram, model):
    posts = len(model.posts)
    telegram.send_text(STRANGER, "hello?", username="mallory")
    [reply] = final_texts(telegram, STRANGER)
    assert str(STRANGER) in reply
    assert "TELEGRAM_ALLOWED_USERS" in reply
    telegram.send_text(STRANGER, "/stats", username="mallory")
    time.sleep(1.0)
    assert len(telegram.sent_texts(STRANGER)) == 1  # told once, not once per message
    assert len(model.posts) == posts
    telegram.send_text(555, "hi, I'm allowed by name", username="Grace")
    final_texts(telegram, 555)
    assert len(model.posts) == posts + 1


def test_groups_answer_mentions_replies_and_commands_only(bot, telegram, model):
    posts = len(model.posts)
    telegram.send_text(GROUP, "just chatting among ourselves", user_id=120, first_name="Ada")
    telegram.send_text(GROUP, "/model@some_other_bot", user_id=120)
    time.sleep(1.0)
    assert telegram.sent_texts(GROUP) == []
    assert len(model.posts) == posts
    telegram.send_text(GROUP, f"@{BOT_USER['username']} what is 2+2?", user_id=121, first_name="Alan")
    final_texts(telegram, GROUP)
    assert model.posts[-1].body["messages"][-1]["content"] == "Alan: what is 2+2?"
    telegram.send_text(GROUP, "and times 3?", user_id=7777, first_name="Grete", reply_to_bot=True)
    final_texts(telegram, GROUP, 2)
    assert model.posts[-1].body["messages"][-1]["content"] == "Grete: and times 3?"  # the group is allowed
    telegram.send_text(GROUP, f"/stats@{BOT_USER['username']}", user_id=7777)
    assert "Messages kept: 4" in final_texts(telegram, GROUP, 3)[2]
    assert not telegram.calls_to("sendMessageDraft", GROUP)  # drafts are for private chats
    # A group that is not allowed: members who are allowed may use it, strangers may not.
    posts = len(model.posts)
    telegram.send_text(OTHER_GROUP, f"@{BOT_USER['username']} hi", user_id=STRANGER)
    assert str(STRANGER) in final_texts(telegram, OTHER_GROUP)[0]
    assert len(model.posts) == posts
    telegram.send_text(OTHER_GROUP, f"@{BOT_USER['username']} hi", user_id=122)
    final_texts(telegram, OTHER_GROUP, 2)
    assert len(model.posts) == posts + 1


def test_group_replies_stream_by_editing_at_most_every_3_seconds(bot, telegram, model):
    reply = "slowly " * 50
    model.push(chat_reply(reply, size=7, delay=0.09))  # about 4.5 s
    telegram.send_text(GROUP, f"@{BOT_USER['username']} go slowly", user_id=123)
    telegram.wait_for(lambda: reply.strip() in telegram.sent_texts(GROUP), timeout=20)
    start = telegram.calls_to("sendMessage", GROUP)[-1]
    calls = [start, *[c for c in telegram.calls_to("editMessageText", GROUP) if c.at > start.at]]
    streaming = calls[:-1]  # the last is the finished reply, sent as soon as it is whole
    streaming_gaps = [b.at - a.at for a, b in itertools.pairwise(streaming)]
    assert len(streaming) >= 2
    assert min(streaming_gaps) >= 2.9
    group_calls = [c for c in telegram.calls if c.chat_id == GROUP and c.method in ("sendMessage", "editMessageText")]
    assert all(sum(1 for c in group_calls if a.at <= c.at < a.at + 60) <= 20 for a in group_calls)  # 20 a minute


def test_messages_in_one_chat_are_answered_in_order_and_chats_do_not_wait(bot, telegram, model):
    model.push(chat_reply("first answer", delay=0.5, size=2))  # about 3 s
    telegram.send_text(105, "first")
    telegram.wait_for(lambda: telegram.calls_to("sendMessageDraft", 105))
    telegram.send_text(105, "second in 105")
    telegram.send_text(106, "meanwhile, elsewhere")
    final_texts(telegram, 106)
    assert telegram.sent_texts(105) == []  # chat 106 did not wait for 105's slow reply
    texts = final_texts(telegram, 105, 2)
    assert texts[0] == "first answer"
    second = model_posts_for(model, "second in 105")[0].body["messages"]
    assert [m["content"] for m in second[1:]] == ["first", "first answer", "second in 105"]


def test_long_reply_is_split_at_paragraphs_and_code_blocks_stay_whole(bot, telegram, model):
    paragraphs = [f"Paragraph {n}. " + "Some sentence that goes on. " * 25 for n in range(12)]
    code = "```python\n" + "\n".join(f"print({n})" for n in range(120)) + "\n```"
    reply = "\n\n".join([*paragraphs[:5], code, *paragraphs[5:]])
    model.push(chat_reply(reply, size=400))
    telegram.send_text(107, "a long one")
    telegram.wait_for(  # the parts are paced: a short burst, then about one a second
        lambda: all(f"Paragraph {n}." in " ".join(telegram.sent_texts(107)) for n in range(12)), timeout=20
    )
    parts = telegram.calls_to("sendMessage", 107)
    assert len(parts) >= 3
    assert all(c.status == 200 for c in parts)
    texts = [c.params["text"] for c in parts]
    assert all(len(t.encode("utf-16-le")) // 2 <= 4096 for t in texts)
    assert all(t.startswith(("Paragraph", "print(0)")) for t in texts)  # cut at paragraphs
    code_parts = [c for c in parts if any(e["type"] == "pre" for e in c.params.get("entities", []))]
    assert len(code_parts) == 1  # the code block fits in one message, so it is in one message
    [pre] = [e for e in code_parts[0].params["entities"] if e["type"] == "pre"]
    code_text = "\n".join(f"print({n})" for n in range(120))
    assert code_parts[0].params["text"][pre["offset"] : pre["offset"] + pre["length"]] == code_text
    joined = " ".join(texts)
    assert all(f"Paragraph {n}." in joined for n in range(12))


# -- Telegram's failures ------------------------------------------------------------------


def test_flood_control_waits_for_that_chat_only(bot, telegram, model):
    telegram.fail("sendMessage", 429, "Too Many Requests: retry after 2", chat_id=108, retry_after=2)
    telegram.send_text(108, "one")
    telegram.wait_for(lambda: any(c.status == 429 for c in telegram.calls_to("sendMessage", 108)))
    limited_at = time.monotonic()
    telegram.send_text(109, "two")
    final_texts(telegram, 109)
    assert time.monotonic() - limited_at < 1.9  # the other chat was not paused
    assert telegram.sent_texts(108) == []
    final_texts(telegram, 108)
    retried = telegram.calls_to("sendMessage", 108)[-1]
    assert retried.at - limited_at >= 1.9
    assert telegram.violations == []  # nothing was sent to 108 inside its retry_after window


def test_formatting_rejected_is_sent_again_as_plain_text(bot, telegram, model):
    model.push(chat_reply("Some **bold** text."))
    telegram.fail("sendMessage", 400, "Bad Request: can't parse entities: unsupported start tag", chat_id=110)
    telegram.send_text(110, "format it")
    assert final_texts(telegram, 110) == ["Some bold text."]
    first, second = telegram.calls_to("sendMessage", 110)[-2:]
    assert first.status == 400
    assert first.params.get("entities")
    assert second.status == 200
    assert not second.params.get("entities")


def test_final_send_is_retried_through_server_errors(bot, telegram, model):
    telegram.fail("sendMessage", 502, "Bad Gateway", chat_id=111, times=2)
    telegram.send_text(111, "will it arrive?")
    assert final_texts(telegram, 111, timeout=20) == ["Hello from the test server."]
    assert [c.status for c in telegram.calls_to("sendMessage", 111)] == [502, 502, 200]


def test_without_drafts_replies_stream_by_editing_and_not_modified_is_ignored(bot, telegram, model):
    telegram.no_drafts = True
    try:
        model.push(chat_reply("edited " * 40, size=7, delay=0.08))  # about 3 s
        telegram.fail("editMessageText", 400, "Bad Request: message is not modified", chat_id=112)
        telegram.send_text(112, "stream by editing")
        telegram.wait_for(lambda: ("edited " * 40).strip() in telegram.sent_texts(112), timeout=20)
    finally:
        telegram.no_drafts = False
    edits = telegram.calls_to("editMessageText", 112)
    assert edits
    assert edits[0].status == 400
    assert edits[-1].status == 200
    sends = telegram.calls_to("sendMessage", 112)
    assert len(sends) == 1  # one message, edited to the final text
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
    assert all(gap >= 0.9 for gap in gaps[:-1])  # about one update a second (the final edit is not paced)


def test_a_chat_that_blocked_the_bot_is_skipped_until_it_writes_again(bot, telegram, model):
    telegram.fail("sendMessage", 403, "Forbidden: bot was blocked by the user", chat_id=113, times=1)
    telegram.send_text(113, "hello")
    telegram.wait_for(lambda: telegram.calls_to("sendMessage", 113))
    telegram.send_text(114, "still working?")
    assert final_texts(telegram, 114) == ["Hello from the test server."]  # other chats go on
    # The user unblocked the bot (pressed Restart): the new message is answered.
    telegram.send_text(113, "/start")
    assert "answering with test-model" in final_texts(telegram, 113)[0]
    telegram.send_text(113, "again")
    assert final_texts(telegram, 113, 2)[1] == "Hello from the test server."


# -- the model provider's failures -----------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "needle"),
    [
        (lambda: error_status(401, "Incorrect API key provided"), "rejected its API key"),
        (lambda: error_status(429, "slow down"), "rate-limiting"),
        (lambda: error_status(404, "The model `test-model` does not exist", code="model_not_found"), "OPENAI_MODEL"),
        (lambda: error_status(500, "boom"), "having trouble"),
    ],
)
def test_provider_failures_end_in_one_friendly_message(bot, telegram, model, behaviour, needle):
    chat = 130 + len(needle) % 20
    model.push(behaviour())
    telegram.send_text(chat, "hello?")
    [reply] = final_texts(telegram, chat)[-1:]
    assert needle in reply
    assert "Traceback" not in reply
    telegram.send_text(chat, "and now?")  # the bot goes on, and the failed message left no trace
    final_texts(telegram, chat, len(telegram.sent_texts(chat)) + 1)
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user"]


def test_a_cut_stream_keeps_the_partial_reply_marked(bot, telegram, model):
    behaviour = chat_reply("Half of a rep", size=3, finish=None, done=False)
    behaviour.pieces.append((CUT,))
    model.push(behaviour)
    telegram.send_text(115, "go")
    [reply] = final_texts(telegram, 115)
    assert reply.startswith("Half of a rep")
    assert "cut short" in reply


def test_context_length_trims_harder_and_retries_once(bot, telegram, model):
    for n in range(3):
        telegram.send_text(116, f"turn {n}")
        final_texts(telegram, 116, n + 1)
    model.push(error_status(400, "This model's maximum context length is 4096 tokens", code="context_length_exceeded"))
    telegram.send_text(116, "one more")
    final_texts(telegram, 116, 4)
    failed, retried = model.posts[-2:]
    assert len(retried.body["messages"]) < len(failed.body["messages"])
    assert retried.body["messages"][-1]["content"] == "one more"


def test_cancel_stops_the_reply_and_keeps_what_was_written(bot, telegram, model):
    model.push(chat_reply("word " * 300, size=5, delay=0.05))
    telegram.send_text(117, "talk")
    telegram.wait_for(
        lambda: any("word word word" in c.params["text"] for c in telegram.calls_to("sendMessageDraft", 117))
    )
    telegram.send_text(117, "/cancel")
    [reply] = final_texts(telegram, 117)
    assert reply.startswith("word")
    assert reply.endswith("⏹ Stopped.")
    telegram.wait_for(lambda: model.disconnects)
    telegram.send_text(117, "go on")
    final_texts(telegram, 117, 2)
    sent = model.posts[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"].startswith("word word")
    assert len(sent[2]["content"]) < len("word " * 300)


def test_per_user_rate_limit_is_polite_and_spends_nothing(bot, telegram, model):
    posts = len(model.posts)
    for n in range(6):
        telegram.send_text(118, f"message {n}")
    texts = final_texts(telegram, 118, 6, timeout=20)
    assert sum("faster than I can answer" in t for t in texts) == 1
    assert len(model.posts) == posts + 5


def test_request_log_line_has_model_chat_latency_and_usage(bot, telegram, model):
    model.push(chat_reply("logged", prompt_tokens=21, completion_tokens=3))
    telegram.send_text(119, "log me")
    final_texts(telegram, 119)
    line = next(line for line in reversed(bot.lines) if "chat=119" in line and "model=" in line)
    assert "model=test-model" in line
    assert "tokens=21/3" in line
    assert "error=-" in line
    assert " latency=" in line
    assert line.split(" latency=")[1].split()[0].endswith("s")
    assert " ttft=" in line
    assert "log me" not in line


def test_clear_removes_the_words_from_disk_and_files_are_owner_only(bot, telegram, model, home):
    from test_privacy import assert_owner_only, files_holding

    phrase = "okapi-secret-9393 customer record"
    telegram.send_text(120, phrase)
    final_texts(telegram, 120)
    assert files_holding(home, phrase)
    telegram.send_text(120, "/clear")
    final_texts(telegram, 120, 2)
    assert files_holding(home, phrase) == []  # the bot is still running: its write-ahead log too
    assert_owner_only(home)


def test_polling_survives_telegram_errors(bot, telegram, model):
    telegram.fail("getUpdates", 502, "Bad Gateway", times=2)
    telegram.wait_for(lambda: sum(1 for c in telegram.calls_to("getUpdates") if c.status == 502) == 2)
    telegram.send_text(121, "are you still there?")
    assert final_texts(telegram, 121, timeout=30) == ["Hello from the test server."]


def test_a_group_that_became_a_supergroup_keeps_its_history(bot, telegram, model):
    old, new = -1000555, -1001000555
    telegram.send_text(old, f"@{BOT_USER['username']} remember the number 31", user_id=124, first_name="Ida")
    final_texts(telegram, old)
    telegram.fail(
        "sendMessage",
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        chat_id=old,
        parameters={"migrate_to_chat_id": new},
    )
    telegram.send_text(old, f"@{BOT_USER['username']} which number?", user_id=124, first_name="Ida")
    final_texts(telegram, new)  # the reply went to the supergroup
    telegram.send_text(new, f"@{BOT_USER['username']} and again?", user_id=124, first_name="Ida")
    final_texts(telegram, new, 2)
    contents = [m["content"] for m in model.posts[-1].body["messages"]]
    assert contents[1] == "Ida: remember the number 31"
    assert contents[-1] == "Ida: and again?"
