"""Model output is untrusted: on a terminal it cannot drive the terminal; into a pipe it is byte for byte."""

from __future__ import annotations

import io

import pexpect
import pytest
from server import chat_reply

HOSTILE = "Title\x1b]0;pwned\x07 clear\x1b[2J\x1b[3J clip\x1b]52;c;ZXZpbA==\x07 bell\x07 end"
OBEYED = ("\x1b]0;pwned", "\x1b[2J", "\x1b[3J", "\x1b]52;")


def screen_bytes(child) -> str:
    child.expect(pexpect.EOF)
    return child.before


@pytest.mark.parametrize("flags", [[], ["--raw"]], ids=["markdown", "raw"])
def test_one_shot_on_a_terminal_shows_control_sequences_instead_of_obeying_them(spawn, server, flags):
    server.push(chat_reply(HOSTILE, size=3))
    output = screen_bytes(spawn(*flags, "q"))
    assert "Title" in output
    assert "end" in output
    for sequence in OBEYED:
        assert sequence not in output
    assert "␛]0;pwned␇" in output
    assert "␛]52;c;ZXZpbA==␇" in output


def test_reasoning_on_a_terminal_is_shown_safely_too(spawn, server):
    server.push(chat_reply("Answer.", reasoning="thinking \x1b]0;pwned\x07 hard"))
    output = screen_bytes(spawn("--raw", "--show-reasoning", "q"))
    assert "\x1b]0;pwned" not in output
    assert "␛]0;pwned␇" in output
    assert "Answer." in output


def test_repl_shows_control_sequences_and_link_urls(spawn, server):
    server.push(chat_reply(HOSTILE + "\n\nsee [the docs](https://example.com/docs) please", size=5))
    child = spawn("--no-save")
    child.logfile_read = io.StringIO()  # everything the terminal was sent
    child.expect_exact("❯")
    child.send("q\r")
    child.expect_exact("please")
    child.expect_exact("❯")
    shown = child.logfile_read.getvalue()
    for sequence in OBEYED:
        assert sequence not in shown
    assert "␛]0;pwned␇" in shown
    assert "https://example.com/docs" in shown
    assert "\x1b]8;" not in shown
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_piped_output_stays_byte_for_byte(run, server):
    server.push(chat_reply(HOSTILE, size=3))
    result = run("q")
    assert result.out == HOSTILE + "\n"


def test_bidirectional_overrides_are_shown_never_obeyed():
    from terminal_render import visible_controls

    assert visible_controls("abc\u202edef\u202c") == "abc⟨U+202E⟩def⟨U+202C⟩"
    assert visible_controls("x\u2066y\u2069") == "x⟨U+2066⟩y⟨U+2069⟩"
    assert visible_controls("שלום and مرحبا") == "שלום and مرحبا"  # right-to-left text itself is untouched
