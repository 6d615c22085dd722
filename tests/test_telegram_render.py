"""Telegram rendering and notes, in-process: what the model wrote is what the chat shows."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chatcore.provider import Failure
from chatcore.turn import TurnResult
from telegram_bot import closing_note
from telegram_render import MESSAGE_LIMIT, Part, split_message, to_telegram, utf16_len


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


# -- drafts: the finished blocks converted once, the same part shown ------------------------------

DRAFT_BLOCKS = [
    "A paragraph with **bold**, _italic_, `code` and a [link](https://example.com).",
    "Second paragraph, 日本語 and 👨‍👩‍👧‍👦, on\ntwo lines.",
    "# A heading",
    "## Another heading\nText right under it.",
    "- one\n- two\n  - nested",
    "1. first\n\n2. second, loose\n\n3. third",
    "```python\ndef f(x):\n\n    return x < 1 and x & 2\n```",
    "> a quote\n> on two lines",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "Vec<String> and &amp; as written.",
    "---",
    "    indented code",
    "Math $x^2$ costs $10.49 (~$11.20).",
    "||a spoiler|| and ~~struck~~ text.",
    "See [the reference][ref] defined below.",
    "[ref]: https://example.com/ref\nText right after a definition.",
]


def drafts_of(text: str, cuts: list[int], limit: int) -> list[tuple[str, Part, Part]]:
    """(text so far, what Drafts shows, what converting it whole shows) at each cut of a streamed text."""
    from telegram_render import Drafts

    drafts = Drafts(limit)
    shown = []
    for cut in [*sorted(set(cuts)), len(text)]:
        so_far = text[:cut]
        if so_far.strip():
            shown.append((so_far, drafts.part(so_far), split_message(to_telegram(so_far), limit)[-1]))
    return shown


@given(
    blocks=st.lists(st.sampled_from(DRAFT_BLOCKS), min_size=1, max_size=14),
    gaps=st.lists(st.sampled_from(["\n\n", "\n", "\n\n\n", "\n \n", "\n\n  "]), min_size=14, max_size=14),
    cuts=st.lists(st.integers(0, 3000), max_size=30),
    limit=st.sampled_from([MESSAGE_LIMIT, 300, 120]),
)
@hsettings(max_examples=300, deadline=None)
def test_a_draft_shows_what_converting_the_whole_reply_shows(blocks, gaps, cuts, limit):
    text = "".join(block + gap for block, gap in zip(blocks, gaps, strict=False))
    for so_far, drafted, whole in drafts_of(text, cuts, limit):
        assert drafted == whole, so_far


def test_a_long_replys_last_draft_converts_no_more_than_its_first(monkeypatch):
    import telegram_render

    converted_chars: list[int] = []
    convert = telegram_render.converted

    def counted(markdown: str) -> Part | None:
        converted_chars.append(len(markdown))
        return convert(markdown)

    monkeypatch.setattr(telegram_render, "converted", counted)
    paragraph = "A sentence of a long reply, with **some** formatting in it. " * 5
    text = "\n\n".join(f"{n}. {paragraph}" if n % 7 == 0 else paragraph for n in range(160))  # ~4,000 words
    drafts = telegram_render.Drafts()
    per_draft = []
    for end in range(300, len(text), 300):
        converted_chars.clear()
        drafts.part(text[:end])
        per_draft.append(sum(converted_chars))
    assert len(text.split()) > 4000
    assert max(per_draft[-20:]) <= 2 * max(per_draft[:20])  # what a draft converts does not grow with the reply
    assert drafts.part(text) == split_message(to_telegram(text))[-1]
