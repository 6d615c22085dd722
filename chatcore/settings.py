"""Settings: one table drives flags, validation, `.env.example` and the README; resolution and local-server probing."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# Precedence: flag > environment > .env file > default.


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
            raise ValueError(
                f"expected {'an integer' if kind is int else 'a number'}"
                + (f" from {low} to {high}" if high is not None else f" >= {low}" if low is not None else "")
            )
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


def _ports(value: str) -> tuple[int, ...]:
    """Comma-separated TCP ports; empty means none (no probing)."""
    ports = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise ValueError(f"{part!r} is not a port number (1 to 65535); empty turns probing off")
        ports.append(int(part))
    return tuple(ports)


def _access_list(value: str) -> tuple[str, ...]:
    """Comma-separated user ids, @usernames, (negative) group ids, or *; validated one by one."""
    entries = tuple(part.strip() for part in value.split(",") if part.strip())
    for entry in entries:
        if entry != "*" and not re.fullmatch(r"-?\d+|@[A-Za-z0-9_]{3,32}", entry):
            raise ValueError(f"{entry!r} is not a numeric id, an @username or *")
    return entries


@dataclass(frozen=True)
class Setting:
    name: str
    env: str | None
    flags: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any]
    help: str
    example: str = ""  # value shown in .env.example (commented out when empty)
    empty_ok: bool = False  # an empty value means something (no ports: no probing); else it is ignored


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and concisely."

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "api_key",
        "OPENAI_API_KEY",
        (),
        None,
        _text,
        "API key (never a flag: it would land in shell history); not needed for a local server",
        "your_api_key_here",
    ),
    Setting(
        "base_url",
        "OPENAI_BASE_URL",
        ("--base-url",),
        "https://openrouter.ai/api/v1",
        _url,
        "provider base URL",
        "https://openrouter.ai/api/v1",
    ),
    Setting("model", "OPENAI_MODEL", ("-m", "--model"), "openai/gpt-5-nano", _text, "model name", "openai/gpt-5-nano"),
    Setting(
        "system",
        "OPENAI_SYSTEM_PROMPT",
        ("-s", "--system"),
        DEFAULT_SYSTEM_PROMPT,
        _text,
        "system prompt",
        empty_ok=True,
    ),
    Setting(
        "temperature",
        "OPENAI_TEMPERATURE",
        ("-t", "--temperature"),
        0.4,
        _number(float, 0, 2),
        "sampling temperature, 0 to 2",
        "0.4",
    ),
    Setting(
        "max_tokens",
        "OPENAI_MAX_OUTPUT_TOKENS",
        ("--max-tokens",),
        1000,
        _number(int, 1),
        "output token limit per reply",
        "1000",
    ),
    Setting(
        "max_messages",
        "OPENAI_MAX_HISTORY_MESSAGES",
        ("--max-messages",),
        20,
        _number(int, 1),
        "most history messages sent per request",
        "20",
    ),
    Setting(
        "context_tokens",
        "OPENAI_CONTEXT_TOKENS",
        ("--context-tokens",),
        None,
        _number(int, 256),
        "model context window in tokens (default: model table, else 8192)",
    ),
    Setting(
        "price_in",
        "INPUT_PRICE_PER_MILLION",
        ("--price-in",),
        None,
        _number(float, 0),
        "USD per million input tokens (default: genai-prices table)",
    ),
    Setting(
        "price_out",
        "OUTPUT_PRICE_PER_MILLION",
        ("--price-out",),
        None,
        _number(float, 0),
        "USD per million output tokens (default: genai-prices table)",
    ),
    Setting(
        "app_url",
        "APP_URL",
        (),
        None,
        _text,
        "with APP_NAME: sent as HTTP-Referer (OpenRouter attribution)",
        "http://localhost:3000",
    ),
    Setting("app_name", "APP_NAME", (), None, _text, "with APP_URL: sent as X-Title", "chatbot"),
    Setting(
        "api", "OPENAI_API", ("--api",), "chat", _choice("chat", "responses"), "which API to speak: chat or responses"
    ),
    Setting(
        "timeout",
        "OPENAI_TIMEOUT",
        ("--timeout",),
        60.0,
        _number(float, 0.1),
        "network timeout in seconds (connect, and silence between reads)",
    ),
    Setting(
        "first_token_timeout",
        "CHATBOT_FIRST_TOKEN_TIMEOUT",
        ("--first-token-timeout",),
        120.0,
        _number(float, 0.1),
        "seconds to wait for the first token, keep-alives included",
    ),
    Setting(
        "total_timeout",
        "CHATBOT_TOTAL_TIMEOUT",
        ("--total-timeout",),
        600.0,
        _number(float, 0.1),
        "wall-clock limit in seconds for one reply",
    ),
    Setting(
        "retries",
        "OPENAI_MAX_RETRIES",
        ("--retries",),
        2,
        _number(int, 0, 10),
        "retries for rate limits, server errors and timeouts",
    ),
    Setting(
        "fallback_model",
        "OPENAI_FALLBACK_MODEL",
        ("--fallback-model",),
        None,
        _text,
        "model to try once when the main one fails or is unknown",
    ),
    Setting("db", "CHATBOT_DB", ("--db",), None, _text, "sessions database path (default: user data directory)"),
    Setting("no_save", "CHATBOT_NO_SAVE", ("--no-save",), False, _parse_bool, "do not save REPL conversations"),
    Setting(
        "summarize",
        "CHATBOT_SUMMARIZE",
        ("--summarize",),
        False,
        _parse_bool,
        "summarise turns dropped by trimming and send the summary",
    ),
    Setting(
        "show_usage",
        "CHATBOT_SHOW_USAGE",
        ("--show-usage",),
        False,
        _parse_bool,
        "print a usage and cost line after each reply",
    ),
    Setting(
        "show_reasoning",
        "CHATBOT_SHOW_REASONING",
        ("--show-reasoning",),
        False,
        _parse_bool,
        "show reasoning text in full instead of a one-line indicator",
    ),
    Setting(
        "raw",
        "CHATBOT_RAW",
        ("--raw", "--no-markdown"),
        False,
        _parse_bool,
        "print replies as plain text, not rendered Markdown",
    ),
    Setting(
        "local_ports",
        "CHATBOT_LOCAL_PORTS",
        (),
        (11434, 1234, 8080, 8000),
        _ports,
        "ports probed for a local server when no key and no base URL are set (Ollama, LM Studio, llama.cpp, "
        "vLLM); empty turns probing off",
        empty_ok=True,
    ),
    # The Telegram assistant's own settings: no flags (the token must never be one).
    Setting(
        "telegram_token",
        "TELEGRAM_BOT_TOKEN",
        (),
        None,
        _text,
        "Telegram assistant: the bot token from @BotFather (required there; never a flag, never logged)",
        "your_bot_token_from_botfather",
    ),
    Setting(
        "telegram_api_url",
        "TELEGRAM_API_URL",
        (),
        "https://api.telegram.org",
        _url,
        "Telegram assistant: Bot API server (a local Bot API server, or a test's fake)",
    ),
    Setting(
        "telegram_allowed",
        "TELEGRAM_ALLOWED_USERS",
        (),
        (),
        _access_list,
        "Telegram assistant: who may use it: user ids, @usernames, group ids (negative), or * for everyone; "
        "unset means nobody",
        "",
    ),
    Setting(
        "telegram_rate_limit",
        "TELEGRAM_RATE_LIMIT",
        (),
        10,
        _number(int, 1),
        "Telegram assistant: messages a user may send per minute",
    ),
    Setting(
        "telegram_db",
        "TELEGRAM_DB",
        (),
        None,
        _text,
        "Telegram assistant: chat histories database path (default: user data directory)",
    ),
)
BOOL_SETTINGS = {s.name for s in SETTINGS if s.parse is _parse_bool}


def shown(value: Any) -> str:
    """A default as it would be written in .env: a list comma-separated."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def env_example() -> str:
    """The text of `.env.example`, generated from the settings table (a test keeps the file in step)."""
    lines = [
        "# chatbot configuration. Copy to .env and fill in what you need; every line is optional",
        "# except OPENAI_API_KEY for a remote provider and TELEGRAM_BOT_TOKEN for the Telegram assistant.",
        "# Flags override these; the environment overrides .env.",
        "",
    ]
    for setting in SETTINGS:
        if not setting.env:
            continue
        flags = f" (flag: {', '.join(setting.flags)})" if setting.flags else ""
        default = (
            ""
            if setting.default in (None, "", False, ()) or setting.name == "system"
            else f" Default: {shown(setting.default)}."
        )
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
        default = "—" if setting.default in (None, "", False, ()) else f"`{shown(setting.default)}`"
        if setting.name == "system":
            default = "a short, neutral assistant prompt"
        lines.append(f"| `{setting.env}` | {flags} | {default} | {setting.help} |")
    return "\n".join(lines)


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
    local_ports: tuple[int, ...] = (11434, 1234, 8080, 8000)
    telegram_token: str | None = None
    telegram_api_url: str = "https://api.telegram.org"
    telegram_allowed: tuple[str, ...] = ()
    telegram_rate_limit: int = 10
    telegram_db: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    discovered: str | None = None  # "Ollama on port 11434" when zero-config found a server
    warnings: list[str] = field(default_factory=list)  # for the front-end to show: a .env others can read
    notes: list[str] = field(default_factory=list)  # what zero-config chose, for the front-end to say

    @property
    def host(self) -> str:
        return re.sub(r"^https?://", "", self.base_url).split("/")[0]


def is_local_url(url: str) -> bool:
    host = re.sub(r"^https?://", "", url).split("/")[0]
    host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return host in ("localhost", "[::1]", "0.0.0.0") or host.startswith("127.")


def resolve_settings(flags: dict[str, str | None], environ: dict[str, str], dotenv: dict[str, str | None]) -> Settings:
    """Apply the precedence rules and validate every value. Pure: no I/O."""
    settings = Settings()
    for setting in SETTINGS:
        raw, source = flags.get(setting.name), setting.flags[-1] if setting.flags else ""
        if raw is None and setting.env:
            raw, source = environ.get(setting.env), setting.env
            if raw is None:
                raw, source = dotenv.get(setting.env), f"{setting.env} (in .env)"
        if raw is None or (raw == "" and not setting.empty_ok):
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
            "or point OPENAI_BASE_URL at a local server"
        )


def probe_local_servers(ports: Iterable[int], timeout: float = 0.4) -> tuple[str, list[str]] | None:
    """Find a local OpenAI-compatible server; return (base_url, model ids) of the first that answers."""
    import urllib.request

    found: dict[int, tuple[str, list[str]]] = {}

    def probe(port: int) -> None:
        base = f"http://127.0.0.1:{port}/v1"
        try:
            with urllib.request.urlopen(base + "/models", timeout=timeout) as response:
                listing = json.loads(response.read(1_000_000) or b"{}")
            ids = [str(m["id"]) for m in listing.get("data", []) if isinstance(m, dict) and m.get("id")]
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


def load_settings(flags: dict[str, Any], environ: dict[str, str], env_file: str | None = None) -> Settings:
    """Resolve settings from flags, the environment and .env; find a local server if nothing is set."""
    env_path = env_file or ".env"
    dotenv: dict[str, str | None] = {}
    if env_file and os.path.isdir(env_file):
        raise ConfigError(f"--env-file {env_file} is a directory: give the path of a file (such as {env_file}/.env)")
    if env_file and not os.path.isfile(env_file):
        raise ConfigError(f"--env-file {env_file}: no such file")
    if os.path.isfile(env_path):
        from dotenv import dotenv_values

        dotenv = dict(dotenv_values(env_path))
    settings = resolve_settings(flags, environ, dotenv)
    secrets = [name for name in ("OPENAI_API_KEY", "TELEGRAM_BOT_TOKEN") if dotenv.get(name)]
    if secrets and os.name == "posix":
        mode = os.stat(env_path).st_mode & 0o777
        if mode & 0o077:  # as ssh warns of a private key others can read
            settings.warnings.append(
                f"{env_path} holds {' and '.join(secrets)} and other users can read it "
                f"(mode {mode:04o}): run chmod 600 {env_path}"
            )
    from .serverinfo import is_placeholder_key, served_models

    if is_placeholder_key(settings.api_key):  # "ollama", "none", "lm-studio": a local-model guide's stand-in
        settings.api_key = None
    if not settings.api_key and "base_url" not in settings.sources:
        found = probe_local_servers(settings.local_ports) if settings.local_ports else None
        if found:
            settings.base_url, models = found
            settings.discovered = f"a local server at {settings.host}"
            if "model" not in settings.sources and models:
                settings.model = models[0]
                more = f" (the first of {len(models)} it lists; set OPENAI_MODEL to choose)" if len(models) > 1 else ""
                settings.notes.append(
                    f"no key or base URL set: using the local server at {settings.host} and its "
                    f"model {settings.model}{more}"
                )
            else:
                settings.notes.append(f"no key or base URL set: using the local server at {settings.host}")
        elif settings.local_ports:
            tried = ", ".join(str(port) for port in settings.local_ports)
            raise ConfigError(
                f"OPENAI_API_KEY is not set and no local server answered on 127.0.0.1 ports {tried}: "
                f"put the key in .env (see .env.example), start a local server, or set OPENAI_BASE_URL"
            )
    elif "base_url" in settings.sources and "model" not in settings.sources:
        # A base URL and no model: ask for the model the server serves; the cloud default is for the cloud.
        models = served_models(settings.base_url, settings.api_key)
        if len(models) == 1:
            settings.model = models[0]
        elif models and is_local_url(settings.base_url):
            settings.model = models[0]
            settings.notes.append(
                f"no OPENAI_MODEL set: using {settings.model}, the first of {len(models)} models {settings.host} lists"
            )
        elif models:
            shown = ", ".join(models[:6]) + (" …" if len(models) > 6 else "")
            raise ConfigError(
                f"OPENAI_MODEL is not set and {settings.host} serves {len(models)} models ({shown}): "
                f"set OPENAI_MODEL or pass --model"
            )
    check_credentials(settings)
    return settings
