"""Markdown streaming: the scrollback after a streamed reply equals rendering the whole reply at once.

The renderer writes into a terminal emulator (pyte) with its history, so live-region redraws,
cursor movement and clearing are all applied as a real terminal would apply them.
"""

from __future__ import annotations

import io
import random

import pyte
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rich.console import Console
from rich.markdown import Markdown

from chatcore.streams import REASONING, TEXT
from terminal_render import MarkdownView, PlainView

WIDTH, HEIGHT = 80, 24

CORPUS = [
    "Just one short paragraph with **bold**, *italic* and `code`.",
    "# Title\n\nA paragraph under the title.\n\n## Section\n\nMore text here, long enough to wrap around the "
    "edge of an eighty column terminal so that wrapping is exercised as well.\n",
    "Intro:\n\n- first item\n- second item with **bold**\n- third\n\nAfter the list.\n",
    "Steps:\n\n1. one\n\n2. two (loose list)\n\n3. three\n\nDone.\n",
    "Code:\n\n```python\ndef add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n```\n\nAfter the code.\n",
    "| name | value |\n|------|-------|\n| a    | 1     |\n| b    | 2     |\n\nTable above.\n",
    "> A quote\n> over two lines\n\n---\n\nAfter a rule.\n",
    "Text then fence without blank line:\n```\nraw block\n```\nand text right after.\n",
    "~~~\ntilde fence with ``` inside\n~~~\n\nend\n",
    "```js\nconsole.log('unterminated fence at the end of the reply')\n",
    "- nested\n  - inner item\n  - another\n- outer again\n\nparagraph\n",
    "\n".join(f"Line {i} of a long reply that is taller than the terminal, in its own paragraph.\n" for i in range(60)),
]


class TerminalOut:
    """A file-like object that feeds a pyte terminal with history."""

    def __init__(self, width=WIDTH, height=HEIGHT):
        self.screen = pyte.HistoryScreen(width, height, history=100_000)
        self.screen.set_mode(pyte.modes.LNM)  # "\n" also returns the carriage, as a tty's onlcr does
        self.stream = pyte.Stream(self.screen)
        self.bytes = 0

    def write(self, text):
        self.bytes += len(text.encode())
        self.stream.feed(text)
        return len(text)

    def flush(self):
        pass

    def lines(self):
        def text(line):
            return "".join(line[x].data for x in range(self.screen.columns)).rstrip()

        rows = [text(line) for line in self.screen.history.top] + [line.rstrip() for line in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows


def console():
    return Console(file=io.StringIO(), width=WIDTH, force_terminal=True, color_system="truecolor")


def whole(text):
    out = TerminalOut()
    reference = Console(file=io.StringIO(), width=WIDTH, force_terminal=True, color_system="truecolor")
    reference.print(Markdown(text, code_theme="monokai", hyperlinks=False))
    out.write(reference.file.getvalue())
    return out.lines()


def streamed(pieces, fps=1000.0):
    out = TerminalOut()
    view = MarkdownView(out, console(), fps=fps)
    for piece in pieces:
        view.on_event(TEXT, piece)
    view.finish()
    return out.lines(), out


def split_every(text, size):
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("doc", CORPUS, ids=range(len(CORPUS)))
@pytest.mark.parametrize("size", [1, 4, 17, 10_000])
def test_scrollback_matches_whole_rendering(doc, size):
    lines, _ = streamed(split_every(doc, size))
    assert lines == whole(doc)


AWKWARD = "Before **bold text** and\n\n```py\nx = 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nend\n"


@pytest.mark.parametrize("cut", ["``", "**bo", "| 1 ", "```py\n", "\n\n", "|---"])
def test_splits_inside_markers(cut):
    at = AWKWARD.index(cut) + len(cut) // 2
    lines, _ = streamed([AWKWARD[:at], AWKWARD[at:]])
    assert lines == whole(AWKWARD)


@hsettings(max_examples=40, deadline=None)
@given(doc=st.sampled_from(CORPUS), seed=st.integers(0, 10_000))
def test_random_splits(doc, seed):
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(doc):
        step = rng.randint(1, 12)
        pieces.append(doc[i : i + step])
        i += step
    lines, _ = streamed(pieces, fps=rng.choice([1000.0, 20.0]))
    assert lines == whole(doc)


def test_live_region_shrinking_to_lines_already_shown_leaves_no_stale_line():
    # "1" renders as a paragraph line, "1. one" as a list item: the live region once shrank to
    # lines it already showed, left the cursor a row low, and a blank line too many was committed.
    doc = CORPUS[3]
    pieces = [
        "S",
        "teps:",
        "\n\n1",
        ". one",
        "\n\n",
        "2. tw",
        "o (lo",
        "ose l",
        "ist",
        ")\n\n3",
        ".",
        " thre",
        "e\n\nD",
        "one",
        ".\n",
    ]
    assert "".join(pieces) == doc
    lines, _ = streamed(pieces, fps=1e9)
    assert lines == whole(doc)


def test_code_block_is_never_committed_half_done():
    doc = "```python\nline_one = 1\n\nline_two = 2\n"
    out = TerminalOut()
    view = MarkdownView(out, console(), fps=1000.0)
    view.on_event(TEXT, doc)
    # Still inside the fence: nothing committed, the block is only in the live region.
    assert view.pending == doc
    assert view.fence == "```"
    view.on_event(TEXT, "```\n\nafter\n")
    assert view.pending.strip() in ("after", "")


def test_live_region_is_bounded():
    doc = "\n".join(f"line {i}" for i in range(200))  # one paragraph of 200 soft-broken lines
    out = TerminalOut()
    view = MarkdownView(out, console(), fps=1000.0, live_lines=6)
    for piece in split_every(doc, 7):
        view.on_event(TEXT, piece)
        assert len(view.live) <= 6
    view.finish()
    assert out.lines() == whole(doc)


def test_interrupt_keeps_what_was_shown_and_leaves_no_live_region():
    doc = "First paragraph.\n\nSecond paragraph is still stream"
    out = TerminalOut()
    view = MarkdownView(out, console(), fps=1000.0)
    view.on_event(TEXT, doc)
    view.abort()
    assert view.live == []
    assert out.lines() == whole(doc)


def test_reasoning_collapsed_to_one_line_then_replaced():
    out = TerminalOut()
    view = MarkdownView(out, console(), fps=1000.0)
    view.on_event(REASONING, "thinking about it " * 20)
    assert "thinking…" in "\n".join(out.lines())
    view.on_event(TEXT, "The answer.\n")
    view.finish()
    assert out.lines() == ["The answer."]


def test_plain_view_is_byte_for_byte():
    text = "# Not rendered\n\n**raw** `text` \x1b[31m stays\n"
    buffer = io.StringIO()
    view = PlainView(buffer)
    for piece in split_every(text, 3):
        view.on_event(TEXT, piece)
    view.finish()
    assert buffer.getvalue() == text


def test_resize_mid_reply_does_not_corrupt(monkeypatch):
    doc = CORPUS[1] + "\n" + CORPUS[2]
    out = TerminalOut(width=80)
    view = MarkdownView(out, console(), fps=1000.0)
    widths = iter([80] * 30 + [60] * 10_000)
    monkeypatch.setattr(view, "_width", lambda: next(widths))
    for piece in split_every(doc, 3):
        view.on_event(TEXT, piece)
    view.finish()
    text = "\n".join(out.lines())
    # Every paragraph and list item appears exactly once.
    for needle in ("Title", "A paragraph under the title.", "Section", "first item", "After the list."):
        assert text.count(needle) == 1, needle


@pytest.mark.parametrize(
    ("first", "second"),
    [("First paragraph.", "Second paragraph."), ("# Title", "Some **bold** text."), ("- a list", "after it")],
)
def test_the_live_block_stands_where_it_will_be_committed(first, second):
    """The blank line rich puts between two blocks shows while the second one streams: nothing moves
    down a row when it is committed."""
    out = TerminalOut()
    view = MarkdownView(out, console(), fps=1000.0)
    frames = []
    for piece in (f"{first}\n\n", f"{second}\n\n", "Third"):
        view.on_event(TEXT, piece)
        frames.append(out.lines())
    view.finish()
    final = out.lines()
    for frame in frames:  # every row shown while streaming is where the finished reply has it
        assert frame[:-1] == final[: len(frame) - 1]
        assert final[len(frame) - 1].startswith(frame[-1])
