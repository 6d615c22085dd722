"""Telegram rendering and notes, in-process: what the model wrote is what the chat shows."""

from __future__ import annotations

import unicodedata

import pytest

from chatcore.provider import Failure
from chatcore.turn import TurnResult
from telegram_bot import closing_note
from telegram_render import Part, split_message, to_telegram, utf16_len


@pytest.mark.parametrize(
    "markdown",
    ["Vec<String> and Option<T>", "<div> and <br>", "x<y>z", "a &amp; b &lt; c", "`Vec<u8>` in code"],
)
def test_angle_brackets_and_character_references_show_as_written(markdown):
    shown = to_telegram(markdown).text
    assert shown == markdown.replace("`", "")


@pytest.mark.parametrize(
    "grapheme",
    ["👨‍👩‍👧‍👦", "e\u0301\u0302", "🇫🇷", "👍🏽", "1\ufe0f\u20e3"],
)
def test_a_cut_never_falls_inside_a_grapheme(grapheme):
    text = grapheme * (5000 // len(grapheme) + 7)
    parts = split_message(Part(text))
    assert len(parts) > 1
    assert "".join(p.text for p in parts) == text
    for part in parts:
        assert utf16_len(part.text) <= 4096
        assert part.text.startswith(grapheme)
        assert part.text.endswith(grapheme)
        assert not unicodedata.combining(part.text[0])


def test_notes_speak_telegram_and_never_contradict_a_partial_reply():
    limit = closing_note(TurnResult(reply="some text", finish_reason="length"))
    assert "--" not in limit
    assert "cut off" in limit
    full = closing_note(TurnResult(reply="some text", finish_reason="length", window_full=True))
    assert "--" not in full
    assert "/clear" in full
    cut = closing_note(TurnResult(reply="half of it", failure=Failure("connection lost", kind="connection")))
    assert "cut short" in cut
    assert "could not answer" not in cut
