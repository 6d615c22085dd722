"""Telegram rendering: the model's Markdown as text plus entities, split into messages Telegram accepts.

Text with an `entities` list cannot fail to parse the way HTML or MarkdownV2 can (one stray `<` or
`_` rejects a whole message), so replies are converted with telegramify-markdown, which produces
exactly that. Offsets and lengths are in UTF-16 code units, as Telegram counts them.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from chatcore.blocks import LIST_ITEM, BlockSplitter

MESSAGE_LIMIT = 4096  # UTF-16 code units of text, after entity parsing


@dataclass
class Part:
    """One Telegram message: its text and its entities (dicts in the Bot API's shape)."""

    text: str
    entities: list[dict[str, Any]] = field(default_factory=list)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# Markdown treats `<tag>` as inline HTML and `&name;` as a character reference; Telegram shows
# neither, so the converter drops `Vec<String>` to `Vec` and turns `&lt;` into `<`. What the model
# wrote is what the chat shows: these characters are swapped for placeholders the converter leaves
# alone (one UTF-16 unit each, like the originals, so entity offsets stay right) and swapped back.
# Autolinks (`<https://...>`) are left to the converter: they become links.
LITERAL = re.compile(r"<(?!(?:https?://|mailto:)[^\s<>]*>)|&(?=#?\w+;)")


def to_telegram(markdown: str) -> Part:
    """The model's Markdown as Telegram text and entities; the raw text itself if conversion fails."""
    return converted(markdown) or Part(markdown)


def converted(markdown: str) -> Part | None:
    """The model's Markdown as Telegram text and entities; None if the converter fails or shows nothing."""
    used = set(markdown)
    # the first two private-use characters the text does not hold (found lazily: a list of all 6,400
    # was 11% of the bot's CPU with 50 chats streaming)
    free = list(itertools.islice((char for char in map(chr, range(0xE000, 0xF8FF)) if char not in used), 2))
    keep = {"<": free[0], "&": free[1]}
    back = {value: key for key, value in keep.items()}
    protected = LITERAL.sub(lambda match: keep[match.group()], markdown)
    try:
        from telegramify_markdown import convert

        text, entities = convert(protected)
    except Exception:  # a bug in the converter must not lose the reply
        return None
    text = re.sub(f"[{free[0]}{free[1]}]", lambda match: back[match.group()], text)
    if not text.strip():
        return None
    return Part(text, [entity.to_dict() for entity in entities])


def _offsets(text: str) -> list[int]:
    """UTF-16 offset of every character position, and of the end."""
    offsets = [0] * (len(text) + 1)
    position = 0
    for index, char in enumerate(text):
        offsets[index] = position
        position += 2 if ord(char) > 0xFFFF else 1
    offsets[len(text)] = position
    return offsets


# Where a long reply may be cut, best first: between paragraphs, between lines, after a sentence,
# between words. A cut at one of these is chosen as late as fits; only then the next kind is tried.
BOUNDARIES = (re.compile(r"\n\n+"), re.compile(r"\n"), re.compile(r"(?<=[.!?…])\s+"), re.compile(r"\s+"))


def split_message(part: Part, limit: int = MESSAGE_LIMIT) -> list[Part]:
    """Split a reply into messages of at most `limit` UTF-16 units.

    Cuts at paragraph, then line, then sentence, then word boundaries. A code block (a `pre`
    entity) that fits in one message is never cut; one that does not fit is cut at a line, and its
    entity is clipped into both parts, so each part renders as code (closed and reopened).
    """
    if utf16_len(part.text) <= limit:
        return [part] if part.text.strip() else []
    return [piece for _start, piece in _pieces(part, limit)]


def _pieces(part: Part, limit: int) -> list[tuple[int, Part]]:
    """The messages a reply is cut into, from its start, each stripped of the line breaks around it,
    with the character index its stretch of the text starts at."""
    text = part.text
    offsets = _offsets(text)
    index_of = {offset: index for index, offset in enumerate(offsets)}
    blocks = [(e["offset"], e["offset"] + e["length"]) for e in part.entities if e["type"] == "pre"]
    pieces: list[tuple[int, Part]] = []
    start = 0
    while start < len(text):
        if offsets[-1] - offsets[start] <= limit:
            end = len(text)
        else:
            end = _best_cut(text, offsets, start, limit, blocks, index_of)
        piece_text = text[start:end]
        if piece_text.strip():
            clipped = _clip(part.entities, offsets[start], offsets[end], piece_text)
            pieces.append((start, Part(piece_text.strip("\n"), clipped)))
        start = end
        while start < len(text) and text[start] in "\n ":
            start += 1
    return pieces


def _best_cut(
    text: str, offsets: list[int], start: int, limit: int, blocks: list[tuple[int, int]], index_of: dict[int, int]
) -> int:
    """The character index to end a message at: the latest good boundary within the limit."""
    furthest = start
    while furthest < len(text) and offsets[furthest + 1] - offsets[start] <= limit:
        furthest += 1
    # A code block that fits in a message of its own is not cut: the message ends before it.
    for block_start, block_end in blocks:
        begin = index_of.get(block_start)
        if begin is None or not start < begin < furthest:
            continue
        if offsets[furthest] < block_end and block_end - block_start <= limit:
            furthest = begin
            break
    window = text[start:furthest]
    for boundary in BOUNDARIES:
        cuts = [m.start() for m in boundary.finditer(window) if m.start() > 0]
        if cuts:
            return start + cuts[-1]
    return grapheme_start(text, max(furthest, start + 1), start)  # one unbroken run: cut where it must be


def _joins(char: str) -> bool:
    """A character that belongs to the one before it: combining marks, joiners, variation selectors,
    skin tones, tag characters."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or code in (0x200D, 0x20E3)
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def grapheme_start(text: str, index: int, floor: int) -> int:
    """The latest cut at or before `index` that does not fall inside a grapheme (a ZWJ sequence, a
    letter and its combining marks, a flag); never before `floor + 1` unless the whole run is one."""
    cut = index
    while floor < cut < len(text):
        char, before = text[cut], text[cut - 1]
        regional = 0x1F1E6 <= ord(char) <= 0x1F1FF and 0x1F1E6 <= ord(before) <= 0x1F1FF
        if regional:  # flags are pairs: cut between pairs
            run = cut
            while run > floor and 0x1F1E6 <= ord(text[run - 1]) <= 0x1F1FF:
                run -= 1
            if (cut - run) % 2 == 0:
                return cut
        elif not (_joins(char) or before == "\u200d"):
            return cut
        cut -= 1
    return cut if cut > floor else index


def _clip(entities: list[dict[str, Any]], begin: int, end: int, piece: str) -> list[dict[str, Any]]:
    """The entities that fall in [begin, end) of the whole text, moved to the piece's own offsets."""
    lead = utf16_len(piece) - utf16_len(piece.lstrip("\n"))
    length = utf16_len(piece.strip("\n"))
    clipped = []
    for entity in entities:
        first = max(entity["offset"], begin) - begin - lead
        last = min(entity["offset"] + entity["length"], end) - begin - lead
        first, last = max(first, 0), min(last, length)
        if last > first:
            clipped.append({**entity, "offset": first, "length": last - first})
    return clipped


# -- Drafts: the reply so far, at a cost that does not grow with it ------------------------------


class Drafts:
    """The reply so far as the part a draft shows (the last message-sized part of the whole reply,
    exactly as `split_message(to_telegram(text))[-1]`), at a cost that does not grow with the reply.

    Finished blocks (a paragraph once the next begins, a closed code block: `chatcore.blocks`) are
    converted once each and joined as the converter joins blocks; only the open tail is converted
    again for each draft. Once the converted text is longer than a message, the messages before the
    last are settled (a cut depends only on the message-sized stretch before it) and dropped, so only
    the last stretch is split again. A reply the joining cannot reproduce exactly (link reference
    definitions, which reach back to earlier blocks; carriage returns; a block the converter shows as
    nothing) is converted whole from then on, as before.
    """

    def __init__(self, limit: int = MESSAGE_LIMIT) -> None:
        self.limit = limit
        self.blocks = BlockSplitter()
        self.fed = 0  # characters of the reply given to the splitter so far
        self.settled = Part("")  # the finished blocks, converted and joined, from the last message's start
        self.cut = False  # whether earlier messages were dropped from `settled`
        self.last_block = ""  # the source of the last finished block: the blank line after it decides the spacing
        self.whole = False  # convert the whole reply every time (the joining cannot be trusted for it)
        self.held = ""  # finished blocks holding a list, converted with the tail until a block ends the list

    def part(self, text: str) -> Part:
        """What a draft of `text` (the reply so far: the text given last time, and more) shows."""
        fresh, seen, self.fed = text[self.fed :], text[max(0, self.fed - 1) :], len(text)
        if not self.whole and any(mark in seen for mark in ("]:", "\r")):  # a mark may straddle two chunks
            self.whole = True
        if not self.whole:
            for block in self.blocks.feed(fresh):
                self._finished(block)
        tail = self.held + self.blocks.pending
        tail_part = self._converted(tail) if not self.whole and tail.strip() else None
        if self.whole:
            return split_message(to_telegram(text), self.limit)[-1]
        joined = self._join(self.settled, self.last_block, tail_part, tail)
        if not self.cut:
            return (split_message(joined, self.limit) or [Part(text)])[-1]
        pieces = _pieces(joined, self.limit)
        return pieces[-1][1] if pieces else Part(text)

    def _finished(self, block: str) -> None:
        """A block is finished; one holding a list waits for the next, which may carry the list on
        (an item after a blank line makes the whole list loose, in the converter as in Markdown)."""
        if INDENTED_FENCE.search(block):  # a fence inside a list or quote: where it ends is the container's call
            self.whole = True
            return
        if self.held and (LIST_ITEM.match(block) or block[:1] in (" ", "\t")):
            self.held += block
            return
        if self.held:
            held, self.held = self.held, ""
            self._settle(held)
        if LIST_LINE.search(block):
            self.held = block
        else:
            self._settle(block)

    def _settle(self, block: str) -> None:
        """A block is finished: converted once, joined to the others, earlier messages dropped."""
        part = self._converted(block)
        if part is None:
            return
        joined = self._join(self.settled, self.last_block, part, block)
        self.last_block = block
        if utf16_len(joined.text) > self.limit:
            pieces = _pieces(joined, self.limit)
            if len(pieces) > 1:  # every message before the last is settled: its cut lies within this text
                joined, self.cut = _from(joined, pieces[-1][0]), True
        self.settled = joined

    def _converted(self, markdown: str) -> Part | None:
        """A block converted as the converter converts it after others (its spacing inside a list
        differs for a document's first block): after a paragraph of its own, which is then taken off.
        None, and the whole reply converted from then on, if that cannot be done."""
        if not self.settled.text:
            part = converted(markdown)
        else:
            after = converted(AFTER + markdown)
            part = _from(after, len(AFTER)) if after is not None and after.text.startswith(AFTER) else None
        if part is None or not part.text.strip():
            self.whole = True
            return None
        return part

    @staticmethod
    def _join(before: Part, before_source: str, after: Part | None, after_source: str) -> Part:
        """Two converted stretches as one conversion of their sources would show them: a blank line
        between blocks where the source had one, else a line break (telegramify's block spacing)."""
        if after is None:
            return before
        if not before.text:
            return after
        indent = after_source[: len(after_source) - len(after_source.lstrip())]
        wanted = 2 if _blank_line_between(before_source + indent) else 1
        trailing = len(before.text) - len(before.text.rstrip("\n"))
        text = before.text + "\n" * max(0, wanted - trailing)
        shift = utf16_len(text)
        entities = before.entities + [{**entity, "offset": entity["offset"] + shift} for entity in after.entities]
        return Part(text + after.text, entities)


AFTER = "x\n\n"  # a first block, so that the next is converted as one that follows others
INDENTED_FENCE = re.compile(r"(?:^|\n)[ \t>]+(?:`{3}|~{3})")
LIST_LINE = re.compile(r"(?:^|\n) {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)", re.M)


def _blank_line_between(source: str) -> bool:
    """Whether the source before the next block ends in a blank line (indentation and quote markers
    aside), as the converter decides whether to put one between two blocks."""
    newlines = 0
    for char in reversed(source):
        if char == "\n":
            newlines += 1
            if newlines >= 2:
                return True
        elif char not in " \t>":
            return False
    return False


def _from(part: Part, start: int) -> Part:
    """The part from character `start` on, its entities moved (and clipped) to the new offsets."""
    shift = utf16_len(part.text[:start])
    entities = []
    for entity in part.entities:
        begin, end = max(entity["offset"], shift), entity["offset"] + entity["length"]
        if end > begin:
            entities.append({**entity, "offset": begin - shift, "length": end - begin})
    return Part(part.text[start:], entities)
