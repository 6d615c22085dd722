"""The Markdown view's parts on their own: the block splitter (pure text), the live region's
cursor arithmetic, and the renderer's blank line between blocks. No terminal needed except
where the region's output is fed to an emulator (pyte) to see what a terminal would show."""

from __future__ import annotations

import io
import random

import pyte
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rich.console import Console
from test_markdown import CORPUS

from chatcore.blocks import BlockSplitter, closes_fence
from terminal_render import LiveRegion, MarkdownRenderer, prose


def split(pieces: list[str]) -> tuple[list[str], str]:
    """Feed the pieces; the finished blocks, and the open tail left at the end."""
    splitter = BlockSplitter()
    blocks = [block for piece in pieces for block in splitter.feed(piece)]
    return blocks, splitter.pending


def all_blocks(pieces: list[str]) -> list[str]:
    """Every block, the open tail included, as finish() would commit them."""
    splitter = BlockSplitter()
    blocks = [block for piece in pieces for block in splitter.feed(piece)]
    return blocks + list(splitter.close())


# -- paragraphs and blank lines ------------------------------------------------------------


def test_a_blank_line_ends_a_paragraph_once_the_next_block_starts():
    assert split(["one\n\ntwo\n"]) == (["one\n\n"], "two\n")


def test_a_blank_line_alone_finishes_nothing_yet():
    splitter = BlockSplitter()
    assert splitter.feed("one\n\n") == ()
    assert splitter.feed("two") == ()  # not a complete line: not read yet
    assert splitter.pending == "one\n\ntwo"
    assert splitter.feed("\n") == ("one\n\n",)
    assert splitter.pending == "two\n"


def test_several_blank_lines_stay_with_the_block_before_them():
    assert split(["one\n\n\n\ntwo\n"]) == (["one\n\n\n\n"], "two\n")


def test_lines_of_spaces_count_as_blank():
    assert split(["one\n   \ntwo\n"]) == (["one\n   \n"], "two\n")


def test_leading_blank_lines_finish_no_empty_block():
    assert split(["\n\n", "para\n\nnext\n"]) == (["\n\npara\n\n"], "next\n")


def test_an_indented_line_after_a_blank_line_continues_the_block():
    assert split(["para\n\n    indented\n\nafter\n"]) == (["para\n\n    indented\n\n"], "after\n")


def test_a_soft_line_break_does_not_end_a_paragraph():
    assert split(["one\ntwo\nthree\n"]) == ([], "one\ntwo\nthree\n")


# -- lists ----------------------------------------------------------------------------------


def test_a_loose_list_stays_one_block_across_its_blank_lines():
    assert split(["1. one\n\n2. two\n\n3. three\n\nDone.\n"]) == (["1. one\n\n2. two\n\n3. three\n\n"], "Done.\n")


def test_an_indented_continuation_stays_in_the_list():
    assert split(["- a\n\n  more of a\n- b\n\nafter\n"]) == (["- a\n\n  more of a\n- b\n\n"], "after\n")


def test_a_list_after_a_paragraph_is_a_block_of_its_own():
    assert split(["Intro:\n\n- first\n- second\n\nAfter.\n"]) == (["Intro:\n\n", "- first\n- second\n\n"], "After.\n")


def test_a_list_item_after_a_paragraph_and_a_blank_line_does_not_continue_it():
    # Only a block that starts as a list is carried on by a list item after a blank line.
    assert split(["para\n\n- item\n"]) == (["para\n\n"], "- item\n")


# -- headings -------------------------------------------------------------------------------


def test_a_heading_is_finished_at_its_newline():
    assert split(["# Title\nText under it\n"]) == (["# Title\n"], "Text under it\n")


def test_a_heading_after_a_blank_line_finishes_both_blocks_at_once():
    splitter = BlockSplitter()
    assert splitter.feed("para\n\n## Next") == ()
    assert splitter.feed("\n") == ("para\n\n", "## Next\n")
    assert splitter.pending == ""


def test_a_heading_line_inside_a_paragraph_does_not_split_it():
    assert split(["text\n# not alone\n"]) == ([], "text\n# not alone\n")


def test_hashes_without_a_space_are_not_a_heading():
    assert split(["#hashtag\nmore\n"]) == ([], "#hashtag\nmore\n")


# -- code fences ----------------------------------------------------------------------------


def test_a_code_block_is_one_block_blank_lines_and_all():
    splitter = BlockSplitter()
    assert splitter.feed("```python\nx = 1\n\n\ny = 2\n") == ()
    assert splitter.fence == "```"
    assert splitter.feed("```\n") == ("```python\nx = 1\n\n\ny = 2\n```\n",)
    assert splitter.fence is None
    assert splitter.pending == ""


def test_headings_and_blank_lines_inside_a_fence_are_code():
    assert split(["~~~\n# not a heading\n\n- nor a list\n~~~\n"]) == (
        ["~~~\n# not a heading\n\n- nor a list\n~~~\n"],
        "",
    )


def test_an_unclosed_fence_is_committed_whole_at_the_end():
    splitter = BlockSplitter()
    assert splitter.feed("```js\nconsole.log('no end')\n") == ()
    assert splitter.fence == "```"
    assert splitter.close() == ("```js\nconsole.log('no end')\n",)
    assert splitter.fence is None
    assert splitter.pending == ""


@pytest.mark.parametrize(
    ("marker", "line", "closes"),
    [
        ("```", "```", True),
        ("```", "````", True),  # longer is fine
        ("````", "```", False),  # shorter is not
        ("```", "~~~", False),  # another character
        ("~~~", "~~~~  ", True),  # trailing spaces
        ("```", "```python", False),  # an info string opens, it never closes
        ("```", "   ```", True),  # up to three spaces of indent
        ("```", "    ```", False),  # four is indented code
    ],
)
def test_which_lines_close_a_fence(marker, line, closes):
    assert closes_fence(marker, line) is closes


def test_a_fence_of_the_other_kind_inside_does_not_close_it():
    assert split(["~~~\ntilde fence with\n```\ninside\n~~~\n\nend\n"]) == (
        ["~~~\ntilde fence with\n```\ninside\n~~~\n"],
        "\nend\n",
    )


def test_a_fence_right_after_a_paragraph_joins_its_block():
    assert split(["Text:\n```\nraw\n```\nafter\n"]) == (["Text:\n```\nraw\n```\n"], "after\n")


@pytest.mark.parametrize("cut", range(1, len("```py\nx = 1\n```\n")))
def test_a_chunk_boundary_anywhere_in_the_fence_markers(cut):
    doc = "```py\nx = 1\n```\n"
    splitter = BlockSplitter()
    first = splitter.feed(doc[:cut])
    assert first == ()
    assert splitter.feed(doc[cut:]) == (doc,)
    assert splitter.fence is None


def test_a_chunk_ending_inside_the_opening_marker_opens_nothing_yet():
    splitter = BlockSplitter()
    assert splitter.feed("para\n\n``") == ()
    assert splitter.fence is None  # an incomplete line is never read
    assert splitter.feed("`\n") == ("para\n\n",)
    assert splitter.fence == "```"


# -- whatever the chunks, the same blocks ---------------------------------------------------


def test_close_drops_a_tail_of_blank_lines_only():
    splitter = BlockSplitter()
    assert splitter.feed("para\n\n") == ()
    assert splitter.close() == ("para\n\n",)
    assert BlockSplitter().close() == ()
    whitespace = BlockSplitter()
    whitespace.feed("  \n\n")
    assert whitespace.close() == ()


@hsettings(max_examples=60, deadline=None)
@given(doc=st.sampled_from(CORPUS), seed=st.integers(0, 10_000))
def test_blocks_do_not_depend_on_where_chunks_end(doc, seed):
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(doc):
        step = rng.randint(1, 9)
        pieces.append(doc[at : at + step])
        at += step
    blocks = all_blocks(pieces)
    assert blocks == all_blocks([doc])
    assert all(block.strip() for block in blocks)
    assert "".join(blocks).split() == doc.split()  # nothing lost, nothing repeated, in order


# -- the live region ------------------------------------------------------------------------


class Screen:
    """A pyte terminal fed with what the live region writes, below a line of scrollback."""

    def __init__(self, width: int = 40, height: int = 12) -> None:
        self.screen = pyte.Screen(width, height)
        self.screen.set_mode(pyte.modes.LNM)
        self.stream = pyte.Stream(self.screen)
        self.stream.feed("scrollback\n")

    def feed(self, text: str | None) -> None:
        self.stream.feed(text or "")

    def rows(self) -> list[str]:
        rows = [row.rstrip() for row in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows


@pytest.mark.parametrize(
    "frames",
    [
        [["a"], ["a", "b"], ["a", "b", "c"]],  # growing: only the new lines are written
        [["a", "b"], ["a", "B"], ["x", "y", "z"]],  # a changed last line; everything changed
        [["a", "b", "c"], ["x"]],
        [["a", "b"], []],
        [["a", "b", "c"], ["a", "b"], ["a"], ["x"]],  # shrinking to lines already shown
    ],
)
def test_the_region_shows_each_frame_and_erases_without_a_trace(frames):
    region, screen = LiveRegion(max_lines=6), Screen()
    for lines in frames:
        screen.feed(region.repaint(lines, 40, 12))
        assert screen.rows() == ["scrollback", *lines]
        assert region.lines == lines
    screen.feed(region.erase(40))
    assert screen.rows() == ["scrollback"]
    assert region.lines == []


def test_an_unchanged_frame_writes_nothing_and_growth_writes_only_the_new_line():
    region = LiveRegion(max_lines=6)
    assert region.repaint(["a", "b"], 40, 12) == "a\nb"
    assert region.repaint(["a", "b"], 40, 12) is None
    assert region.repaint(["a", "b", "c"], 40, 12) == "\nc"


def test_the_region_keeps_to_its_limit_unless_tall():
    region = LiveRegion(max_lines=3)
    lines = [f"line {i}" for i in range(20)]
    region.repaint(lines, 40, 12)
    assert region.lines == lines[-3:]
    region.repaint(lines, 40, 12, tall=True)
    assert region.lines == lines[-10:]  # a tall region: the terminal's height less two rows
    assert LiveRegion(max_lines=6).limit(height=3, tall=False) == 1


def test_erase_after_a_narrowing_resize_counts_the_rows_lines_now_wrap_to():
    region, screen = LiveRegion(max_lines=6), Screen(width=20)
    screen.feed(region.repaint(["x" * 30, "y" * 30], 40, 12))  # drawn at 40 columns, shown at 20: 4 rows
    assert screen.rows() == ["scrollback", "x" * 20, "x" * 10, "y" * 20, "y" * 10]
    screen.feed(region.erase(20))
    assert screen.rows() == ["scrollback"]


# -- the renderer ---------------------------------------------------------------------------


def renderer() -> MarkdownRenderer:
    return MarkdownRenderer(Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None))


def test_blocks_are_separated_by_the_blank_line_rich_would_put_between_them():
    render = renderer()
    assert render.block_text("First paragraph.\n\n", 80) == "First paragraph.\n"
    assert render.block_text("Second.\n", 80) == "\nSecond.\n"


def test_render_says_whether_a_blank_line_follows():
    render = renderer()
    assert render.render("a paragraph", 80) == (["a paragraph"], True)
    assert render.render("", 80) == ([], True)


def test_control_characters_made_visible_stay_visible_through_rendering():
    from terminal_render import visible_controls

    lines, _ = renderer().render(visible_controls("title\x1b]0;pwned\x07 end"), 80)
    assert lines == ["title␛]0;pwned␇ end"]


# -- plain prose: wrapped without the Markdown parse, exactly as the parse would show it ----------

# Words as models write them, and the characters Markdown reads: the paragraph path must agree with
# rich's whole Markdown rendering on every one of these, whichever path a text takes.
PROSE_WORDS = ["the", "model", "Streams", "2024", "1.5", "e.g.", "don't", 'say "so"', "an (aside)", "50%", "a/b",
               "x=1", "C++", "well-known", "a #tag", "user@host", "ends.", "what?", "v1.2)", "see https://example.com/a?b=c", "élan", "日本語のテキスト", "👍", "😀😀", "e\u0301",
               "Ω", "␛c␇", "⟨U+202E⟩", "a" * 37, "深" * 30]  # fmt: skip
MARKUP = ["*", "_", "`", "*em*", "__strong__", "`code`", "[", "]", "<", ">", "&amp;", "\\", "|", "~~", "- ", "+ ", "1. ", "2) ", "# ", "> ",
          "    ", "   ", "  \n", " \n", "\n\n", "\n", "\t", "\u00a0", "===", "---", "***", "```", "!", ":"]  # fmt: skip


def prose_texts() -> st.SearchStrategy[str]:
    """Paragraphs of plain prose: words, spaces, line breaks and blank lines, maybe a trailing space or newline."""
    word = st.sampled_from(PROSE_WORDS)
    gap = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\n\n\n"])
    ending = st.sampled_from(["", " ", "\n", "\n\n", "  "])
    return st.tuples(st.lists(st.tuples(word, gap), min_size=1, max_size=60), ending).map(
        lambda pair: "".join(w + g for w, g in pair[0]).rstrip() + pair[1]
    )


def any_texts() -> st.SearchStrategy[str]:
    """Prose with one to three of Markdown's constructs put in anywhere: a few are prose still, most are not."""

    def insert(text: str, marks: list[tuple[str, int]]) -> str:
        for mark, where in marks:
            at = where % (len(text) + 1)
            text = text[:at] + mark + text[at:]
        return text

    marks = st.lists(st.tuples(st.sampled_from(MARKUP), st.integers(0, 10_000)), min_size=1, max_size=3)
    return st.builds(insert, prose_texts(), marks)


@hsettings(max_examples=400, deadline=None)
@given(text=prose_texts(), width=st.integers(20, 130))
def test_plain_prose_is_wrapped_exactly_as_the_markdown_parse_shows_it(text, width):
    render = renderer()
    assert prose(text) is not None  # it takes the cheap path...
    assert render.render(text, width) == render.markdown_lines(text, width)  # ...and shows the same lines


@hsettings(max_examples=600, deadline=None)
@given(text=any_texts(), width=st.integers(20, 130))
def test_every_text_renders_as_the_markdown_parse_shows_it(text, width):
    render = renderer()
    assert render.render(text, width) == render.markdown_lines(text, width)


@pytest.mark.parametrize(
    "text",
    ["a *b*", "a _b_", "use `x`", "[a](b)", "a <b>", "a &amp; b", "a\\*", "a | b", "~~a~~", "- a", "1. a",
     "# a", "> a", "    code", "a  \nb", "a\n\n    b", "a\n \nb", "a\n===", "a\n---", "***", "a\tb", "a\u00a0b"],
)  # fmt: skip
def test_markdown_is_not_taken_for_prose(text):
    assert prose(text) is None


def test_the_paragraph_path_keeps_colours_out_of_prose_and_folds_long_words():
    render = MarkdownRenderer(Console(file=io.StringIO(), width=30, force_terminal=True, color_system="truecolor"))
    text = "A paragraph with " + "x" * 45 + " in it and 日本語のテキスト at the end of the line"
    assert render.render(text, 30) == render.markdown_lines(text, 30)
    assert all(len(line) <= 30 and "\x1b" not in line for line in render.render(text, 30)[0])
