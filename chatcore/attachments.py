"""Attachments: what a message can carry besides typed text (images, text files, PDFs, voice).

Pure where it can be: the type is decided from the bytes (never from the name alone), an image's
size is read from its header (it is never decoded or resized here: it is sent as it is), its
tokens follow the provider's published rule where one is known, and the wire shape of a message
with attachments is built here for both APIs. The I/O is at the edges: `load_attachment` reads a
file, `transcribe` calls the provider's `/audio/transcriptions` endpoint. PDFs are read with
pypdf, imported only when a PDF arrives.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import Settings

MB = 1024 * 1024
ACCEPTED = "images (PNG, JPEG, GIF, WebP), PDFs, UTF-8 text files, or audio (OGG, MP3, WAV, M4A, WebM, FLAC)"


class Kind(StrEnum):
    """What an attachment is (the sessions database keeps the value)."""

    IMAGE = "image"  # sent as an image part: the model sees it
    TEXT = "text"  # a UTF-8 file, sent as text in a fenced block under its name
    PDF = "pdf"  # its extracted text, sent like a text file
    AUDIO = "audio"  # speech: transcribed, and the transcript sent as text


class AttachmentError(Exception):
    """A file that cannot be attached (missing, unreadable, unknown type, too large): one line saying why."""


@dataclass
class Attachment:
    """One file carried by a message. Images keep their bytes; the others keep their text."""

    kind: Kind
    name: str
    mime: str
    data: bytes = b""  # the image's bytes (or audio's, until transcribed); empty for text
    text: str = ""  # a text file's content, a PDF's extracted text, a voice note's transcript
    size: int = 0  # bytes of the original file
    width: int = 0  # images: pixels, from the header
    height: int = 0
    note: str = ""  # what was done to it: "trimmed to fit the context window"

    @property
    def transcribed(self) -> bool:
        return self.kind is not Kind.AUDIO or bool(self.text)

    def describe(self) -> str:
        """For the request log and lists: type and size, never content."""
        dims = f" {self.width}x{self.height}" if self.kind is Kind.IMAGE and self.width else ""
        return f"{self.mime}{dims} {human_size(self.size)}"

    def as_text_block(self) -> str:
        """How a text, PDF or transcript reaches the model: its name, then its text in a fence."""
        fence = "````" if "```" in self.text else "```"
        what = {Kind.PDF: "PDF text of", Kind.AUDIO: "voice message, transcript of"}.get(self.kind, "file")
        trimmed = f" ({self.note})" if self.note else ""
        return f"[{what} {self.name}{trimmed}]\n{fence}\n{self.text}\n{fence}"

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def human_size(size: int) -> str:
    if size >= MB:
        return f"{size / MB:.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size} B"


# -- what a file is: from its first bytes -------------------------------------------------

IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def sniff(data: bytes) -> tuple[Kind | None, str]:
    """(kind, mime) from the bytes: images, PDF and audio by their signatures, else text if UTF-8."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Kind.IMAGE, "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return Kind.IMAGE, "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Kind.IMAGE, "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return Kind.IMAGE, "image/webp"
    if head.startswith(b"%PDF-"):
        return Kind.PDF, "application/pdf"
    if head.startswith(b"OggS"):
        return Kind.AUDIO, "audio/ogg"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return Kind.AUDIO, "audio/wav"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return Kind.AUDIO, "audio/mpeg"
    if head[4:8] == b"ftyp" and head[8:11] in (b"M4A", b"mp4", b"iso", b"MP4", b"3gp"):
        return Kind.AUDIO, "audio/mp4"
    if head.startswith(b"fLaC"):
        return Kind.AUDIO, "audio/flac"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return Kind.AUDIO, "audio/webm"
    if b"\x00" not in data[:8192]:
        try:
            data.decode("utf-8")
            return Kind.TEXT, "text/plain"
        except UnicodeDecodeError:
            pass
    return None, "application/octet-stream"


def image_size(data: bytes, mime: str) -> tuple[int, int]:
    """(width, height) from the image's header, (0, 0) when it cannot be read. Nothing is decoded."""
    try:
        if mime == "image/png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if mime == "image/gif":
            return struct.unpack("<HH", data[6:10])
        if mime == "image/webp":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                width, height = struct.unpack("<HH", data[26:30])
                return width & 0x3FFF, height & 0x3FFF
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        if mime == "image/jpeg":
            return _jpeg_size(data)
    except (struct.error, IndexError):
        pass
    return 0, 0


def _jpeg_size(data: bytes) -> tuple[int, int]:
    index = 2
    while index + 9 < len(data):
        if data[index] != 0xFF:
            index += 1
            continue
        marker = data[index + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            index += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return width, height
        index += 2 + length
    return 0, 0


# -- loading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Sizes the settings allow: per image, per other file, per message (all attachments together)."""

    image_bytes: int = 20 * MB
    file_bytes: int = 25 * MB
    message_bytes: int = 50 * MB

    @classmethod
    def of(cls, settings: Settings | None) -> Limits:
        if settings is None:
            return cls()
        return cls(
            int(settings.max_image_mb * MB), int(settings.max_file_mb * MB), int(settings.max_attachments_mb * MB)
        )


def load_attachment(source: str | bytes, name: str = "", settings: Settings | None = None) -> Attachment:
    """A file (a path, or its bytes and name) as an Attachment; AttachmentError saying why it cannot be.

    The type comes from the bytes. A PDF's text is extracted now; audio stays bytes until transcribed."""
    if isinstance(source, str):
        name = name or os.path.basename(source) or source
        data = read_file(source, Limits.of(settings))
    else:
        data, name = source, name or "attachment"
    limits = Limits.of(settings)
    if not data:
        raise AttachmentError(f"{name} is empty: there is nothing to attach")
    kind, mime = sniff(data)
    if kind is None:
        raise AttachmentError(f"{name} is not a type that can be attached ({human_size(len(data))}): attach {ACCEPTED}")
    limit = limits.image_bytes if kind is Kind.IMAGE else limits.file_bytes
    if len(data) > limit:
        setting = "CHATBOT_MAX_IMAGE_MB" if kind is Kind.IMAGE else "CHATBOT_MAX_FILE_MB"
        raise AttachmentError(
            f"{name} is {human_size(len(data))}: larger than the {human_size(limit)} allowed for "
            f"{'an image' if kind is Kind.IMAGE else 'a file'} ({setting})"
        )
    if kind is Kind.IMAGE:
        width, height = image_size(data, mime)
        return Attachment(kind, name, mime, data=data, size=len(data), width=width, height=height)
    if kind is Kind.PDF:
        return Attachment(kind, name, mime, text=pdf_text(data, name), size=len(data))
    if kind is Kind.AUDIO:
        return Attachment(kind, name, mime, data=data, size=len(data))
    return Attachment(kind, name, text_mime(name), text=data.decode("utf-8-sig"), size=len(data))


def read_file(path: str, limits: Limits) -> bytes:
    """The file's bytes; AttachmentError for a missing, unreadable or oversized one (checked before reading)."""
    shown = path
    path = os.path.expanduser(path)
    try:
        if os.path.isdir(path):
            raise AttachmentError(f"cannot attach {shown}: it is a directory")
        size = os.path.getsize(path)
        biggest = max(limits.image_bytes, limits.file_bytes)
        if size > biggest:
            raise AttachmentError(
                f"{shown} is {human_size(size)}: larger than any attachment may be ({human_size(biggest)}; "
                f"CHATBOT_MAX_IMAGE_MB, CHATBOT_MAX_FILE_MB)"
            )
        with open(path, "rb") as attached:
            return attached.read()
    except FileNotFoundError:
        raise AttachmentError(f"cannot attach {shown}: no such file") from None
    except OSError as exc:
        raise AttachmentError(f"cannot attach {shown}: {exc.strerror or exc}") from None


TEXT_MIMES = {".md": "text/markdown", ".csv": "text/csv", ".json": "application/json", ".html": "text/html"}


def text_mime(name: str) -> str:
    return TEXT_MIMES.get(os.path.splitext(name)[1].lower(), "text/plain")


def pdf_text(data: bytes, name: str) -> str:
    """A PDF's text, page by page (pypdf, imported only now); AttachmentError if it has none to give."""
    import io

    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise AttachmentError(f"cannot read {name}: PDFs need the pypdf package (pip install pypdf)") from None
    # pypdf logs what it recovers from ("EOF marker not found") as warnings, which would reach the
    # user's stderr as lines of their own: what matters is said in the one line below, or not at all.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise AttachmentError(f"cannot read {name}: the PDF is encrypted")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise AttachmentError(f"cannot read {name}: not a readable PDF ({type(exc).__name__})") from None
    text = "\n\n".join(f"[page {number}]\n{page}" for number, page in enumerate(pages, 1) if page)
    if not text:
        raise AttachmentError(f"{name} has no text to extract (a scanned PDF?): attach its pages as images instead")
    return text


def check_message(attachments: Sequence[Attachment], settings: Settings | None) -> None:
    """All of a message's attachments together must fit the per-message limit."""
    limit = Limits.of(settings).message_bytes
    total = sum(a.size for a in attachments)
    if total > limit:
        raise AttachmentError(
            f"the attachments add up to {human_size(total)}: more than the {human_size(limit)} one message may "
            f"carry (CHATBOT_MAX_ATTACHMENTS_MB)"
        )


def fit_to_window(
    attachments: Sequence[Attachment], room: int, count_text: Callable[[str], int]
) -> tuple[list[Attachment], list[str]]:
    """The attachments with their text cut (each by the same share) to `room` tokens, and a note for
    each one cut. Images are untouched: they are counted in `room` by the caller."""
    texts = [a for a in attachments if a.kind is not Kind.IMAGE]
    used = sum(count_text(a.text) for a in texts)
    if used <= room:
        return list(attachments), []
    share = max(0.0, room / used)
    fitted: list[Attachment] = []
    notes: list[str] = []
    for attachment in attachments:
        if attachment.kind is Kind.IMAGE:
            fitted.append(attachment)
            continue
        keep = int(len(attachment.text) * share * 0.95)  # a margin for the estimate
        note = f"trimmed to fit the context window: the first {keep:,} of {len(attachment.text):,} characters"
        notes.append(f"{attachment.name}: {note}")
        fitted.append(replace(attachment, text=attachment.text[:keep], note=note))
    return fitted, notes


# -- tokens: the provider's published rule where known ------------------------------------

# The most `image_tokens` ever counts for one image (the tile rule's 1,445 for 2048x768; Claude's 1,600):
# the cheap bound used before counting, so an attached image alone does not make a request be tokenised.
IMAGE_TOKEN_BOUND = 1_600


def openai_tile_tokens(width: int, height: int) -> int:
    """OpenAI's tile rule (gpt-4o, gpt-4.1, gpt-5, o-series; detail "high", which "auto" picks for large
    images): fit in 2048x2048, then the shortest side to 768; 85 tokens plus 170 per 512-pixel tile."""
    if width <= 0 or height <= 0:
        return 85 + 170 * 4  # the size is unknown: a 1024x1024 image's
    scale = min(1.0, 2048 / max(width, height))
    wide, high = width * scale, height * scale
    scale = min(1.0, 768 / min(wide, high))
    wide, high = wide * scale, high * scale
    return 85 + 170 * math.ceil(wide / 512) * math.ceil(high / 512)


def image_tokens(attachment: Attachment, model: str) -> tuple[int, str]:
    """(tokens, which rule) for one image: OpenAI's tile rule for its models, Anthropic's published
    width x height / 750 for Claude, else the tile rule as a labelled estimate."""
    name = model.rsplit("/", 1)[-1].lower()
    if re.match(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o\d|chatgpt-4o)", name):
        return openai_tile_tokens(attachment.width, attachment.height), "OpenAI's tile rule"
    if "claude" in name and attachment.width and attachment.height:
        scale = min(1.0, 1568 / max(attachment.width, attachment.height))
        pixels = attachment.width * scale * attachment.height * scale
        return min(1600, math.ceil(pixels / 750)), "Anthropic's rule (estimate)"
    return openai_tile_tokens(attachment.width, attachment.height), "estimate (OpenAI's tile rule)"


def images_in(attachments: Iterable[Attachment]) -> list[Attachment]:
    return [a for a in attachments if a.kind is Kind.IMAGE]


# -- on the wire --------------------------------------------------------------------------


def model_text(content: str, attachments: Sequence[Attachment]) -> str:
    """The message's text as the model reads it: what was typed, then each file's text block."""
    blocks = [a.as_text_block() for a in attachments if a.kind is not Kind.IMAGE]
    return "\n\n".join([content, *blocks]) if blocks and content else "\n\n".join(blocks) or content


def wire_content(content: str, attachments: Sequence[Attachment], api: str) -> str | list[dict[str, Any]]:
    """A message's `content` for the API: a plain string, or text and image parts when it has images
    (Chat Completions `image_url` with a data: URL; Responses `input_text` and `input_image`)."""
    text = model_text(content, attachments)
    images = images_in(attachments)
    if not images:
        return text
    if api == "responses":
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": text}] if text else []
        return parts + [{"type": "input_image", "image_url": a.data_url(), "detail": "auto"} for a in images]
    parts = [{"type": "text", "text": text}] if text else []
    return parts + [{"type": "image_url", "image_url": {"url": a.data_url()}} for a in images]


# -- images refused -------------------------------------------------------------------------

IMAGE_REFUSAL = re.compile(
    r"image|vision|multimodal|multi-modal|mmproj|content type|content part|image_url|input_image", re.I
)


def refuses_images(status: int | None, message: str) -> bool:
    """A 400/422 (or llama.cpp's 500 without a projector) whose words name images, vision or content."""
    return status in (400, 415, 422, 500) and bool(IMAGE_REFUSAL.search(message or ""))


# -- voice --------------------------------------------------------------------------------


class TranscriptionError(Exception):
    """Speech could not be turned into text: one line saying why and what to set."""


AUDIO_EXTENSIONS = {"audio/ogg": ".ogg", "audio/wav": ".wav", "audio/mpeg": ".mp3", "audio/mp4": ".m4a"}


def transcribe(settings: Settings, audio: bytes, filename: str) -> str:
    """Speech to text through the provider's `/audio/transcriptions` endpoint (the SDK), or the one
    CHATBOT_TRANSCRIBE_BASE_URL names (OpenAI's, a local whisper server). TranscriptionError otherwise."""
    import httpx2
    import openai

    from .log import one_line, redact

    base_url = settings.transcribe_base_url or settings.base_url
    api_key = settings.transcribe_api_key or settings.api_key
    where = f"{base_url}/audio/transcriptions"
    client = openai.OpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url,
        max_retries=settings.retries,
        timeout=httpx2.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
    )
    try:
        transcription = client.audio.transcriptions.create(
            model=settings.transcribe_model, file=(filename, audio), response_format="json"
        )
        text = getattr(transcription, "text", None)
    except openai.APIStatusError as exc:
        secret = api_key or ""
        if exc.status_code in (404, 405):
            raise TranscriptionError(
                f"voice messages cannot be transcribed: {where} does not exist ({exc.status_code}); set "
                f"CHATBOT_TRANSCRIBE_BASE_URL to a server that has it (OpenAI's, or a local whisper server)"
            ) from None
        if exc.status_code == 401:
            raise TranscriptionError(
                "the transcription server rejected the API key (401): set CHATBOT_TRANSCRIBE_API_KEY"
            ) from None
        detail = one_line(redact(getattr(exc, "message", "") or "", secret), 160)
        raise TranscriptionError(f"transcription failed ({exc.status_code}): {detail}") from None
    except openai.APIConnectionError:
        raise TranscriptionError(
            f"cannot reach the transcription server {where}: check CHATBOT_TRANSCRIBE_BASE_URL"
        ) from None
    except (ValueError, openai.APIResponseValidationError):
        raise TranscriptionError(f"the transcription server {where} did not answer with JSON") from None
    finally:
        client.close()
    if not isinstance(text, str) or not text.strip():
        raise TranscriptionError(f"{filename}: the transcription came back empty (no speech heard?)")
    return text.strip()
