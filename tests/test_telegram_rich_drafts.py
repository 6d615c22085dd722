"""Rich drafts of a streaming reply (`RichDrafts`): every draft is exactly `draft_message` of the
text so far, and a long reply's last drafts cost no more than its first. In-process."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import telegram_rich
from telegram_rich import RichDrafts, Unit, draft_message, final_message, split_rich

RICH_BLOCKS = [
    "A paragraph with **bold**, `Vec<String> & x` and a < b && AT&T, &amp; as written.",
    "Two lines of one paragraph,\nthe second with &lt; in it.",
    "# A heading <h1>",
    "## Another heading\nText right under it.",
    "- one\n- two & three\n  - nested <x>",
    "1. first\n\n2. second, loose\n\n3. third",
    "> a quote\n> - with a list <li>",
    "| a | b |\n|---|:-:|\n| 1 < 2 | & |\n| 3 | 4 |",
    "| wide |" + " c |" * 22 + "\n|" + "---|" * 23 + "\n| x |" + " y |" * 22,
    "| a | fence in a table |\n|---|---|\n```|\n| after | it |",
    "Words before\na | b\n|-- and the rule turns out to be words",
    "```python\ndef f(x):\n\n    return x < 1 and x & 2\n```",
    "~~~\ntilde <fence>\n```\nstill inside\n~~~",
    "``` not `a` fence\ntext <after> it",
    "````\nan unclosed fence & more\n\n\nlines <b>",
    "A long line: " + "word <& " * 120,
    "Math $x^2$ costs $10.49.\r\nA carriage return.",
    "---",
    "    indented code <x>",
    "日本語 and 👨‍👩‍👧‍👦 & 😀" * 8,
]
GAPS = ["\n\n", "\n", "\n\n\n", "\n \n", "\n\n  ", ""]


def expected(text: str, chars: int, blocks: int) -> dict[str, Any]:
    """What `draft_message` shows, at these limits: the last part of the whole text, split afresh."""
    parts = split_rich(text, chars, blocks)
    return final_message(parts[-1] if parts else text)


@given(
    blocks=st.lists(st.sampled_from(RICH_BLOCKS), min_size=1, max_size=16),
    gaps=st.lists(st.sampled_from(GAPS), min_size=16, max_size=16),
    cuts=st.lists(st.integers(0, 4000), max_size=40),
    limits=st.sampled_from([(telegram_rich.RICH_CHARS, telegram_rich.BLOCK_BUDGET), (400, 12), (160, 5)]),
)
@hsettings(max_examples=300, deadline=None)
def test_every_rich_draft_is_draft_message_of_the_text_so_far(blocks, gaps, cuts, limits):
    text = "".join(block + gap for block, gap in zip(blocks, gaps, strict=False))
    drafts = RichDrafts(*limits)
    for cut in [*sorted(set(cuts)), len(text)]:
        so_far = text[:cut]
        assert drafts.message(so_far) == expected(so_far, *limits), repr(so_far)


@pytest.mark.parametrize("gap", ["\n", "\n\n"])
def test_a_reply_streamed_a_character_at_a_time_drafts_as_draft_message(gap):
    """Every prefix: a chunk may end anywhere, inside a fence's marker or a table's delimiter row."""
    text = gap.join(RICH_BLOCKS)
    drafts = RichDrafts(400, 12)
    for end in range(len(text) + 1):
        assert drafts.message(text[:end]) == expected(text[:end], 400, 12), repr(text[:end])


def test_default_limits_match_draft_message_and_a_text_that_does_not_extend_starts_over():
    reply = "\n\n".join(f"## Part {n}\n\nSome text, a < b & c.\n\n```\ncode {n}\n```" for n in range(2000))
    drafts = RichDrafts()
    for end in range(0, len(reply), 997):
        assert drafts.message(reply[: end + 1]) == draft_message(reply[: end + 1])
    other = "A different reply <b>, not an extension of the last."
    assert drafts.message(other) == draft_message(other)
    assert drafts.message(reply) == draft_message(reply)
    assert drafts.message("   ") == draft_message("   ")


def test_a_long_replys_last_drafts_cost_no_more_than_its_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work counted, not time: the characters scanned for units and converted (escaped or measured)."""
    work: list[int] = []
    scan, escaped = telegram_rich.scan, telegram_rich.escaped

    def counted_scan(lines: list[str]) -> list[tuple[int, Unit]]:
        work.append(sum(map(len, lines)))
        return scan(lines)

    def counted_escaped(markdown: str, fence: str | None) -> tuple[str, str | None]:
        work.append(len(markdown))
        return escaped(markdown, fence)

    monkeypatch.setattr(telegram_rich, "scan", counted_scan)
    monkeypatch.setattr(telegram_rich, "escaped", counted_escaped)
    paragraph = "A sentence of a long reply, with **some** formatting <and> & in it. " * 5
    sections = [
        f"| n | x |\n|---|---|\n| {n} | {n * n} |"
        if n % 5 == 0
        else f"```\ncode {n} < 1\n```"
        if n % 7 == 0
        else paragraph
        for n in range(150)
    ]
    text = "\n\n".join(sections)  # ~4,000 words, one rich message long
    assert len(text.split()) > 4000
    drafts = RichDrafts()
    per_draft = []
    for end in range(300, len(text), 150):  # a draft about 3 times a second, as the model writes
        work.clear()
        drafts.message(text[:end])
        per_draft.append(sum(work))
    assert max(per_draft[-20:]) <= 2 * max(per_draft[:20])  # the last drafts cost what the first did
    work.clear()
    draft_message(text)
    assert sum(work) > 10 * max(per_draft[-20:])  # splitting the whole reply again costs far more
    assert drafts.message(text) == draft_message(text)
