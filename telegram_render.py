"""Telegram rendering: the model's Markdown as text plus entities, split into messages Telegram accepts.

Text with an `entities` list cannot fail to parse the way HTML or MarkdownV2 can (one stray `<` or
`_` rejects a whole message), so replies are converted with telegramify-markdown, which produces
exactly that. Offsets and lengths are in UTF-16 code units, as Telegram counts them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

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
    used = set(markdown)
    free = [chr(code) for code in range(0xE000, 0xF8FF) if chr(code) not in used][:2]
    keep = {"<": free[0], "&": free[1]}
    back = {value: key for key, value in keep.items()}
    protected = LITERAL.sub(lambda match: keep[match.group()], markdown)
    try:
        from telegramify_markdown import convert

        text, entities = convert(protected)
    except Exception:  # a bug in the converter must not lose the reply
        return Part(markdown)
    text = re.sub(f"[{free[0]}{free[1]}]", lambda match: back[match.group()], text)
    if not text.strip():
        return Part(markdown)
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
    text = part.text
    offsets = _offsets(text)
    if offsets[-1] <= limit:
        return [part] if text.strip() else []
    index_of = {offset: index for index, offset in enumerate(offsets)}
    blocks = [(e["offset"], e["offset"] + e["length"]) for e in part.entities if e["type"] == "pre"]
    pieces: list[Part] = []
    start = 0
    while start < len(text):
        if offsets[-1] - offsets[start] <= limit:
            end = len(text)
        else:
            end = _best_cut(text, offsets, start, limit, blocks, index_of)
        piece_text = text[start:end]
        if piece_text.strip():
            pieces.append(Part(piece_text.strip("\n"), _clip(part.entities, offsets[start], offsets[end], piece_text)))
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
