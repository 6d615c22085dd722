"""Token counting: tiktoken where it can be had (loaded lazily, never blocking), a labelled estimate otherwise."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conversation import Message


ENCODING_LOAD_SECONDS = 5.0
_encodings: dict[str, Any] = {}  # name -> tiktoken.Encoding, or None when it cannot be had
_encoding_threads: dict[str, threading.Thread] = {}
_encoding_lock = threading.Lock()


def encoding_for_model(model: str) -> tuple[str, bool]:
    """(tiktoken encoding name, exact?) for a model name, provider prefix stripped."""
    name = model.rsplit("/", 1)[-1].lower()
    if re.match(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|o\d)", name) or name.startswith("chatgpt-4o"):
        return "o200k_base", True
    if re.match(r"^(gpt-4|gpt-3\.5|gpt-35)", name):
        return "cl100k_base", True
    return "o200k_base", False


def load_encoding(name: str, wait: float = ENCODING_LOAD_SECONDS) -> Any:
    """The tiktoken encoding, or None if it cannot be loaded within `wait` seconds.

    tiktoken downloads encoding files on first use with no timeout, so the load
    runs in a daemon thread; a slow or failed download never blocks the chat.
    """
    with _encoding_lock:
        if name in _encodings:
            return _encodings[name]
        thread = _encoding_threads.get(name)
        if thread is None:

            def load() -> None:
                try:
                    import tiktoken

                    encoding = tiktoken.get_encoding(name)
                except BaseException:
                    encoding = None
                with _encoding_lock:
                    _encodings[name] = encoding

            thread = threading.Thread(target=load, name=f"tiktoken-{name}", daemon=True)
            _encoding_threads[name] = thread
            thread.start()
    thread.join(wait)
    with _encoding_lock:
        return _encodings.get(name)


def estimate_tokens(text: str) -> int:
    """Character-based estimate used when no tokenizer is available (~4 bytes a token)."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


class TokenCounter:
    """Counts chat messages the way the API bills them (the openai-cookbook recipe)."""

    TOKENS_PER_MESSAGE = 3
    REPLY_PRIMING = 3

    def __init__(self, model: str, load_wait: float = ENCODING_LOAD_SECONDS):
        self.model = model  # images are counted by the model's provider's rule
        self.encoding_name, self.exact_family = encoding_for_model(model)
        self.load_wait = load_wait
        self._encoding: Any = None
        self._tried = False
        self.scale = 1.0  # estimates only: calibrated from the prompt sizes a server reports (see calibrate)

    @property
    def encoding(self) -> Any:
        if not self._tried:
            self._tried = True
            self._encoding = load_encoding(self.encoding_name, self.load_wait)
        elif self._encoding is None and _encodings.get(self.encoding_name) is not None:
            self._encoding = _encodings[self.encoding_name]  # a slow download finished later
        return self._encoding

    @property
    def estimated(self) -> bool:
        return not self.exact_family or self.encoding is None

    @property
    def key(self) -> str:
        name = self.encoding_name if self.encoding is not None else "estimate"
        return name if self.scale == 1.0 or not self.estimated else f"{name}*{self.scale:.3f}"

    def count_text(self, text: str) -> int:
        encoding = self.encoding
        count = estimate_tokens(text) if encoding is None else len(encoding.encode(text, disallowed_special=()))
        return count if self.scale == 1.0 or not self.estimated else round(count * self.scale)

    def calibrate(self, estimated: int, reported: int) -> bool:
        """Scale later estimates by how the server counted a prompt we estimated; True if it changed.
        An exact count (a model whose tokenizer we have) is never scaled."""
        if not self.estimated or estimated <= 0 or reported <= 0 or not 0.5 <= reported / estimated <= 2.0:
            return False  # an implausible count (a server's placeholder usage) is not followed
        scale = min(2.0, max(0.5, self.scale * reported / estimated))
        if abs(scale - self.scale) < 0.02:
            return False
        self.scale = round(scale, 3)
        return True

    def count_chat(self, messages: Iterable[dict[str, str]]) -> int:
        """Tokens for a list of message dicts, per the cookbook: 3 per message, 1 per name, 3 to prime."""
        total = self.REPLY_PRIMING
        for message in messages:
            total += self.TOKENS_PER_MESSAGE
            for key, value in message.items():
                total += self.count_text(value) + (1 if key == "name" else 0)
        return total

    def count_message(self, message: Message) -> int:
        """Tokens one message adds to a request, counted once and cached on the message."""
        key = self.key
        if message.tokens is None or message.tokens[0] != key:
            count = self.TOKENS_PER_MESSAGE + self.count_text(message.role) + self.count_text(message.text)
            if message.attachments:
                from .attachments import image_tokens, images_in

                count += sum(image_tokens(image, self.model)[0] for image in images_in(message.attachments))
            message.tokens = (key, count)
        return message.tokens[1]

    def count_messages(self, messages: Iterable[Message]) -> int:
        return sum(self.count_message(m) for m in messages) + self.REPLY_PRIMING


def upper_bound_tokens(message: Message) -> int:
    """A cheap bound no tokenizer exceeds: a BPE token covers at least one byte (and no image rule
    gives an image more than IMAGE_TOKEN_BOUND)."""
    bound = TokenCounter.TOKENS_PER_MESSAGE + 2 + len(message.text.encode("utf-8", "surrogatepass"))
    if message.attachments:
        from .attachments import IMAGE_TOKEN_BOUND, images_in

        bound += IMAGE_TOKEN_BOUND * len(images_in(message.attachments))
    return bound
