"""The REPL in a real pseudo-terminal (pexpect), against the local server."""

from __future__ import annotations

import io
import re
import time

import pexpect
import pytest
from conftest import PROMPT, send, started
from server import SLEEP, chat_reply, error_status


def test_banner_reply_stats_clear_exit(spawn, server):
    child = started(spawn, "--no-save")
    send(child, "hello")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    send(child, "/stats")
    child.expect("messages in memory: 3")
    child.expect("sent last turn: 2 messages")
    child.expect(r"last turn: 12 in · 6 out · cost unknown · first token [\d.]+s")
    child.expect(r"session: 1 request · ")
    child.expect_exact(PROMPT)
    send(child, "/clear")
    child.expect_exact("Conversation cleared.")
    child.expect_exact(PROMPT)
    send(child, "/stats")
    child.expect("messages in memory: 1")
    child.expect_exact(PROMPT)
    send(child, "again")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert [m["role"] for m in server.posts[-1].body["messages"]] == ["system", "user"]
    send(child, "/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


def test_ctrl_d_exits_and_ctrl_c_clears_the_line(spawn, server):
    child = started(spawn, "--no-save")
    child.send("some half typed text")
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert server.posts == []


def test_ctrl_c_during_a_reply_keeps_the_partial_text(spawn, server):
    server.push(chat_reply("word " * 300, size=5, delay=0.05))
    child = started(spawn, "--no-save", "--raw")
    send(child, "long please")
    child.expect_exact("word word word")
    child.sendcontrol("c")
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    deadline = time.monotonic() + 3
    while not server.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.disconnects, "the connection was not closed on Ctrl-C"
    send(child, "next")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    messages = server.posts[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"].startswith("word word")
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_failed_message_comes_back_to_the_prompt(spawn, server):
    server.push(error_status(500, "broken", headers={"x-should-retry": "false"}))
    child = started(spawn, "--no-save")
    send(child, "my precious question")
    child.expect("error: the provider failed \\(500\\)")
    child.expect_exact(PROMPT)
    child.expect_exact("my precious question")  # pre-filled for resending
    send(child, "")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    roles = [m["role"] for m in server.posts[-1].body["messages"]]
    assert roles == ["system", "user"]
    assert server.posts[-1].body["messages"][-1]["content"] == "my precious question"


def test_unknown_command_and_bad_arguments(spawn, server):
    child = started(spawn, "--no-save")
    send(child, "/frobnicate")
    child.expect_exact("unknown command /frobnicate")
    child.expect_exact(PROMPT)
    child.expect_exact("/frobnicate")  # what was typed is back in the prompt, not lost
    child.sendcontrol("c")  # Ctrl-C clears the line
    child.expect_exact(PROMPT)
    send(child, "/stats now")
    child.expect_exact("/stats takes no argument")
    child.expect_exact(PROMPT)
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    send(child, "/rename")
    child.expect_exact("/rename needs NAME")
    child.expect_exact(PROMPT)
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    send(child, "/model nonexistent-model")
    child.expect_exact("unknown model 'nonexistent-model'")
    child.expect_exact("test-model")
    send(child, "/model other-model")
    child.expect_exact("model is now other-model")
    send(child, "//etc/hosts is a file")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["messages"][-1]["content"] == "/etc/hosts is a file"
    assert server.posts[-1].body["model"] == "other-model"
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_help_lists_every_command_from_the_table(spawn):
    import chatbot

    child = started(spawn, "--no-save")
    send(child, "/help")
    for command in chatbot.COMMANDS:
        child.expect_exact(f"/{command.name}")
    child.expect_exact(PROMPT)


def test_tab_completes_commands(spawn):
    child = started(spawn, "--no-save")
    child.send("/sta")
    child.send("\t")
    time.sleep(0.3)
    send(child, "")
    child.expect("messages in memory")


def test_alt_enter_adds_a_line_and_paste_keeps_newlines(spawn, server):
    child = started(spawn, "--no-save")
    child.send("first line")
    send(child, "\x1b")  # Esc Enter
    send(child, "second line")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["messages"][-1]["content"] == "first line\nsecond line"
    child.send("\x1b[200~pasted one\npasted two\x1b[201~")
    send(child, "")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["messages"][-1]["content"] == "pasted one\npasted two"


def test_retry_undo_system_api(spawn, server):
    child = started(spawn, "--no-save")
    send(child, "question")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    server.push(chat_reply("A regenerated reply."))
    send(child, "/retry")
    child.expect_exact("A regenerated reply.")
    child.expect_exact(PROMPT)
    assert [m["role"] for m in server.posts[-1].body["messages"]] == ["system", "user"]
    send(child, "/undo")
    child.expect("removed the last exchange \\(2 messages\\)")
    send(child, "/system You are a pirate.")
    child.expect_exact("system prompt replaced")
    send(child, "/api")
    child.expect_exact("API: chat")
    send(child, "ahoy")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    messages = server.posts[-1].body["messages"]
    assert messages == [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "ahoy"}]


def test_markdown_reply_rendered_in_the_terminal(spawn, server):
    server.push(chat_reply("# Big Title\n\nSome **bold** words.\n\n```python\nprint('hi')\n```\n"))
    child = started(spawn, "--no-save")
    send(child, "md")
    child.expect_exact("Big Title")
    child.expect_exact(PROMPT)
    shown = child.before
    assert "**bold**" not in shown
    assert "bold" in shown
    assert "```" not in shown
    assert "\x1b[" in shown  # styled


def test_no_color_gives_plain_text(spawn, server):
    server.push(chat_reply("Some **bold** words.\n"))
    child = started(spawn, "--no-save", extra_env={"NO_COLOR": "1"})
    send(child, "md")
    child.expect_exact("Some **bold** words.")
    child.expect_exact(PROMPT)


def test_unsupported_parameter_is_remembered_for_the_session(spawn, server):
    server.push(
        error_status(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model.",
            code="unsupported_parameter",
            param="max_tokens",
        )
    )
    child = started(spawn, "--no-save")
    send(child, "one")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    send(child, "two")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert "max_tokens" not in server.posts[-1].body
    assert server.posts[-1].body["max_completion_tokens"] == 1000
    assert len(server.posts) == 3


def test_rate_limit_wait_is_shown(spawn, server):
    server.push(error_status(429, "slow down", headers={"Retry-After": "1"}))
    child = started(spawn, "--no-save")
    send(child, "q")
    child.expect(r"retrying in 1\.0s \(rate limited")
    child.expect_exact("Hello from the test server.")


def test_trimming_is_shown(spawn, server):
    child = started(spawn, "--no-save", "--max-messages", "2")
    for text in ("one", "two"):
        send(child, text)
        child.expect_exact("Hello from the test server.")
        child.expect_exact(PROMPT)
    send(child, "three")
    child.expect(re.escape("4 older messages not sent"))
    child.expect_exact(PROMPT)
    assert [m["content"] for m in server.posts[-1].body["messages"][1:]] == ["three"]


def test_interactive_flag_sends_the_prompt_then_stays(spawn, server):
    child = spawn("--no-save", "-i", "first question")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[0].body["messages"][-1]["content"] == "first question"
    send(child, "follow-up")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert [m["role"] for m in server.posts[-1].body["messages"]] == ["system", "user", "assistant", "user"]


def test_zero_config_banner_names_the_local_server(spawn, server):
    child = spawn(
        "--no-save", extra_env={"OPENAI_BASE_URL": "", "OPENAI_MODEL": "", "CHATBOT_LOCAL_PORTS": f"1,{server.port}"}
    )
    child.logfile_read = io.StringIO()
    child.expect(f"chatbot .* · test-model · 127.0.0.1:{server.port}")
    child.expect_exact(f"using the local server at 127.0.0.1:{server.port}")
    child.expect_exact(PROMPT)
    assert child.logfile_read.getvalue().count(f"127.0.0.1:{server.port}") == 2  # the banner's host, the note
    send(child, "hi")
    child.expect_exact("Hello from the test server.")


def test_ctrl_c_mid_markdown_reply_leaves_a_clean_screen(spawn, server):
    import io

    import pyte

    paragraphs = [f"Paragraph {i} says something rather long about streaming." for i in range(40)]
    server.push(chat_reply("\n\n".join(paragraphs), size=6, delay=0.02))
    child = spawn("--no-save", dimensions=(30, 100))
    log = io.StringIO()
    child.logfile_read = log
    child.expect_exact(PROMPT)
    send(child, "go")
    child.expect_exact("Paragraph 5 says")
    child.sendcontrol("c")
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    screen = pyte.HistoryScreen(100, 30, history=1000)
    stream = pyte.Stream(screen)
    stream.feed(log.getvalue())
    rows = ["".join(line[x].data for x in range(100)).rstrip() for line in screen.history.top]
    rows += [line.rstrip() for line in screen.display]
    shown = [row for row in rows if row.startswith("Paragraph")]
    numbers = [int(row.split()[1]) for row in shown]
    assert numbers == list(range(len(numbers)))
    assert len(numbers) >= 5
    assert all(row in paragraphs or paragraphs[n].startswith(row) for n, row in zip(numbers, shown, strict=True))
    assert any("[interrupted]" in row for row in rows)


def test_text_starting_with_a_slash_is_never_lost(spawn, server):
    child = started(spawn, "--no-save")
    send(child, "/etc/hosts is missing")
    child.expect_exact("unknown command /etc/hosts")
    child.expect_exact("start it with // to send it as a message")
    child.expect_exact(PROMPT)
    child.sendcontrol("a")  # the text is back in the prompt: add one slash at its start and send it
    send(child, "/")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["messages"][-1]["content"] == "/etc/hosts is missing"
    # Pasted text of several lines is a message, whatever its first character.
    child.send("\x1b[200~/usr/bin/python3 fails:\nTraceback (most recent call last)\x1b[201~")
    send(child, "")
    child.expect_exact("Hello from the test server.")
    assert (
        server.posts[-1].body["messages"][-1]["content"] == "/usr/bin/python3 fails:\nTraceback (most recent call last)"
    )
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_summarize_without_an_argument_shows_the_setting(spawn):
    child = started(spawn, "--no-save")
    send(child, "/summarize")
    child.expect_exact("summaries of dropped turns: off (/summarize on|off)")
    send(child, "/summarize")
    child.expect_exact("summaries of dropped turns: off (/summarize on|off)")  # shown, not toggled
    send(child, "/summarize on")
    child.expect_exact("summaries of dropped turns: on")
    send(child, "/summarize")
    child.expect_exact("summaries of dropped turns: on (/summarize on|off)")
    send(child, "/exit")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("gap", [0.0, 0.05, 0.2])
def test_fast_repeated_ctrl_c_leaves_one_marker_and_a_valid_history(spawn, server, gap):
    code = "```python\n" + "\n".join(f"print({n})" for n in range(300)) + "\n```\n"
    server.push(chat_reply("Here:\n\n" + code, size=6, delay=0.02))
    child = started(spawn, "--no-save")
    child.logfile_read = io.StringIO()
    send(child, "show me code")
    child.expect_exact("print(3)")
    for _ in range(3):
        child.sendcontrol("c")
        time.sleep(gap)
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    send(child, "next")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    shown = child.logfile_read.getvalue()
    assert shown.count("[interrupted]") == 1
    assert "^C" not in shown
    messages = server.posts[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "next"  # the prompt held only what was typed
    assert messages[2]["content"].startswith("Here:")
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_ctrl_c_between_prompts_never_ends_the_chat(spawn):
    child = started(spawn, "--no-save")
    for _ in range(5):  # presses that land while a command runs or before the prompt is back
        send(child, "/help")
        child.sendcontrol("c")
    child.expect_exact(PROMPT)
    send(child, "still alive?")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    send(child, "/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("keys", ["\x04", "/exit\r"], ids=["ctrl-d", "exit"])
def test_leaving_typed_ahead_before_the_prompt_is_drawn_ends_the_chat(spawn, keys):
    child = spawn("--no-save")
    child.send(keys)  # at once: Python is still starting, the banner not yet drawn
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert child.exitstatus == 0


def test_text_typed_ahead_goes_into_the_first_prompt(spawn, server):
    child = spawn("--no-save")
    child.send("typed early")
    child.expect_exact(PROMPT)
    send(child, "")
    child.expect_exact("Hello from the test server.")
    assert server.posts[-1].body["messages"][-1]["content"] == "typed early"
    send(child, "/exit")
    child.expect(pexpect.EOF)


def final_screen(output: str, columns: int = 100, lines: int = 40) -> list[str]:
    """What a terminal shows (scrollback included) after `output`, through a terminal emulator."""
    import pyte

    screen = pyte.HistoryScreen(columns, lines, history=1000)
    pyte.Stream(screen).feed(output)
    history = ["".join(ch.data for ch in row.values()).rstrip() for row in screen.history.top]
    return history + [line.rstrip() for line in screen.display]


def test_a_slow_first_token_shows_a_waiting_line_that_leaves_no_trace(spawn, server):
    behaviour = chat_reply("Finally here.")
    behaviour.pieces.insert(0, (SLEEP, 2.5))
    server.push(behaviour)
    child = started(spawn, "--no-save")
    child.logfile_read = io.StringIO()
    send(child, "slow one")
    child.expect("waiting for the model… [12]s")  # signs of life, with the seconds
    child.expect_exact("Finally here.")
    child.expect_exact(PROMPT)
    screen = final_screen(child.logfile_read.getvalue())
    assert not any("waiting" in line for line in screen)
    assert any("Finally here." in line for line in screen)
    send(child, "/exit")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("flags", [[], ["--raw"]], ids=["markdown", "raw"])
def test_show_reasoning_shows_all_of_it_above_the_whole_answer(spawn, server, flags):
    reasoning = "First I consider the question. Then I weigh two options carefully. Finally I decide."
    server.push(chat_reply("Line one of the answer.\n\nLine two of the answer.", size=4, reasoning=reasoning))
    child = started(spawn, "--no-save", "--show-reasoning", *flags)
    child.logfile_read = io.StringIO()
    send(child, "think")
    child.expect_exact("Line two of the answer.")
    child.expect_exact(PROMPT)
    screen = "\n".join(final_screen(child.logfile_read.getvalue()))
    flat = " ".join(screen.split())
    assert reasoning in flat  # complete
    assert "Line one of the answer." in screen
    assert "Line two of the answer." in screen
    assert flat.index("Finally I decide.") < flat.index("Line one of the answer.")  # above the answer
    assert "\x1b[2m" in child.logfile_read.getvalue()  # dimmed
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_a_failed_long_paste_keeps_its_error_in_view(spawn, server):
    server.push(error_status(500, "broken", headers={"x-should-retry": "false"}))
    child = started(spawn, "--no-save", dimensions=(20, 100))
    child.logfile_read = io.StringIO()
    paste = "\n".join(f"pasted line {n}" for n in range(60))
    child.send(f"\x1b[200~{paste}\x1b[201~")
    send(child, "")
    child.expect_exact("your message (60 lines) is kept")
    child.expect_exact("error: the provider failed (500)")
    child.expect_exact(PROMPT)
    time.sleep(0.5)
    visible = final_screen(child.logfile_read.getvalue(), 100, 20)[-20:]
    assert any("error: the provider failed (500)" in line for line in visible), visible
    send(child, "")  # Enter on the empty prompt resends the whole message
    child.expect_exact("Hello from the test server.")
    assert server.posts[-1].body["messages"][-1]["content"] == paste
    send(child, "/exit")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("gap", [0.05, 0.1, 0.3])
def test_quick_ctrl_c_presses_before_the_reply_began_keep_the_message_in_the_prompt(spawn, server, gap):
    from server import Behaviour, sse

    server.push(Behaviour(header_delay=8, pieces=[sse({"choices": [{"delta": {"content": "late"}}]})]))
    child = started(spawn, "--no-save")
    send(child, "keep me please")
    deadline = time.monotonic() + 10
    while not server.posts and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(3):  # the first stops the request; the others land on the prompt once it is back
        child.sendcontrol("c")
        time.sleep(gap)
    child.expect_exact("[interrupted before the reply began]")
    time.sleep(0.5)
    send(child, "")  # Enter sends what the prompt holds: the message, put back and not wiped
    child.expect_exact("Hello from the test server.")
    assert server.posts[-1].body["messages"][-1]["content"] == "keep me please"
