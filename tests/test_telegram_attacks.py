"""Attacks on #22 and #23 from what the README promises: the 🔄 button and /retry pressed in odd
moments, forged callback data, long or odd instructions, roles.toml with unicode names, rich replies
at and past Telegram's limits, and a server that loses rich messages mid-process.

One real bot process with rich messages (the fake Bot API with `rich = True`) serves the module;
each test uses chats of its own.
"""

from __future__ import annotations

import time

import pytest
from server import chat_reply
from telegram_server import BOT_USER, FakeTelegram
from test_telegram import BotProcess, bot_env, final_texts, started
from test_telegram_choices import answered, last_message

from telegram_choices import role_data

AT = f"@{BOT_USER['username']}"
CYRILLIC_ROLE = "п" * 32  # 32 letters, as the README allows: 64 bytes of UTF-8
CJK_ROLE = "海盗"
ROLES_TOML = f"""
["{CYRILLIC_ROLE}"]
system = "Отвечай по-русски."

["{CJK_ROLE}"]
system = "像海盗一样回答。"
model = "not-offered-model"
temperature = 1.1
"""
GROUP = -1000600


@pytest.fixture(scope="module")
def bot(telegram, model, tmp_path_factory):
    home = tmp_path_factory.mktemp("telegram-attacks-home")
    roles = home / "roles.toml"
    roles.write_text(ROLES_TOML, encoding="utf-8")
    model.models = ["test-model", "other-model"]
    telegram.rich = True
    env = bot_env(
        home,
        telegram,
        model,
        TELEGRAM_MODELS="other-model",
        TELEGRAM_ADMINS="@boss",
        TELEGRAM_RATE_LIMIT="60",
        CHATBOT_ROLES=str(roles),
    )
    env["TELEGRAM_ALLOWED_USERS"] = ",".join([*(str(n) for n in range(200, 260)), str(GROUP)])
    process = started(telegram, BotProcess(env))
    yield process
    assert process.stop() == 0, process.stderr
    assert "Traceback" not in process.stderr, process.stderr


@pytest.fixture(autouse=True)
def fresh_queue(model, telegram):
    model.queue.clear()
    telegram.rich = True
    yield
    model.queue.clear()
    telegram.rich = True


def ask(telegram: FakeTelegram, model, chat: int, text: str, reply: str, count: int = 1, **fields) -> list[str]:
    model.push(chat_reply(reply))
    posts = len(model.posts)
    telegram.send_text(chat, text, **fields)
    texts = final_texts(telegram, chat, count)
    telegram.wait_for(lambda: len(model.posts) > posts)
    return texts


def history(model) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in model.posts[-1].body["messages"]]


# -- /system ----------------------------------------------------------------------------------


def test_long_instructions_are_set_and_shown_whole(bot, telegram, model):
    chat = 200
    text = ("Answer as a careful engineer would. " * 300)[:10_000].strip()
    telegram.send_text(chat, f"/system {text}")
    assert final_texts(telegram, chat)[0].startswith("Instructions set")
    telegram.send_text(chat, "/system")  # over one message's 4096 characters: shown in several
    shown = "".join(final_texts(telegram, chat, 5)[1:])  # the header line, then three parts
    assert text.replace(" ", "") in shown.replace(" ", "").replace("\n", "")


def test_instructions_with_markdown_and_html_are_shown_as_written(bot, telegram, model):
    chat = 201
    text = "Use <b>bold</b> & *stars* and `code`, _under_ [link](x)"
    telegram.send_text(chat, f"/system {text}")
    final_texts(telegram, chat)
    telegram.send_text(chat, "/system")
    shown = final_texts(telegram, chat, 2)[1]
    assert text in shown


# -- roles.toml with unicode names ---------------------------------------------------------------


def test_role_buttons_work_with_unicode_role_names(bot, telegram, model):
    chat = 202
    telegram.send_text(chat, "/role")
    [listing] = final_texts(telegram, chat)
    assert listing.startswith("Role: default.")
    buttons = last_message(telegram, chat).buttons()
    labels = [label for label, _ in buttons]
    assert CYRILLIC_ROLE in labels
    assert CJK_ROLE in labels
    keyboard = last_message(telegram, chat)
    data = dict(buttons)[CYRILLIC_ROLE]
    press = telegram.press(keyboard.message_id, data)
    assert answered(telegram, press).startswith(f"Role is now {CYRILLIC_ROLE}")


def test_a_role_whose_model_is_not_offered_keeps_the_model_and_says_so(bot, telegram, model):
    chat = 203
    telegram.send_text(chat, f"/role {CJK_ROLE}")
    [said] = final_texts(telegram, chat)
    assert said.startswith(f"Role is now {CJK_ROLE}")
    assert "not-offered-model" in said
    model.push(chat_reply("arr"))
    telegram.send_text(chat, "hello")
    final_texts(telegram, chat, 2)
    post = model.posts[-1].body
    assert post["model"] == "test-model"
    assert post["temperature"] == 1.1
    assert post["messages"][0]["content"] == "像海盗一样回答。"


# -- 🔄 and /retry at odd moments -----------------------------------------------------------------


def test_retry_button_pressed_after_new_does_not_regenerate(bot, telegram, model):
    chat = 204
    ask(telegram, model, chat, "question one", "answer one")
    reply = last_message(telegram, chat)
    [(_, data)] = reply.buttons()
    telegram.send_text(chat, "/new")
    final_texts(telegram, chat, 2)
    posts = len(model.posts)
    press = telegram.press(reply.message_id, data)
    note = answered(telegram, press)
    assert note is not None
    time.sleep(0.5)
    assert len(model.posts) == posts
    assert telegram.sent_texts(chat)[0] == "answer one"


def test_forged_retry_data_for_another_chats_reply_does_nothing_there(bot, telegram, model):
    victim, attacker = 205, 206
    ask(telegram, model, victim, "my private question", "victim answer")
    [(_, victim_data)] = last_message(telegram, victim).buttons()
    ask(telegram, model, attacker, "hello", "attacker answer")
    attacker_reply = last_message(telegram, attacker)
    posts = len(model.posts)
    press = telegram.press(attacker_reply.message_id, victim_data)
    answered(telegram, press)
    time.sleep(0.8)
    assert telegram.sent_texts(victim) == ["victim answer"]
    assert telegram.sent_texts(attacker) == ["attacker answer"]
    assert all("my private question" not in str(p.body) for p in model.posts[posts:])


@pytest.mark.parametrize(
    "data",
    ["retry:", "retry:-1", "retry:abc", "retry:99999999999999999999999999999999", "model:", "role:", "", ":", "x" * 64],
)
def test_forged_callback_data_is_answered_and_changes_nothing(bot, telegram, model, data):
    chat = 207
    if not telegram.sent_texts(chat):
        ask(telegram, model, chat, "hi", "first")
    reply = last_message(telegram, chat)
    posts = len(model.posts)
    press = telegram.press(reply.message_id, data)
    assert answered(telegram, press)
    time.sleep(0.3)
    assert len(model.posts) == posts


def test_retry_while_a_reply_streams_waits_and_keeps_one_reply(bot, telegram, model):
    chat = 208
    model.push(chat_reply("slow " * 100, size=5, delay=0.03))
    telegram.send_text(chat, "talk slowly")
    telegram.wait_for(lambda: telegram.calls_to("sendRichMessageDraft", chat))
    model.push(chat_reply("regenerated"))
    telegram.send_text(chat, "/retry")
    telegram.wait_for(lambda: "regenerated" in " ".join(telegram.sent_texts(chat)), timeout=20)
    time.sleep(0.8)
    model.push(chat_reply("next"))
    telegram.send_text(chat, "next question")
    telegram.wait_for(lambda: "next" in telegram.sent_texts(chat))
    roles = [r for r, _ in history(model)]
    assert roles == ["system", "user", "assistant", "user"]
    assert history(model)[2][1] == "regenerated"


def test_retry_button_on_a_stopped_reply_regenerates_it(bot, telegram, model):
    chat = 209
    model.push(chat_reply("word " * 400, size=5, delay=0.05))
    telegram.send_text(chat, "talk")
    draft = telegram.wait_for(
        lambda: next(
            (
                c
                for c in telegram.calls_to("sendRichMessageDraft", chat)
                if "word word" in c.params["rich_message"].get("markdown", "")
            ),
            None,
        )
    )
    telegram.stop_generation(chat, draft.params["draft_id"])
    telegram.stop_generation(chat, draft.params["draft_id"])  # twice
    [stopped] = final_texts(telegram, chat)
    assert stopped.endswith("⏹ Stopped.")
    reply = last_message(telegram, chat)
    [(label, data)] = reply.buttons()
    assert label == "🔄"
    model.push(chat_reply("whole answer"))
    press = telegram.press(reply.message_id, data)
    assert answered(telegram, press) == "Writing it again…"
    telegram.wait_for(lambda: telegram.sent_texts(chat) == ["whole answer"])


def test_retry_of_a_reply_in_several_rich_messages_leaves_one_reply(bot, telegram, model):
    chat = 210
    long_reply = "\n\n".join(f"Paragraph {n}: " + "lorem ipsum dolor " * 60 for n in range(70))  # ~75k chars
    model.push(chat_reply(long_reply, size=3000))
    telegram.send_text(chat, "a very long one")
    telegram.wait_for(lambda: "Paragraph 69" in "".join(telegram.sent_texts(chat)), timeout=30)
    time.sleep(1.0)
    parts = len(telegram.sent_texts(chat))
    assert parts >= 3
    reply = last_message(telegram, chat)
    [(_, data)] = reply.buttons()
    model.push(chat_reply("short now"))
    press = telegram.press(reply.message_id, data)
    answered(telegram, press)
    telegram.wait_for(lambda: "short now" in telegram.sent_texts(chat), timeout=20)
    model.push(chat_reply("ok"))
    telegram.send_text(chat, "thanks")
    telegram.wait_for(lambda: "ok" in telegram.sent_texts(chat))
    assert [r for r, _ in history(model)] == ["system", "user", "assistant", "user"]
    assert history(model)[2][1] == "short now"


def test_retry_in_a_group_by_a_non_admin_member_is_allowed(bot, telegram, model):
    ask(telegram, model, GROUP, f"{AT} hi", "group answer", user_id=300)
    reply = last_message(telegram, GROUP)
    [(_, data)] = reply.buttons()
    model.push(chat_reply("group again"))
    press = telegram.press(reply.message_id, data, user_id=301)
    assert answered(telegram, press) == "Writing it again…"
    telegram.wait_for(lambda: telegram.sent_texts(GROUP) == ["group again"])


def test_role_button_forged_for_a_role_that_does_not_exist(bot, telegram, model):
    chat = 211
    telegram.send_text(chat, "/role")
    final_texts(telegram, chat)
    keyboard = last_message(telegram, chat)
    press = telegram.press(keyboard.message_id, role_data("nope"))
    note = answered(telegram, press)
    assert note
    assert "nope" not in (note or "") or "no" in (note or "").lower()


# -- rich replies at the limits, and a server that changes ------------------------------------------


def test_a_100000_character_rich_reply_with_specials_arrives_whole(bot, telegram, model):
    chat = 212
    lines = [f"- item {n}: a < b & c costs $5 and <tag> &amp; done" for n in range(1800)]
    reply = "\n".join(lines)
    assert len(reply) >= 90_000
    model.push(chat_reply(reply, size=4000))
    telegram.send_text(chat, "list")
    telegram.wait_for(lambda: "item 1799" in "".join(telegram.sent_texts(chat)), timeout=40)
    time.sleep(1.0)
    shown = "\n".join(telegram.sent_texts(chat))
    for n in range(1800):
        assert shown.count(f"item {n}: a < b & c costs $5 and <tag> &amp; done") == 1, n


def test_a_nested_list_twenty_deep_arrives(bot, telegram, model):
    chat = 213
    reply = "\n".join("  " * depth + f"- level {depth}" for depth in range(20))
    model.push(chat_reply(reply))
    telegram.send_text(chat, "nest")
    [shown] = final_texts(telegram, chat)
    for depth in range(20):
        assert f"level {depth}" in shown


def test_a_40_column_table_arrives_with_every_cell(bot, telegram, model):
    chat = 214
    head = "| " + " | ".join(f"c{c}" for c in range(40)) + " |"
    rule = "|" + "---|" * 40
    rows = ["| " + " | ".join(f"r{r}c{c}" for c in range(40)) + " |" for r in range(5)]
    model.push(chat_reply("\n".join([head, rule, *rows])))
    telegram.send_text(chat, "wide table")
    shown = "".join(final_texts(telegram, chat))
    for r in range(5):
        for c in range(40):
            assert f"r{r}c{c}" in shown


def test_a_429_in_the_middle_of_a_rich_reply_arrives_once(bot, telegram, model):
    chat = 215
    long_reply = "\n\n".join(f"Para {n}: " + "alpha beta gamma " * 80 for n in range(60))
    model.push(chat_reply(long_reply, size=3000))
    telegram.send_text(chat, "long")
    telegram.wait_for(lambda: len(telegram.rich_sent(chat)) >= 1, timeout=20)
    telegram.fail("sendRichMessage", 429, "Too Many Requests: retry after 1", chat_id=chat, retry_after=1)
    telegram.wait_for(lambda: "Para 59" in "".join(telegram.sent_texts(chat)), timeout=30)
    time.sleep(1.0)
    shown = "\n".join(telegram.sent_texts(chat))
    for n in range(60):
        assert shown.count(f"Para {n}:") == 1, n
    assert not telegram.violations


def assert_new_forgets_the_secret(telegram, model, chat: int) -> None:
    """/new now: the next message goes to the model alone, with nothing "secret" of before."""
    telegram.send_text(chat, "/new")
    telegram.wait_for(lambda: any(t.startswith("New conversation") for t in telegram.sent_texts(chat)), timeout=20)
    model.push(chat_reply("fresh"))
    telegram.send_text(chat, "a new topic")
    telegram.wait_for(lambda: "fresh" in telegram.sent_texts(chat), timeout=20)
    assert [r for r, _ in history(model)] == ["system", "user"]
    assert "secret" not in str(history(model))


def test_new_while_a_reply_streams_leaves_nothing_of_the_old_conversation(bot, telegram, model):
    chat = 217
    model.push(chat_reply("secret words " * 80, size=5, delay=0.03))
    telegram.send_text(chat, "my secret question")
    telegram.wait_for(lambda: "secret words" in str(telegram.calls_to("sendRichMessageDraft", chat)))
    assert_new_forgets_the_secret(telegram, model, chat)


def test_retry_twice_in_a_row_keeps_one_reply(bot, telegram, model):
    chat = 218
    ask(telegram, model, chat, "q", "one")
    model.push(chat_reply("two", size=1, delay=0.1))
    model.push(chat_reply("three", size=1, delay=0.1))
    telegram.send_text(chat, "/retry")
    telegram.send_text(chat, "/retry")
    telegram.wait_for(lambda: telegram.sent_texts(chat) == ["three"], timeout=20)
    time.sleep(0.5)
    assert telegram.sent_texts(chat) == ["three"]
    model.push(chat_reply("four"))
    telegram.send_text(chat, "next")
    telegram.wait_for(lambda: "four" in telegram.sent_texts(chat))
    assert [r for r, _ in history(model)] == ["system", "user", "assistant", "user"]
    assert history(model)[2][1] == "three"


def test_retry_of_a_reply_an_admin_deleted_comes_as_a_new_message(bot, telegram, model):
    chat = 219
    ask(telegram, model, chat, "q", "to be deleted")
    reply = last_message(telegram, chat)
    telegram.delete(reply.message_id)
    model.push(chat_reply("again"))
    telegram.send_text(chat, "/retry")
    telegram.wait_for(lambda: telegram.sent_texts(chat) == ["again"], timeout=20)


def test_a_long_system_pasted_in_client_split_parts_is_one_instruction(bot, telegram, model):
    chat = 220
    text = " ".join(f"rule{n}." for n in range(1500))  # ~10,000 characters: the client sends three messages
    command = f"/system {text}"
    first = command.rindex(" ", 0, 4096)
    second = command.rindex(" ", 0, first + 4096)
    posts = len(model.posts)
    for part in (command[:first], command[first + 1 : second], command[second + 1 :]):  # cut at spaces
        telegram.send_text(chat, part)
    telegram.wait_for(lambda: telegram.sent_texts(chat), timeout=20)
    time.sleep(3.0)
    assert len(model.posts) == posts  # no part of the instructions went to the model as a message
    model.push(chat_reply("ok"))
    telegram.send_text(chat, "hello")
    telegram.wait_for(lambda: "ok" in telegram.sent_texts(chat), timeout=20)
    assert model.posts[-1].body["messages"][0]["content"].split() == text.split()


def test_one_retry_command_in_a_rich_chat_edits_in_place(bot, telegram, model):
    chat = 221
    ask(telegram, model, chat, "q", "one")
    model.push(chat_reply("two", size=1, delay=0.1))
    telegram.send_text(chat, "/retry")
    telegram.wait_for(lambda: "two" in telegram.sent_texts(chat), timeout=20)
    time.sleep(0.5)
    assert telegram.sent_texts(chat) == ["two"]


# -- crashes and restarts, on the rich path ------------------------------------------------------


def rich_bot(tmp_path, fakes) -> tuple[FakeTelegram, object, dict[str, str], BotProcess]:
    telegram, model = fakes
    telegram.rich = True
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(tmp_path / "telegram.db"))
    env["TELEGRAM_ALLOWED_USERS"] = f"101,102,{GROUP}"
    return telegram, model, env, started(telegram, BotProcess(env))


def retry_streaming(telegram: FakeTelegram, model, by_button: bool) -> None:
    """Chat 101 asked and was answered; its retry (🔄 or /retry) is now streaming a long reply."""
    model.push(chat_reply("first answer"))
    telegram.send_text(101, "a question")
    final_texts(telegram, 101)
    reply = last_message(telegram, 101)
    model.push(chat_reply("partial " * 300, size=5, delay=0.05))
    if by_button:
        telegram.press(reply.message_id, reply.buttons()[0][1])
    else:
        telegram.send_text(101, "/retry")
    telegram.wait_for(lambda: "partial partial" in str(telegram.calls_to("sendRichMessageDraft", 101)))


def test_a_rich_retry_killed_mid_reply_is_answered_once_after_the_restart(tmp_path, fakes):
    telegram, model, env, process = rich_bot(tmp_path, fakes)
    retry_streaming(telegram, model, by_button=True)
    time.sleep(0.8)  # a checkpoint of the new reply is on disk
    process.process.kill()
    process.process.wait(10)
    model.queue.clear()
    model.push(chat_reply("regenerated after the crash"))
    process = started(telegram, BotProcess(env))
    telegram.wait_for(lambda: telegram.sent_texts(101) == ["regenerated after the crash"], timeout=20)
    time.sleep(0.8)
    assert telegram.sent_texts(101) == ["regenerated after the crash"]
    assert last_message(telegram, 101).rich is not None
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user"]
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_the_retry_button_works_after_a_restart_and_stop_from_before_it_changes_nothing(tmp_path, fakes):
    telegram, model, env, process = rich_bot(tmp_path, fakes)
    model.push(chat_reply("before the restart"))
    telegram.send_text(102, "a question")
    final_texts(telegram, 102)
    old_draft = telegram.calls_to("sendRichMessageDraft", 102)[0].params["draft_id"]
    assert process.stop() == 0
    process = started(telegram, BotProcess(env))
    reply = last_message(telegram, 102)
    model.push(chat_reply("word " * 200, size=5, delay=0.03))
    press = telegram.press(reply.message_id, reply.buttons()[0][1])
    assert answered(telegram, press) == "Writing it again…"
    telegram.wait_for(lambda: "word word" in str(telegram.calls_to("sendRichMessageDraft", 102)[1:]))
    telegram.stop_generation(102, old_draft)  # a Stop under the draft of before the restart
    telegram.wait_for(lambda: telegram.sent_texts(102) == [("word " * 200).strip()], timeout=20)
    model.push(chat_reply("fine"))
    telegram.send_text(102, "next")
    telegram.wait_for(lambda: "fine" in telegram.sent_texts(102))
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user", "assistant", "user"]
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_a_group_rich_reply_killed_mid_stream_is_regenerated_into_its_message(tmp_path, fakes):
    telegram, model, env, process = rich_bot(tmp_path, fakes)
    model.push(chat_reply("half " * 400, size=10, delay=0.05))
    telegram.send_text(GROUP, f"{AT} long one please")
    telegram.wait_for(lambda: "half half" in "".join(telegram.sent_texts(GROUP)), timeout=20)
    time.sleep(0.6)
    process.process.kill()
    process.process.wait(10)
    model.queue.clear()
    model.push(chat_reply("| a | b |\n|---|---|\n| whole | answer |"))
    process = started(telegram, BotProcess(env))
    telegram.wait_for(lambda: "whole | answer" in "".join(telegram.sent_texts(GROUP)), timeout=20)
    time.sleep(0.8)
    assert telegram.sent_texts(GROUP) == ["a | b\nwhole | answer"]
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_stop_in_a_private_chats_topic_is_matched_to_its_topic(bot, telegram, model):
    chat = 222
    model.push(chat_reply("topic words " * 200, size=5, delay=0.03))
    telegram.send_text(chat, "talk in topic 5", thread_id=5)
    draft = telegram.wait_for(
        lambda: next(
            (c for c in telegram.calls_to("sendRichMessageDraft", chat) if "topic words" in str(c.params)), None
        )
    )
    assert draft.thread_id == 5
    telegram.stop_generation(chat, draft.params["draft_id"])  # no topic: another conversation's Stop
    time.sleep(0.5)
    telegram.stop_generation(chat, draft.params["draft_id"], thread_id=5)
    [reply] = final_texts(telegram, chat)
    assert reply.endswith("⏹ Stopped.")


@pytest.mark.parametrize("kind", ["inaccessible", "inline"])
def test_a_press_on_an_inaccessible_or_inline_message_is_answered_without_a_traceback(bot, telegram, model, kind):
    chat = 223
    ask(telegram, model, chat, "q", "an answer")
    reply = last_message(telegram, chat)
    [(_, data)] = reply.buttons()
    query: dict = {
        "id": f"forged-{kind}",
        "from": {"id": chat, "is_bot": False, "first_name": "Ada"},
        "chat_instance": str(chat),
        "data": data,
    }
    if kind == "inaccessible":  # a message older than 48 hours: Telegram sends only its chat and id
        query["message"] = {"chat": {"id": chat, "type": "private"}, "message_id": reply.message_id, "date": 0}
    else:
        query["inline_message_id"] = "AAAA"
    with telegram.condition:
        telegram.pending_queries.add(query["id"])
    lines = len(bot.lines)
    telegram.push({"callback_query": query})
    telegram.wait_for(lambda: query["id"] in telegram.answers or "Traceback" in "".join(bot.lines[lines:]))
    assert "Traceback" not in "".join(bot.lines[lines:])


def test_retry_of_a_5000_character_rich_reply_one_message_is_edited_in_place(bot, telegram, model):
    chat = 224
    long_reply = "\n\n".join(f"Paragraph {n}: " + "lorem ipsum " * 40 for n in range(10))  # one rich message
    assert 4096 < len(long_reply) < 32_768
    ask(telegram, model, chat, "q", long_reply)
    assert len(telegram.sent_texts(chat)) == 1
    reply = last_message(telegram, chat)
    model.push(chat_reply("shorter"))
    press = telegram.press(reply.message_id, reply.buttons()[0][1])
    answered(telegram, press)
    telegram.wait_for(lambda: "shorter" in telegram.sent_texts(chat), timeout=20)
    time.sleep(0.5)
    assert telegram.sent_texts(chat) == ["shorter"]


def test_every_press_of_a_flood_of_presses_is_answered(bot, telegram, model):
    chat = 225
    ask(telegram, model, chat, "q", "old")
    old = last_message(telegram, chat)
    [(_, data)] = old.buttons()
    ask(telegram, model, chat, "q2", "new", count=2)
    posts = len(model.posts)
    presses = []
    for _ in range(70):  # past the 60 a minute, a few a tenth of a second (a burst of 70 at once is more
        presses.append(telegram.press(old.message_id, data))  # than the fake's listen backlog takes)
        time.sleep(0.03)
    telegram.wait_for(lambda: all(p["callback_query"]["id"] in telegram.answers for p in presses), timeout=30)
    assert len(model.posts) == posts


def test_new_while_a_retry_streams_leaves_nothing_of_the_old_conversation(bot, telegram, model):
    chat = 226
    ask(telegram, model, chat, "my secret question", "secret answer")
    reply = last_message(telegram, chat)
    model.push(chat_reply("secret again " * 80, size=5, delay=0.03))
    telegram.press(reply.message_id, reply.buttons()[0][1])
    telegram.wait_for(lambda: "secret again" in str(telegram.calls_to("sendRichMessageDraft", chat)))
    assert_new_forgets_the_secret(telegram, model, chat)


def test_new_while_a_group_reply_streams_leaves_nothing(bot, telegram, model):
    group = GROUP
    telegram.make_admin(group, 310)
    model.push(chat_reply("group secret " * 80, size=5, delay=0.03))
    telegram.send_text(group, f"{AT} my group secret", user_id=310)
    telegram.wait_for(lambda: "group secret" in "".join(telegram.sent_texts(group)), timeout=20)
    telegram.send_text(group, "/new", user_id=310)
    telegram.wait_for(lambda: any(t.startswith("New conversation") for t in telegram.sent_texts(group)), timeout=20)
    model.push(chat_reply("fresh in group"))
    telegram.send_text(group, f"{AT} new topic", user_id=310)
    telegram.wait_for(lambda: "fresh in group" in telegram.sent_texts(group), timeout=20)
    assert [r for r, _ in history(model)] == ["system", "user"]


def test_stop_while_thinking_closes_the_request_and_answers(bot, telegram, model):
    chat = 227
    model.push(chat_reply("never shown", keepalives=100))
    disconnects = len(model.disconnects)
    telegram.send_text(chat, "think hard")
    draft = telegram.wait_for(lambda: telegram.calls_to("sendRichMessageDraft", chat))[0]
    telegram.wait_for(lambda: model.posts and "think hard" in str(model.posts[-1].body))
    telegram.stop_generation(chat, draft.params["draft_id"])
    [said] = final_texts(telegram, chat)
    assert said.startswith("⏹ Stopped")
    telegram.wait_for(lambda: len(model.disconnects) > disconnects)
    model.queue.clear()
    model.push(chat_reply("next one"))
    telegram.send_text(chat, "again")
    telegram.wait_for(lambda: "next one" in telegram.sent_texts(chat))
    roles = [r for r, _ in history(model)]
    assert roles in (["system", "user"], ["system", "user", "assistant", "user"])


@pytest.mark.parametrize("how", ["press", "command"])
def test_a_failed_rich_retry_keeps_the_old_reply_in_the_chat(bot, telegram, model, how):
    from server import error_status

    chat = 228 if how == "press" else 229
    ask(telegram, model, chat, "question", "keep me")
    reply = last_message(telegram, chat)
    model.push(error_status(500, "boom"))
    if how == "press":
        telegram.press(reply.message_id, reply.buttons()[0][1])
    else:
        telegram.send_text(chat, "/retry")
    texts = final_texts(telegram, chat, 2)
    assert texts[0] == "keep me"
    assert "having trouble" in texts[1]
    assert reply.buttons()  # the old reply keeps its 🔄


def test_server_losing_rich_messages_mid_process_still_answers_once(tmp_path, fakes):
    telegram, model, _env, process = rich_bot(tmp_path, fakes)
    chat = 101
    model.push(chat_reply("rich first"))
    telegram.send_text(chat, "first")
    final_texts(telegram, chat)
    assert telegram.rich_sent(chat)
    telegram.rich = False  # the Bot API server is replaced by an older one
    model.push(chat_reply("after the downgrade " * 20, size=10, delay=0.02))
    telegram.send_text(chat, "second")
    telegram.wait_for(lambda: len(telegram.sent_texts(chat)) >= 2, timeout=20)
    time.sleep(1.0)
    assert telegram.sent_texts(chat) == ["rich first", ("after the downgrade " * 20).strip()]
    model.push(chat_reply("group after the downgrade " * 20, size=10, delay=0.05))
    telegram.send_text(GROUP, f"{AT} and here?")
    telegram.wait_for(lambda: "downgrade group" in "".join(telegram.sent_texts(GROUP)), timeout=20)
    time.sleep(1.0)
    assert telegram.sent_texts(GROUP) == [("group after the downgrade " * 20).strip()]
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize(
    ("chat", "reply", "shown"),
    [(230, "```\n```", None), (231, "---", None), (232, "<br>", "<br>"), (233, "&nbsp;&lt;", "&nbsp;&lt;")],
)
def test_odd_tiny_replies_arrive(bot, telegram, model, chat, reply, shown):
    model.push(chat_reply(reply))
    telegram.send_text(chat, "say something odd")
    [text] = final_texts(telegram, chat)
    assert text.strip()
    if shown is not None:
        assert text == shown


def test_a_retry_command_killed_mid_reply_is_answered_once_after_the_restart(tmp_path, fakes):
    telegram, model, env, process = rich_bot(tmp_path, fakes)
    retry_streaming(telegram, model, by_button=False)
    time.sleep(0.8)  # a checkpoint of the new reply is on disk
    process.process.kill()
    process.process.wait(10)
    model.queue.clear()
    model.push(chat_reply("regenerated after the crash"))
    posts = len(model.posts)
    process = started(telegram, BotProcess(env))
    telegram.wait_for(lambda: "regenerated after the crash" in telegram.sent_texts(101), timeout=20)
    time.sleep(1.0)
    assert telegram.sent_texts(101).count("regenerated after the crash") == 1
    assert len(model.posts) == posts + 1
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user"]
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_instructions_too_large_for_the_window_are_said_plainly(bot, telegram, model):
    chat = 234
    text = "Follow this rule carefully. " * 1400  # ~40,000 characters: more than the 8,192-token window
    telegram.send_text(chat, f"/system {text}")
    final_texts(telegram, chat)
    posts = len(model.posts)
    telegram.send_text(chat, "hi")
    said = final_texts(telegram, chat, 2)[1]
    assert len(model.posts) == posts
    assert said.startswith("This chat's instructions are too long for this model")
    assert "/system reset" in said
    telegram.send_text(chat, "/system reset")
    final_texts(telegram, chat, 3)
    telegram.send_text(chat, text)  # now the message is what does not fit
    assert final_texts(telegram, chat, 4)[3].startswith("Your message is too long for this model")
    assert len(model.posts) == posts


def test_sigterm_mid_retry_stops_it_cleanly_and_the_restart_does_not_redo_it(tmp_path, fakes):
    telegram, model, env, process = rich_bot(tmp_path, fakes)
    retry_streaming(telegram, model, by_button=True)
    assert process.stop() == 0
    shown = telegram.sent_texts(101)
    assert len(shown) == 1
    assert shown[0].startswith("partial")
    assert shown[0].endswith("⏹ Stopped.")
    posts = len(model.posts)
    process = started(telegram, BotProcess(env))
    time.sleep(2.0)
    assert len(model.posts) == posts  # the stopped retry is not written a third time
    assert telegram.sent_texts(101) == shown
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_a_429_on_a_rich_draft_holds_the_chat_and_the_reply_still_arrives(bot, telegram, model):
    chat = 235
    telegram.fail("sendRichMessageDraft", 429, "Too Many Requests: retry after 2", chat_id=chat, retry_after=2)
    model.push(chat_reply("drafted " * 100, size=5, delay=0.01))
    telegram.send_text(chat, "go")
    [shown] = final_texts(telegram, chat, timeout=20)
    assert shown == ("drafted " * 100).strip()
    assert not [c for c in telegram.violations if c.chat_id == chat]


def test_a_reply_refused_as_rich_keeps_its_retry_button_on_the_entities_path(bot, telegram, model):
    chat = 236
    telegram.fail("sendRichMessage", 400, "Bad Request: can't parse rich message", chat_id=chat)
    ask(telegram, model, chat, "q", "plain **after all**")
    reply = last_message(telegram, chat)
    assert reply.rich is None
    [(label, data)] = reply.buttons()
    assert label == "🔄"
    model.push(chat_reply("rich this time"))
    press = telegram.press(reply.message_id, data)
    assert answered(telegram, press) == "Writing it again…"
    telegram.wait_for(lambda: telegram.sent_texts(chat) == ["rich this time"], timeout=20)
