"""Telegram's rich messages (Bot API 10.1-10.3) for the assistant's replies: the payloads, the
limits, what the server has been seen to support, and the Stop button.

A rich message carries the model's Markdown itself (`rich_message.markdown`) and Telegram parses it:
headings, tables, lists, code, formulas and quotes render as the model meant them, up to 32,768
characters a message. Three things are ours:

- **fidelity**: Telegram's Markdown reads `<tag>` as HTML and `&name;` as a character reference, so
  outside code those two characters are escaped (`\\<`, `\\&`) and the chat shows what the model wrote;
- **the limits**: a reply over 32,768 characters, 500 blocks or a table over 20 columns is split at
  block boundaries (paragraphs, lists, tables, fenced code), a fence that must be cut is closed and
  reopened, a table that must be cut repeats its header, and a table too wide is sent as code;
- **capability**: learned from the server's answers, never assumed (`Capability`).

Facts relied on and where they are documented: docs/telegram-rich-messages.md.
python-telegram-bot 22.8 has no typed support: the methods go through `Bot.do_api_request`, and the
Stop update is read from `Update.api_kwargs`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

from chatcore.turn import Cancel
from telegram_render import BOUNDARIES, LITERAL, grapheme_start, utf16_len

log = logging.getLogger("chatbot.telegram")

RICH_CHARS = 32_768  # characters of text in one rich message (formula sources included)
RICH_BLOCKS = 500  # blocks in one rich message: paragraphs, list items, table rows, quotes...
BLOCK_BUDGET = 480  # what a part is filled to: the count is an estimate (nesting), kept under the limit
RICH_COLUMNS = 20  # columns in one table
THINKING = "Thinking…"  # the draft's thinking block, until the model's first words
STOP_UPDATE = "stopped_message_generation"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
CODE_SPAN = re.compile(r"`+")
LIST_ITEM = re.compile(r"^\s*(?:>\s*)*(?:[-*+]|\d{1,9}[.)])\s")
MARKER = re.compile(r" {0,3}(?:>|[-*+](?=\s)|\d{1,9}[.)](?=\s)|#{1,6}(?=\s))\s*")  # opens a block (nested: several)
# `<` (not an autolink) and `&` before a character reference, unless the model escaped it already.
ESCAPABLE = re.compile(rf"(?<!\\)(?:{LITERAL.pattern})")
MISSING = re.compile(r"method not found|unknown method|no such method|method is not available", re.I)


# ---------------------------------------------------------------------------
# Fidelity: the model's Markdown, with what Telegram would read as HTML escaped
# ---------------------------------------------------------------------------


def escape_line(line: str) -> str:
    """One line outside fences: `<` and `&` escaped, except inside inline code (`...`), where a
    backslash would show."""
    pieces: list[str] = []
    position = 0
    for run in CODE_SPAN.finditer(line):
        if run.start() < position:
            continue
        close = re.compile(rf"(?<!`){run.group()}(?!`)").search(line, run.end())
        if close is None:
            continue
        pieces.append(ESCAPABLE.sub(r"\\\g<0>", line[position : run.start()]))
        pieces.append(line[run.start() : close.end()])
        position = close.end()
    pieces.append(ESCAPABLE.sub(r"\\\g<0>", line[position:]))
    return "".join(pieces)


def rich_markdown(markdown: str) -> str:
    """The model's Markdown as `rich_message.markdown`: as written, but for escapes that make `<` and
    `&` show as themselves; fenced code is left exactly as it is."""
    return escaped(markdown, None)[0]


def escaped(markdown: str, fence: str | None) -> tuple[str, str | None]:
    """`rich_markdown` of a stretch of text that starts inside `fence` (None: outside any), and the
    fence still open after it: stretches converted one after another join as the whole would."""
    lines: list[str] = []
    for line in markdown.split("\n"):
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(1).startswith(fence) and not match.group(2).strip():
                fence = None
            lines.append(line)
        elif match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
            fence = match.group(1)
            lines.append(line)
        else:
            lines.append(escape_line(line))
    return "\n".join(lines), fence


# ---------------------------------------------------------------------------
# The limits: a reply as rich messages, split at block boundaries
# ---------------------------------------------------------------------------


@dataclass
class Unit:
    """A piece of a reply that is not cut unless it must be: a paragraph (or list), a table, a fence."""

    kind: str  # "text", "table" or "fence"
    lines: list[str]
    measured: int | None = None  # chars(), once computed
    alone: tuple[str, str | None] | None = None  # escaped(text, None), once computed

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def chars(self) -> int:
        if self.measured is None:
            self.measured = utf16_len(self.escaped(None)[0])
        return self.measured

    def escaped(self, fence: str | None) -> tuple[str, str | None]:
        """`escaped(self.text, fence)`; outside a fence (as measured), computed once."""
        if fence is not None:
            return escaped(self.text, fence)
        if self.alone is None:
            self.alone = escaped(self.text, None)
        return self.alone

    def blocks(self) -> int:
        """Blocks Telegram counts for it ("all blocks, list items and table rows"), over- rather than
        under-estimated: a fence is one; a table one and each row another; in text, every block a line
        opens (a heading, a list item, a quote: "> - x" opens two), the list around its items, and the
        paragraph its plain lines make."""
        if self.kind == "fence":
            return 1
        if self.kind == "table":
            return len(self.lines)  # its rows (the delimiter row is none), and the table itself
        opened = sum(markers(line) for line in self.lines)
        lists = any(LIST_ITEM.match(line) for line in self.lines)
        return opened + lists + any(line.strip() and not markers(line) for line in self.lines)

    def columns(self) -> int:
        return max((cells(line) for line in self.lines), default=0) if self.kind == "table" else 0


def markers(line: str) -> int:
    """How many blocks a line opens at its start: `## x` one, `- x` one, `> 1. x` two."""
    count = position = 0
    while (match := MARKER.match(line, position)) and match.end() > position:
        count, position = count + 1, match.end()
    return count


def cells(row: str) -> int:
    inner = re.sub(r"\\\|", "", row.strip()).strip("|")
    return inner.count("|") + 1


def starts_table(lines: list[str], index: int) -> bool:
    """A table's header row: a line with pipes over a delimiter row (`|---|:--:|`)."""
    rule = lines[index + 1] if index + 1 < len(lines) else ""
    return "|" in lines[index] and "-" in rule and bool(TABLE_RULE.match(rule))


def units_of(markdown: str) -> list[Unit]:
    """The reply's units, in order (blank lines between them are where it may be split)."""
    return [unit for _start, unit in scan(markdown.split("\n"))]


def scan(lines: list[str]) -> list[tuple[int, Unit]]:
    """The units of these lines, each with the index of its first line. Where a unit starts depends
    only on the lines before it and the one after its first line: from there the scan can restart."""
    units: list[tuple[int, Unit]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if not line.strip():
            index += 1
        elif fence:
            end = index + 1
            while end < len(lines):
                close = FENCE.match(lines[end])
                if close and close.group(1).startswith(fence.group(1)) and not close.group(2).strip():
                    break
                end += 1
            units.append((index, Unit("fence", lines[index : end + 1])))
            index = end + 1
        elif starts_table(lines, index):
            end = index + 2
            while end < len(lines) and lines[end].strip() and "|" in lines[end]:
                end += 1
            units.append((index, Unit("table", lines[index:end])))
            index = end
        else:
            end = index + 1
            while (
                end < len(lines) and lines[end].strip() and not FENCE.match(lines[end]) and not starts_table(lines, end)
            ):
                end += 1
            units.append((index, Unit("text", lines[index:end])))
            index = end
    return units


def fits(unit: Unit, chars: int = RICH_CHARS, blocks: int = BLOCK_BUDGET) -> bool:
    return unit.chars() <= chars and unit.blocks() <= blocks and unit.columns() <= RICH_COLUMNS


def cut_fence(unit: Unit, chars: int) -> list[Unit]:
    """A code block too long for one message: cut at lines, each piece closed and reopened with the
    same fence and language, so every part still renders as code."""
    opening = unit.lines[0]
    marker = FENCE.match(opening)
    closing = marker.group(1) if marker else "```"
    body = unit.lines[1:-1] if len(unit.lines) > 1 and FENCE.match(unit.lines[-1]) else unit.lines[1:]
    room = chars - utf16_len(opening) - utf16_len(closing) - 2
    pieces: list[Unit] = []
    current: list[str] = []
    size = 0
    for line in body:
        for chunk in cut_text(line, room) if utf16_len(line) > room else [line]:
            if current and size + utf16_len(chunk) + 1 > room:
                pieces.append(Unit("fence", [opening, *current, closing]))
                current, size = [], 0
            current.append(chunk)
            size += utf16_len(chunk) + 1
    pieces.append(Unit("fence", [opening, *current, closing]))
    return pieces


def pack(kind: str, head: list[str], lines: list[str], chars: int, blocks: int) -> list[Unit]:
    """Lines as units of `kind`, each led by `head` (a table's header rows), filled up to the limits;
    counted line by line (no more blocks than `Unit.blocks` counts), so a long table or list costs
    linear time."""
    base_size = sum(utf16_len(rich_markdown(line)) + 1 for line in head)
    base_count = 1 + bool(head)  # the table (or list, or paragraph), and its header row
    units: list[Unit] = []
    current: list[str] = []
    size, count = base_size, base_count
    for line in lines:
        cost = utf16_len(rich_markdown(line)) + 1
        weight = 1 if kind == "table" else max(markers(line), 1)
        if current and (size + cost > chars or count + weight > blocks):
            units.append(Unit(kind, [*head, *current]))
            current, size, count = [], base_size, base_count
        current.append(line)
        size, count = size + cost, count + weight
    units.append(Unit(kind, [*head, *current]))
    return units


def cut_text(text: str, limit: int) -> list[str]:
    """Text over `limit` UTF-16 units, cut at the latest line, sentence or word boundary that fits
    (as a last resort inside a word, never inside a character)."""
    pieces: list[str] = []
    while utf16_len(text) > limit:
        furthest = size = 0
        while furthest < len(text) and size + (width := 2 if ord(text[furthest]) > 0xFFFF else 1) <= limit:
            size += width
            furthest += 1
        window = text[:furthest]
        cut = next(
            (
                cuts[-1]
                for boundary in BOUNDARIES[1:]
                if (cuts := [m.start() for m in boundary.finditer(window) if m.start()])
            ),
            None,
        )
        if cut is None:
            cut = grapheme_start(text, max(furthest, 1), 0)
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    pieces.append(text)
    return [piece for piece in pieces if piece]


def cut_unit(unit: Unit, chars: int, blocks: int) -> list[Unit]:
    """A unit that is too big for one message on its own, as units that each fit."""
    if unit.kind == "table" and unit.columns() > RICH_COLUMNS:  # too wide to render: shown as code
        return cut_unit(Unit("fence", ["```", *unit.lines, "```"]), chars, blocks)
    if fits(unit, chars, blocks):
        return [unit]
    if unit.kind == "fence":
        return cut_fence(unit, chars)
    if unit.kind == "table":  # its rows in several tables, each under the same header
        return pack("table", unit.lines[:2], unit.lines[2:], chars, blocks)
    lines = [  # a long paragraph or list: cut between its lines, and a line too long inside it
        chunk
        for line in unit.lines
        for chunk in (cut_text(line, chars // 2) if utf16_len(rich_markdown(line)) > chars // 2 else [line])
    ]
    return pack("text", [], lines, chars, blocks)


class Packer:
    """Units into rich messages as `split_rich` packs them, one at a time: a part closes when the
    next unit would take it over the limits."""

    def __init__(self, chars: int = RICH_CHARS, blocks: int = BLOCK_BUDGET) -> None:
        self.chars, self.blocks = chars, blocks
        self.current: list[Unit] = []  # the open part's units
        self.size = self.count = 0  # its characters and blocks

    def add(self, unit: Unit) -> list[Unit] | None:
        """Add the next unit; the part it closes (the units before it), if it starts a new one."""
        unit_chars, unit_blocks = unit.chars(), unit.blocks()
        closed = None
        if self.current and (self.size + 2 + unit_chars > self.chars or self.count + unit_blocks > self.blocks):
            closed, self.current, self.size, self.count = self.current, [], 0, 0
        self.current.append(unit)
        self.size += unit_chars + (2 if self.size else 0)
        self.count += unit_blocks
        return closed

    def copy(self) -> Packer:
        packer = Packer(self.chars, self.blocks)
        packer.current, packer.size, packer.count = list(self.current), self.size, self.count
        return packer


def joined(units: list[Unit]) -> str:
    return "\n\n".join(unit.text for unit in units)


def split_rich(markdown: str, chars: int = RICH_CHARS, blocks: int = BLOCK_BUDGET) -> list[str]:
    """The reply as the Markdown of rich messages that each fit Telegram's limits, cut only between
    units (paragraphs, lists, tables, fences) unless one is too big for a message of its own."""
    parts: list[str] = []
    packer = Packer(chars, blocks)
    for unit in (piece for whole in units_of(markdown) for piece in cut_unit(whole, chars, blocks)):
        if (closed := packer.add(unit)) is not None:
            parts.append(joined(closed))
    if packer.current:
        parts.append(joined(packer.current))
    return parts


# ---------------------------------------------------------------------------
# The payloads
# ---------------------------------------------------------------------------

# Decision: automatic entity detection stays on (skip_entity_detection false): a URL, an e-mail
# address or a /command the model wrote is clickable, as it is on the entities path.
SKIP_ENTITY_DETECTION = False


def final_message(markdown: str) -> dict[str, Any]:
    """`rich_message` of a finished reply's message (one part of it)."""
    return {"markdown": rich_markdown(markdown), "skip_entity_detection": SKIP_ENTITY_DETECTION}


def thinking_message() -> dict[str, Any]:
    """`rich_message` of a draft while the model has not written anything: a thinking block."""
    return {"blocks": [{"type": "thinking", "text": THINKING}]}


def draft_message(text: str) -> dict[str, Any]:
    """`rich_message` of a draft: the reply so far (its last message-sized part if it is long)."""
    parts = split_rich(text)
    return final_message(parts[-1] if parts else text)


class OpenPart:
    """The part being filled, as a draft shows it: its units packed, and each converted (`escaped`)
    in the fence context the units before it leave, so converting a unit once is enough."""

    def __init__(self, chars: int, blocks: int) -> None:
        self.packer = Packer(chars, blocks)
        self.shown: list[str] = []  # the open part's units as rich_message.markdown
        self.fence: str | None = None  # the fence still open after them

    def add(self, unit: Unit) -> None:
        if self.packer.add(unit) is not None:
            self.shown, self.fence = [], None
        markdown, self.fence = unit.escaped(self.fence)
        self.shown.append(markdown)

    def copy(self) -> OpenPart:
        part = OpenPart(self.packer.chars, self.packer.blocks)
        part.packer, part.shown, part.fence = self.packer.copy(), list(self.shown), self.fence
        return part


def restart(units: list[tuple[int, Unit]], lines: int) -> int:
    """The last of these units whose start is settled in a text of `lines` lines (the last one may
    still grow): its first line and the one after it are whole. 0 if none is (only blank lines,
    which nothing changes, come before the first unit)."""
    settled = [k for k, (start, _unit) in enumerate(units) if start + 2 < lines]
    return settled[-1] if settled else 0


class RichDrafts:
    """`draft_message` of a streaming reply, draft after draft, at the cost of what is new: exactly
    `draft_message(text)`, but the units settled before the last unit boundary are scanned, cut,
    packed and converted once, and only the tail after it again for each draft.

    A unit starts where the scan reaches it from the lines before it and the one after its first
    line; once those are whole lines (text after them has come), nothing later moves that start, so
    the units before it are settled. Within one unit (a long code block, a paragraph without a blank
    line) the cost still grows with that unit. A text that does not extend the last one starts over.
    """

    def __init__(self, chars: int = RICH_CHARS, blocks: int = BLOCK_BUDGET) -> None:
        self.chars, self.blocks = chars, blocks
        self._start_over()

    def _start_over(self) -> None:
        self.seen = ""  # the text of the last draft
        self.offset = 0  # where its unsettled tail starts: the first line of a unit, in `seen`
        self.settled = OpenPart(self.chars, self.blocks)  # the open part, with the settled units only

    def message(self, text: str) -> dict[str, Any]:
        """`rich_message` of a draft of `text`, the reply so far."""
        if not text.startswith(self.seen):
            self._start_over()
        self.seen = text
        lines = text[self.offset :].split("\n")
        units = scan(lines)
        settle = restart(units, len(lines))
        for _start, unit in units[:settle]:
            self._settle(unit)
        if settle < len(units):
            self.offset += sum(len(line) + 1 for line in lines[: units[settle][0]])
        part = self.settled.copy()
        for _start, unit in units[settle:]:
            for piece in cut_unit(unit, self.chars, self.blocks):
                part.add(piece)
        if not part.shown:
            return final_message(text)
        return {"markdown": "\n\n".join(part.shown), "skip_entity_detection": SKIP_ENTITY_DETECTION}

    def _settle(self, unit: Unit) -> None:
        for piece in cut_unit(unit, self.chars, self.blocks):
            self.settled.add(piece)


def draft_call(chat_id: int, draft_id: int, thread: int | None, rich_message: dict[str, Any]) -> dict[str, Any]:
    """sendRichMessageDraft's parameters: with the Stop button, and the draft kept on screen when it
    is pressed until the finished reply replaces it."""
    call: dict[str, Any] = {"chat_id": chat_id, "draft_id": draft_id, "rich_message": rich_message}
    if thread:
        call["message_thread_id"] = thread
    return call | {"can_stop": True, "keep_on_stop": True}


# ---------------------------------------------------------------------------
# Capability: what this Bot API server has been seen to do
# ---------------------------------------------------------------------------


async def rich_edit(bot: Any, call: dict[str, Any]) -> Any:
    """editMessageText with a `rich_message`, which python-telegram-bot's typed method cannot pass; its
    advice to use that method instead (a warning per call) does not apply."""
    warnings.filterwarnings("ignore", message=r"Please use 'Bot\.editMessageText'")
    return await bot.do_api_request("editMessageText", api_kwargs=call)


class RichRefused(Exception):
    """Telegram answered a rich call with a refusal (it did not take it): this reply, or what is left
    of it, goes the entities path. Never raised for a call whose fate is unknown (a timeout)."""


class Capability:
    """Rich messages are used while the server has not said it lacks them: a 404 (or "method not
    found") is remembered for the process; a 400 only sends that one reply the entities path."""

    def __init__(self, wanted: bool):
        self.messages = wanted  # sendRichMessage
        self.drafts = wanted  # sendRichMessageDraft
        self.edits = wanted  # editMessageText with rich_message (a group's streamed message)

    def lacks(self, what: str, method: str, description: str) -> None:
        if getattr(self, what):
            log.info("the Bot API server has no %s (%s): the entities path is used from now on", method, description)
        setattr(self, what, False)


def is_missing(exc: Exception) -> bool:
    """The server does not have the method (an older or self-hosted Bot API server)."""
    from telegram.error import BadRequest, EndPointNotFound

    return isinstance(exc, EndPointNotFound) or (isinstance(exc, BadRequest) and bool(MISSING.search(exc.message)))


# ---------------------------------------------------------------------------
# The Stop button: stopped_message_generation
# ---------------------------------------------------------------------------


class Stop(NamedTuple):
    """The user pressed Stop under a draft: which chat, topic and draft."""

    chat_id: int
    thread: int | None
    draft_id: int


def stop_of(update: Any) -> Stop | None:
    """The Stop an update carries (python-telegram-bot 22.8 keeps the unknown field in api_kwargs)."""
    body = (getattr(update, "api_kwargs", None) or {}).get(STOP_UPDATE)
    if not isinstance(body, dict):
        return None
    try:
        thread = body.get("message_thread_id")
        return Stop(int(body["chat"]["id"]), int(thread) if thread not in (None, 1) else None, int(body["draft_id"]))
    except (KeyError, TypeError, ValueError):
        return None


class Stops:
    """The drafts shown with a Stop button now, and the turn each one stops."""

    def __init__(self) -> None:
        self.drafts: dict[Stop, Cancel] = {}

    def shown(self, stop: Stop, cancel: Cancel) -> None:
        self.drafts[stop] = cancel

    def gone(self, stop: Stop) -> None:
        self.drafts.pop(stop, None)

    def press(self, stop: Stop) -> bool:
        """Stop the turn behind this draft, as /cancel does; False if no reply is being written there
        (it finished, or an earlier run's draft: a crash already ended that turn)."""
        cancel = self.drafts.pop(stop, None)
        if cancel is None:
            return False
        cancel.set()
        return True
