"""Streamed Markdown cut into finished blocks and the open tail: pure text, no terminal, no Telegram.

Both front-ends render a reply as it streams, and both do only the unfinished part again: the
terminal commits finished blocks to the scrollback once, the Telegram drafts convert each finished
block once.
"""

from __future__ import annotations

import re

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:\s|$)")
HEADING = re.compile(r"^ {0,3}#{1,6}(\s|$)")


def closes_fence(marker: str, line: str) -> bool:
    """Whether `line` closes a code block opened by `marker`: the same character, at least as many, nothing else."""
    fence = FENCE.match(line)
    return bool(
        fence
        and fence.group(1)[0] == marker[0]
        and len(fence.group(1)) >= len(marker)
        and not line.strip().strip(marker[0])
    )


class BlockSplitter:
    """Streamed Markdown in, finished blocks out: pure text, no terminal.

    A block is finished only when the Markdown says so: a blank line outside a code fence
    (and not inside a list that continues), a closing fence, or a heading line. Only complete
    lines are read, so a chunk may end anywhere, even inside a fence marker. What is not finished
    is `pending`, the open tail; `fence` is its open fence marker while inside a code block.
    """

    def __init__(self) -> None:
        self.pending = ""  # text received but not yet part of a finished block
        self.fence: str | None = None  # the open fence marker, when inside a code block
        self._scanned = 0  # offset in `pending` of the first line not yet read
        self._blank_at: int | None = None  # offset after a blank line that may end the block

    def feed(self, text: str) -> tuple[str, ...]:
        """Add a chunk; return the blocks it finished, oldest first (each with the blank lines after it)."""
        pending, self.pending = self.pending, ""
        pending += text  # with the only reference held here, CPython appends in place: no copy per chunk
        self.pending = pending
        return self._scan() if "\n" in text else ()

    def close(self) -> tuple[str, ...]:
        """The text has ended: the open tail is the last block, if it holds anything. Starts afresh."""
        rest = self.pending
        self.pending, self.fence, self._scanned, self._blank_at = "", None, 0, None
        return (rest,) if rest.strip() else ()

    def _scan(self) -> tuple[str, ...]:
        """Read the complete lines not yet read, cutting off each block they finish."""
        blocks: list[str] = []
        while (end := self.pending.find("\n", self._scanned)) >= 0:
            start, self._scanned = self._scanned, end + 1
            line = self.pending[start:end]
            if self.fence is not None:
                if closes_fence(self.fence, line):
                    self.fence = None
                    self._cut(self._scanned, blocks)
                continue
            if not line.strip():
                if self.pending[:start].strip():
                    self._blank_at = self._scanned  # the block ends here unless the next line carries it on
                continue
            if self._blank_at is not None:
                if not self._continues(line):
                    start -= self._blank_at
                    self._cut(self._blank_at, blocks)
                self._blank_at = None
            opening = FENCE.match(line)
            if opening:
                self.fence = opening.group(1)
            elif HEADING.match(line) and not self.pending[:start].strip():
                self._cut(self._scanned, blocks)  # a heading is a block of its own
        return tuple(blocks)

    def _continues(self, line: str) -> bool:
        """After a blank line, whether `line` carries the block on: indented, or the next item of a list."""
        if line[:1] in (" ", "\t"):
            return True
        return LIST_ITEM.match(line) is not None and LIST_ITEM.match(self.pending.lstrip("\n")) is not None

    def _cut(self, upto: int, blocks: list[str]) -> None:
        """Cut pending[:upto] off as a finished block (kept only if it holds more than blank lines)."""
        block, self.pending = self.pending[:upto], self.pending[upto:]
        self._scanned -= upto
        self._blank_at = None
        if block.strip():
            blocks.append(block)
