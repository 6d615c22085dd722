"""Each Telegram chat its own assistant (#22): /model, /system, /role, /retry and 🔄, /new; who may
change them in groups; buttons as real callback_query updates answered with answerCallbackQuery.

One real bot process serves the module (each test uses chats of its own), against the fake Bot API
and the fake model server over real HTTP; tests of restarts and crashes start their own.
"""

from __future__ import annotations

import time

import pytest
from server import chat_reply
from telegram_server import BOT_USER, FakeTelegram
from test_telegram import ALLOWED, GROUP, STRANGER, BotProcess, bot_env, final_texts, started
from test_telegram import fresh_queue as fresh_queue  # autouse: the model's queue emptied around every test
from test_telegram_delivery import confirmed

from chatcore.roles import BUILTIN_ROLES
from telegram_choices import model_data, role_data

DEFAULT_REPLY = "Hello from the test server."
LONG_MODEL = "vendor/" + "a-very-long-model-name-" * 3 + "v1"  # longer than a button's 64 bytes of data
REVIEWER = next(role for role in BUILTIN_ROLES if role.name == "reviewer")
AT = f"@{BOT_USER['username']}"
OWNER = 777  # in TELEGRAM_ADMINS by name, not in TELEGRAM_ALLOWED_USERS
FORUM = -1000500  # an allowed group with topics
PLAIN_GROUP = -1000501  # another allowed group


@pytest.fixture(scope="module")
def bot(telegram, model, tmp_path_factory):
    home = tmp_path_factory.mktemp("telegram-choices-home")
    model.models = ["test-model", "other-model", LONG_MODEL]
    env = bot_env(
        home,
        telegram,
        model,
        TELEGRAM_MODELS=f"other-model,{LONG_MODEL},unlisted-model",
        TELEGRAM_ADMINS="@boss",
        TELEGRAM_RATE_LIMIT="50",
    )
    env["TELEGRAM_ALLOWED_USERS"] = f"{ALLOWED},{FORUM},{PLAIN_GROUP}"
    process = started(telegram, BotProcess(env))
    yield process
    assert process.stop() == 0, process.stderr


def last_message(telegram: FakeTelegram, chat_id: int):
    with telegram.condition:
        return [m for m in telegram.messages.values() if m.chat_id == chat_id][-1]


def answered(telegram: FakeTelegram, update: dict) -> str | None:
    """The text the press of this update was answered with (waits for the answer)."""
    query_id = update["callback_query"]["id"]
    telegram.wait_for(lambda: query_id in telegram.answers)
    return telegram.answers[query_id]


def system_of(post) -> str:
    return post.body["messages"][0]["content"]


def ask(telegram, model, chat_id: int, text: str, count: int, **fields):
    """Send a message and wait for the chat to show `count` messages; the model request it made."""
    posts = len(model.posts)
    telegram.send_text(chat_id, text, **fields)
    final_texts(telegram, chat_id, count)
    telegram.wait_for(lambda: len(model.posts) > posts)
    return model.posts[-1]


def test_the_menu_and_polling_ask_for_the_new_commands_and_button_presses(bot, telegram):
    commands = {c["command"] for c in telegram.calls_to("setMyCommands")[0].params["commands"]}
    assert {"model", "system", "role", "retry", "new", "clear"} <= commands
    assert "callback_query" in telegram.calls_to("getUpdates")[-1].params["allowed_updates"]


def test_model_shows_and_switches_among_the_allowed_models_only(bot, telegram, model):
    chat = 140
    telegram.send_text(chat, "/model")
    [shown] = final_texts(telegram, chat)
    assert shown.startswith("Model: test-model at 127.0.0.1")
    labels = [label for label, _ in last_message(telegram, chat).buttons()]
    assert labels == ["✓ test-model", "other-model", LONG_MODEL, "unlisted-model"]
    assert all(len(data.encode()) <= 64 for _, data in last_message(telegram, chat).buttons())
    telegram.send_text(chat, "/model gpt-4-secret")
    assert "not one of the models offered here: test-model, other-model" in final_texts(telegram, chat, 2)[1]
    telegram.send_text(chat, "/model unlisted-model")  # allowed here, but the server does not serve it
    assert "I can't do that: unknown model 'unlisted-model'" in final_texts(telegram, chat, 3)[2]
    telegram.send_text(chat, "/model other-model")
    assert final_texts(telegram, chat, 4)[3] == "Model is now other-model."
    assert ask(telegram, model, chat, "hi", 5).body["model"] == "other-model"
    telegram.send_text(chat, "/stats")
    assert "Model: other-model" in final_texts(telegram, chat, 6)[5]
    assert ask(telegram, model, 141, "and me?", 1).body["model"] == "test-model"  # other chats keep theirs


def test_a_model_button_switches_and_ticks_the_new_choice(bot, telegram, model):
    chat = 142
    telegram.send_text(chat, "/model")
    final_texts(telegram, chat)
    keyboard = last_message(telegram, chat)
    press = telegram.press(keyboard.message_id, model_data(LONG_MODEL))
    assert answered(telegram, press) == f"Model is now {LONG_MODEL}."
    telegram.wait_for(lambda: ("✓ " + LONG_MODEL) in [label for label, _ in last_message(telegram, chat).buttons()])
    assert ask(telegram, model, chat, "hi", 2).body["model"] == LONG_MODEL
    stale = telegram.press(keyboard.message_id, "model:0123456789ab")  # a model no longer offered
    assert answered(telegram, stale) == "That model is no longer offered here."


def test_system_sets_shows_and_resets_this_chats_instructions(bot, telegram, model):
    chat = 143
    telegram.send_text(chat, "/system Answer in French.\nAlways.")
    assert final_texts(telegram, chat)[0].startswith("Instructions set")
    assert system_of(ask(telegram, model, chat, "hello", 2)) == "Answer in French.\nAlways."
    telegram.send_text(chat, "/system")
    assert final_texts(telegram, chat, 3)[2] == (
        "Instructions (this chat's own (/system reset goes back to the default)):\nAnswer in French.\nAlways."
    )
    telegram.send_text(chat, "/stats")
    assert "Role: none" in final_texts(telegram, chat, 4)[3]
    telegram.send_text(chat, "/system reset")
    assert final_texts(telegram, chat, 5)[4] == "Instructions are back to the default."
    assert system_of(ask(telegram, model, chat, "again", 6)) != "Answer in French.\nAlways."


def test_role_lists_as_buttons_and_takes_one_on(bot, telegram, model):
    chat = 144
    telegram.send_text(chat, "/role")
    [listing] = final_texts(telegram, chat)
    assert listing.startswith("Role: default.")
    buttons = last_message(telegram, chat).buttons()
    assert ("✓ default", role_data("default")) in buttons
    assert ("reviewer", role_data("reviewer")) in buttons
    telegram.send_text(chat, "/role reviewer")
    assert final_texts(telegram, chat, 2)[1] == "Role is now reviewer: model test-model, temperature 0.2."
    post = ask(telegram, model, chat, "review this", 3)
    assert (system_of(post), post.body["temperature"]) == (REVIEWER.system, 0.2)
    keyboard = next(m for m in telegram.messages.values() if m.chat_id == chat)
    press = telegram.press(keyboard.message_id, role_data("translator"))
    assert answered(telegram, press) == "Role is now translator: model test-model, temperature 0.2."
    telegram.wait_for(lambda: ("✓ translator", role_data("translator")) in keyboard.buttons())
    assert system_of(ask(telegram, model, chat, "bonjour", 4)).startswith("You are a translator.")
    telegram.send_text(chat, "/stats")
    stats = final_texts(telegram, chat, 5)[4]
    assert "Role: translator" in stats
    assert "Temperature: 0.2" in stats
    telegram.send_text(chat, "/role pirate")
    assert "Unknown role 'pirate': the roles are default, concise" in final_texts(telegram, chat, 6)[5]


def test_in_groups_only_admins_and_owners_change_settings(bot, telegram, model):
    telegram.send_text(GROUP, "/model other-model", user_id=150)
    [refused] = final_texts(telegram, GROUP)
    assert refused.startswith("Only this group's admins")
    assert telegram.calls_to("getChatMember", GROUP)[-1].params["user_id"] == 150
    telegram.send_text(GROUP, "/system Be terse.", user_id=150)
    assert final_texts(telegram, GROUP, 2)[1].startswith("Only this group's admins")
    telegram.send_text(GROUP, "/system", user_id=150)  # looking is for everyone
    assert final_texts(telegram, GROUP, 3)[2].startswith("Instructions (the default)")
    telegram.send_text(GROUP, "/role", user_id=150)
    final_texts(telegram, GROUP, 4)
    keyboard = last_message(telegram, GROUP)
    press = telegram.press(keyboard.message_id, role_data("concise"), user_id=150)
    assert answered(telegram, press).startswith("Only this group's admins")
    assert ask(telegram, model, GROUP, f"{AT} hi", 5, user_id=150).body["model"] == "test-model"
    telegram.make_admin(GROUP, 151)
    telegram.send_text(GROUP, "/model other-model", user_id=151)
    assert final_texts(telegram, GROUP, 6)[5] == "Model is now other-model."
    telegram.send_text(GROUP, "/system@test_assistant_bot Be terse.", user_id=999, username="boss")  # an owner
    assert final_texts(telegram, GROUP, 7)[6].startswith("Instructions set")
    post = ask(telegram, model, GROUP, f"{AT} hi again", 8, user_id=150)
    assert (post.body["model"], system_of(post)) == ("other-model", "Be terse.")


def test_owners_pass_the_gate_and_strangers_presses_are_refused(bot, telegram, model):
    assert ask(telegram, model, OWNER, "I own this bot", 1, username="boss").body["model"] == "test-model"
    telegram.send_text(STRANGER, "/model", username="mallory")
    final_texts(telegram, STRANGER)
    posts = len(model.posts)
    reply = last_message(telegram, OWNER)
    press = telegram.press(reply.message_id, reply.buttons()[0][1], user_id=STRANGER, username="mallory")
    assert answered(telegram, press) == f"Sorry, this assistant is private. Your Telegram user id is {STRANGER}."
    time.sleep(0.5)
    assert len(model.posts) == posts


def test_retry_regenerates_the_last_reply_in_place_and_old_buttons_say_so(bot, telegram, model):
    chat = 145
    model.push(chat_reply("first answer"))
    ask(telegram, model, chat, "what is 6x7?", 1)
    first = last_message(telegram, chat)
    [(label, data)] = first.buttons()
    assert label == "🔄"
    assert data.startswith("retry:")
    model.push(chat_reply("second answer"))
    telegram.send_text(chat, "/retry")
    telegram.wait_for(lambda: "second answer" in telegram.sent_texts(chat))
    assert telegram.sent_texts(chat) == ["second answer"]  # the old reply's message, edited in place
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user"]
    assert first.buttons()[0][1] != data  # the new reply's own button
    press = telegram.press(first.message_id, data)  # the old reply's button, pressed late
    assert answered(telegram, press) == "That's an older reply: only the last one can be regenerated."
    model.push(chat_reply("third answer"))
    press = telegram.press(first.message_id, first.buttons()[0][1])
    telegram.wait_for(lambda: telegram.sent_texts(chat) == ["third answer"])
    assert answered(telegram, press) == "Writing it again…"
    model.push(chat_reply("fourth, after a question"))
    ask(telegram, model, chat, "and 6x8?", 2)
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user", "assistant", "user"]
    assert model.posts[-1].body["messages"][2]["content"] == "third answer"  # one reply kept, the last


def test_a_failed_retry_keeps_the_old_reply(bot, telegram, model):
    from server import error_status

    chat = 146
    model.push(chat_reply("keep me"))
    ask(telegram, model, chat, "question", 1)
    model.push(error_status(500, "boom"))
    telegram.send_text(chat, "/retry")
    texts = final_texts(telegram, chat, 2)
    assert texts[0] == "keep me"
    assert "having trouble" in texts[1]
    model.push(chat_reply("next"))
    ask(telegram, model, chat, "next question", 3)
    assert model.posts[-1].body["messages"][2]["content"] == "keep me"


def test_new_starts_afresh_and_keeps_the_chats_settings(bot, telegram, model):
    chat = 147
    telegram.send_text(chat, "/model other-model")
    final_texts(telegram, chat)
    ask(telegram, model, chat, "remember the number 7", 2)
    telegram.send_text(chat, "/new")
    assert final_texts(telegram, chat, 3)[2].startswith("New conversation")
    post = ask(telegram, model, chat, "which number?", 4)
    assert post.body["model"] == "other-model"
    assert [m["role"] for m in post.body["messages"]] == ["system", "user"]
    telegram.send_text(148, "/retry")
    assert final_texts(telegram, 148) == ["Nothing to retry yet: send me a message first."]
    telegram.send_text(chat, "/help")
    help_text = final_texts(telegram, chat, 5)[-1]
    assert "/new - start a fresh conversation (same as /clear" in help_text


def test_choices_survive_a_restart_and_a_bad_roles_file_is_one_log_line(tmp_path, fakes):
    telegram, model = fakes
    roles = tmp_path / "roles.toml"
    roles.write_text("[pirate]\nsystem = 7\n")
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_MODELS="other-model", CHATBOT_ROLES=str(roles))
    process = started(telegram, BotProcess(env))
    assert f"{roles}, line 2: role 'pirate': system must be non-empty text" in process.stderr
    assert "going on with the built-in roles" in process.stderr
    telegram.send_text(101, "/model other-model")
    telegram.send_text(101, "/role reviewer")
    final_texts(telegram, 101, 2)
    assert process.stop() == 0
    process = started(telegram, BotProcess(env))
    posts = len(model.posts)
    telegram.send_text(101, "hello again")
    final_texts(telegram, 101, 3)
    telegram.wait_for(lambda: len(model.posts) > posts)
    post = model.posts[-1]
    assert (post.body["model"], system_of(post), post.body["temperature"]) == ("other-model", REVIEWER.system, 0.2)
    assert process.stop() == 0
    env["TELEGRAM_MODELS"] = ""  # the owner no longer offers it: the chat is back on the configured model
    process = started(telegram, BotProcess(env))
    telegram.send_text(101, "and now?")
    final_texts(telegram, 101, 4)
    assert model.posts[-1].body["model"] == "test-model"
    assert system_of(model.posts[-1]) == REVIEWER.system
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_a_retry_cut_by_a_crash_is_answered_after_the_restart(tmp_path, fakes):
    telegram, model = fakes
    env = bot_env(tmp_path / "h", telegram, model, TELEGRAM_DB=str(tmp_path / "telegram.db"))
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("first answer"))
    telegram.send_text(102, "a question")
    final_texts(telegram, 102)
    reply = last_message(telegram, 102)
    model.push(chat_reply("partial " * 300, size=5, delay=0.05))
    press = telegram.press(reply.message_id, reply.buttons()[0][1])
    telegram.wait_for(
        lambda: any("partial" in str(c.params.get("text")) for c in telegram.calls_to("sendMessageDraft"))
    )
    telegram.wait_for(lambda: confirmed(telegram, press))
    time.sleep(0.6)  # a checkpoint of the new reply is on disk: the old one is gone from the history
    process.process.kill()
    process.process.wait(10)
    model.queue.clear()
    process = started(telegram, BotProcess(env))
    telegram.wait_for(lambda: telegram.sent_texts(102) == [DEFAULT_REPLY], timeout=20)
    time.sleep(0.5)
    assert telegram.sent_texts(102) == [DEFAULT_REPLY]  # the old reply's message shows the regenerated one
    assert [m["role"] for m in model.posts[-1].body["messages"]] == ["system", "user"]
    assert process.stop() == 0
    assert "Traceback" not in process.stderr


def test_two_fast_presses_of_one_button_regenerate_once(bot, telegram, model):
    chat = 149
    model.push(chat_reply("first answer"))
    ask(telegram, model, chat, "question", 1)
    reply = last_message(telegram, chat)
    [(_, data)] = reply.buttons()
    posts = len(model.posts)
    model.push(chat_reply("second answer", size=3, delay=0.05))
    presses = [telegram.press(reply.message_id, data), telegram.press(reply.message_id, data)]
    telegram.wait_for(lambda: telegram.sent_texts(chat) == ["second answer"])
    for press in presses:
        answered(telegram, press)
    time.sleep(1.0)
    assert telegram.sent_texts(chat) == ["second answer"]
    assert len(model.posts) == posts + 1
    junk = telegram.press(reply.message_id, "something:else")  # data this bot never wrote
    assert answered(telegram, junk) == "This button no longer does anything."


def test_each_forum_topic_has_its_own_settings(bot, telegram, model):
    forum = FORUM
    telegram.make_admin(forum, 152)
    telegram.send_text(forum, "/model other-model", user_id=152, thread_id=7)
    telegram.wait_for(lambda: "Model is now other-model." in telegram.sent_texts(forum, 7))
    posts = len(model.posts)
    telegram.send_text(forum, f"{AT} in topic 7", user_id=152, thread_id=7)
    telegram.wait_for(lambda: len(model.posts) > posts)
    assert model.posts[-1].body["model"] == "other-model"
    telegram.send_text(forum, f"{AT} in topic 8", user_id=152, thread_id=8)
    telegram.wait_for(lambda: len(model.posts) > posts + 1)
    assert model.posts[-1].body["model"] == "test-model"
    telegram.wait_for(lambda: len(telegram.sent_texts(forum, 8)) == 1)
    reply = last_message(telegram, forum)
    assert reply.thread_id == 8
    model.push(chat_reply("again, in topic 8"))
    press = telegram.press(reply.message_id, reply.buttons()[0][1], user_id=152)
    telegram.wait_for(lambda: telegram.sent_texts(forum, 8) == ["again, in topic 8"])
    assert answered(telegram, press) == "Writing it again…"
    assert model.posts[-1].body["model"] == "test-model"


def test_an_anonymous_admin_may_change_and_telegram_failing_to_say_who_is_admin_refuses(bot, telegram, model):
    group = {"id": PLAIN_GROUP, "type": "supergroup", "title": "Group"}
    telegram.send_text(PLAIN_GROUP, "/model other-model", user_id=1087968824, sender_chat=group)
    assert final_texts(telegram, PLAIN_GROUP) == ["Model is now other-model."]
    telegram.make_admin(PLAIN_GROUP, 153)
    telegram.fail("getChatMember", 400, "Bad Request: member not found", chat_id=PLAIN_GROUP)
    telegram.send_text(PLAIN_GROUP, "/system Be terse.", user_id=153)
    assert final_texts(telegram, PLAIN_GROUP, 2)[1].startswith("Only this group's admins")
    telegram.send_text(PLAIN_GROUP, "/system Be terse.", user_id=153)  # Telegram answers again: allowed
    assert final_texts(telegram, PLAIN_GROUP, 3)[2].startswith("Instructions set")
    assert "could not ask Telegram who is an admin" in bot.stderr
    assert "Traceback" not in bot.stderr
