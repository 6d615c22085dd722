#!/usr/bin/env python3
"""chatbot: a terminal streaming chatbot for any OpenAI-compatible provider.

The whole program is one loop:

    messages -> model call -> streamed answer -> save the reply -> repeat

Sections, in reading order: settings -> conversation (pure: messages, trimming,
token counting, usage and cost) -> provider (each API's stream becomes a few
plain events) -> rendering -> sessions (SQLite) -> commands -> the loop -> main().

Importing this module only defines things: no .env is read, no client is built,
nothing touches the network. Heavy libraries (openai, rich, prompt_toolkit,
tiktoken, genai-prices) are imported where they are first needed.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

__version__ = "0.1.0"

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
# One table drives argparse, validation, `.env.example` and the README's
# configuration table. Precedence: flag > environment > .env file > default.


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it and what is allowed."""


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no")


def _number(kind: type, low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value.strip())
        except ValueError:
            number = None
        if number is None:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}"
                             + (f" from {low} to {high}" if high is not None else f" >= {low}" if low is not None else ""))
        if number != number or (low is not None and number < low) or (high is not None and number > high):
            if high is None:
                raise ValueError(f"expected a number >= {low}")
            raise ValueError(f"expected a number from {low} to {high}")
        return number

    return parse


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected a URL starting with http:// or https://")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.strip() not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value.strip()

    return parse


def _text(value: str) -> str:
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    env: str | None
    flags: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any]
    help: str
    example: str = ""  # value shown in .env.example (commented out when empty)


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and concisely."

SETTINGS: tuple[Setting, ...] = (
    Setting("api_key", "OPENAI_API_KEY", (), None, _text,
            "API key (never a flag: it would land in shell history); not needed for a local server",
            "your_api_key_here"),
    Setting("base_url", "OPENAI_BASE_URL", ("--base-url",), "https://openrouter.ai/api/v1", _url,
            "provider base URL", "https://openrouter.ai/api/v1"),
    Setting("model", "OPENAI_MODEL", ("-m", "--model"), "openai/gpt-5-nano", _text,
            "model name", "openai/gpt-5-nano"),
    Setting("system", "OPENAI_SYSTEM_PROMPT", ("-s", "--system"), DEFAULT_SYSTEM_PROMPT, _text,
            "system prompt"),
    Setting("temperature", "OPENAI_TEMPERATURE", ("-t", "--temperature"), 0.4, _number(float, 0, 2),
            "sampling temperature, 0 to 2", "0.4"),
    Setting("max_tokens", "OPENAI_MAX_OUTPUT_TOKENS", ("--max-tokens",), 1000, _number(int, 1),
            "output token limit per reply", "1000"),
    Setting("max_messages", "OPENAI_MAX_HISTORY_MESSAGES", ("--max-messages",), 20, _number(int, 1),
            "most history messages sent per request", "20"),
    Setting("context_tokens", "OPENAI_CONTEXT_TOKENS", ("--context-tokens",), None, _number(int, 256),
            "model context window in tokens (default: model table, else 8192)"),
    Setting("price_in", "INPUT_PRICE_PER_MILLION", ("--price-in",), None, _number(float, 0),
            "USD per million input tokens (default: genai-prices table)"),
    Setting("price_out", "OUTPUT_PRICE_PER_MILLION", ("--price-out",), None, _number(float, 0),
            "USD per million output tokens (default: genai-prices table)"),
    Setting("app_url", "APP_URL", (), None, _text,
            "with APP_NAME: sent as HTTP-Referer (OpenRouter attribution)", "http://localhost:3000"),
    Setting("app_name", "APP_NAME", (), None, _text,
            "with APP_URL: sent as X-Title", "chatbot"),
    Setting("api", "OPENAI_API", ("--api",), "chat", _choice("chat", "responses"),
            "which API to speak: chat or responses"),
    Setting("timeout", "OPENAI_TIMEOUT", ("--timeout",), 60.0, _number(float, 0.1),
            "network timeout in seconds (connect, and silence between reads)"),
    Setting("first_token_timeout", "CHATBOT_FIRST_TOKEN_TIMEOUT", ("--first-token-timeout",), 120.0,
            _number(float, 0.1), "seconds to wait for the first token, keep-alives included"),
    Setting("total_timeout", "CHATBOT_TOTAL_TIMEOUT", ("--total-timeout",), 600.0, _number(float, 0.1),
            "wall-clock limit in seconds for one reply"),
    Setting("retries", "OPENAI_MAX_RETRIES", ("--retries",), 2, _number(int, 0, 10),
            "retries for rate limits, server errors and timeouts"),
    Setting("fallback_model", "OPENAI_FALLBACK_MODEL", ("--fallback-model",), None, _text,
            "model to try once when the main one fails or is unknown"),
    Setting("db", "CHATBOT_DB", ("--db",), None, _text,
            "sessions database path (default: user data directory)"),
    Setting("no_save", "CHATBOT_NO_SAVE", ("--no-save",), False, _parse_bool,
            "do not save REPL conversations"),
    Setting("summarize", "CHATBOT_SUMMARIZE", ("--summarize",), False, _parse_bool,
            "summarise turns dropped by trimming and send the summary"),
    Setting("show_usage", "CHATBOT_SHOW_USAGE", ("--show-usage",), False, _parse_bool,
            "print a usage and cost line after each reply"),
    Setting("show_reasoning", "CHATBOT_SHOW_REASONING", ("--show-reasoning",), False, _parse_bool,
            "show reasoning text in full instead of a one-line indicator"),
    Setting("raw", "CHATBOT_RAW", ("--raw", "--no-markdown"), False, _parse_bool,
            "print replies as plain text, not rendered Markdown"),
)
BOOL_SETTINGS = {s.name for s in SETTINGS if s.parse is _parse_bool}

def env_example() -> str:
    """The text of `.env.example`, generated from the settings table (a test keeps the file in step)."""
    lines = ["# chatbot configuration. Copy to .env and fill in what you need; every line is optional",
             "# except OPENAI_API_KEY for a remote provider. Flags override these; the environment overrides .env.",
             ""]
    for setting in SETTINGS:
        if not setting.env:
            continue
        flags = f" (flag: {', '.join(setting.flags)})" if setting.flags else ""
        default = "" if setting.default in (None, "", False) or setting.name == "system" else \
            f" Default: {setting.default}."
        lines.append(f"# {setting.help[0].upper()}{setting.help[1:]}{flags}.{default}")
        value = setting.example
        lines.append(f"{setting.env}={value}" if value else f"# {setting.env}=")
        lines.append("")
    return "\n".join(lines)


def settings_table() -> str:
    """The README's configuration table, generated from the settings table (a test keeps it in step)."""
    lines = ["| variable | flag | default | what it does |", "|---|---|---|---|"]
    for setting in SETTINGS:
        flags = ", ".join(f"`{f}`" for f in setting.flags) or "—"
        default = "—" if setting.default in (None, "", False) else f"`{setting.default}`"
        if setting.name == "system":
            default = "a short, neutral assistant prompt"
        lines.append(f"| `{setting.env}` | {flags} | {default} | {setting.help} |")
    return "\n".join(lines)


LOCAL_PORTS = (11434, 1234, 8080, 8000)  # Ollama, LM Studio, llama.cpp, vLLM


@dataclass
class Settings:
    """Resolved configuration; `sources` says where each value came from."""

    api_key: str | None = None
    base_url: str = "https://openrouter.ai/api/v1"
    model: str = "openai/gpt-5-nano"
    system: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.4
    max_tokens: int = 1000
    max_messages: int = 20
    context_tokens: int | None = None
    price_in: float | None = None
    price_out: float | None = None
    app_url: str | None = None
    app_name: str | None = None
    api: str = "chat"
    timeout: float = 60.0
    first_token_timeout: float = 120.0
    total_timeout: float = 600.0
    retries: int = 2
    fallback_model: str | None = None
    db: str | None = None
    no_save: bool = False
    summarize: bool = False
    show_usage: bool = False
    show_reasoning: bool = False
    raw: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    discovered: str | None = None  # "Ollama on port 11434" when zero-config found a server

    @property
    def host(self) -> str:
        return re.sub(r"^https?://", "", self.base_url).split("/")[0]


def is_local_url(url: str) -> bool:
    host = re.sub(r"^https?://", "", url).split("/")[0]
    host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return host in ("localhost", "[::1]", "0.0.0.0") or host.startswith("127.")


def resolve_settings(flags: dict[str, str | None], environ: dict[str, str],
                     dotenv: dict[str, str | None]) -> Settings:
    """Apply the precedence rules and validate every value. Pure: no I/O."""
    settings = Settings()
    for setting in SETTINGS:
        raw, source = flags.get(setting.name), setting.flags[-1] if setting.flags else ""
        if raw is None and setting.env:
            raw, source = environ.get(setting.env), setting.env
            if raw is None:
                raw, source = dotenv.get(setting.env), f"{setting.env} (in .env)"
        if raw is None or (raw == "" and setting.name not in ("system",)):
            continue
        try:
            value = setting.parse(raw) if not isinstance(raw, bool) else raw
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r} is not valid: {exc}") from None
        setattr(settings, setting.name, value)
        settings.sources[setting.name] = source
    return settings


def check_credentials(settings: Settings) -> None:
    if not settings.api_key and not is_local_url(settings.base_url):
        raise ConfigError(
            "OPENAI_API_KEY is not set: put it in .env (see .env.example) or the environment, "
            "or point OPENAI_BASE_URL at a local server")


def probe_local_servers(ports: Iterable[int], timeout: float = 0.4) -> tuple[str, list[str]] | None:
    """Find a local OpenAI-compatible server; return (base_url, model ids) of the first that answers."""
    import urllib.request

    found: dict[int, tuple[str, list[str]]] = {}

    def probe(port: int) -> None:
        base = f"http://127.0.0.1:{port}/v1"
        try:
            with urllib.request.urlopen(base + "/models", timeout=timeout) as response:
                listing = json.loads(response.read(1_000_000) or b"{}")
            ids = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict) and m.get("id")]
            found[port] = (base, ids)
        except Exception:
            pass

    ports = list(ports)
    threads = [threading.Thread(target=probe, args=(port,), daemon=True) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 0.2)
    for port in ports:
        if port in found:
            return found[port]
    return None


# ---------------------------------------------------------------------------
# Conversation: messages, token counting, trimming, usage and cost (pure)
# ---------------------------------------------------------------------------


@dataclass
class Message:
    """One turn of the conversation. `tokens` caches its count: never re-tokenised."""

    role: str
    content: str
    flags: str = ""  # "interrupted" or "cut short"; empty for a complete message
    tokens: tuple[str, int] | None = None  # (encoding key, count)
    created: float = field(default_factory=time.time)
    row_id: int | None = None  # its row in the sessions database, once saved

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Conversation:
    """The message array: the system prompt kept apart from the growing history."""

    system: str
    history: list[Message] = field(default_factory=list)
    summary: str | None = None  # summary of turns dropped by trimming
    summary_covers: int = 0  # how many of the oldest history messages the summary covers
    _running: tuple | None = field(default=None, repr=False, compare=False)  # see tokens_before

    def tokens_before(self, n: int, counter: "TokenCounter | None") -> int:
        """Tokens in the oldest n history messages (character estimate without a counter).

        Kept as a running total, so a long conversation that drops a little more each turn
        adds only the newly dropped messages instead of re-summing the whole history.
        """
        if n <= 0:
            return 0
        key = counter.key if counter is not None else "estimate"
        start, total = 0, 0
        cached = self._running
        if cached and cached[0] == key and 0 < cached[1] <= n and self.history[cached[1] - 1] is cached[3]:
            start, total = cached[1], cached[2]
        for message in self.history[start:n]:
            total += counter.count_message(message) if counter is not None else \
                TokenCounter.TOKENS_PER_MESSAGE + estimate_tokens(message.content)
        self._running = (key, n, total, self.history[n - 1])
        return total

    def clear(self) -> None:
        self.history.clear()
        self.summary, self.summary_covers = None, 0

    def last_exchange_start(self) -> int | None:
        for index in range(len(self.history) - 1, -1, -1):
            if self.history[index].role == "user":
                return index
        return None


# -- token counting ----------------------------------------------------------

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
        self.encoding_name, self.exact_family = encoding_for_model(model)
        self.load_wait = load_wait
        self._encoding: Any = None
        self._tried = False

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
        return self.encoding_name if self.encoding is not None else "estimate"

    def count_text(self, text: str) -> int:
        encoding = self.encoding
        if encoding is None:
            return estimate_tokens(text)
        return len(encoding.encode(text, disallowed_special=()))

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
            count = self.TOKENS_PER_MESSAGE + self.count_text(message.role) + self.count_text(message.content)
            message.tokens = (key, count)
        return message.tokens[1]

    def count_messages(self, messages: Iterable[Message]) -> int:
        return sum(self.count_message(m) for m in messages) + self.REPLY_PRIMING


def upper_bound_tokens(message: Message) -> int:
    """A cheap bound no tokenizer exceeds: a BPE token covers at least one byte."""
    return TokenCounter.TOKENS_PER_MESSAGE + 2 + len(message.content.encode("utf-8", "surrogatepass"))


# -- trimming ------------------------------------------------------------------

DEFAULT_CONTEXT_TOKENS = 8192


def token_budget(context_tokens: int, max_output: int) -> int:
    """What a request may use: the context window less the reply and a safety margin."""
    margin = max(64, context_tokens // 20)
    return max(0, context_tokens - max_output - margin)


class PromptTooLarge(Exception):
    """The newest user message alone does not fit the token budget."""

    def __init__(self, tokens: int, budget: int, estimated: bool):
        self.tokens, self.budget, self.estimated = tokens, budget, estimated
        about = "about " if estimated else ""
        super().__init__(
            f"your message is {about}{tokens:,} tokens but the model has room for {budget:,} "
            f"(context window less --max-tokens and a margin): shorten it, or raise --context-tokens")


@dataclass
class Request:
    """What one call sends: the system message (with any summary merged in) and kept turns."""

    system: str
    turns: list[Message]
    dropped: int = 0  # history messages not sent
    dropped_tokens: int = 0
    tokens: int | None = None  # counted size of the request, when it was counted
    estimated: bool = True

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] + [m.as_dict() for m in self.turns]


def newest_exchanges(history: list[Message]) -> Iterator[list[Message]]:
    """Exchanges from the newest back, each starting with a user message; walks only as far as asked."""
    end = len(history)
    for index in range(len(history) - 1, -1, -1):
        if history[index].role == "user" or index == 0:
            yield history[index:end]
            end = index


def system_with_summary(system: str, summary: str | None) -> str:
    # One system message only: many servers reject a second one, so the summary is merged in.
    if not summary:
        return system
    return f"{system}\n\nSummary of the earlier conversation (older turns are not shown):\n{summary}"


def build_request(conversation: Conversation, max_messages: int, budget: int,
                  counter: TokenCounter | None) -> Request:
    """Choose the newest whole exchanges that fit both the message limit and the token budget.

    The system prompt always goes first; the kept window starts with a user turn and
    never splits an exchange; the newest user message is always sent, or PromptTooLarge.
    Only when a cheap byte bound says the request might not fit is anything tokenised,
    and the work done is bounded by what is kept, not by the length of the history.
    """
    history = conversation.history
    system = system_with_summary(conversation.system, conversation.summary)
    system_message = Message("system", system)
    newest = history[-1].content if history else ""
    if len(newest) > 2 * budget and estimate_tokens(newest) // 2 > budget:
        # Far too large to be worth tokenising (10 MB on stdin): say so at once.
        raise PromptTooLarge(estimate_tokens(newest), budget, True)

    keys: list[str] = []  # the counter's key, looked up only once counting is needed (it loads tiktoken)

    def size(message: Message, exact: bool) -> int:
        if not exact or counter is None:
            return upper_bound_tokens(message)
        if not keys:
            keys.append(counter.key)
        cached = message.tokens  # the common case, inlined: every message is counted only once
        return cached[1] if cached is not None and cached[0] == keys[0] else counter.count_message(message)

    def select(exact: bool) -> tuple[list[Message], int, bool]:
        used = size(system_message, exact) + TokenCounter.REPLY_PRIMING
        kept: list[list[Message]] = []
        count, by_budget = 0, False
        for number, group in enumerate(newest_exchanges(history)):
            group_size = sum(size(m, exact) for m in group)
            if number == 0:
                if exact and used + group_size > budget:
                    raise PromptTooLarge(group_size + used, budget, counter is None or counter.estimated)
            elif group[0].role != "user" or count + len(group) > max_messages:
                break
            elif used + group_size > budget:
                by_budget = True
                break
            kept.append(group)
            used += group_size
            count += len(group)
        return [m for group in reversed(kept) for m in group], used, by_budget

    turns, used, by_budget = select(exact=False)
    exact = False
    if counter is not None and (used > budget or by_budget):
        turns, used, _ = select(exact=True)  # the byte bound is too pessimistic to decide: count for real
        exact = True
    elif counter is None and used > budget:
        raise PromptTooLarge(used, budget, True)
    not_sent = len(history) - len(turns)
    covered = min(conversation.summary_covers, not_sent) if conversation.summary is not None else 0
    dropped = not_sent - covered
    dropped_tokens = 0
    if dropped:
        count_with = counter if exact else None
        dropped_tokens = conversation.tokens_before(not_sent, count_with) - \
            conversation.tokens_before(covered, count_with)
    return Request(system=system, turns=turns, dropped=dropped, dropped_tokens=dropped_tokens,
                   tokens=used if exact else None, estimated=not exact or counter is None or counter.estimated)


# -- usage and cost ------------------------------------------------------------


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None  # provider-reported cost (OpenRouter), USD
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def usage_from_chat(raw: dict[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    out_details = raw.get("completion_tokens_details") or {}
    cost = raw.get("cost")
    return Usage(_int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens")),
                 _int(details.get("cached_tokens")), _int(out_details.get("reasoning_tokens")),
                 float(cost) if isinstance(cost, (int, float)) else None)


def usage_from_responses(raw: dict[str, Any]) -> Usage:
    details = raw.get("input_tokens_details") or {}
    out_details = raw.get("output_tokens_details") or {}
    cost = raw.get("cost")
    return Usage(_int(raw.get("input_tokens")), _int(raw.get("output_tokens")),
                 _int(details.get("cached_tokens")), _int(out_details.get("reasoning_tokens")),
                 float(cost) if isinstance(cost, (int, float)) else None)


def estimate_cost(input_tokens: int, output_tokens: int, input_price: float, output_price: float) -> float:
    """USD for a turn, with prices per million tokens."""
    return input_tokens / 1_000_000 * input_price + output_tokens / 1_000_000 * output_price


_price_lock = threading.Lock()


def model_info(model: str, base_url: str) -> tuple[Any, int | None]:
    """(genai-prices model info or None, context window or None). Imports genai-prices lazily."""
    with _price_lock:
        try:
            from genai_prices import Usage as PriceUsage, calc_price

            try:
                calculation = calc_price(PriceUsage(input_tokens=0, output_tokens=0), model,
                                         provider_api_url=base_url)
            except LookupError:
                calculation = calc_price(PriceUsage(input_tokens=0, output_tokens=0), model.rsplit("/", 1)[-1])
            return calculation, calculation.model.context_window
        except Exception:
            return None, None


def turn_cost(usage: Usage, settings: Settings, model: str) -> tuple[float | None, str]:
    """(USD or None, source): provider-reported, else env prices, else the price table, else unknown."""
    if usage.cost is not None and not usage.estimated:
        return usage.cost, "provider"
    if settings.price_in is not None or settings.price_out is not None:
        return estimate_cost(usage.input_tokens, usage.output_tokens, settings.price_in or 0.0,
                             settings.price_out or 0.0), "configured prices"
    if is_local_url(settings.base_url):
        return None, "unknown"
    try:
        from genai_prices import Usage as PriceUsage, calc_price

        price_usage = PriceUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                                 cache_read_tokens=usage.cached_tokens or None)
        with _price_lock:
            try:
                calculation = calc_price(price_usage, model, provider_api_url=settings.base_url)
            except LookupError:
                calculation = calc_price(price_usage, model.rsplit("/", 1)[-1])
        return float(calculation.total_price), "genai-prices table"
    except Exception:
        return None, "unknown"


@dataclass
class TurnStats:
    """What one turn cost: tokens, money and time."""

    model: str
    usage: Usage
    cost: float | None
    ttft: float | None
    latency: float
    sent_messages: int

    @property
    def tokens_per_second(self) -> float | None:
        if self.ttft is None or self.latency - self.ttft < 0.05 or not self.usage.output_tokens:
            return None
        return self.usage.output_tokens / (self.latency - self.ttft)


def format_money(cost: float | None) -> str:
    if cost is None:
        return "cost unknown"
    return f"${cost:.6f}" if cost < 0.01 else f"${cost:.4f}"


def usage_line(stats: TurnStats) -> str:
    usage = stats.usage
    about = "~" if usage.estimated else ""
    parts = [f"{about}{usage.input_tokens:,} in", f"{about}{usage.output_tokens:,} out"]
    if usage.cached_tokens:
        parts.append(f"{usage.cached_tokens:,} cached")
    if usage.reasoning_tokens:
        parts.append(f"{usage.reasoning_tokens:,} reasoning")
    line = " · ".join(parts) + f" · {format_money(stats.cost)}"
    if stats.ttft is not None:
        line += f" · first token {stats.ttft:.2f}s"
    line += f" · {stats.latency:.2f}s"
    if stats.tokens_per_second:
        line += f" · {stats.tokens_per_second:.0f} tok/s"
    if usage.estimated:
        line += " (estimated)"
    return line


# ---------------------------------------------------------------------------
# Provider: both APIs become one stream of plain events
# ---------------------------------------------------------------------------
# Events are tuples, cheap enough for thousands a second:
#   (TEXT, str) (REASONING, str) (USAGE, Usage) (FINISH, reason) (ERROR, code, message)
#   (PING,) for keep-alive comments and skipped events, so deadlines are checked.

TEXT, REASONING, USAGE, FINISH, ERROR, PING = "text", "reasoning", "usage", "finish", "error", "ping"


class Failure(Exception):
    """A provider or network failure, already turned into one readable line."""

    def __init__(self, message: str, kind: str = "error", status: int | None = None,
                 retryable: bool = False, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.kind, self.status, self.retryable, self.code, self.param = kind, status, retryable, code, param
        self.latency = 0.0  # how long the failed attempt took, for the log


def chat_events(data: str) -> Iterator[tuple]:
    """Turn one Chat Completions `data:` payload into events."""
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        return
    error = chunk.get("error")
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or choice.get("message") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not reasoning and delta.get("reasoning_details"):
            reasoning = "".join(d.get("text") or d.get("summary") or "" for d in delta["reasoning_details"]
                                if isinstance(d, dict))
        if reasoning and isinstance(reasoning, str):
            yield (REASONING, reasoning)
        content = delta.get("content")
        if content and isinstance(content, str):
            yield (TEXT, content)
        reason = choice.get("finish_reason")
        if reason and not (reason == "error" and error):
            yield (FINISH, reason)
        break  # only the first choice: we never ask for n > 1
    usage = chunk.get("usage")
    if usage and isinstance(usage, dict):
        yield (USAGE, usage_from_chat(usage))
    if error:
        yield error_event(error)


def error_event(error: Any) -> tuple:
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message") or json.dumps(error)[:200]
        return (ERROR, str(code) if code is not None else None, str(message))
    return (ERROR, None, str(error))


INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def responses_events(data: str, event_name: str | None = None) -> Iterator[tuple]:
    """Turn one Responses API event into events, dispatching on its `type` only."""
    event = json.loads(data)
    if not isinstance(event, dict):
        return
    kind = event.get("type") or event_name
    if kind == "response.output_text.delta":
        yield (TEXT, event.get("delta") or "")
    elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
        yield (REASONING, event.get("delta") or "")
    elif kind in ("response.completed", "response.done", "response.incomplete"):
        response = event.get("response") or {}
        if response.get("usage"):
            yield (USAGE, usage_from_responses(response["usage"]))
        if kind == "response.incomplete" or response.get("status") == "incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason") or "incomplete"
            yield (FINISH, INCOMPLETE_REASONS.get(reason, reason))
        elif response.get("status") == "failed" and response.get("error"):
            yield error_event(response["error"])
        else:
            yield (FINISH, "stop")
    elif kind == "response.failed":
        response = event.get("response") or {}
        yield error_event(response.get("error") or {"message": "the response failed"})
    elif kind == "error":
        yield error_event(event.get("error") if isinstance(event.get("error"), dict) else event)
    else:
        yield (PING,)  # created, in_progress, item and function-call events, unknown types


def sse_payloads(lines: Iterable[str]) -> Iterator[tuple[str | None, str | None]]:
    """Server-sent events: yields (event name, data); (None, None) for a comment line."""
    data: list[str] = []
    event_name = None
    for line in lines:
        if not line:
            if data:
                yield event_name, "\n".join(data)
                data = []
            event_name = None
            continue
        if line[0] == ":":
            yield None, None
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_name = value
    if data:
        yield event_name, "\n".join(data)


def parse_stream(lines: Iterable[str], api: str) -> Iterator[tuple]:
    """Events from an SSE body. A malformed payload becomes an error event, ending the stream."""
    for event_name, data in sse_payloads(lines):
        if data is None:
            yield (PING,)
            continue
        if data == "[DONE]":
            return
        try:
            if api == "chat":
                yield from chat_events(data)
            else:
                yield from responses_events(data, event_name)
        except (ValueError, AttributeError, TypeError):
            yield (ERROR, "malformed", f"the provider sent malformed data: {data[:60]!r}")
            return


def parse_body(body: bytes, content_type: str, api: str) -> Iterator[tuple]:
    """Events from a non-stream body: a whole JSON reply, or something that is not one."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        what = "an HTML page" if "html" in content_type or text.lower().startswith("<") else "no usable data"
        yield (ERROR, "not_a_stream", f"the server answered with {what} instead of a reply: check OPENAI_BASE_URL")
        return
    if payload.get("error"):
        yield error_event(payload["error"])
        return
    if api == "chat" and payload.get("choices"):
        yield from chat_events(json.dumps(payload))
        if not any(c.get("finish_reason") for c in payload["choices"]):
            yield (FINISH, "stop")
    elif api == "responses" and payload.get("output") is not None:
        for item in payload.get("output") or ():
            if item.get("type") == "message":
                for part in item.get("content") or ():
                    if part.get("type") == "output_text":
                        yield (TEXT, part.get("text") or "")
        yield from responses_events(json.dumps({"type": "response.completed", "response": payload}))
    else:
        yield (ERROR, "not_a_stream", "the server answered with JSON that is not a reply: check OPENAI_BASE_URL")


def redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return re.sub(r"\b(sk-[A-Za-z0-9_-]{3})[A-Za-z0-9_*-]{8,}", r"\1***", text)


def one_line(text: str, limit: int = 240) -> str:
    text = re.sub(r"<[^>]+>", " ", text) if "<" in text and ">" in text else text
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


CONTEXT_PATTERNS = re.compile(
    r"context_length_exceeded|maximum context length|context length|context window|"
    r"too many tokens|prompt is too long|exceeds the (?:model'?s? )?(?:context|maximum)", re.I)
MAX_CONTEXT_NUMBER = re.compile(r"maximum context length is (\d+)", re.I)


def error_details(exc: Any) -> tuple[str | None, str, str | None]:
    """(code, message, param) from an SDK status error's body, never from str(exc)."""
    body = getattr(exc, "body", None)
    code, param = getattr(exc, "code", None), getattr(exc, "param", None)
    message = ""
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = str(inner.get("message") or body.get("detail") or "")
        code = code or inner.get("code") or inner.get("type")
        param = param or inner.get("param")
    elif isinstance(body, str):
        message = body
    if not message:
        response = getattr(exc, "response", None)
        try:
            message = response.text if response is not None else ""
        except Exception:
            message = ""
    return (str(code) if code else None), message, (str(param) if param else None)


def is_context_error(code: str | None, message: str) -> bool:
    return code == "context_length_exceeded" or bool(CONTEXT_PATTERNS.search(message or ""))


OPTIONAL_PARAMETERS = ("stream_options", "max_tokens", "temperature", "store")  # what a server may reject
RENAMED_PARAMETERS = {"max_tokens": "max_completion_tokens"}  # sent under this name once the old is rejected


def rejected_parameter(code: str | None, message: str, param: str | None) -> str | None:
    """Which optional parameter a 400/422 rejects, if the error says so."""
    text = f"{param or ''} {message or ''}".lower()
    for name in OPTIONAL_PARAMETERS:
        if name in text and ("unsupported" in text or "not support" in text or "unknown" in text or
                             "not allowed" in text or "extra" in text or "invalid" in text or
                             "unrecognized" in text or "not permitted" in text or param == name):
            return name
    return None


class Provider:
    """The SDK client and request shape for one base URL. The SDK is imported on first use."""

    def __init__(self, settings: Settings, notify: Callable[[str], None] = lambda text: None):
        self.settings = settings
        self.rejected: set[str] = set()  # optional parameters this server rejected, for the rest of the session
        self.notify = notify
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._retry_reason = ""

    @property
    def client(self) -> Any:
        with self._client_lock:  # the REPL builds it in the background while the user types
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import logging

        import httpx2
        from openai import OpenAI

        settings = self.settings
        headers = {}
        if settings.app_url and settings.app_name:
            headers = {"HTTP-Referer": settings.app_url, "X-Title": settings.app_name}
        self._watch_retries(logging)
        return OpenAI(
            api_key=settings.api_key or "not-needed",  # local servers need no key; the SDK insists on one
            base_url=settings.base_url,
            max_retries=settings.retries,
            timeout=httpx2.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            default_headers=headers or None,
        )

    def _watch_retries(self, logging: Any) -> None:
        """The SDK does the retrying; its log records tell us why and how long, for the user."""
        provider = self

        class RetryNotice(logging.Handler):
            def emit(self, record: Any) -> None:
                message = record.msg
                if message.startswith("Encountered an HTTP status error"):
                    status = record.args[0]
                    provider._retry_reason = {429: "rate limited", 408: "request timeout", 409: "conflict"}.get(
                        status, f"server error {status}")
                elif message.startswith("Encountered a timeout"):
                    provider._retry_reason = "timed out"
                elif message.startswith("Encountered exception"):
                    provider._retry_reason = "connection failed"
                elif message.startswith("Retrying request in"):
                    delay, attempt, total = record.args
                    provider.notify(f"retrying in {delay:.1f}s ({provider._retry_reason or 'failed'}, "
                                    f"retry {attempt} of {total})")

        logger = logging.getLogger("openai._base_client")
        if not any(type(h).__name__ == "RetryNotice" for h in logger.handlers):
            logger.addHandler(RetryNotice())
        logger.setLevel(logging.DEBUG)
        logger.propagate = False

    def request_params(self, request: Request, model: str, stream: bool = True) -> dict[str, Any]:
        settings = self.settings
        if settings.api == "responses":
            params: dict[str, Any] = {
                "model": model,
                "instructions": request.system,
                "input": [{"role": m.role, "content": m.content} for m in request.turns],
                "max_output_tokens": settings.max_tokens,
                "stream": stream,
                "store": False,  # the conversation is ours; the provider need not keep it
            }
        else:
            params = {"model": model, "messages": request.messages(), "stream": stream,
                      "max_tokens": settings.max_tokens}
            if stream:
                params["stream_options"] = {"include_usage": True}
        params["temperature"] = settings.temperature
        for name in self.rejected & params.keys():
            value = params.pop(name)
            if name in RENAMED_PARAMETERS:
                params[RENAMED_PARAMETERS[name]] = value
        return params

    def reject(self, parameter: str | None, sent: dict[str, Any]) -> bool:
        """Stop sending a parameter the server rejected; False if that cannot help."""
        if parameter is None or parameter not in sent or parameter in self.rejected:
            return False
        self.rejected.add(parameter)
        return True

    def open(self, params: dict[str, Any]) -> Any:
        """Send the request; the raw streaming HTTP response, to be closed by the caller.

        The SDK does the request, authentication, retries and error mapping; the body is ours to
        parse. `client.post` (the SDK's way to call any endpoint) also skips importing the typed
        resource classes, which costs tens of milliseconds before the first token.
        """
        import contextlib

        import httpx2

        path = "/responses" if self.settings.api == "responses" else "/chat/completions"
        response = self.client.post(path, cast_to=httpx2.Response, body=params, stream=bool(params.get("stream")))
        return contextlib.closing(response)

    def list_models(self) -> list[str]:
        try:
            return sorted(model.id for model in self.client.with_options(max_retries=0, timeout=5).models.list())
        except Exception:
            return []


def events_from_response(http: Any, api: str) -> Iterator[tuple]:
    content_type = http.headers.get("content-type", "")
    if "event-stream" in content_type:
        yield from parse_stream(http.iter_lines(), api)
    else:
        yield from parse_body(http.read(), content_type, api)


def describe_status_error(exc: Any, settings: Settings, model: str) -> Failure:
    status = getattr(exc, "status_code", None)
    code, message, param = error_details(exc)
    detail = one_line(redact(message, settings.api_key)) if message else ""
    suffix = f": {detail}" if detail else ""
    retries = f" after {settings.retries} retries" if settings.retries else ""
    if status == 401:
        return Failure(f"the provider rejected the API key (401): check OPENAI_API_KEY in .env or the environment"
                       f"{suffix}", "auth", status)
    if status == 402:
        return Failure(f"payment required (402): the account may be out of credits{suffix}", "payment", status)
    if status == 403:
        return Failure(f"access denied (403){suffix}", "forbidden", status)
    if status in (404, 405):
        if settings.api == "responses" and (status == 405 or "model" not in message.lower()):
            return Failure(f"this server has no Responses API endpoint ({status}): try --api chat",
                           "no_endpoint", status)
        if "model" in message.lower() or code == "model_not_found":
            return Failure(f"unknown model {model!r} ({status}){suffix}", "unknown_model", status, retryable=True)
        return Failure(f"not found ({status}) at {settings.base_url}: check OPENAI_BASE_URL{suffix}",
                       "not_found", status)
    if status == 429:
        return Failure(f"rate limited (429){retries}: wait a moment and try again{suffix}", "rate_limit", status,
                       retryable=True)
    if status in (408, 409) or (status or 0) >= 500:
        return Failure(f"the provider failed ({status}){retries}{suffix}", "server", status, retryable=True)
    if is_context_error(code, message):
        return Failure(f"the conversation is too long for the model's context window{suffix}: "
                       f"use /clear or lower --max-messages", "context_length", status, code=code)
    if "alternate" in message.lower():
        return Failure(f"the server rejected the message order ({status}){suffix}", "roles", status)
    return Failure(f"the provider rejected the request ({status}){suffix}", "bad_request", status, code=code,
                   param=param)


def describe_exception(exc: BaseException, settings: Settings, model: str) -> Failure:
    """Any exception from the SDK or the network as one readable Failure."""
    import openai

    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return describe_status_error(exc, settings, model)
    if isinstance(exc, openai.APITimeoutError):
        return Failure(f"timed out waiting for {settings.host} (--timeout {settings.timeout:g}s)", "timeout",
                       retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        reason = one_line(str(cause)) if cause else "connection failed"
        if "refused" in reason.lower():
            reason = "connection refused"
        return Failure(f"cannot reach {settings.host}: {reason} (check OPENAI_BASE_URL and the network)",
                       "connection", retryable=True)
    return Failure(f"unexpected error: {one_line(redact(str(exc) or type(exc).__name__, settings.api_key))}",
                   "unexpected")


# ---------------------------------------------------------------------------
# One turn: request -> streamed events -> reply
# ---------------------------------------------------------------------------

FINISH_NOTES = {
    "length": "reply cut off by the output token limit (--max-tokens)",
    "content_filter": "reply stopped by the provider's content filter",
    "error": "the provider reported an error and stopped the reply",
}


@dataclass
class TurnResult:
    reply: str = ""
    reasoning_chars: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    ttft: float | None = None
    latency: float = 0.0
    failure: Failure | None = None  # why the turn failed or was cut short
    interrupted: bool = False
    model: str = ""
    sent_messages: int = 0

    @property
    def cut_short(self) -> bool:
        return self.failure is not None and bool(self.reply)

    @property
    def truncated(self) -> bool:
        return self.cut_short or self.interrupted or self.finish_reason is None or \
            self.finish_reason in FINISH_NOTES

    @property
    def flags(self) -> str:
        if self.interrupted:
            return "interrupted"
        if self.cut_short:
            return "cut short"
        return ""


class Deadline(Exception):
    pass


def stream_turn(provider: Provider, request: Request, model: str, on_event: Callable[[str, str], None],
                stream: bool = True) -> TurnResult:
    """Send one request and consume its events. Raises Failure only before any text arrived."""
    settings = provider.settings
    result = TurnResult(model=model, sent_messages=len(request.turns) + 1)
    parts: list[str] = []
    import httpx2
    import openai

    _ = provider.client  # build the client before the clock starts
    started = time.monotonic()
    first_token_by = started + settings.first_token_timeout
    done_by = started + settings.total_timeout
    params = provider.request_params(request, model, stream)
    try:
        with provider.open(params) as response:
            for event in events_from_response(response, settings.api):
                kind = event[0]
                if kind is TEXT:
                    if result.ttft is None:
                        result.ttft = time.monotonic() - started
                    parts.append(event[1])
                    on_event(TEXT, event[1])
                elif kind is REASONING:
                    if result.ttft is None:
                        result.ttft = time.monotonic() - started
                    result.reasoning_chars += len(event[1])
                    on_event(REASONING, event[1])
                elif kind is USAGE:
                    result.usage = event[1]
                elif kind is FINISH:
                    result.finish_reason = event[1]
                elif kind is ERROR:
                    code, message = event[1], event[2]
                    failure = Failure(f"the provider reported an error mid-reply: "
                                      f"{one_line(redact(message, settings.api_key))}", "stream_error", code=code)
                    if is_context_error(code, message):
                        failure.kind = "context_length"
                    elif code in ("not_a_stream", "malformed"):
                        failure = Failure(message, code)
                    raise failure
                now = time.monotonic()
                if now > done_by:
                    raise Deadline(f"stopped after {settings.total_timeout:g}s (--total-timeout)")
                if result.ttft is None and now > first_token_by:
                    raise Deadline(f"no reply after {settings.first_token_timeout:g}s (--first-token-timeout)")
        if result.finish_reason is None:
            raise Failure("the stream ended without a finish signal: the reply may be incomplete", "no_finish")
    except KeyboardInterrupt:
        result.interrupted = True
    except Deadline as exc:
        result.failure = Failure(str(exc), "deadline")
    except Failure as exc:
        result.failure = exc
    except (httpx2.HTTPError, openai.APIConnectionError) as exc:
        if isinstance(exc, httpx2.TimeoutException):
            result.failure = Failure(f"the stream stalled for {settings.timeout:g}s (--timeout)", "stall")
        elif parts or result.ttft is not None or isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadError)):
            result.failure = Failure(f"the connection was lost mid-reply ({type(exc).__name__})", "connection_lost")
        else:
            result.failure = describe_exception(exc, settings, model)
    except openai.APIError as exc:
        result.failure = describe_exception(exc, settings, model)
    result.latency = time.monotonic() - started
    result.reply = "".join(parts)
    if result.failure is not None and not result.reply and not result.interrupted:
        result.failure.latency = result.latency
        raise result.failure
    return result


# ---------------------------------------------------------------------------
# Rendering: plain text, or Markdown committed block by block
# ---------------------------------------------------------------------------


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
        self.dim = dim
        self.wrote_text = False
        self.ends_with_newline = True
        self._reasoning_open = False

    def on_event(self, kind: str, text: str) -> None:
        if kind is TEXT:
            if self._reasoning_open:
                self._close_reasoning()
            self.out.write(text)
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
                self.reasoning_out.write(text)
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


# ---------------------------------------------------------------------------
# The loop: shared by the REPL and one-shot mode
# ---------------------------------------------------------------------------


class Chat:
    """Session state for the loop: settings, the conversation, the provider, and per-turn stats."""

    def __init__(self, settings: Settings, notify: Callable[[str], None]):
        self.settings = settings
        self.model = settings.model
        self.conversation = Conversation(settings.system)
        self.provider = Provider(settings, notify)
        self.notify = notify
        self.turns: list[TurnStats] = []
        self.last_request: Request | None = None
        self._counter: TokenCounter | None = None
        self._context_tokens: int | None = settings.context_tokens
        self._context_known = settings.context_tokens is not None
        self.store: Any = None  # a SessionStore when saving
        self.session_id: int | None = None
        self.wants_cost = True  # plain one-shot output shows no cost: skip loading the price table
        self.verbose = False
        self._partial: dict[str, Any] = {}  # the reply being checkpointed, while it streams

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None or encoding_for_model(self.model)[0] != self._counter.encoding_name:
            self._counter = TokenCounter(self.model)
        return self._counter

    def context_tokens(self, need_exact: bool) -> int:
        if not self._context_known and need_exact:
            self._context_known = True
            _, window = model_info(self.model, self.settings.base_url)
            if window:
                self._context_tokens = window
        return self._context_tokens or DEFAULT_CONTEXT_TOKENS

    def set_model(self, model: str) -> None:
        self.model = model
        self._context_known = self.settings.context_tokens is not None
        self._context_tokens = self.settings.context_tokens

    def prepare(self, cap: int | None = None) -> Request:
        """Build the request from the history; look up the real context window only when it matters."""
        conversation = self.conversation

        def budget(need_exact: bool) -> int:
            full = token_budget(self.context_tokens(need_exact), self.settings.max_tokens)
            return full if cap is None else min(full, cap)

        try:
            request = build_request(conversation, self.settings.max_messages, budget(False), self.counter)
        except PromptTooLarge:
            if self._context_known:
                raise
            request = build_request(conversation, self.settings.max_messages, budget(True), self.counter)
        if request.dropped and self.settings.summarize:
            request = self.summarize_dropped(request) or request
        return request

    # -- summaries of dropped turns -------------------------------------------

    SUMMARY_BATCH = 4  # messages that must drop out before a stored summary is brought up to date

    def summarize_dropped(self, request: Request) -> Request | None:
        """Summarise the turns trimming drops, once; the summary is stored and reused."""
        conversation = self.conversation
        covered = len(conversation.history) - len(request.turns)
        if covered <= conversation.summary_covers or (
                conversation.summary and covered - conversation.summary_covers < self.SUMMARY_BATCH):
            return None  # reuse the stored summary until enough new turns have dropped out of the window
        new_turns = conversation.history[conversation.summary_covers:covered]
        transcript = "\n".join(f"{m.role}: {m.content}" for m in new_turns)
        previous = f"Earlier summary: {conversation.summary}\n\n" if conversation.summary else ""
        summary_request = Request(
            system="Summarise this conversation in a few short bullet points. Keep names, numbers, decisions "
                   "and open questions. Reply with the summary only.",
            turns=[Message("user", previous + transcript[-20_000:])])
        try:
            result = stream_turn(self.provider, summary_request, self.model, lambda kind, text: None)
        except Failure as exc:
            self.notify(f"could not summarise older turns: {exc}")
            return None
        if not result.reply.strip():
            return None
        conversation.summary, conversation.summary_covers = result.reply.strip(), covered
        if self.store is not None and self.session_id is not None:
            self.store.save_summary(self.session_id, conversation.summary, covered)
        self.notify(f"summarised {len(new_turns)} older messages")
        return build_request(conversation, self.settings.max_messages,
                             token_budget(self.context_tokens(False), self.settings.max_tokens), self.counter)

    # -- a turn ------------------------------------------------------------------

    def add_user(self, text: str) -> Message:
        message = Message("user", text)
        history = self.conversation.history
        if history and history[-1].role == "user":
            # Never two user turns in a row: a previous turn left no reply. Merge.
            history[-1].content += "\n\n" + text
            history[-1].tokens = None
            message = history[-1]
            if self.store is not None and message.row_id is not None:
                self.store.update_message(message)
            return message
        history.append(message)
        if self.store is not None and self.session_id is not None:
            self.store.add_message(self.session_id, message)  # write-ahead: saved before the request
        return message

    def drop_last_user(self) -> None:
        history = self.conversation.history
        if history and history[-1].role == "user":
            message = history.pop()
            if self.store is not None and message.row_id is not None:
                self.store.delete_messages([message.row_id])

    def respond(self, on_event: Callable[[str, str], None], stream: bool = True) -> TurnResult:
        """Send the history (ending with a user message) and record the reply.

        Handles what a retry of our own can fix: unsupported parameters, an
        overflowing context (once, with a tighter budget), and the fallback model.
        On a failure before any text, the user message is removed and Failure raised.
        """
        model = self.model
        cap: int | None = None  # a tighter token budget, after the server said the context overflowed
        tried_fallback = False
        if self.store is not None and self.session_id is not None:
            on_event = self.checkpointing(on_event)
        while True:
            request = self.prepare(cap)
            if request.dropped:
                about = "about " if request.estimated else ""
                tokens = f" ({about}{request.dropped_tokens:,} tokens)" if request.dropped_tokens else ""
                self.notify(f"{request.dropped} older message{'s' if request.dropped != 1 else ''} not sent{tokens}")
            self.last_request = request
            try:
                result = stream_turn(self.provider, request, model, on_event, stream)
                break
            except Failure as failure:
                self.log(model, failure.status or "error", None, failure.latency, None, failure.kind)
                if self.unsupported_parameter(failure, request, model, stream):
                    continue
                if failure.kind == "context_length" and cap is None and len(request.turns) > 1:
                    window = MAX_CONTEXT_NUMBER.search(str(failure))
                    if window and self.settings.context_tokens is None:
                        self._context_tokens, self._context_known = int(window.group(1)), True
                    sent = self.counter.count_messages([Message("system", request.system), *request.turns])
                    cap = int(sent * 0.75)
                    self.notify("the context window overflowed: retrying once with fewer older turns")
                    continue
                if (failure.retryable and self.settings.fallback_model and not tried_fallback
                        and model != self.settings.fallback_model):
                    tried_fallback = True
                    self.notify(f"{model} failed ({failure}); trying the fallback model "
                                f"{self.settings.fallback_model}")
                    model = self.settings.fallback_model
                    continue
                if failure.kind == "unknown_model":
                    models = self.provider.list_models()
                    if models:
                        shown = ", ".join(models[:12]) + (" …" if len(models) > 12 else "")
                        failure.args = (f"{failure}. The server offers: {shown}",)
                    else:
                        failure.args = (f"{failure}. Check the provider's model list, or GET {self.settings.base_url}"
                                        f"/models",)
                self.drop_last_user()
                raise
        self.record(result, request)
        return result

    def unsupported_parameter(self, failure: Failure, request: Request, model: str, stream: bool) -> bool:
        """True when the failure rejected an optional parameter we sent: the retry goes without it."""
        if failure.status not in (400, 422):
            return False
        parameter = rejected_parameter(failure.code, str(failure), failure.param)
        if not self.provider.reject(parameter, self.provider.request_params(request, model, stream)):
            return False
        self.notify(f"the provider rejected {parameter}: retrying without it (remembered for this session)")
        return True

    def use_session(self, name: str) -> bool:
        """Claim a saved session (StoreError if another process has it) and load it; True if it existed."""
        store = self.store
        session_id, existed = store.open(name, self.model, self.settings.host, self.conversation.system)
        if self.session_id is not None and self.session_id != session_id:
            store.drop_if_empty(self.session_id)
            store.release(self.session_id)
        self.session_id = session_id
        if not existed:
            self.conversation, self.turns = Conversation(self.conversation.system), []
            return False
        conversation, turns, model = store.load(session_id)
        if "system" in self.settings.sources and conversation.system != self.settings.system:
            conversation.system = self.settings.system  # -s given: it replaces the saved prompt
            store.set_meta(session_id, system=self.settings.system)
        self.conversation, self.turns = conversation, turns
        if model and model != self.model and "model" not in self.settings.sources:
            self.set_model(model)
        return True

    CHECKPOINT_SECONDS = 0.5

    def checkpointing(self, on_event: Callable[[str, str], None]) -> Callable[[str, str], None]:
        """Save the reply while it streams, marked "cut short" until it completes, so a
        process killed mid-reply (even by SIGKILL) leaves the text it had shown in the session."""
        parts: list[str] = []
        state = {"message": None, "saved_at": 0.0}
        self._partial = state

        def on_event_saving(kind: str, text: str) -> None:
            on_event(kind, text)
            if kind is TEXT:
                parts.append(text)
                now = time.monotonic()
                if now - state["saved_at"] >= self.CHECKPOINT_SECONDS:
                    state["saved_at"] = now
                    message = state["message"]
                    if message is None:
                        message = state["message"] = Message("assistant", "".join(parts), flags="cut short")
                        self.store.add_message(self.session_id, message)
                    else:
                        message.content = "".join(parts)
                        self.store.update_message(message)

        return on_event_saving

    def record(self, result: TurnResult, request: Request) -> None:
        """Append the reply (partial replies marked) and account for usage and cost."""
        history = self.conversation.history
        partial, self._partial = self._partial.get("message"), {}
        if result.reply:
            reply = Message("assistant", result.reply, flags=result.flags)
            history.append(reply)
            if partial is not None:
                reply.row_id = partial.row_id
                self.store.update_message(reply)
            elif self.store is not None and self.session_id is not None:
                self.store.add_message(self.session_id, reply)
        elif history and history[-1].role == "user":
            # Nothing arrived (interrupted before the first token): the user turn is not left dangling.
            self.drop_last_user()
        usage = result.usage
        if usage is None or (usage.input_tokens == 0 and usage.output_tokens == 0):
            counter = self.counter
            usage = Usage(counter.count_messages(Message(m["role"], m["content"]) for m in request.messages()),
                          counter.count_text(result.reply) if result.reply else 0, estimated=True)
        result.usage = usage
        cost, _ = turn_cost(usage, self.settings, result.model) if self.wants_cost else (None, "")
        stats = TurnStats(result.model, usage, cost, result.ttft, result.latency, result.sent_messages)
        self.turns.append(stats)
        if self.store is not None and self.session_id is not None:
            self.store.add_usage(self.session_id, stats, result.finish_reason)
        status = "interrupted" if result.interrupted else (result.failure.kind if result.failure else "ok")
        self.log(result.model, 200, result.ttft, result.latency, usage, None if status == "ok" else status, cost)

    def warm_up(self) -> None:
        """Load the SDK and build the client (and, when it will be needed, the price table)."""
        try:
            _ = self.provider.client
            settings = self.settings
            if settings.price_in is None and settings.price_out is None and not is_local_url(settings.base_url):
                import genai_prices  # noqa: F401
        except Exception:
            pass  # the real use will report any problem

    def log(self, model: str, status: Any, ttft: float | None, latency: float, usage: Usage | None,
            error: str | None, cost: float | None = None) -> None:
        """One line per request: no content, never the key. Estimated token counts end in "~"."""
        tokens = "-" if usage is None else f"{usage.input_tokens}/{usage.output_tokens}" + (
            "~" if usage.estimated else "")
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} model={model} host={self.settings.host} status={status} "
                f"ttft={'-' if ttft is None else f'{ttft:.3f}'} latency={latency:.3f} tokens={tokens} "
                f"cost={'-' if cost is None else f'{cost:.6f}'} error={error or '-'}")
        write_log(line, self.verbose)


def user_dir(kind: str) -> str:
    import platformdirs

    return getattr(platformdirs, f"user_{kind}_dir")("chatbot", appauthor=False)


def write_log(line: str, verbose: bool) -> None:
    if verbose:
        sys.stderr.write(line + "\n")
    try:
        directory = user_dir("log")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "chatbot.log"), "a", encoding="utf-8") as log_file:
            log_file.write(line + "\n")
    except OSError:
        pass


def tail_lines(text: str, count: int) -> str:
    """The last `count` lines of text, found from the end: the cost does not grow with the text."""
    position = len(text)
    for _ in range(count):
        position = text.rfind("\n", 0, position)
        if position < 0:
            return text
    return text[position + 1:]


class MarkdownView:
    """Streams Markdown into a terminal: finished blocks are rendered once into the scrollback,
    only the unfinished block is redrawn, in a live region of a few lines, at most `fps` times a second.

    A block is finished only when the Markdown says so: a blank line outside a code fence
    (and not inside a list that continues), a closing fence, or a heading line.
    """

    FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
    LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:\s|$)")

    def __init__(self, out: Any, console: Any, show_reasoning: bool = False, fps: float = 20.0,
                 live_lines: int = 6, code_theme: str = "monokai", clock: Callable[[], float] = time.monotonic):
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
                file=io.StringIO(), width=width, force_terminal=True, no_color=self.console.no_color,
                color_system=self.console.color_system, legacy_windows=False, theme=None)
        markdown = Markdown(markdown_text, code_theme=self.code_theme)
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
        if kind is REASONING:
            self.reasoning_chars += len(text)
            if self.show_reasoning:
                self._write_reasoning(text)
            elif self.reasoning_chars == len(text):
                self._draw_live(force=True)
            return
        self.wrote_text = True
        pending, self.pending = self.pending, ""
        pending += text  # with the only reference held here, CPython appends in place: no copy per delta
        self.pending = pending
        if "\n" in text:
            self._scan()
        self._draw_live()

    def _write_reasoning(self, text: str) -> None:
        self.out.write(self._erase_live(self._width()) + f"\x1b[2m{text}\x1b[0m")
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
                if fence and fence.group(1)[0] == marker[0] and len(fence.group(1)) >= len(marker) \
                        and not line.strip().strip(marker[0]):
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

    CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

    def _code_lines(self, width: int) -> list[str]:
        """The tail of an unfinished code block as plain text, each line cropped to one terminal row."""
        from rich.cells import cell_len, set_cell_size

        lines = []
        first_newline = self.pending.find("\n")
        tail = tail_lines(self.pending[first_newline + 1:] if first_newline >= 0 else "", self.max_live)
        for line in tail.split("\n")[-self.max_live:]:
            line = self.CONTROL.sub("", line.replace("\t", "    "))
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
        elif self.reasoning_chars and not self.show_reasoning and not self.wrote_text:
            lines = [f"\x1b[2mthinking… ({self.reasoning_chars:,} characters of reasoning)\x1b[0m"]
        else:
            lines = []
        limit = max(1, min(self.max_live, self._height() - 2))
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
        if self.pending.strip():
            self._commit(len(self.pending))
        out = self._erase_live(self._width())
        self.out.write(out)
        self.out.flush()

    def abort(self) -> None:
        """Interrupted: clear the live region and keep what was received, rendered."""
        self.finish()


# ---------------------------------------------------------------------------
# Sessions: conversations saved in SQLite, written ahead
# ---------------------------------------------------------------------------

# Each entry moves the schema one version forward; PRAGMA user_version records where a file is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, model TEXT, host TEXT, system TEXT,
        created REAL NOT NULL, updated REAL NOT NULL, owner_pid INTEGER);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL, content TEXT NOT NULL, tokens INTEGER, created REAL NOT NULL,
        flags TEXT NOT NULL DEFAULT '');
    CREATE INDEX messages_by_session ON messages(session_id, id);
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        model TEXT, input_tokens INTEGER, output_tokens INTEGER, cost REAL, estimated INTEGER,
        ttft REAL, latency REAL, created REAL NOT NULL);
    """,
    """
    ALTER TABLE sessions ADD COLUMN summary TEXT;
    ALTER TABLE sessions ADD COLUMN summary_covers INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN token_key TEXT;
    ALTER TABLE turns ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE turns ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE turns ADD COLUMN finish_reason TEXT;
    ALTER TABLE turns ADD COLUMN sent_messages INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The sessions database cannot be used; the message says why and what to do."""


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SessionStore:
    """Conversations in one SQLite file: WAL mode, a busy timeout, versioned migrations.

    A session is used by one process at a time: its `owner_pid` is claimed on open and
    released on close; a claim left by a dead process is taken over.
    """

    def __init__(self, path: str):
        import sqlite3

        self.path = path
        self.sqlite3 = sqlite3
        self.pid = os.getpid()
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 10000")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self.db.close()
                raise StoreError(f"the sessions database {path} was written by a newer chatbot (schema "
                                 f"{version}, this one knows {SCHEMA_VERSION}): upgrade chatbot or use --db")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate(version)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the sessions database {path} is unreadable ({exc}): it was left untouched; "
                             f"use --db for another file") from None
        except OSError as exc:
            raise StoreError(f"cannot open the sessions database {path}: {exc.strerror or exc}") from None

    def _migrate(self, version: int) -> None:
        for number in range(version, SCHEMA_VERSION):
            # Each step and its version bump commit together, or not at all.
            self.db.execute("BEGIN IMMEDIATE")
            try:
                current = self.db.execute("PRAGMA user_version").fetchone()[0]
                if current == number:
                    for statement in MIGRATIONS[number].split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {number + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        try:
            self.db.execute("UPDATE sessions SET owner_pid = NULL WHERE owner_pid = ?", (self.pid,))
            self.db.close()
        except self.sqlite3.Error:
            pass

    # -- sessions ------------------------------------------------------------------

    def find(self, name: str) -> tuple | None:
        return self.db.execute("SELECT id, name, model, host, system, summary, summary_covers, owner_pid "
                               "FROM sessions WHERE name = ?", (name,)).fetchone()

    def latest(self) -> str | None:
        row = self.db.execute("SELECT name FROM sessions ORDER BY updated DESC, id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def open(self, name: str, model: str, host: str, system: str) -> tuple[int, bool]:
        """Create or claim a session; (id, existed). Raises StoreError if another process has it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.find(name)
            now = time.time()
            if row is None:
                cursor = self.db.execute(
                    "INSERT INTO sessions (name, model, host, system, created, updated, owner_pid) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, model, host, system, now, now, self.pid))
                session_id, existed = int(cursor.lastrowid or 0), False
            else:
                owner = row[7]
                if owner and owner != self.pid and pid_alive(owner):
                    raise StoreError(f"session {name!r} is in use by another chatbot (pid {owner}): "
                                     f"finish there first, or pick another --session")
                self.db.execute("UPDATE sessions SET owner_pid = ? WHERE id = ?", (self.pid, row[0]))
                session_id, existed = row[0], True
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return session_id, existed

    def drop_if_empty(self, session_id: int) -> None:
        """Forget a session that never got a message, so /sessions lists only real conversations."""
        self.db.execute("DELETE FROM sessions WHERE id = ? AND owner_pid = ? AND NOT EXISTS "
                        "(SELECT 1 FROM messages WHERE session_id = ?)", (session_id, self.pid, session_id))

    def release(self, session_id: int) -> None:
        self.db.execute("UPDATE sessions SET owner_pid = NULL WHERE id = ? AND owner_pid = ?",
                        (session_id, self.pid))

    def load(self, session_id: int) -> tuple[Conversation, list[TurnStats], str]:
        row = self.db.execute("SELECT system, summary, summary_covers, model FROM sessions WHERE id = ?",
                              (session_id,)).fetchone()
        conversation = Conversation(row[0] or DEFAULT_SYSTEM_PROMPT, summary=row[1], summary_covers=row[2] or 0)
        history = conversation.history
        for row_id, role, content, tokens, token_key, created, flags in self.db.execute(
                "SELECT id, role, content, tokens, token_key, created, flags FROM messages "
                "WHERE session_id = ? ORDER BY id", (session_id,)):
            history.append(Message(role, content, flags, (token_key, tokens) if token_key else None,
                                   created, row_id))
        turns = [TurnStats(model, Usage(i or 0, o or 0, c or 0, r or 0, None, bool(e)), cost, ttft, latency or 0.0,
                           sent or 0)
                 for model, i, o, c, r, e, cost, ttft, latency, sent in self.db.execute(
                     "SELECT model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, cost, "
                     "ttft, latency, sent_messages FROM turns WHERE session_id = ? ORDER BY id", (session_id,))]
        return conversation, turns, row[3]

    def add_message(self, session_id: int, message: Message) -> None:
        key, tokens = message.tokens if message.tokens else (None, None)
        cursor = self.db.execute(
            "INSERT INTO messages (session_id, role, content, tokens, token_key, created, flags) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, message.role, message.content, tokens, key, message.created, message.flags))
        message.row_id = cursor.lastrowid
        self.db.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    def update_message(self, message: Message) -> None:
        self.db.execute("UPDATE messages SET content = ?, flags = ?, tokens = NULL WHERE id = ?",
                        (message.content, message.flags, message.row_id))

    def delete_messages(self, row_ids: list[int]) -> None:
        self.db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in row_ids])

    def clear(self, session_id: int) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
        self.db.execute("UPDATE sessions SET summary = NULL, summary_covers = 0 WHERE id = ?", (session_id,))
        self.db.execute("COMMIT")

    def add_usage(self, session_id: int, stats: TurnStats, finish_reason: str | None) -> None:
        usage = stats.usage
        self.db.execute(
            "INSERT INTO turns (session_id, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, "
            "cost, estimated, ttft, latency, finish_reason, sent_messages, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, stats.model, usage.input_tokens, usage.output_tokens, usage.cached_tokens,
             usage.reasoning_tokens, stats.cost, int(usage.estimated), stats.ttft, stats.latency, finish_reason,
             stats.sent_messages, time.time()))

    def set_meta(self, session_id: int, **values: Any) -> None:
        for column, value in values.items():
            assert column in ("model", "system", "name")
            self.db.execute(f"UPDATE sessions SET {column} = ? WHERE id = ?", (value, session_id))

    def save_summary(self, session_id: int, summary: str, covers: int) -> None:
        self.db.execute("UPDATE sessions SET summary = ?, summary_covers = ? WHERE id = ?",
                        (summary, covers, session_id))

    def rename(self, session_id: int, name: str) -> None:
        try:
            self.db.execute("UPDATE sessions SET name = ? WHERE id = ?", (name, session_id))
        except self.sqlite3.IntegrityError:
            raise StoreError(f"a session named {name!r} already exists") from None

    def delete(self, name: str) -> bool:
        row = self.find(name)
        if row is None:
            return False
        if row[7] and row[7] != self.pid and pid_alive(row[7]):
            raise StoreError(f"session {name!r} is in use by another chatbot (pid {row[7]})")
        self.db.execute("DELETE FROM sessions WHERE id = ?", (row[0],))
        return True

    def listing(self) -> list[tuple[str, str, int, float, float | None]]:
        """(name, model, user turns, last used, cost) for every session, most recent first."""
        return self.db.execute(
            "SELECT s.name, s.model, "
            "(SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id AND m.role = 'user'), s.updated, "
            "(SELECT SUM(cost) FROM turns t WHERE t.session_id = s.id) "
            "FROM sessions s ORDER BY s.updated DESC, s.id DESC").fetchall()

    def export(self, name: str) -> dict[str, Any]:
        row = self.find(name)
        if row is None:
            raise StoreError(f"no session named {name!r}: see --list-sessions")
        conversation, turns, model = self.load(row[0])
        return export_data(row[1], model, row[3], conversation, turns)

    def import_session(self, data: dict[str, Any], name: str | None = None) -> str:
        if data.get("format") != "chatbot-session":
            raise StoreError("not a chatbot session export (expected the JSON that /save FILE.json writes)")
        name = name or data["name"]
        if self.find(name) is not None:
            raise StoreError(f"a session named {name!r} already exists")
        session_id, _ = self.open(name, data.get("model") or "", data.get("host") or "", data.get("system") or "")
        self.db.execute("BEGIN IMMEDIATE")
        for m in data.get("messages", []):
            self.add_message(session_id, Message(m["role"], m["content"], m.get("flags") or "",
                                                 (m["token_key"], m["tokens"]) if m.get("token_key") else None,
                                                 m.get("created") or time.time()))
        for t in data.get("turns", []):
            usage = Usage(t["input_tokens"], t["output_tokens"], t.get("cached_tokens", 0),
                          t.get("reasoning_tokens", 0), None, t.get("estimated", False))
            self.add_usage(session_id, TurnStats(t["model"], usage, t.get("cost_usd"), t.get("ttft"),
                                                 t.get("latency") or 0.0, t.get("sent_messages") or 0), None)
        if data.get("summary"):
            self.save_summary(session_id, data["summary"], data.get("summary_covers") or 0)
        self.db.execute("COMMIT")
        self.release(session_id)
        return name


def export_data(name: str, model: str, host: str, conversation: Conversation,
                turns: list[TurnStats]) -> dict[str, Any]:
    """A conversation as the JSON that /save and --export write and --import reads."""
    return {
        "format": "chatbot-session", "version": 1, "name": name, "model": model, "host": host,
        "system": conversation.system, "summary": conversation.summary,
        "summary_covers": conversation.summary_covers,
        "messages": [{"role": m.role, "content": m.content, "created": m.created, "flags": m.flags,
                      "tokens": m.tokens[1] if m.tokens else None,
                      "token_key": m.tokens[0] if m.tokens else None} for m in conversation.history],
        "turns": [{"model": t.model, "input_tokens": t.usage.input_tokens,
                   "output_tokens": t.usage.output_tokens, "cached_tokens": t.usage.cached_tokens,
                   "reasoning_tokens": t.usage.reasoning_tokens, "estimated": t.usage.estimated,
                   "cost_usd": t.cost, "ttft": t.ttft, "latency": t.latency,
                   "sent_messages": t.sent_messages} for t in turns],
    }


def export_markdown(data: dict[str, Any]) -> str:
    lines = [f"# {data['name']}", "", f"Model: {data['model']} · provider: {data['host']}", "",
             f"**System:** {data['system']}", ""]
    for message in data["messages"]:
        mark = f" *({message['flags']})*" if message["flags"] else ""
        lines += [f"## {message['role'].capitalize()}{mark}", "", message["content"], ""]
    return "\n".join(lines)


def default_db_path(settings: Settings) -> str:
    return settings.db or os.path.join(user_dir("data"), "sessions.db")


# ---------------------------------------------------------------------------
# Commands: one table drives dispatch, /help and completion
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    usage: str  # argument synopsis: "" for none, "[NAME]" optional, "NAME" required
    help: str
    handler: Callable[["Repl", str], None]


def cmd_help(repl: "Repl", arg: str) -> None:
    width = max(len(f"/{c.name} {c.usage}") for c in COMMANDS)
    for command in COMMANDS:
        names = f"/{command.name} {command.usage}".strip()
        aliases = f" (also {', '.join('/' + a for a in command.aliases)})" if command.aliases else ""
        repl.say(f"  {names:<{width}}  {command.help}{aliases}")
    repl.say("  Enter sends · Esc Enter adds a line · Ctrl-C stops a reply · Ctrl-D quits · "
             "start a message with // to send a leading slash")


def cmd_exit(repl: "Repl", arg: str) -> None:
    raise EOFError


def cmd_clear(repl: "Repl", arg: str) -> None:
    repl.chat.conversation.clear()
    if repl.chat.store is not None and repl.saving:
        old = repl.session_name
        repl.start_session(None)
        repl.say(f"Conversation cleared. (The old one stays saved as {old!r}; this is {repl.session_name!r}.)")
    else:
        repl.say("Conversation cleared.")


def cmd_stats(repl: "Repl", arg: str) -> None:
    chat = repl.chat
    turns = chat.turns
    repl.say(f"messages in memory: {len(chat.conversation.history) + 1} (system prompt included)")
    if chat.last_request is not None:
        request = chat.last_request
        dropped = f", {request.dropped} older not sent" if request.dropped else ""
        repl.say(f"sent last turn: {len(request.turns) + 1} messages{dropped}")
    if not turns:
        repl.say("no replies yet")
        return
    repl.say(f"last turn: {usage_line(turns[-1])}")
    usage = Usage(sum(t.usage.input_tokens for t in turns), sum(t.usage.output_tokens for t in turns),
                  sum(t.usage.cached_tokens for t in turns), sum(t.usage.reasoning_tokens for t in turns),
                  estimated=any(t.usage.estimated for t in turns))
    costs = [t.cost for t in turns]
    total = None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
    known = sum(c for c in costs if c is not None)
    money = format_money(total) if total is not None else (
        f"{format_money(known)} known, some turns' cost unknown" if known else "cost unknown")
    about = "~" if usage.estimated else ""
    repl.say(f"session: {len(turns)} turns · {about}{usage.input_tokens:,} in · {about}{usage.output_tokens:,} out"
             f" · {money}" + (" (some counts estimated)" if usage.estimated else ""))


def cmd_model(repl: "Repl", arg: str) -> None:
    chat = repl.chat
    if not arg:
        repl.say(f"model: {chat.model} ({chat.settings.host})")
        return
    models = chat.provider.list_models()
    if models and arg not in models:
        shown = ", ".join(models[:12]) + (" …" if len(models) > 12 else "")
        repl.error(f"unknown model {arg!r}: the server offers {shown}")
        return
    chat.set_model(arg)
    if chat.store is not None and chat.session_id is not None:
        chat.store.set_meta(chat.session_id, model=arg)
    repl.say(f"model is now {arg}")


def cmd_system(repl: "Repl", arg: str) -> None:
    chat = repl.chat
    if not arg:
        repl.say(f"system prompt: {chat.conversation.system}")
        return
    chat.conversation.system = arg
    if chat.store is not None and chat.session_id is not None:
        chat.store.set_meta(chat.session_id, system=arg)
    repl.say("system prompt replaced")


def cmd_retry(repl: "Repl", arg: str) -> None:
    history = repl.chat.conversation.history
    if not history:
        repl.error("nothing to retry yet")
        return
    if history[-1].role == "assistant":
        removed = history.pop()
        if repl.chat.store is not None and removed.row_id is not None:
            repl.chat.store.delete_messages([removed.row_id])
    repl.run_turn(None)


def cmd_undo(repl: "Repl", arg: str) -> None:
    chat = repl.chat
    start = chat.conversation.last_exchange_start()
    if start is None:
        repl.error("nothing to undo")
        return
    removed = chat.conversation.history[start:]
    del chat.conversation.history[start:]
    if chat.store is not None:
        chat.store.delete_messages([m.row_id for m in removed if m.row_id is not None])
    repl.say(f"removed the last exchange ({len(removed)} message{'s' if len(removed) != 1 else ''})")


def cmd_api(repl: "Repl", arg: str) -> None:
    repl.say(f"API: {repl.chat.settings.api} (set with --api chat|responses or OPENAI_API)")


def cmd_summarize(repl: "Repl", arg: str) -> None:
    settings = repl.chat.settings
    if arg not in ("", "on", "off"):
        repl.error("usage: /summarize [on|off]")
        return
    settings.summarize = {"on": True, "off": False}.get(arg, not settings.summarize)
    repl.say(f"summaries of dropped turns: {'on' if settings.summarize else 'off'}")


def cmd_sessions(repl: "Repl", arg: str) -> None:
    store = repl.require_store()
    if store is None:
        return
    rows = store.listing()
    if not rows:
        repl.say("no saved sessions")
    for line in session_lines(rows, repl.session_name):
        repl.say(line)


def session_lines(rows: list[tuple], current: str | None = None) -> list[str]:
    lines = []
    for name, model, turns, updated, cost in rows:
        mark = "*" if name == current else " "
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(updated))
        money = "-" if cost is None else format_money(cost)
        lines.append(f"{mark} {name:<24} {(model or '-')[:24]:<24} {turns:>4} turns  {when}  {money}")
    return lines


def cmd_session(repl: "Repl", arg: str) -> None:
    if repl.require_store() is not None and repl.start_session(arg) and not repl.chat.conversation.history:
        repl.note(f"new session {arg!r}")


def cmd_rename(repl: "Repl", arg: str) -> None:
    store = repl.require_store()
    if store is None or repl.chat.session_id is None:
        return
    try:
        store.rename(repl.chat.session_id, arg)
    except StoreError as exc:
        repl.error(str(exc))
        return
    repl.session_name = arg
    repl.say(f"session renamed to {arg!r}")


def cmd_delete(repl: "Repl", arg: str) -> None:
    store = repl.require_store()
    if store is None:
        return
    if arg == repl.session_name:
        repl.error("that is the current session: switch to another first (/session NAME)")
        return
    if store.find(arg) is None:
        repl.error(f"no session named {arg!r}: see /sessions")
        return
    answer = repl.ask(f"Delete session {arg!r} for good? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        repl.say("kept")
        return
    try:
        store.delete(arg)
    except StoreError as exc:
        repl.error(str(exc))
        return
    repl.say(f"deleted {arg!r}")


def cmd_save(repl: "Repl", arg: str) -> None:
    chat = repl.chat
    data = export_data(repl.session_name or "conversation", chat.model, chat.settings.host, chat.conversation,
                       chat.turns)
    try:
        write_export(data, arg)
    except (OSError, ValueError) as exc:
        repl.error(f"cannot save to {arg}: {getattr(exc, 'strerror', None) or exc}")
        return
    repl.say(f"saved {len(data['messages'])} messages to {arg}")


def write_export(data: dict[str, Any], path: str) -> None:
    if path.endswith(".json"):
        text = json.dumps(data, indent=2, ensure_ascii=False)
    elif path.endswith((".md", ".markdown", ".txt")):
        text = export_markdown(data)
    else:
        raise ValueError("the file name must end in .json or .md")
    with open(path, "w", encoding="utf-8") as export_file:
        export_file.write(text + "\n")


COMMANDS: tuple[Command, ...] = (
    Command("help", ("?",), "", "list commands", cmd_help),
    Command("exit", ("quit", "q"), "", "leave the chat", cmd_exit),
    Command("clear", (), "", "forget the conversation (the system prompt stays)", cmd_clear),
    Command("stats", (), "", "messages, tokens, cost and timing of the last turn and the session", cmd_stats),
    Command("model", (), "[NAME]", "show or switch the model", cmd_model),
    Command("system", (), "[TEXT]", "show or replace the system prompt", cmd_system),
    Command("retry", (), "", "regenerate the last reply", cmd_retry),
    Command("undo", (), "", "drop the last exchange", cmd_undo),
    Command("api", (), "", "show which API is in use", cmd_api),
    Command("summarize", (), "[on|off]", "summarise turns that trimming drops", cmd_summarize),
    Command("sessions", (), "", "list saved sessions", cmd_sessions),
    Command("session", (), "NAME", "switch to (or start) a saved session", cmd_session),
    Command("rename", (), "NAME", "rename this session", cmd_rename),
    Command("delete", (), "NAME", "delete a saved session (asks first)", cmd_delete),
    Command("save", (), "FILE", "export this conversation as .md or .json", cmd_save),
)
COMMAND_NAMES = {name: c for c in COMMANDS for name in (c.name, *c.aliases)}


def parse_command(text: str) -> tuple[Command | None, str, str | None]:
    """(command, argument, error) for a line starting with one slash."""
    word, _, arg = text[1:].partition(" ")
    arg = arg.strip()
    command = COMMAND_NAMES.get(word.lower())
    if command is None:
        return None, "", f"unknown command /{word}: type /help for the list (start with // to send a slash)"
    if command.usage and not command.usage.startswith("[") and not arg:
        return None, "", f"/{command.name} needs {command.usage}: /{command.name} {command.usage}"
    if not command.usage and arg:
        return None, "", f"/{command.name} takes no argument"
    return command, arg, None


# ---------------------------------------------------------------------------
# The REPL
# ---------------------------------------------------------------------------


class Repl:
    """The interactive loop: prompt -> command or turn -> render -> repeat."""

    def __init__(self, chat: Chat, args: Any):
        from rich.console import Console

        self.chat = chat
        self.args = args
        self.console = Console(highlight=False)
        self.markdown = not (chat.settings.raw or os.environ.get("NO_COLOR"))
        self.pending_text = ""  # a message that failed comes back as the next prompt's text
        self.session_name: str | None = None
        self.saving = False
        self._store_error: str | None = None
        self.prompt_session: Any = None
        self.startup_notes: list[tuple[Callable[[str], None], str]] = []  # shown under the banner
        chat.notify = chat.provider.notify = self.note

    # -- output ------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        self.console.print(f"error: {text}", style="red", markup=False, highlight=False, soft_wrap=True)

    def early(self, show: Callable[[str], None], text: str) -> None:
        """Show now, or under the banner if the chat has not started yet."""
        if self.prompt_session is None:
            self.startup_notes.append((show, text))
        else:
            show(text)

    def ask(self, question: str) -> str:
        try:
            return self.prompt_session.prompt(question) if self.prompt_session else input(question)
        except (EOFError, KeyboardInterrupt):
            return ""

    # -- sessions ------------------------------------------------------------------

    def require_store(self) -> SessionStore | None:
        if self.chat.store is None:
            self.error(self._store_error or "sessions are off (--no-save)")
        return self.chat.store

    def open_store(self) -> None:
        try:
            self.chat.store = SessionStore(default_db_path(self.chat.settings))
        except StoreError as exc:
            self._store_error = str(exc)
            self.early(self.error, f"{exc}; chatting without saving")

    def start_session(self, name: str | None) -> bool:
        """Switch to a named session (resuming it if it exists) or start an automatic one."""
        chat = self.chat
        if chat.store is None:
            return False
        name = name or time.strftime("chat-%Y%m%d-%H%M%S")
        try:
            existed = chat.use_session(name)
        except StoreError as exc:
            self.error(str(exc))
            return False
        self.session_name = name
        if existed:
            conversation = chat.conversation
            flagged = sum(1 for m in conversation.history if m.flags)
            extra = f", {flagged} marked interrupted or cut short" if flagged else ""
            notes = [f"resumed session {name!r}: {len(conversation.history)} messages{extra}"]
            for message in conversation.history[-2:]:
                mark = f" [{message.flags}]" if message.flags else ""
                notes.append(f"  {message.role}{mark}: {one_line(message.content, 200)}")
            if conversation.history and conversation.history[-1].role == "user":
                # The last run ended before any reply: offer the message again instead of leaving it dangling.
                self.pending_text = conversation.history[-1].content
                chat.drop_last_user()
                notes.append("  (that message got no reply: it is back in the prompt, Enter sends it)")
            for text in notes:
                self.early(self.note, text)
        return True

    # -- turns ---------------------------------------------------------------------

    def view(self) -> Any:
        if self.markdown:
            return MarkdownView(sys.stdout, self.console, show_reasoning=self.chat.settings.show_reasoning)
        return PlainView(sys.stdout, self.chat.settings.show_reasoning, sys.stdout,
                         dim=not os.environ.get("NO_COLOR"))

    def run_turn(self, text: str | None) -> None:
        """Send `text` (or, for /retry, the history as it is) and show the reply."""
        chat = self.chat
        if text is not None:
            chat.add_user(text)
        elif not chat.conversation.history or chat.conversation.history[-1].role != "user":
            self.error("nothing to send")
            return
        resend = chat.conversation.history[-1].content
        view = self.view()
        try:
            result = chat.respond(view.on_event, stream=not self.args.no_stream)
        except PromptTooLarge as exc:
            chat.drop_last_user()
            self.error(str(exc))
            self.pending_text = resend
            return
        except Failure as failure:
            view.abort()
            self.error(str(failure))
            self.pending_text = resend
            return
        view.finish()
        if result.interrupted:
            self.note("[interrupted]" if result.reply else "[interrupted before the reply began]")
            if not result.reply:
                self.pending_text = resend
        elif result.failure is not None:
            self.error(f"reply cut short: {result.failure}")
        elif result.finish_reason in FINISH_NOTES:
            self.note(f"[{FINISH_NOTES[result.finish_reason]}]")
        if self.chat.settings.show_usage and chat.turns:
            self.note(usage_line(chat.turns[-1]))
        self.say("")  # a blank line between the reply and the next prompt

    # -- the loop --------------------------------------------------------------------

    def banner(self) -> str:
        chat = self.chat
        found = f" · found {chat.settings.discovered}" if chat.settings.discovered else ""
        api = " · responses API" if chat.settings.api == "responses" else ""
        return f"chatbot {__version__} · {chat.model} · {chat.settings.host}{found}{api} · /help for commands"

    def make_prompt(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.completion import Completer, Completion
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        class SlashCompleter(Completer):
            def get_completions(self, document: Any, complete_event: Any) -> Iterator[Any]:
                text = document.text_before_cursor
                if text.startswith("/") and " " not in text and not text.startswith("//"):
                    for command in COMMANDS:
                        for name in (command.name, *command.aliases):
                            if name.startswith(text[1:].lower()):
                                yield Completion("/" + name, start_position=-len(text), display_meta=command.help)

        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _(event: Any) -> None:
            event.current_buffer.insert_text("\n")

        try:
            directory = user_dir("data")
            os.makedirs(directory, exist_ok=True)
            history: Any = FileHistory(os.path.join(directory, "prompt-history"))
        except OSError:
            history = InMemoryHistory()
        session = PromptSession(history=history, auto_suggest=AutoSuggestFromHistory(), completer=SlashCompleter(),
                                complete_while_typing=True, key_bindings=bindings, enable_history_search=False,
                                prompt_continuation="… ")
        warmed = []

        def warm_up(_: Any) -> None:
            # The prompt is on screen: load the SDK (and price table) while the user types.
            if not warmed:
                warmed.append(True)
                threading.Thread(target=self.chat.warm_up, daemon=True).start()

        session.app.after_render += warm_up
        return session

    def run(self, first_prompt: str | None = None) -> int:
        self.say(self.banner())
        for show, text in self.startup_notes:
            show(text)
        self.prompt_session = self.make_prompt()
        if first_prompt:
            self.run_turn(first_prompt)
        while True:
            try:
                text = self.prompt_session.prompt("❯ ", default=self.pending_text)
            except KeyboardInterrupt:
                self.pending_text = ""
                continue
            except EOFError:
                break
            self.pending_text = ""
            if not text.strip():
                continue
            if text.startswith("/") and not text.startswith("//"):
                command, arg, problem = parse_command(text.strip())
                if problem:
                    self.error(problem)
                    continue
                try:
                    command.handler(self, arg)
                except EOFError:
                    break
                except KeyboardInterrupt:
                    self.note("[interrupted]")
                except Exception as exc:
                    self.error(f"internal error: {report_bug(exc)}")
                continue
            try:
                self.run_turn(text[1:] if text.startswith("//") else text)
            except KeyboardInterrupt:  # outside the stream (preparing the request): nothing was sent
                self.chat.drop_last_user()
                self.pending_text = text
                self.note("[interrupted]")
            except Exception as exc:  # a bug of ours must not end the chat or lose the message
                self.chat.drop_last_user()
                self.pending_text = text
                self.error(f"internal error: {report_bug(exc)}")
        if self.chat.store is not None:
            if self.chat.session_id is not None:
                self.chat.store.drop_if_empty(self.chat.session_id)
            self.chat.store.close()
        return 0


# ---------------------------------------------------------------------------
# One-shot mode and main()
# ---------------------------------------------------------------------------

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
COMPLETE_REASONS = {"stop", "end_turn", "eos", "eos_token", "stop_sequence", "tool_calls", "function_call"}


class UsageError(Exception):
    """Bad command-line use or input: exit status 2."""


def build_parser() -> Any:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # one line, not argparse's usage block
            raise UsageError(f"{message} (see chatbot --help)")

    parser = Parser(
        prog="chatbot",
        description="A terminal streaming chatbot for any OpenAI-compatible provider. With no prompt and a "
                    "terminal, starts a chat; with a prompt argument or piped input, answers once and exits.",
        epilog="Configuration precedence: flag > environment > .env > default. The API key is read only from "
               "OPENAI_API_KEY (environment or .env). Exit status: 0 ok, 1 provider/network failure or reply cut "
               "short, 2 usage or configuration error, 130 interrupted.")
    parser.add_argument("prompt", nargs="*", help="prompt to send (piped stdin comes first, then this)")
    for setting in SETTINGS:
        if not setting.flags:
            continue
        help_text = f"{setting.help} [{setting.env}]" if setting.env else setting.help
        if setting.name in BOOL_SETTINGS:
            parser.add_argument(*setting.flags, dest=setting.name, action="store_const", const="1",
                                help=help_text)
        else:
            default = f"; default {setting.default}" if setting.default not in (None, "") and \
                setting.name != "system" else ""
            parser.add_argument(*setting.flags, dest=setting.name, metavar=setting.name.upper().replace("_", "-")
                                if setting.name not in ("api",) else "{chat,responses}",
                                help=help_text.replace("]", default + "]", 1) if default else help_text)
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this file instead of ./.env")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole reply instead of streaming")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the reply and its usage")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="send the prompt, then stay in the chat")
    parser.add_argument("--session", metavar="NAME", help="start or resume a saved conversation")
    parser.add_argument("-c", "--continue", dest="continue_", action="store_true",
                        help="resume the most recent conversation")
    parser.add_argument("--list-sessions", action="store_true", help="list saved conversations and exit")
    parser.add_argument("--export", nargs=2, metavar=("NAME", "FILE"),
                        help="export a saved conversation to FILE (.md or .json) and exit")
    parser.add_argument("--import", dest="import_file", metavar="FILE",
                        help="import a conversation exported as JSON and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr too")
    parser.add_argument("--version", action="version", version=f"chatbot {__version__}")
    return parser


def load_settings(args: Any, environ: dict[str, str]) -> Settings:
    """Resolve settings from flags, the environment and .env; find a local server if nothing is set."""
    env_path = args.env_file or ".env"
    dotenv: dict[str, str | None] = {}
    if args.env_file and not os.path.isfile(args.env_file):
        raise ConfigError(f"--env-file {args.env_file}: no such file")
    if os.path.isfile(env_path):
        from dotenv import dotenv_values

        dotenv = dict(dotenv_values(env_path))
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS if s.flags}
    settings = resolve_settings(flags, environ, dotenv)
    if not settings.api_key and "base_url" not in settings.sources:
        ports = environ.get("CHATBOT_LOCAL_PORTS")
        port_list = [int(p) for p in ports.split(",") if p.strip().isdigit()] if ports is not None else LOCAL_PORTS
        found = probe_local_servers(port_list)
        if found:
            settings.base_url, models = found
            settings.discovered = f"a local server at {settings.host}"
            if "model" not in settings.sources and models:
                settings.model = models[0]
    check_credentials(settings)
    return settings


def read_prompt(args: Any, stdin: Any) -> str:
    """The one-shot prompt: piped text first, then the argument, separated by a blank line."""
    parts = []
    if stdin is not None and not stdin.isatty():
        data = stdin.buffer.read()
        try:
            piped = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"stdin is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                             f"convert it first, e.g. with iconv") from None
        if piped.strip():
            parts.append(piped.rstrip("\n"))
    if args.prompt:
        parts.append(" ".join(args.prompt))
    prompt = "\n\n".join(parts)
    if not prompt.strip():
        raise UsageError("nothing to send: give a prompt as an argument or pipe one on stdin "
                         "(run with a terminal and no prompt for a chat)")
    return prompt


def open_session(chat: Chat, args: Any) -> None:
    """Attach the sessions store and resume or start the session --session or -c asks for."""
    chat.store = SessionStore(default_db_path(chat.settings))
    name = chat.store.latest() if args.continue_ else args.session
    if name is None:
        raise StoreError("no saved conversation to continue")
    chat.use_session(name)


def run_once(chat: Chat, prompt: str, args: Any) -> int:
    """Answer one prompt on stdout; diagnostics on stderr; the exit status says how it went."""
    settings = chat.settings
    err = sys.stderr
    markdown = (not args.json and sys.stdout.isatty() and not settings.raw and not os.environ.get("NO_COLOR"))
    if args.json:
        view: Any = PlainView(_NullWriter())
    elif markdown:
        from rich.console import Console

        view = MarkdownView(sys.stdout, Console(highlight=False), show_reasoning=settings.show_reasoning)
    else:
        view = PlainView(sys.stdout, settings.show_reasoning, err if settings.show_reasoning else None)
    chat.wants_cost = bool(args.json or settings.show_usage or chat.store is not None)
    chat.add_user(prompt)
    try:
        result = chat.respond(view.on_event, stream=not args.no_stream)
    except PromptTooLarge as exc:
        chat.drop_last_user()
        return report_failure(args, chat, str(exc), EXIT_USAGE)
    except Failure as failure:
        view.abort()
        return report_failure(args, chat, str(failure), EXIT_FAILED)
    view.finish()
    status = EXIT_OK
    if result.interrupted:
        err.write("chatbot: interrupted\n")
        status = EXIT_INTERRUPTED
    elif result.failure is not None:
        err.write(f"chatbot: reply cut short: {result.failure}\n")
        status = EXIT_FAILED
    elif result.finish_reason in FINISH_NOTES:
        err.write(f"chatbot: {FINISH_NOTES[result.finish_reason]}\n")
        status = EXIT_FAILED
    elif result.finish_reason not in COMPLETE_REASONS and args.verbose:
        err.write(f"chatbot: the reply ended with finish reason {result.finish_reason!r}\n")
    stats = chat.turns[-1]
    if args.json:
        print(json.dumps(json_result(result, stats), ensure_ascii=False))
    elif settings.show_usage:
        err.write(usage_line(stats) + "\n")
    return status


def json_result(result: TurnResult | None, stats: TurnStats | None, error: str | None = None,
                model: str = "") -> dict[str, Any]:
    usage = stats.usage if stats else None
    payload: dict[str, Any] = {
        "model": result.model if result else model,
        "reply": result.reply if result else "",
        "finish_reason": result.finish_reason if result else None,
        "usage": None if usage is None else {
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens, "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens, "estimated": usage.estimated},
        "cost_usd": stats.cost if stats else None,
        "latency_ms": round(result.latency * 1000, 1) if result else None,
        "ttft_ms": round(result.ttft * 1000, 1) if result and result.ttft is not None else None,
        "truncated": result.truncated if result else True,
    }
    if error or (result and result.failure):
        payload["error"] = error or str(result.failure)
    return payload


def report_failure(args: Any, chat: Chat, message: str, status: int) -> int:
    sys.stderr.write(f"chatbot: {message}\n")
    if args.json:
        print(json.dumps(json_result(None, None, message, chat.model), ensure_ascii=False))
    return status


class _NullWriter:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def session_tool(args: Any, environ: dict[str, str]) -> int:
    """--list-sessions, --export and --import: no provider needed."""
    flags = {"db": getattr(args, "db", None)}
    settings = resolve_settings(flags, environ, {})
    store = SessionStore(default_db_path(settings))
    try:
        if args.list_sessions:
            rows = store.listing()
            print("\n".join(session_lines(rows)) if rows else "no saved sessions")
        elif args.export:
            name, path = args.export
            try:
                write_export(store.export(name), path)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
        else:
            try:
                with open(args.import_file, encoding="utf-8") as import_file:
                    data = json.load(import_file)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read {args.import_file}: {getattr(exc, 'strerror', None) or exc}") \
                    from None
            print(f"imported session {store.import_session(data)!r}")
    finally:
        store.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except (UsageError, ConfigError, StoreError) as exc:
        sys.stderr.write(f"chatbot: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # the reader went away: exit quietly
        except OSError:
            pass
        return EXIT_FAILED
    except Exception as exc:  # a bug of ours: one line for the user, the traceback in the log
        sys.stderr.write(f"chatbot: internal error: {report_bug(exc)}\n")
        return EXIT_FAILED


def report_bug(exc: BaseException) -> str:
    """Log the traceback of an unexpected exception; return one line that says where to find it."""
    import traceback

    details = "".join(traceback.format_exception(exc))
    write_log("internal error\n" + details.rstrip(), False)
    return f"{type(exc).__name__}: {one_line(str(exc), 160)} (traceback in {os.path.join(user_dir('log'), 'chatbot.log')})"


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    if args.list_sessions or args.export or args.import_file:
        return session_tool(args, environ)
    interactive_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    one_shot = bool(args.prompt) or not sys.stdin.isatty()
    if args.interactive and not interactive_terminal:
        raise UsageError("-i/--interactive needs a terminal on stdin and stdout")
    if not one_shot and not interactive_terminal:
        raise UsageError("no prompt and no terminal: pass a prompt or pipe one on stdin")
    prompt = read_prompt(args, sys.stdin) if one_shot and not args.interactive else None
    settings = load_settings(args, environ)
    if one_shot and not args.interactive:
        chat = Chat(settings, lambda text: sys.stderr.write(f"chatbot: {text}\n"))
        chat.verbose = args.verbose
        if args.session or args.continue_:
            open_session(chat, args)
        try:
            return run_once(chat, prompt or "", args)
        finally:
            if chat.store is not None:
                chat.store.close()
    chat = Chat(settings, lambda text: None)
    chat.verbose = args.verbose
    repl = Repl(chat, args)
    if not settings.no_save or args.session or args.continue_:
        repl.open_store()
        if chat.store is not None:
            name = args.session
            if args.continue_:
                name = chat.store.latest()
                if name is None:
                    repl.note("no saved conversation to continue: starting a new one")
            if not repl.start_session(name):
                return EXIT_USAGE
            repl.saving = True
    first = " ".join(args.prompt) if args.interactive and args.prompt else None
    return repl.run(first)


if __name__ == "__main__":
    sys.exit(main())
