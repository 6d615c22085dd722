"""Terminal rendering: plain text byte for byte, or Markdown committed block by block with a small live tail."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from chatcore.streams import REASONING, TEXT

# Model output is untrusted: on a terminal, a control character could set the window title,
# clear the screen or the scrollback, or write the clipboard (OSC 52). Every one but newline and
# tab is shown as a visible symbol instead of being obeyed (ESC as ␛); output into a pipe or a
# file is left byte for byte.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
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

    def __init__(self, out: Any, show_reasoning: bool = False, reasoning_out: Any = None, dim: bool = False):
        self.out = out
        try:
            self.batch = not out.isatty()
        except (AttributeError, ValueError):
            self.batch = False
        self.flushed_at = 0.0
        self.show_reasoning = show_reasoning
        self.reasoning_out = reasoning_out
        try:
            self.reasoning_tty = reasoning_out is not None and reasoning_out.isatty()
        except (AttributeError, ValueError):
            self.reasoning_tty = False
        self.dim = dim
        self.wrote_text = False
        self.ends_with_newline = True
        self._reasoning_open = False

    def on_event(self, kind: str, text: str) -> None:
        if kind is TEXT:
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
        self.reasoning_out.write(("\x1b[0m" if self.dim else "") + "\n")
        self.reasoning_out.flush()

    def finish(self) -> None:
        if self._reasoning_open:
            self._close_reasoning()
        if self.wrote_text and not self.ends_with_newline:
            self.out.write("\n")
        self.out.flush()

    abort = finish


def tail_lines(text: str, count: int) -> str:
    """The last `count` lines of text, found from the end: the cost does not grow with the text."""
    position = len(text)
    for _ in range(count):
        position = text.rfind("\n", 0, position)
        if position < 0:
            return text
    return text[position + 1 :]


class MarkdownView:
    """Streams Markdown into a terminal: finished blocks are rendered once into the scrollback,
    only the unfinished block is redrawn, in a live region of a few lines, at most `fps` times a second.

    A block is finished only when the Markdown says so: a blank line outside a code fence
    (and not inside a list that continues), a closing fence, or a heading line.
    """

    FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
    LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:\s|$)")

    def __init__(
        self,
        out: Any,
        console: Any,
        show_reasoning: bool = False,
        fps: float = 20.0,
        live_lines: int = 6,
        code_theme: str = "monokai",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.out = out
        self.console = console  # a rich Console: its width, colour system and theme
        self.show_reasoning = show_reasoning
        self.interval = 1.0 / fps
        self.max_live = live_lines
        self.code_theme = code_theme
        self.pending = ""  # text received but not committed
        self.scanned = 0  # offset in `pending` of the first line not yet scanned
        self.fence: str | None = None  # the open fence marker, when inside a code block
        self.blank_at: int | None = None  # offset after a blank line that may end the block
        self.previous_new_line: bool | None = None  # does the last committed block want a blank line after it?
        self.live: list[str] = []  # lines now drawn in the live region (cursor at the end of the last)
        self.live_width = 0
        self.last_draw = -1e9
        self.clock = clock
        self.reasoning_chars = 0
        self.reasoning = ""  # shown reasoning not yet committed to the scrollback
        self.wrote_text = False
        self._capture: Any = None

    # -- rendering helpers -------------------------------------------------------

    def _render(self, markdown_text: str, width: int) -> tuple[list[str], bool]:
        """ANSI lines for a Markdown text, and whether rich would put a blank line after it."""
        from rich.console import Console
        from rich.markdown import Markdown, UnknownElement

        capture = self._capture
        if capture is None or capture.width != width:
            import io

            capture = self._capture = Console(
                file=io.StringIO(),
                width=width,
                force_terminal=True,
                no_color=self.console.no_color,
                color_system=self.console.color_system,
                legacy_windows=False,
                theme=None,
            )
        # Links show their URL: a terminal hyperlink (OSC 8) would hide where it goes.
        markdown = Markdown(markdown_text, code_theme=self.code_theme, hyperlinks=False)
        capture.file.seek(0)
        capture.file.truncate()
        capture.print(markdown)
        text = re.sub(r" +\n", "\n", capture.file.getvalue())
        top = [t for t in markdown.parsed if t.level == 0]
        wants_new_line = True
        if top:
            opening = top[-1].type.replace("_close", "_open")
            wants_new_line = (markdown.elements.get(opening) or UnknownElement).new_line
        if text.endswith("\n"):
            text = text[:-1]  # the newline console.print adds; an element's own blank lines stay
        return text.split("\n") if text.strip("\n") else [], wants_new_line

    def _width(self) -> int:
        try:
            return max(20, os.get_terminal_size(self.out.fileno()).columns)
        except (OSError, ValueError, AttributeError):
            return self.console.width

    def _height(self) -> int:
        try:
            return max(3, os.get_terminal_size(self.out.fileno()).lines)
        except (OSError, ValueError, AttributeError):
            return 24

    def _erase_live(self, width: int) -> str:
        if not self.live:
            return ""
        rows = 0
        for line in self.live:  # after a resize a line may now take several rows
            visible = len(re.sub(r"\x1b\[[0-9;]*m", "", line))
            rows += max(1, -(-visible // width)) if width != self.live_width else 1
        self.live = []
        return (f"\x1b[{rows - 1}A" if rows > 1 else "") + "\r\x1b[J"

    # -- the stream ----------------------------------------------------------------

    def on_event(self, kind: str, text: str) -> None:
        text = visible_controls(text)  # this view only ever writes to a terminal
        if kind is REASONING:
            self.reasoning_chars += len(text)
            if self.show_reasoning and not self.wrote_text:
                self.reasoning += text  # shown growing in the live region, committed before the answer
                self._draw_live()
            elif self.reasoning_chars == len(text):
                self._draw_live(force=True)
            return
        if self.reasoning:
            self._commit_reasoning()
        self.wrote_text = True
        pending, self.pending = self.pending, ""
        pending += text  # with the only reference held here, CPython appends in place: no copy per delta
        self.pending = pending
        if "\n" in text:
            self._scan()
        self._draw_live()

    def _reasoning_lines(self, width: int) -> list[str]:
        """The reasoning so far, dimmed and wrapped to the terminal's width."""
        lines = []
        for paragraph in self.reasoning.strip("\n").split("\n"):
            while True:
                lines.append(f"\x1b[2m{paragraph[:width]}\x1b[0m" if paragraph else "")
                paragraph = paragraph[width:]
                if not paragraph:
                    break
        return lines

    def _commit_reasoning(self) -> None:
        """Print the whole reasoning, dimmed, into the scrollback above the answer (once)."""
        width = self._width()
        out = self._erase_live(width) + "\n".join(self._reasoning_lines(width)) + "\n\n"
        self.reasoning = ""
        self.out.write(out)
        self.out.flush()

    def _scan(self) -> None:
        """Find finished blocks among the complete lines not yet scanned, and commit them."""
        while True:
            end = self.pending.find("\n", self.scanned)
            if end < 0:
                return
            start, self.scanned = self.scanned, end + 1
            line = self.pending[start:end]
            fence = self.FENCE.match(line)
            if self.fence is not None:
                marker = self.fence
                if (
                    fence
                    and fence.group(1)[0] == marker[0]
                    and len(fence.group(1)) >= len(marker)
                    and not line.strip().strip(marker[0])
                ):
                    self.fence = None
                    self._commit(self.scanned)
                continue
            if not line.strip():
                if self.pending[:start].strip():
                    self.blank_at = self.scanned
                continue
            if self.blank_at is not None:
                in_list = self.LIST_ITEM.match(self.pending.lstrip("\n")) is not None
                continues = line[:1] in (" ", "\t") or (in_list and self.LIST_ITEM.match(line))
                if not continues:
                    start -= self.blank_at
                    self._commit(self.blank_at)
                self.blank_at = None
            if fence:
                self.fence = fence.group(1)
            elif re.match(r"^ {0,3}#{1,6}(\s|$)", line) and not self.pending[:start].strip():
                self._commit(self.scanned)

    def _commit(self, upto: int) -> None:
        """Render pending[:upto] once into the scrollback; keep the rest pending."""
        block, self.pending = self.pending[:upto], self.pending[upto:]
        self.scanned -= upto
        self.blank_at = None
        if not block.strip():
            return
        width = self._width()
        lines, wants_new_line = self._render(block, width)
        out = self._erase_live(width)
        if self.previous_new_line and lines and lines[0] != "":
            # rich puts a blank line between elements when the element closed last asks for one;
            # a block whose own inner elements already produced that blank line needs no other.
            out += "\n"
        out += "\n".join(lines) + "\n" if lines else ""
        self.previous_new_line = wants_new_line
        self.out.write(out)
        self.live_width = width
        self._draw_live(force=True)

    def _live_source(self) -> str:
        """The tail of the unfinished block: enough to fill the live region, bounded in size."""
        return tail_lines(self.pending, self.max_live)[-4000:]

    def _code_lines(self, width: int) -> list[str]:
        """The tail of an unfinished code block as plain text, each line cropped to one terminal row."""
        from rich.cells import cell_len, set_cell_size

        lines = []
        first_newline = self.pending.find("\n")
        rows = max(self.max_live, self._height() - 2)
        tail = tail_lines(self.pending[first_newline + 1 :] if first_newline >= 0 else "", rows)
        for line in tail.split("\n")[-rows:]:
            line = line.replace("\t", "    ")  # control characters were made visible on the way in
            if cell_len(line) >= width:
                line = set_cell_size(line, width - 1)
            lines.append(line.rstrip())
        return lines

    def _draw_live(self, force: bool = False) -> None:
        """Redraw the live region, rewriting only the lines that changed."""
        now = self.clock()
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        width = self._width()
        source = self._live_source()
        if self.fence is not None:
            lines = self._code_lines(width)  # unfinished code: plain lines, highlighted once it is committed
        elif source.strip():
            lines, _ = self._render(source, width)
        elif self.reasoning:
            lines = self._reasoning_lines(width)
        elif self.reasoning_chars and not self.show_reasoning and not self.wrote_text:
            lines = [f"\x1b[2mthinking… ({self.reasoning_chars:,} characters of reasoning)\x1b[0m"]
        else:
            lines = []
        # An open code block grows on screen up to its height (then its tail); other blocks keep to a few lines.
        limit = max(1, self._height() - 2 if self.fence is not None else min(self.max_live, self._height() - 2))
        lines = lines[-limit:]
        if lines == self.live and width == self.live_width:
            return
        if not self.live or width != self.live_width:
            out = self._erase_live(width) + "\n".join(lines)
        else:
            same = 0
            while same < min(len(lines), len(self.live)) and lines[same] == self.live[same]:
                same += 1
            if same == len(self.live):
                out = "\n" + "\n".join(lines[same:])
            elif same == 0:
                out = self._erase_live(width) + "\n".join(lines)
            else:
                up = len(self.live) - 1 - same
                out = (f"\x1b[{up}A" if up > 0 else "") + "\r\x1b[J" + "\n".join(lines[same:])
        self.live = lines
        self.live_width = width
        self.out.write(out)
        self.out.flush()

    def finish(self) -> None:
        """Commit whatever is left as the final block."""
        if self.reasoning:
            self._commit_reasoning()  # reasoning with no answer after it: still shown whole
        if self.pending.strip():
            self._commit(len(self.pending))
        out = self._erase_live(self._width())
        self.out.write(out)
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

    def __init__(self, out: Any, delay: float = 0.25, interval: float = 0.5, shown: bool = True):
        self.out, self.delay, self.interval = out, delay, interval
        self.shown = shown  # False (NO_COLOR: plain output, no cursor movement): nothing is drawn
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.drawn = False
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="waiting", daemon=True)

    def start(self) -> Waiting:
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
        if self.stopped.is_set():
            return
        with self.lock:
            self.stopped.set()
            if self.drawn:
                self.out.write("\r\x1b[2K")
                self.out.flush()
                self.drawn = False

    def until_first_event(self, on_event: Callable[[str, str], None]) -> Callable[[str, str], None]:
        """`on_event`, stopping the indicator before the first text or reasoning is shown."""

        def first(kind: str, text: str) -> None:
            if not self.stopped.is_set():
                self.stop()
            on_event(kind, text)

        return first


# -- text shaped for the terminal -------------------------------------------------------


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def fit(text: str, width: int) -> str:
    """Text cut to `width` characters, with an ellipsis when something was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def wrapped(text: str, indent: int) -> str:
    """A line wrapped to the terminal's width, continuation lines indented under its text."""
    import textwrap

    width = max(40, shutil.get_terminal_size().columns - 1)
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=" " * indent, break_on_hyphens=False))
