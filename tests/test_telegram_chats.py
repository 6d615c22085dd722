"""The Telegram assistant as Telegram and its users really behave (#20): deleted messages, refused
updates, blocked and muted chats, floods, forum topics, edits, pastes, replies to others.

One real bot process serves the module (each test uses chat ids of its own), against the fake Bot
API and the fake model server over real HTTP.
"""

from __future__ import annotations

import time

import pytest
from server import SLEEP, chat_reply
from telegram_server import BOT_USER, FakeTelegram
from test_attachments_files import png
from test_telegram import ALLOWED, STRANGER, BotProcess, bot_env, final_texts, model_posts_for, started
from test_telegram import fresh_queue as fresh_queue  # autouse: the model's queue emptied around every test

DEFAULT_REPLY = "Hello from the test server."
ANONYMOUS_GROUPS = (-1000319, -1000320)


@pytest.fixture(scope="module")
def bot(telegram, model, tmp_path_factory):
    home = tmp_path_factory.mktemp("telegram-chats-home")
    env = bot_env(home, telegram, model, TELEGRAM_RATE_LIMIT="5")
    env["TELEGRAM_ALLOWED_USERS"] = ",".join([ALLOWED, *(str(g) for g in ANONYMOUS_GROUPS)])
    process = started(telegram, BotProcess(env))
    yield process
    assert process.stop() == 0, process.stderr


AT = f"@{BOT_USER['username']}"
FORUM = -1000900


def roles(post) -> list[str]:
    return [m["role"] for m in post.body["messages"]]


# -- 3: a failed streaming update loses nothing -----------------------------------------------


def test_a_streamed_message_deleted_by_an_admin_ends_as_a_new_message(bot, telegram, model):
    chat = -1000301
    reply = "streaming " * 60
    model.push(chat_reply(reply, size=10, delay=0.12))  # about 7 s: two or three streaming edits
    telegram.send_text(chat, f"{AT} stream please", user_id=130)
    telegram.wait_for(lambda: telegram.calls_to("sendMessage", chat))
    first = telegram.calls_to("sendMessage", chat)[0]
    telegram.wait_for(lambda: telegram.sent_texts(chat))
    [streamed] = [m for m in telegram.messages.values() if m.chat_id == chat]
    telegram.delete(streamed.message_id)  # an admin deletes it mid-reply
    telegram.wait_for(lambda: reply.strip() in telegram.sent_texts(chat), timeout=25)
    time.sleep(0.5)
    assert telegram.sent_texts(chat) == [reply.strip()]  # the whole reply, once, as a new message
    assert first.status == 200
    assert not any("Sorry" in t for t in telegram.sent_texts(chat))


def test_a_reply_the_streamed_message_already_shows_whole_is_sent_once(bot, telegram, model):
    chat = -1000305
    reply = "All of it streamed before the model said it was done."
    whole = chat_reply(reply, size=12, delay=0.05)
    finish = next(i for i, p in enumerate(whole.pieces) if isinstance(p, bytes) and b'"finish_reason": "stop"' in p)
    whole.pieces.insert(finish, (SLEEP, 4.0))  # the text is all there, shown by an edit, before the finish
    model.push(whole)
    telegram.send_text(chat, f"{AT} say it all", user_id=131)
    telegram.wait_for(lambda: reply in telegram.sent_texts(chat), timeout=25)
    time.sleep(1.0)
    assert telegram.sent_texts(chat) == [reply]  # "message is not modified" is delivered, not a reason to resend


def test_a_refused_draft_is_skipped_and_the_reply_still_arrives(bot, telegram, model):
    model.push(chat_reply("drafted " * 30, size=6, delay=0.05))
    telegram.fail("sendMessageDraft", 400, "Bad Request: TEXTDRAFT_PEER_INVALID", chat_id=102, times=2)
    telegram.send_text(102, "go")
    assert final_texts(telegram, 102) == [("drafted " * 30).strip()]
    drafts = telegram.calls_to("sendMessageDraft", 102)
    assert drafts[0].status == 400
    assert drafts[-1].status == 200


def test_a_turn_finishes_before_the_chats_next_one_starts_even_when_edits_fail(bot, telegram, model):
    chat = -1000303
    telegram.fail("editMessageText", 400, "Bad Request: unexpected failure", chat_id=chat, times=100)
    model.push(chat_reply("slow answer " * 30, size=12, delay=0.12))  # about 4 s
    telegram.send_text(chat, f"{AT} one", user_id=131, first_name="Ada")
    telegram.wait_for(lambda: telegram.calls_to("editMessageText", chat), timeout=20)
    telegram.send_text(chat, f"{AT} two", user_id=131, first_name="Ada")
    telegram.wait_for(lambda: model_posts_for(model, "Ada: two"), timeout=25)
    sent = model_posts_for(model, "Ada: two")[-1].body["messages"]
    assert [m["content"] for m in sent[1:]] == ["Ada: one", "slow answer " * 30, "Ada: two"]
    telegram.wait_for(lambda: ("slow answer " * 30).strip() in telegram.sent_texts(chat), timeout=20)
    assert not any("Sorry" in t for t in telegram.sent_texts(chat))


# -- 4 and 6: chats that cannot be written to, and that can again --------------------------


def test_a_group_that_removed_the_bot_and_added_it_again_is_answered(bot, telegram, model):
    chat = -1000304
    telegram.fail("sendMessage", 403, "Forbidden: bot was kicked from the supergroup chat", chat_id=chat)
    telegram.send_text(chat, f"{AT} hello", user_id=132)
    telegram.wait_for(lambda: any(c.status == 403 for c in telegram.calls_to("sendMessage", chat)))
    telegram.member(chat, "member", old="left")  # added back
    time.sleep(0.5)
    telegram.send_text(chat, f"{AT} are you back?", user_id=132)
    assert final_texts(telegram, chat) == [DEFAULT_REPLY]


def test_a_group_where_the_bot_may_not_write_stops_calling_the_model(bot, telegram, model):
    chat = -1000306
    telegram.mute(chat)
    try:
        telegram.send_text(chat, f"{AT} first", user_id=133)
        telegram.wait_for(lambda: telegram.calls_to("sendChatAction", chat))
        time.sleep(1.5)
        posts = len(model.posts)
        for n in range(3):
            telegram.send_text(chat, f"{AT} again {n}", user_id=133)
        time.sleep(1.5)
        assert len(model.posts) == posts  # no credit spent on a chat nobody can read
        assert not any("internal error" in line for line in bot.lines)
    finally:
        telegram.mute(chat, False)
    telegram.member(chat, "member", old="restricted")  # the right to write is back
    time.sleep(0.5)
    telegram.send_text(chat, f"{AT} now?", user_id=133)
    assert final_texts(telegram, chat) == [DEFAULT_REPLY]


# -- 7: unknown commands ----------------------------------------------------------------------


def test_unknown_commands_get_one_line_pointing_at_help(bot, telegram, model):
    posts = len(model.posts)
    telegram.send_text(107, "/reset")
    [answer] = final_texts(telegram, 107)
    assert "/reset" in answer
    assert "/help" in answer
    assert "\n" not in answer
    chat = -1000307
    telegram.send_text(chat, "/settings", user_id=134)  # in a group, maybe for another bot: silence
    telegram.send_text(chat, f"/reset{AT}", user_id=134)
    [answer] = final_texts(telegram, chat)
    assert "/reset" in answer
    assert "/help" in answer
    assert len(model.posts) == posts


# -- 8: edits -------------------------------------------------------------------------------


def test_editing_the_last_message_redoes_its_reply_and_older_edits_are_ignored(bot, telegram, model):
    telegram.send_text(108, "what is 2+2?")
    final_texts(telegram, 108)
    last = telegram.send_text(108, "what is 3+3?")
    final_texts(telegram, 108, 2)
    model.push(chat_reply("6, and it was 3+4: 7."))
    telegram.edit(last, "what is 3+4?")
    texts = final_texts(telegram, 108, 3)
    assert texts[2] == "6, and it was 3+4: 7."
    sent = model.posts[-1].body["messages"]
    assert [m["content"] for m in sent[1:]] == ["what is 2+2?", DEFAULT_REPLY, "what is 3+4?"]
    telegram.send_text(108, "/stats")
    assert "Messages kept: 4" in final_texts(telegram, 108, 4)[3]  # one version of the exchange
    older = telegram.send_text(109, "remember okapi")
    final_texts(telegram, 109)
    telegram.send_text(109, "and zebra")
    final_texts(telegram, 109, 2)
    posts = len(model.posts)
    telegram.edit(older, "/clear")  # an old message edited into a command does nothing
    telegram.edit(older, "remember giraffe")  # nor does an edit of an older message
    time.sleep(1.5)
    assert len(model.posts) == posts
    assert len(telegram.sent_texts(109)) == 2
    telegram.send_text(109, "/stats")
    assert "Messages kept: 4" in final_texts(telegram, 109, 3)[2]


def test_an_edit_whose_redo_fails_keeps_the_exchange_and_a_second_edit_redoes_it(bot, telegram, model):
    from server import error_status

    model.push(chat_reply("Paris."))
    question = telegram.send_text(117, "capital of France?")
    final_texts(telegram, 117)
    model.push(error_status(500, "boom"))
    telegram.edit(question, "capital of Italy?")
    [_, failure] = final_texts(telegram, 117, 2)
    assert "trouble" in failure
    telegram.send_text(117, "/stats")
    assert "Messages kept: 2" in final_texts(telegram, 117, 3)[2]  # the question and its answer, still there
    model.push(chat_reply("Rome."))
    telegram.edit(question, "capital of Italy, please?")  # the same message, edited again: redone in place
    telegram.wait_for(lambda: "Rome." in telegram.sent_texts(117))
    sent = model.posts[-1].body["messages"]
    assert [m["content"] for m in sent[1:]] == ["capital of Italy, please?"]  # the old exchange, replaced once
    model.push(chat_reply("Next."))
    telegram.send_text(117, "and Spain?")
    final_texts(telegram, 117, 5)
    assert [m["content"] for m in model.posts[-1].body["messages"][1:]] == [
        "capital of Italy, please?",
        "Rome.",
        "and Spain?",
    ]


# -- 9: replies to someone else's message ----------------------------------------------------


def test_a_reply_to_someone_elses_message_carries_it_with_its_author(bot, telegram, model):
    chat = -1000310
    bobs = telegram.message_of(
        telegram.send_text(chat, "The capital of Australia is Sydney.", user_id=135, first_name="Bob")
    )
    telegram.send_text(chat, f"{AT} is this right?", user_id=136, first_name="Ada", reply_to=bobs)
    final_texts(telegram, chat)
    asked = model.posts[-1].body["messages"][-1]["content"]
    assert asked.startswith("Ada: ")
    assert "Bob" in asked
    assert "The capital of Australia is Sydney." in asked
    assert "is this right?" in asked
    telegram.send_text(chat, f"{AT} and this part?", user_id=136, first_name="Ada", reply_to=bobs, quote="Sydney")
    final_texts(telegram, chat, 2)
    asked = model.posts[-1].body["messages"][-1]["content"]
    assert '"Sydney"' in asked
    assert "capital" not in asked


# -- 10: long pastes ------------------------------------------------------------------------


def test_a_long_paste_split_by_the_client_is_one_turn(bot, telegram, model):
    paste = "".join(f"line {n:05d} of a very long log file\n" for n in range(400))  # about 13,600 characters
    parts = [paste[i : i + 4096] for i in range(0, len(paste), 4096)]
    assert len(parts) == 4
    posts = len(model.posts)
    for part in parts:
        telegram.send_text(111, part)
    [reply] = final_texts(telegram, 111)
    time.sleep(2.5)
    assert len(model.posts) == posts + 1
    assert len(telegram.sent_texts(111)) == 1
    asked = model.posts[-1].body["messages"][-1]["content"]
    assert asked.replace("\n", "") == paste.replace("\n", "")  # every part, in order
    assert reply == DEFAULT_REPLY
    # Two short messages sent quickly stay two turns, answered in order.
    telegram.send_text(112, "short one")
    telegram.send_text(112, "short two")
    final_texts(telegram, 112, 2)
    assert [m["content"] for m in model.posts[-1].body["messages"][1:]] == [
        "short one",
        DEFAULT_REPLY,
        "short two",
    ]


# -- 11: what the model wrote is what the chat shows ------------------------------------------


def test_text_in_angle_brackets_is_shown_as_written(bot, telegram, model):
    reply = "Use Vec<String> or Option<T>; <div> and <br> stay, x<y>z too, and &amp; is not &."
    model.push(chat_reply(reply, size=7, delay=0.02))
    telegram.send_text(113, "types?")
    assert final_texts(telegram, 113) == [reply]


# -- 12: forum topics -----------------------------------------------------------------------


def test_every_call_for_a_topic_carries_its_thread_and_topics_are_separate_conversations(bot, telegram, model):
    long_reply = "\n\n".join(f"Paragraph {n}. " + "Words that go on and on. " * 40 for n in range(5))
    model.push(chat_reply(long_reply, size=200, delay=0.3))  # split into two messages, slow enough to type
    telegram.send_text(FORUM, f"{AT} topic question", user_id=137, thread_id=77)
    telegram.wait_for(lambda: len(telegram.sent_texts(FORUM, 77)) >= 2, timeout=30)
    time.sleep(0.5)
    calls = [c for c in telegram.calls if c.chat_id == FORUM and c.method in ("sendMessage", "sendChatAction")]
    assert {c.method for c in calls} == {"sendMessage", "sendChatAction"}
    assert all(c.thread_id == 77 for c in calls)  # typing and every part, in the topic
    telegram.send_text(FORUM, f"{AT} general question", user_id=137)  # General: no thread id
    final_texts(telegram, FORUM, 3)
    general = [c for c in telegram.calls if c.chat_id == FORUM and c.method == "sendMessage"][-1]
    assert general.thread_id is None
    assert roles(model.posts[-1]) == ["system", "user"]  # General's history has nothing of the topic's
    telegram.send_text(FORUM, f"/clear{AT}", user_id=137, thread_id=77)
    telegram.wait_for(lambda: any("cleared" in t for t in telegram.sent_texts(FORUM, 77)))
    telegram.send_text(FORUM, f"/stats{AT}", user_id=137)
    telegram.wait_for(lambda: any("Messages kept" in t for t in telegram.sent_texts(FORUM, None)))
    [stats] = [t for t in telegram.sent_texts(FORUM, None) if "Messages kept" in t]
    assert "Messages kept: 2" in stats  # /clear in the topic left General alone
    # A private chat with topics: drafts and the reply carry the thread too.
    telegram.send_text(114, "private topic", thread_id=5)
    final_texts(telegram, 114)
    private_calls = [c for c in telegram.calls if c.chat_id == 114 and c.method != "getUpdates"]
    assert private_calls
    assert all(c.thread_id == 5 for c in private_calls)


# -- 13: flood control for everyone ---------------------------------------------------------


def flooding(telegram: FakeTelegram, chat_id: int) -> list:
    return [c for c in telegram.too_many() if c.chat_id == chat_id] + [
        c for c in telegram.violations if c.chat_id == chat_id
    ]


def test_a_flooding_stranger_gets_one_note_and_no_429(bot, telegram, model):
    telegram.flood = True
    try:
        posts = len(model.posts)
        for n in range(20):
            telegram.send_text(STRANGER + 1, f"let me in {n}", username="mallory")
        time.sleep(3.0)
        [note] = telegram.sent_texts(STRANGER + 1)
        assert str(STRANGER + 1) in note
        assert flooding(telegram, STRANGER + 1) == []
        assert len(model.posts) == posts
    finally:
        telegram.flood = False


def test_commands_in_a_fresh_chat_and_a_flooding_user_never_meet_429(bot, telegram, model):
    telegram.flood = True
    try:
        for _ in range(6):
            telegram.send_text(115, "/help")
        texts = final_texts(telegram, 115, 6, timeout=20)
        assert all("/clear" in t for t in texts)
        assert flooding(telegram, 115) == []
        for n in range(20):  # TELEGRAM_RATE_LIMIT=5 in this module
            telegram.send_text(116, f"message {n}")
        texts = final_texts(telegram, 116, 6, timeout=40)
        time.sleep(2.0)
        texts = telegram.sent_texts(116)
        assert sum("faster than I can answer" in t for t in texts) == 1  # one note per limit window
        assert texts.count(DEFAULT_REPLY) == 5
        assert flooding(telegram, 116) == []
    finally:
        telegram.flood = False


# -- polish ---------------------------------------------------------------------------------


def test_mentions_are_exact_and_captions_are_read(bot, telegram, model):
    chat = -1000317
    posts = len(model.posts)
    for text in (f"{AT}2 hi", f"{AT}any hi", "mail me at ada@test_assistant_bot.example"):
        telegram.send_text(chat, text, user_id=138)
    time.sleep(1.0)
    assert len(model.posts) == posts
    assert telegram.sent_texts(chat) == []
    bot_user = {k: BOT_USER[k] for k in ("id", "is_bot", "first_name")}
    telegram.send_text(
        chat,
        "Assistant, hello",
        user_id=138,
        entities=[{"type": "text_mention", "offset": 0, "length": 9, "user": bot_user}],
    )
    final_texts(telegram, chat)
    photo = [telegram.add_file(png(90, 90), width=90, height=90)]  # the photo itself: see test_telegram_attachments
    telegram.send_text(118, None, photo=photo, caption="what is in this photo's caption?")
    final_texts(telegram, 118)
    content = model.posts[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what is in this photo's caption?"}


def test_anonymous_admins_of_different_groups_have_their_own_rate_limits(bot, telegram, model):
    anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
    for chat in ANONYMOUS_GROUPS:
        sender_chat = {"id": chat, "type": "supergroup", "title": f"Group {chat}"}
        for n in range(3):
            telegram.send_text(chat, f"{AT} question {n}", sender_chat=sender_chat, **{"from": anonymous})
    for chat in ANONYMOUS_GROUPS:
        texts = final_texts(telegram, chat, 3, timeout=20)
        assert texts.count(DEFAULT_REPLY) == 3  # 3 each, under the limit of 5: no shared bucket


def test_an_update_delivered_again_is_answered_once_and_channel_posts_not_at_all(bot, telegram, model):
    update = telegram.send_text(119, "only once, please")
    final_texts(telegram, 119)
    posts = len(model.posts)
    telegram.redeliver(update)  # Telegram sends it again (a crash between answering and confirming)
    channel = {"id": -1000321, "type": "channel", "title": "News"}
    telegram.push({"channel_post": {"message_id": 5, "date": 0, "chat": channel, "text": f"{AT} news"}})
    time.sleep(1.5)
    assert len(model.posts) == posts
    assert telegram.sent_texts(119) == [DEFAULT_REPLY]
    assert telegram.sent_texts(-1000321) == []


def test_an_empty_reply_keeps_the_users_message_for_the_next_one(bot, telegram, model):
    model.push(chat_reply("", completion_tokens=0))
    telegram.send_text(120, "what is the capital of Peru?")
    [note] = final_texts(telegram, 120)
    assert "empty reply" in note
    telegram.send_text(120, "try again")
    final_texts(telegram, 120, 2)
    sent = model.posts[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert "what is the capital of Peru?" in sent[1]["content"]
    assert "try again" in sent[1]["content"]
    telegram.send_text(120, "/stats")
    assert "Messages kept: 2" in final_texts(telegram, 120, 3)[2]
