"""Terminal rendering: plain text byte for byte, or Markdown committed block by block with a small live tail.

The Markdown view is three parts, each with one job, composed by `MarkdownView`:
`BlockSplitter` (`chatcore.blocks`: streamed text -> finished blocks and the open tail; pure text),
`MarkdownRenderer` (a block -> ANSI lines, with rich) and `LiveRegion` (the lines redrawn in
place below the scrollback: cursor arithmetic only).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, cast

from chatcore.blocks import BlockSplitter
from chatcore.streams import REASONING, TEXT

if TYPE_CHECKING:
    from rich.console import Console

# Event kinds are compared with `==`, never `is`: a kind may be a plain string or an enum member.
Kind = TypeVar("Kind")


class Output(Protocol):
    """Where a view writes: a text stream (sys.stdout, a pseudo-terminal, a test's fake terminal)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def is_terminal(stream: object, unknown: bool = False) -> bool:
    """Whether a stream is a terminal; `unknown` for anything without a working `isatty`."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else unknown
    except (AttributeError, ValueError):  # ValueError: a closed file
        return unknown


def terminal_size(stream: object) -> os.terminal_size | None:
    """The size of the terminal a stream writes to, or None when it is not one."""
    fileno = getattr(stream, "fileno", None)
    try:
        return os.get_terminal_size(fileno()) if fileno is not None else None
    except (OSError, ValueError, AttributeError):
        return None


# Model output is untrusted: on a terminal, a control character could set the window title,
# clear the screen or the scrollback, or write the clipboard (OSC 52). Every one but newline and
# tab is shown as a visible symbol instead of being obeyed (ESC as ␛); output into a pipe or a
# file is left byte for byte.
# C0 and C1 controls, and the bidirectional overrides and isolates, which reorder what follows them
# on screen ("Trojan Source"): shown as what they are, never obeyed.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code >= 0x202A:
        return f"⟨U+{code:04X}⟩"
    return chr(0x2400 + code) if code < 0x20 else "␡" if code == 0x7F else "\ufffd"


def visible_controls(text: str) -> str:
    """Text made safe to write to a terminal: control characters shown, never obeyed."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return CONTROL_CHARACTERS.sub(_picture, text) if CONTROL_CHARACTERS.search(text) else text


class PlainView:
    """Writes the model's text byte for byte; reasoning (if shown) goes dimmed to stderr or the terminal.

    Into a pipe, output is flushed at most every FLUSH_SECONDS rather than per chunk: a reader sees
    no difference, and thousands of chunks a second no longer cost a system call each.
    """

    FLUSH_SECONDS = 0.02

    def __init__(
        self, out: Output, show_reasoning: bool = False, reasoning_out: Output | None = None, dim: bool = False
    ) -> None:
        self.out = out
        self.batch = not is_terminal(out, unknown=True)  # a writer that cannot tell is treated as a terminal
        self.flushed_at = 0.0
        self.show_reasoning = show_reasoning
        self.reasoning_out = reasoning_out
        self.reasoning_tty = is_terminal(reasoning_out)
        self.dim = dim
        self.wrote_text = False
        self.ends_with_newline = True
        self._reasoning_open = False

    def on_event(self, kind: object, text: str) -> None:
        """Show one streamed event: the answer's text, or reasoning."""
        if kind == TEXT:
            if self._reasoning_open:
                self._close_reasoning()
            self.out.write(text if self.batch else visible_controls(text))
            if self.batch:
                now = time.monotonic()
                if now - self.flushed_at >= self.FLUSH_SECONDS:
                    self.flushed_at = now
                    self.out.flush()
            else:
                self.out.flush()
            self.wrote_text = True
            self.ends_with_newline = text.endswith("\n")
        elif self.reasoning_out is not None:
            if not self._reasoning_open:
                self._reasoning_open = True
                self.reasoning_out.write("\x1b[2m" if self.dim else "")
                if not self.show_reasoning:
                    self.reasoning_out.write("thinking…")
            if self.show_reasoning:
                self.reasoning_out.write(visible_controls(text) if self.reasoning_tty else text)
            self.reasoning_out.flush()

    def _close_reasoning(self) -> None:
        self._reasoning_open = False
        if self.reasoning_out is not None:  # always, once reasoning was opened
            self.reasoning_out.write(("\x1b[0m" if self.dim else "") + "\n")
            self.reasoning_out.flush()

    def finish(self) -> None:
        """End the reply on a line of its own."""
        if self._reasoning_open:
            self._close_reasoning()
        if self.wrote_text and not self.ends_with_newline:
            self.out.write("\n")
        self.out.flush()

    abort = finish


# -- Markdown, 1: splitting the stream into blocks: chatcore.blocks (pure text, shared with Telegram) --


# -- Markdown, 2: rendering text into terminal lines (rich) -------------------------------

# rich's Console names its colour system with one of these; `Console.color_system` returns it as a plain str.
ColorSystem = Literal["auto", "standard", "256", "truecolor", "windows"]
TRAILING_SPACES = re.compile(r" +\n")


def tail_lines(text: str, count: int) -> str:
    """The last `count` lines of text, found from the end: the cost does not grow with the text."""
    position = len(text)
    for _ in range(count):
        position = text.rfind("\n", 0, position)
        if position < 0:
            return text
    return text[position + 1 :]


def code_tail_lines(pending: str, width: int, rows: int) -> list[str]:
    """The last `rows` lines of an unfinished code block (its first line, the fence, left out) as plain text,
    each cropped to one terminal row; it is highlighted once it is finished."""
    from rich.cells import cell_len, set_cell_size

    lines = []
    first_newline = pending.find("\n")
    tail = tail_lines(pending[first_newline + 1 :] if first_newline >= 0 else "", rows)
    for line in tail.split("\n")[-rows:]:
        line = line.replace("\t", "    ")  # control characters were made visible on the way in
        if cell_len(line) >= width:
            line = set_cell_size(line, width - 1)
        lines.append(line.rstrip())
    return lines


def dim_lines(text: str, width: int) -> list[str]:
    """Text (the model's reasoning) dimmed and wrapped to the terminal's width."""
    lines = []
    for paragraph in text.strip("\n").split("\n"):
        while True:
            lines.append(f"\x1b[2m{paragraph[:width]}\x1b[0m" if paragraph else "")
            paragraph = paragraph[width:]
            if not paragraph:
                break
    return lines


# Plain prose: paragraphs of text in which Markdown finds nothing else. No character that can open
# inline markup (emphasis, code, links, HTML, entities, escapes, strikethrough, tables), no hard line
# break (trailing spaces), no whitespace but spaces and newlines, and no line that starts with a space
# (a blank line of spaces, indented code), ASCII punctuation (lists, quotes, headings, fences, setext
# underlines, rules) or an ordered list's number. Anything else goes through the Markdown parser.
NOT_PROSE = re.compile(r"[\\`*_\[\]<>&|~]|[^\S \n]| \n|(?:^|\n)(?:[ -/:-@\[-`{-~]|\d+[.)](?:[ \n]|$))")
BLANK_LINES = re.compile(r"\n\n+")


def prose(markdown_text: str) -> list[str] | None:
    """The paragraphs' texts as rich lays them out (soft line breaks as spaces), if the Markdown is
    plain prose; None when it holds anything the Markdown parser must read."""
    text = markdown_text.lstrip("\n").rstrip(" \n")
    if NOT_PROSE.search(text):
        return None
    return [paragraph.replace("\n", " ") for paragraph in BLANK_LINES.split(text)] if text else []


class MarkdownRenderer:
    """Markdown text -> ANSI lines, with rich, as printing the whole reply at once would show them.

    Its input has had its control characters made visible already (`visible_controls`): what it
    returns holds only rich's own escape sequences. Plain prose (most of a reply) skips the Markdown
    parse: it is wrapped as rich wraps a paragraph, which is the cost of a frame of the live region.
    """

    def __init__(self, console: Console, code_theme: str = "monokai") -> None:
        self.console = console  # the terminal's Console: its colour system and theme
        self.code_theme = code_theme
        self.previous_new_line: bool | None = None  # does the last finished block want a blank line after it?
        self._capture: Console | None = None  # renders into _buffer, rebuilt when the width changes
        self._buffer = io.StringIO()

    def render(self, markdown_text: str, width: int) -> tuple[list[str], bool]:
        """ANSI lines for a Markdown text, and whether rich would put a blank line after it."""
        paragraphs = prose(markdown_text)
        if paragraphs is None:
            return self.markdown_lines(markdown_text, width)
        lines: list[str] = []
        for paragraph in paragraphs:
            if lines:
                lines.append("")  # rich's blank line between two paragraphs
            lines += self.paragraph_lines(paragraph, width)
        return lines, True  # a paragraph asks for a blank line after it

    def paragraph_lines(self, paragraph: str, width: int) -> list[str]:
        """A paragraph of plain text as rich's Markdown shows it: wrapped word by word (cell-aware,
        long words folded), left-justified, no trailing spaces, no styles."""
        from rich.text import Text

        lines = Text(paragraph).wrap(self._capture_console(width), width, justify="left", overflow="fold")
        return [line.plain.rstrip(" ") for line in lines]

    def markdown_lines(self, markdown_text: str, width: int) -> tuple[list[str], bool]:
        """ANSI lines for any Markdown text, parsed and printed by rich."""
        from rich.markdown import Markdown, UnknownElement

        capture = self._capture_console(width)
        # Links show their URL: a terminal hyperlink (OSC 8) would hide where it goes.
        markdown = Markdown(markdown_text, code_theme=self.code_theme, hyperlinks=False)
        self._buffer.seek(0)
        self._buffer.truncate()
        capture.print(markdown)
        text = TRAILING_SPACES.sub("\n", self._buffer.getvalue())
        top = [token for token in markdown.parsed if token.level == 0]
        wants_new_line = True
        if top:
            opening = top[-1].type.replace("_close", "_open")
            wants_new_line = (markdown.elements.get(opening) or UnknownElement).new_line
        if text.endswith("\n"):
            text = text[:-1]  # the newline console.print adds; an element's own blank lines stay
        return text.split("\n") if text.strip("\n") else [], wants_new_line

    def block_text(self, block: str, width: int) -> str:
        """The text that puts the next finished block into the scrollback, ending in a newline."""
        lines, wants_new_line = self.render(block, width)
        out = ""
        if self.previous_new_line and lines and lines[0] != "":
            # rich puts a blank line between elements when the element closed last asks for one;
            # a block whose own inner elements already produced that blank line needs no other.
            out = "\n"
        out += "\n".join(lines) + "\n" if lines else ""
        self.previous_new_line = wants_new_line
        return out

    def _capture_console(self, width: int) -> Console:
        from rich.console import Console

        if self._capture is None or self._capture.width != width:
            self._capture = Console(
                file=self._buffer,
                width=width,
                force_terminal=True,
                no_color=self.console.no_color,
                color_system=cast("ColorSystem | None", self.console.color_system),
                legacy_windows=False,
                theme=None,
            )
        return self._capture


# -- Markdown, 3: the live region (cursor arithmetic, nothing about Markdown) ---------------

SGR = re.compile(r"\x1b\[[0-9;]*m")


class LiveRegion:
    """The few lines drawn below the scrollback and redrawn in place; the cursor rests at the end of the last.

    It returns the text to write rather than writing it, so a caller can send a commit and the
    redraw after it in one write. It knows nothing about what the lines hold.
    """

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self.lines: list[str] = []  # the lines on screen now
        self.width = 0  # the terminal's width when they were drawn

    def limit(self, height: int, tall: bool) -> int:
        """How many lines may be on screen: a tall region (an open code block) grows to the terminal's height."""
        return max(1, height - 2 if tall else min(self.max_lines, height - 2))

    def erase(self, width: int) -> str:
        """The text that clears the region, leaving the cursor where its first line began."""
        if not self.lines:
            self.width = width
            return ""
        rows = 0
        for line in self.lines:  # after a resize a line may now take several rows
            visible = len(SGR.sub("", line))
            rows += max(1, -(-visible // width)) if width != self.width else 1
        self.lines = []
        self.width = width
        return (f"\x1b[{rows - 1}A" if rows > 1 else "") + "\r\x1b[J"

    def repaint(self, lines: list[str], width: int, height: int, tall: bool = False) -> str | None:
        """The text that turns the region into `lines` (their tail, within the limit), rewriting
        only the lines that changed; None when the screen already shows them."""
        lines = lines[-self.limit(height, tall) :]
        if lines == self.lines and width == self.width:
            return None
        if not self.lines or width != self.width:
            out = self.erase(width) + "\n".join(lines)
        else:
            same = 0
            while same < min(len(lines), len(self.lines)) and lines[same] == self.lines[same]:
                same += 1
            if same == len(lines) and lines:
                # Fewer lines, all already shown: rewrite the last of them, so the cursor rests at its end
                # (clearing below it alone would leave the cursor a row low, and a stale line on screen).
                same -= 1
            if same == len(self.lines):
                out = "\n" + "\n".join(lines[same:])
            elif same == 0:
                out = self.erase(width) + "\n".join(lines)
            else:
                up = len(self.lines) - 1 - same
                out = (f"\x1b[{up}A" if up > 0 else "") + "\r\x1b[J" + "\n".join(lines[same:])
        self.lines = lines
        self.width = width
        return out


# -- Markdown, the view: the three parts composed ------------------------------------------


class MarkdownView:
    """Streams Markdown into a terminal: finished blocks are rendered once into the scrollback,
    only the unfinished block is redrawn, in a live region of a few lines, at most `fps` times a second.

    Reasoning, when shown, grows in the live region and is printed whole above the answer once the
    answer starts; when hidden, one dim line counts its characters until then.
    """

    def __init__(
        self,
        out: Output,
        console: Console,
        show_reasoning: bool = False,
        fps: float = 20.0,
        live_lines: int = 6,
        code_theme: str = "monokai",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.console = console  # a rich Console: its width (when `out` is not a terminal), colours, theme
        self.show_reasoning = show_reasoning
        self.interval = 1.0 / fps
        self.max_live = live_lines
        self.clock = clock
        self.blocks = BlockSplitter()
        self.renderer = MarkdownRenderer(console, code_theme)
        self.region = LiveRegion(live_lines)
        self.last_draw = -1e9
        self.reasoning_chars = 0
        self.reasoning = ""  # shown reasoning not yet committed to the scrollback
        self.wrote_text = False

    @property
    def pending(self) -> str:
        """The text of the unfinished block."""
        return self.blocks.pending

    @property
    def fence(self) -> str | None:
        """The open fence marker, while the unfinished block is code."""
        return self.blocks.fence

    @property
    def live(self) -> list[str]:
        """The lines now drawn in the live region."""
        return self.region.lines

    def _width(self) -> int:
        size = terminal_size(self.out)
        return max(20, size.columns) if size is not None else self.console.width

    def _height(self) -> int:
        size = terminal_size(self.out)
        return max(3, size.lines) if size is not None else 24

    # -- the stream ----------------------------------------------------------------

    def on_event(self, kind: object, text: str) -> None:
        """Show one streamed event: the answer's text, or reasoning."""
        text = visible_controls(text)  # this view only ever writes to a terminal
        if kind == REASONING:
            self._on_reasoning(text)
            return
        if self.reasoning:
            self._commit_reasoning()
        self.wrote_text = True
        blocks = self.blocks.feed(text)
        if blocks:
            self._commit(blocks)
        self._draw_live()

    def _on_reasoning(self, text: str) -> None:
        self.reasoning_chars += len(text)
        if self.show_reasoning and not self.wrote_text:
            self.reasoning += text  # shown growing in the live region, committed before the answer
            self._draw_live()
        elif self.reasoning_chars == len(text):
            self._draw_live(force=True)  # the first reasoning: "thinking…" at once

    def _commit_reasoning(self) -> None:
        """Print the whole reasoning, dimmed, into the scrollback above the answer (once)."""
        width = self._width()
        out = self.region.erase(width) + "\n".join(dim_lines(self.reasoning, width)) + "\n\n"
        self.reasoning = ""
        self.out.write(out)
        self.out.flush()

    def _commit(self, blocks: tuple[str, ...]) -> None:
        """Render finished blocks once into the scrollback, in place of the live region, then redraw it below."""
        width = self._width()
        out = self.region.erase(width)
        for block in blocks:
            out += self.renderer.block_text(block, width)
        self.out.write(out)
        self._draw_live(force=True)

    def _live_lines(self, width: int, height: int) -> list[str]:
        """What the live region should show now: the unfinished block's tail, else the reasoning or its count."""
        if self.blocks.fence is not None:  # unfinished code: plain lines, highlighted once it is committed
            return code_tail_lines(self.blocks.pending, width, max(self.max_live, height - 2))
        source = tail_lines(self.blocks.pending, self.max_live)[-4000:]  # enough to fill the region, bounded
        if source.strip():
            lines = self.renderer.render(source, width)[0]
            if source is self.blocks.pending and self.renderer.previous_new_line and lines and lines[0]:
                return ["", *lines]  # the blank line the block will be committed after: nothing moves then
            return lines
        if self.reasoning:
            return dim_lines(self.reasoning, width)
        if self.reasoning_chars and not self.show_reasoning and not self.wrote_text:
            return [f"\x1b[2mthinking… ({self.reasoning_chars:,} characters of reasoning)\x1b[0m"]
        return []

    def _draw_live(self, force: bool = False) -> None:
        """Redraw the live region, at most `fps` times a second unless forced."""
        now = self.clock()
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        width, height = self._width(), self._height()
        # An open code block grows on screen up to its height (then its tail); other blocks keep to a few lines.
        frame = self.region.repaint(self._live_lines(width, height), width, height, tall=self.blocks.fence is not None)
        if frame is not None:
            self.out.write(frame)
            self.out.flush()

    def finish(self) -> None:
        """Commit whatever is left as the final block."""
        if self.reasoning:
            self._commit_reasoning()  # reasoning with no answer after it: still shown whole
        blocks = self.blocks.close()
        if blocks:
            self._commit(blocks)
        self.out.write(self.region.erase(self._width()))
        self.out.flush()

    def abort(self) -> None:
        """Interrupted: clear the live region and keep what was received, rendered."""
        self.finish()


class Waiting:
    """A dim "waiting for the model…" on a terminal until the first token, with the elapsed seconds
    after a moment; erased without a trace (nothing is left in the scrollback) when the reply starts.

    A small thread draws it, so the wait for a slow server shows signs of life; every write, its own
    and the erase, happens under one lock, and nothing is drawn once `stop()` has been called.
    """

    def __init__(self, out: Output, delay: float = 0.25, interval: float = 0.5, shown: bool = True) -> None:
        self.out, self.delay, self.interval = out, delay, interval
        self.shown = shown  # False (NO_COLOR: plain output, no cursor movement): nothing is drawn
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.drawn = False
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="waiting", daemon=True)

    def start(self) -> Waiting:
        """Start drawing (when shown); returns itself."""
        if self.shown:
            self.thread.start()
        return self

    def _run(self) -> None:
        if self.stopped.wait(self.delay):
            return
        while True:
            elapsed = time.monotonic() - self.started
            seconds = f" {elapsed:.0f}s" if elapsed >= 1 else ""
            with self.lock:
                if self.stopped.is_set():
                    return
                self.out.write(f"\r\x1b[2K\x1b[2mwaiting for the model…{seconds}\x1b[0m")
                self.out.flush()
                self.drawn = True
            if self.stopped.wait(self.interval):
                return

    def clear(self) -> None:
        """Erase the line now (a note is about to be printed); it is drawn again at the next tick."""
        with self.lock:
            if self.drawn:
                self.out.write("\r\x1b[2K")
                self.out.flush()
                self.drawn = False

    def stop(self) -> None:
        """Erase the line for good; nothing is drawn after this."""
        if self.stopped.is_set():
            return
        with self.lock:
            self.stopped.set()
            if self.drawn:
                self.out.write("\r\x1b[2K")
                self.out.flush()
                self.drawn = False

    def until_first_event(self, on_event: Callable[[Kind, str], None]) -> Callable[[Kind, str], None]:
        """`on_event`, stopping the indicator before the first text or reasoning is shown."""

        def first(kind: Kind, text: str) -> None:
            if not self.stopped.is_set():
                self.stop()
            on_event(kind, text)

        return first


# -- text shaped for the terminal -------------------------------------------------------


def plural(count: int, word: str) -> str:
    """`count` and `word`, with an s unless the count is one: "1 turn", "2,000 turns"."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def fit(text: str, width: int) -> str:
    """Text cut to `width` characters, with an ellipsis when something was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def wrapped(text: str, indent: int) -> str:
    """A line wrapped to the terminal's width, continuation lines indented under its text."""
    import textwrap

    width = max(40, shutil.get_terminal_size().columns - 1)
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=" " * indent, break_on_hyphens=False))


# ---------------------------------------------------------------------------
# The lines around the replies: notes, warnings, errors, the held request log
# ---------------------------------------------------------------------------


class Screen:
    """The chat's lines around the replies: plain, dim notes, warnings and errors (never markup)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.waiting: Waiting | None = None  # the "waiting for the model…" line, until the first token
        self.store_problem: str | None = None  # why sessions cannot be saved, once known
        self._held: list[tuple[Callable[[str], None], str]] | None = []  # shown under the banner

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        if self.waiting is not None:
            self.waiting.clear()  # a retry notice while waiting: on a line of its own
        self.console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        self.console.print(f"error: {text}", style="red", markup=False, highlight=False, soft_wrap=True)

    def early(self, show: Callable[[str], None], text: str) -> None:
        """Show now, or under the banner if the chat has not started yet."""
        if self._held is None:
            show(text)
        else:
            self._held.append((show, text))

    def started(self) -> None:
        held, self._held = self._held or [], None
        for show, text in held:
            show(text)


class HeldLog:
    """-v request log lines, written out once the reply has ended: a log line never joins the reply."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def show(self, out: Output) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        for line in self.lines:
            out.write(f"{stamp} {line}\n")
        self.lines.clear()
        out.flush()


class LinesTo(logging.Handler):
    """The engine's notices (a file's mode tightened) as lines of this front-end's."""

    def __init__(self, show: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        self.show(record.getMessage())


def engine_notices_to(show: Callable[[str], None]) -> None:
    logger = logging.getLogger("chatbot")
    logger.handlers, logger.propagate = [LinesTo(show)], False
