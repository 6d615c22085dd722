"""Rich messages, the Stop button and the thinking draft (Bot API 10.1-10.3), on both paths.

The real bot process against the fake Bot API with its rich methods (`telegram.rich = True`), and
against one without them (an older Bot API server: 404); the splitting and escaping in-process.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from server import chat_reply
from telegram_server import RICH_BLOCKS, RICH_CHARS, RICH_COLUMNS, FakeTelegram, check_rich, render_rich
from test_telegram import GROUP, BotProcess, bot_env, final_texts, started
from test_telegram import fresh_queue as fresh_queue  # autouse: the model's queue emptied around every test

from telegram_rich import Stop, Stops, draft_message, final_message, rich_markdown, split_rich, stop_of

FIDELITY = (
    "Compare a < b && b > c; <b>not bold</b> stays, &amp; stays, AT&T too.\n\n"
    "Inline `Vec<String> & x` and:\n\n```rust\nlet v: Vec<String> = vec![]; // &amp; <p>\n```"
)


def table(rows: int, columns: int = 4, cell: str = "cell") -> str:
    head = "| " + " | ".join(f"h{c}" for c in range(columns)) + " |"
    rule = "|" + "---|" * columns
    body = ["| " + " | ".join(f"{cell}{r}.{c} <&>" for c in range(columns)) + " |" for r in range(rows)]
    return "\n".join([head, rule, *body])


def long_reply_with_tables(size: int) -> str:
    """About `size` characters: headings, paragraphs, tables and code, as a model writes a report."""
    sections = []
    n = 0
    while sum(map(len, sections)) < size:
        sections.append(
            f"## Section {n}\n\nSome text for section {n}, with a < b & c.\n\n{table(30, cell=f's{n}r')}\n\n"
            f"```python\nprint({n})  # <done>\n```"
        )
        n += 1
    return "\n\n".join(sections)


# -- in-process: escaping, splitting, the Stop update ---------------------------------------


def test_rich_markdown_shows_what_the_model_wrote():
    text, _blocks, _columns = render_rich(rich_markdown(FIDELITY))
    assert "a < b && b > c" in text
    assert "<b>not bold</b> stays, &amp; stays, AT&T too." in text
    assert "Vec<String> & x" in text
    assert "let v: Vec<String> = vec![]; // &amp; <p>" in text
    assert "\\" not in text
    # What the model escaped itself shows as Markdown shows it, once (not with a backslash).
    assert render_rich(rich_markdown("use \\<b> for bold"))[0] == "use <b> for bold"
    # Unescaped, Telegram's parser would read HTML and character references: the test can fail.
    unescaped, _b, _c = render_rich(FIDELITY)
    assert "<b>not bold</b>" not in unescaped


def test_a_30000_character_reply_with_tables_fits_the_rich_limits_and_keeps_every_cell():
    reply = long_reply_with_tables(30_000)
    assert len(reply) >= 30_000
    parts = split_rich(reply)
    shown = ""
    for part in parts:
        problem, text = check_rich(final_message(part), draft=False)
        assert problem is None, problem
        shown += text + "\n"
    for n in range(reply.count("## Section")):
        assert f"Section {n}" in shown
        assert f"s{n}r29.3 <&>" in shown  # the last cell of each table
        assert f"print({n})  # <done>" in shown
    assert all(part.count("```") % 2 == 0 for part in parts)  # every fence closed in its own part


def test_over_the_limits_a_reply_is_cut_at_blocks_with_fences_reopened_and_headers_repeated():
    code = "```python\n" + "\n".join(f"print({i})  # <{i}>" for i in range(4000)) + "\n```"
    big_table = table(1200)
    wide = table(2, columns=RICH_COLUMNS + 5)
    reply = f"# Report\n\n{code}\n\n{big_table}\n\nRight after this line, a table too wide:\n{wide}\n\nThe end & done."
    parts = split_rich(reply)
    assert len(parts) > 3
    texts = []
    for part in parts:
        markdown = final_message(part)["markdown"]
        problem, text = check_rich(final_message(part), draft=False)
        assert problem is None, problem
        text, blocks, columns = render_rich(markdown)
        assert len(text.encode("utf-16-le")) // 2 <= RICH_CHARS
        assert blocks <= RICH_BLOCKS
        assert columns <= RICH_COLUMNS
        assert part.count("```") % 2 == 0
        texts.append(text)
    shown = "\n".join(texts)
    for i in range(4000):
        assert f"print({i})  # <{i}>" in shown
    for r in range(1200):
        assert f"cell{r}.3 <&>" in shown
    code_parts = [p for p in parts if p.startswith("```python")]
    assert len(code_parts) >= 2  # the code block was cut, and each piece reopened as python
    table_parts = [p for p in parts if p.startswith("| h0")]
    assert len(table_parts) >= 3  # the long table, under its header in every part
    assert any("```\n| h0 | h1" in p for p in parts)  # the table too wide to render: shown as code
    assert shown.rstrip().endswith("The end & done.")


def test_a_draft_shows_the_last_part_of_a_long_reply():
    reply = long_reply_with_tables(70_000)
    draft = draft_message(reply)["markdown"]
    assert draft == rich_markdown(split_rich(reply)[-1])
    assert check_rich({"markdown": draft}, draft=True)[0] is None


def test_stop_update_is_read_from_api_kwargs_and_matches_chat_topic_and_draft():
    from telegram import Update

    from chatcore.turn import Cancel

    body = {"chat": {"id": 5, "type": "private"}, "draft_id": 77, "message_thread_id": 9}
    update = Update.de_json(
        {"update_id": 1, "stopped_message_generation": body}, None
    )  # as python-telegram-bot reads it
    stop = stop_of(update)
    assert stop == Stop(5, 9, 77)
    assert stop_of(Update.de_json({"update_id": 2}, None)) is None
    assert stop_of(Update.de_json(update.to_dict(), None)) == stop  # as the inbox gives it back after a restart

    stops, cancel = Stops(), Cancel()
    stops.shown(Stop(5, 9, 77), cancel)
    assert not stops.press(Stop(5, None, 77))  # another topic
    assert not stops.press(Stop(5, 9, 78))  # another draft
    assert not cancel.is_set()
    assert stops.press(stop)
    assert cancel.is_set()
    assert not stops.press(stop)  # once


# -- the bot against a Bot API server with rich messages -----------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("rich-home")


@pytest.fixture(scope="module")
def bot(telegram, model, home):
    telegram.rich = True
    process = started(telegram, BotProcess(bot_env(home, telegram, model)))
    yield process
    assert process.stop() == 0, process.stderr


def next_request(telegram: FakeTelegram, model, chat: int) -> list[dict]:
    """The messages the model is sent for the chat's next message: the history as the bot keeps it."""
    telegram.send_text(chat, "go on")
    final_texts(telegram, chat, 2)
    return model.posts[-1].body["messages"]


def reply_after(telegram: FakeTelegram, model, chat: int, status: int, description: str, reply: str) -> str:
    """What the chat shows for a reply whose first sendRichMessage fails this way."""
    telegram.fail("sendRichMessage", status, description, chat_id=chat)
    model.push(chat_reply(reply))
    telegram.send_text(chat, "hello")
    [shown] = final_texts(telegram, chat)
    return shown


def test_private_reply_thinks_streams_a_rich_draft_with_stop_then_one_rich_message(bot, telegram, model):
    reply = "# Plan\n\n| step | why |\n|---|---|\n| one | <first> |\n\n" + FIDELITY + "\n\n" + "More words. " * 20
    model.push(chat_reply(reply, size=6, delay=0.03))
    telegram.send_text(131, "plan it")
    [shown] = final_texts(telegram, 131)
    drafts = telegram.calls_to("sendRichMessageDraft", 131)
    assert drafts[0].params["rich_message"] == {"blocks": [{"type": "thinking", "text": "Thinking…"}]}
    assert all(d.params["can_stop"] is True and d.params["keep_on_stop"] is True for d in drafts)
    assert len({d.params["draft_id"] for d in drafts}) == 1
    assert any("markdown" in d.params["rich_message"] for d in drafts[1:])
    [sent] = telegram.calls_to("sendRichMessage", 131)
    assert sent.params["rich_message"]["markdown"] == rich_markdown(reply)
    assert sent.params["rich_message"]["skip_entity_detection"] is False
    assert drafts[-1].at < sent.at
    assert not telegram.calls_to("sendMessage", 131)
    assert not telegram.calls_to("sendMessageDraft", 131)
    assert not telegram.calls_to("sendChatAction", 131)  # the thinking block says it instead
    assert "step | why" in shown
    assert "one | <first>" in shown
    assert "Compare a < b && b > c; <b>not bold</b> stays, &amp; stays, AT&T too." in shown
    assert "let v: Vec<String> = vec![]; // &amp; <p>" in shown


def test_a_30000_character_reply_with_tables_arrives_whole_in_rich_messages(bot, telegram, model):
    reply = long_reply_with_tables(30_000)
    model.push(chat_reply(reply, size=400))
    telegram.send_text(132, "report")
    expected = len(split_rich(reply))
    texts = final_texts(telegram, 132, expected, timeout=30)
    assert len(texts) == expected
    assert len(telegram.calls_to("sendRichMessage", 132)) == expected
    shown = "\n".join(texts)
    for n in range(reply.count("## Section")):
        assert f"s{n}r29.3 <&>" in shown


def test_stop_pressed_mid_stream_cancels_the_model_request_and_keeps_the_partial_reply(bot, telegram, model, home):
    model.push(chat_reply("word " * 400, size=5, delay=0.05))
    telegram.send_text(133, "talk")
    draft = telegram.wait_for(
        lambda: next(
            (
                c
                for c in telegram.calls_to("sendRichMessageDraft", 133)
                if "word word" in c.params["rich_message"].get("markdown", "")
            ),
            None,
        )
    )
    disconnects = len(model.disconnects)
    stop = telegram.stop_generation(133, draft.params["draft_id"])
    [reply] = final_texts(telegram, 133)
    assert reply.startswith("word")
    assert reply.endswith("⏹ Stopped.")
    telegram.wait_for(lambda: len(model.disconnects) > disconnects)  # the model request was closed
    history = next_request(telegram, model, 133)
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[2]["content"].startswith("word word")  # the partial reply, kept
    assert len(history[2]["content"]) < len("word " * 400)
    # The Stop was written to the inbox like any update, and settled once handled.
    db = sqlite3.connect(str(next(home.rglob("telegram.db"))))
    try:
        assert db.execute("SELECT state FROM inbox WHERE update_id = ?", (stop["update_id"],)).fetchone() == ("done",)
    finally:
        db.close()


def test_stop_for_an_unknown_or_finished_draft_changes_nothing(bot, telegram, model):
    model.push(chat_reply("all of it " * 40, size=8, delay=0.02))
    telegram.send_text(134, "whole please")
    telegram.wait_for(lambda: telegram.calls_to("sendRichMessageDraft", 134))
    telegram.stop_generation(134, 123)  # a draft id no reply uses
    telegram.stop_generation(135, telegram.calls_to("sendRichMessageDraft", 134)[0].params["draft_id"])  # another chat
    [reply] = final_texts(telegram, 134)
    assert reply == ("all of it " * 40).strip()
    draft_id = telegram.calls_to("sendRichMessageDraft", 134)[0].params["draft_id"]
    telegram.stop_generation(134, draft_id)  # pressed after the reply was finished
    telegram.wait_for(lambda: sum("nothing to stop" in line for line in bot.lines) >= 3)
    time.sleep(0.3)
    assert telegram.sent_texts(134) == [reply]


def test_the_bot_asks_telegram_for_the_stop_update(bot, telegram):
    assert "stopped_message_generation" in (telegram.allowed_updates or [])
    assert "message" in (telegram.allowed_updates or [])


def test_a_rich_message_refused_for_one_reply_goes_the_entities_path_and_the_next_is_rich(bot, telegram, model):
    shown = reply_after(telegram, model, 136, 400, "Bad Request: can't parse rich message", "Some **bold** & <more>.")
    assert shown == "Some bold & <more>."
    [text] = telegram.calls_to("sendMessage", 136)
    assert {"type": "bold", "offset": 5, "length": 4} in text.params["entities"]
    model.push(chat_reply("Rich again."))
    telegram.send_text(136, "second")
    final_texts(telegram, 136, 2)
    assert len(telegram.calls_to("sendRichMessage", 136)) == 2
    assert len(telegram.calls_to("sendMessage", 136)) == 1


def test_a_rich_send_that_fails_on_the_way_is_retried_as_rich_never_sent_twice(bot, telegram, model):
    assert reply_after(telegram, model, 137, 502, "Bad Gateway", "Once only.") == "Once only."
    time.sleep(0.5)
    assert telegram.sent_texts(137) == ["Once only."]
    assert not telegram.calls_to("sendMessage", 137)
    assert [c.status for c in telegram.calls_to("sendRichMessage", 137)] == [502, 200]


def test_groups_stream_by_edits_and_finish_with_a_rich_message(bot, telegram, model):
    model.push(chat_reply("| a | b |\n|---|---|\n| 1 | <2> |\n\n" + "more text " * 60, size=20, delay=0.05))
    telegram.send_text(GROUP, "@test_assistant_bot table please")
    telegram.wait_for(lambda: telegram.rich_sent(GROUP))
    time.sleep(0.3)
    [message] = [m for m in telegram.messages.values() if m.chat_id == GROUP and m.rich is not None]
    assert "1 | <2>" in message.text
    assert not telegram.calls_to("sendRichMessageDraft", GROUP)
    edits = telegram.calls_to("editMessageText", GROUP)
    assert edits
    assert "rich_message" in edits[-1].params  # the streamed message became the rich reply
    assert all("text" in e.params for e in edits[:-1])
    assert not [line for line in bot.lines if "Warning" in line]


def test_rich_drafts_refused_for_one_reply_stream_as_before_and_the_reply_still_arrives(bot, telegram, model):
    telegram.fail("sendRichMessageDraft", 400, "Bad Request: can't parse rich message", chat_id=138, times=3)
    model.push(chat_reply("word " * 200, size=5, delay=0.02))
    telegram.send_text(138, "go")
    [shown] = final_texts(telegram, 138)
    assert shown == ("word " * 200).strip()
    assert telegram.calls_to("sendMessageDraft", 138)  # the rest of this reply streamed as plain drafts
    assert len(telegram.calls_to("sendRichMessageDraft", 138)) == 3
    assert len(telegram.calls_to("sendRichMessage", 138)) == 1


def test_a_part_refused_in_the_middle_goes_the_entities_path_and_nothing_is_shown_twice(bot, telegram, model):
    reply = long_reply_with_tables(70_000)
    parts = split_rich(reply)
    assert len(parts) >= 3
    model.push(chat_reply(reply, size=2000))
    telegram.send_text(139, "the long report")
    telegram.wait_for(lambda: len(telegram.rich_sent(139)) >= 2)  # the first two go at once, the third a second later
    telegram.fail("sendRichMessage", 400, "Bad Request: can't parse rich message", chat_id=139)
    last_cell = f"s{reply.count('## Section') - 1}r29.3 <&>"
    telegram.wait_for(lambda: last_cell in "".join(telegram.sent_texts(139)), timeout=30)
    time.sleep(1.0)
    shown = telegram.sent_texts(139)
    assert len(telegram.rich_sent(139)) == 2
    assert len(shown) > 2  # the rest as text messages with entities
    everything = "\n".join(shown)
    for n in range(reply.count("## Section")):
        assert everything.count(f"s{n}r29.3 <&>") == 1, n  # every table's last cell, once


def test_killed_mid_rich_draft_the_message_is_answered_once_after_a_restart(tmp_path, fakes):
    import signal

    telegram, model = fakes
    telegram.rich = True
    env = bot_env(tmp_path / "h", telegram, model)
    process = started(telegram, BotProcess(env))
    model.push(chat_reply("partial " * 300, size=5, delay=0.05))
    telegram.send_text(101, "a long answer please")
    telegram.wait_for(
        lambda: any("partial" in str(c.params["rich_message"]) for c in telegram.calls_to("sendRichMessageDraft", 101))
    )
    process.process.send_signal(signal.SIGKILL)
    process.stop()
    assert telegram.sent_texts(101) == []  # only a draft was ever shown
    model.push(chat_reply("The whole answer."))
    process = started(telegram, BotProcess(env))
    assert final_texts(telegram, 101) == ["The whole answer."]
    history = model.posts[-1].body["messages"]
    assert [m["role"] for m in history] == ["system", "user"]  # the cut reply was taken back, not kept
    assert process.stop() == 0, process.stderr


# -- the bot against an older Bot API server, and with rich messages turned off ---------------


def only_old_calls(telegram: FakeTelegram, chat_id: int) -> None:
    assert not [c for c in telegram.calls if c.chat_id == chat_id and "Rich" in c.method]


def test_without_rich_methods_the_bot_learns_once_and_uses_todays_path(tmp_path, fakes):
    telegram, model = fakes
    process = started(telegram, BotProcess(bot_env(tmp_path / "h", telegram, model)))
    model.push(chat_reply("Some **bold** & <b>kept</b>.", size=4, delay=0.05))
    telegram.send_text(101, "first")
    [shown] = final_texts(telegram, 101)
    assert shown == "Some bold & <b>kept</b>."
    assert [c.status for c in telegram.calls_to("sendRichMessage")] == [404]
    assert [c.status for c in telegram.calls_to("sendRichMessageDraft")] == [404]
    assert telegram.calls_to("sendChatAction", 101)
    assert telegram.calls_to("sendMessageDraft", 101)
    assert len(telegram.calls_to("sendMessage", 101)) == 1
    model.push(chat_reply("Second."))
    telegram.send_text(102, "second")
    assert final_texts(telegram, 102) == ["Second."]
    only_old_calls(telegram, 102)  # remembered for the process
    # A group's streamed message: the old server ignores rich_message in an edit; the reply still arrives once.
    model.push(chat_reply("In a **group** & <b>kept</b>. " * 30, size=20, delay=0.05))
    telegram.send_text(GROUP, "@test_assistant_bot hi")
    telegram.wait_for(lambda: "kept</b>. In a group" in "".join(telegram.sent_texts(GROUP)))
    time.sleep(0.5)
    [shown] = telegram.sent_texts(GROUP)
    assert shown == ("In a group & <b>kept</b>. " * 30).strip()
    assert process.stop() == 0, process.stderr


def test_telegram_rich_off_keeps_the_entities_path(tmp_path, fakes):
    telegram, model = fakes
    telegram.rich = True
    process = started(telegram, BotProcess(bot_env(tmp_path / "h", telegram, model, TELEGRAM_RICH="0")))
    model.push(chat_reply("Plain **path**.", size=4, delay=0.05))
    telegram.send_text(101, "hi")
    assert final_texts(telegram, 101) == ["Plain path."]
    model.push(chat_reply("In a group."))
    telegram.send_text(GROUP, "@test_assistant_bot hi")
    assert final_texts(telegram, GROUP) == ["In a group."]
    only_old_calls(telegram, 101)
    only_old_calls(telegram, GROUP)
    assert process.stop() == 0, process.stderr


def test_the_retry_button_rides_on_the_rich_reply_and_regenerates_it_in_place(bot, telegram, model):
    from test_telegram_choices import answered, last_message

    chat = 141
    model.push(chat_reply("| a | b |\n|---|---|\n| 1 | 2 |"))
    telegram.send_text(chat, "a table please")
    final_texts(telegram, chat)
    first = last_message(telegram, chat)
    assert first.rich is not None  # sent as a rich message ...
    [(label, data)] = first.buttons()  # ... with the 🔄 button under it
    assert label == "🔄"
    model.push(chat_reply("| a | b |\n|---|---|\n| 3 | 4 |"))
    press = telegram.press(first.message_id, data)
    assert answered(telegram, press) == "Writing it again…"
    telegram.wait_for(lambda: "3 | 4" in (last_message(telegram, chat).text or ""))
    assert len(telegram.sent_texts(chat)) == 1  # the old reply's message, now the new one
    assert last_message(telegram, chat).rich is not None
    assert last_message(telegram, chat).buttons()[0][1] != data  # the new reply's own button
