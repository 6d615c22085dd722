"""Settings: one table drives flags, validation, `.env.example`, the README and the `Settings` fields.

Loading reads as its steps: read .env -> resolve (flag > environment > .env > default) -> discover
what is missing from what a server says (`serverinfo`) -> check the key.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .serverinfo import is_placeholder_key, probe_local_servers, served_models

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
    expected = f"expected {'an integer' if kind is int else 'a number'}" + (
        f" from {low} to {high}" if high is not None else f" >= {low}" if low is not None else ""
    )

    def parse(value: str) -> Any:
        try:
            number = kind(value.strip())
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):  # nan and inf too: "no limit" is unset, not infinity
            raise ValueError(expected)
        if (low is not None and number < low) or (high is not None and number > high):
            raise ValueError(expected)
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


def _names(value: str) -> tuple[str, ...]:
    """Comma-separated names (models); empty parts are ignored."""
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def _access_list(value: str) -> tuple[str, ...]:
    """Comma-separated user ids, @usernames, (negative) group ids, or *; validated one by one."""
    entries = tuple(part.strip() for part in value.split(",") if part.strip())
    for entry in entries:
        if entry != "*" and not re.fullmatch(r"-?\d+|@[A-Za-z0-9_]{3,32}", entry):
            raise ValueError(f"{entry!r} is not a numeric id, an @username or *")
    return entries


@dataclass(frozen=True)
class Setting:
    """One setting: its `Settings` field, where it is read from, its default, parser and help."""

    name: str
    env: str | None
    flags: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any]
    help: str
    example: str = ""  # value shown in .env.example (commented out when empty)
    empty_ok: bool = False  # an empty value means something (no ports: no probing); else it is ignored
    default_doc: str = ""  # the default in words when its value is too long to show; --help and .env.example omit it
    metavar: str = ""  # the flag's value in --help; empty: the name in capitals (MAX-TOKENS)
    secret: bool = False  # a credential: never a flag (a test checks), and a .env holding it must be private

    def __post_init__(self) -> None:
        if not self.metavar:
            object.__setattr__(self, "metavar", self.name.upper().replace("_", "-"))

    @property
    def shown_default(self) -> str | None:
        """The default as .env, --help and the README write it; None when there is none to show."""
        if self.default_doc or self.default is None or self.default is False or self.default in ("", ()):
            return None
        return shown(self.default)


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
        secret=True,
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
        default_doc="a short, neutral assistant prompt",
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
        "api",
        "OPENAI_API",
        ("--api",),
        "chat",
        _choice("chat", "responses"),
        "which API to speak: chat or responses",
        metavar="{chat,responses}",
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
    # Attachments (see the README's Attachments section): limits, and where voice is transcribed.
    Setting(
        "max_image_mb",
        "CHATBOT_MAX_IMAGE_MB",
        (),
        20.0,
        _number(float, 0.001),
        "largest image that may be attached, in MB (sent as it is, never resized)",
    ),
    Setting(
        "max_file_mb",
        "CHATBOT_MAX_FILE_MB",
        (),
        25.0,
        _number(float, 0.001),
        "largest text, PDF or audio file that may be attached, in MB (text is also trimmed to the window)",
    ),
    Setting(
        "max_attachments_mb",
        "CHATBOT_MAX_ATTACHMENTS_MB",
        (),
        50.0,
        _number(float, 0.001),
        "most MB of attachments one message may carry",
    ),
    Setting(
        "transcribe_model",
        "CHATBOT_TRANSCRIBE_MODEL",
        (),
        "whisper-1",
        _text,
        "speech-to-text model for voice messages (the /audio/transcriptions endpoint)",
    ),
    Setting(
        "transcribe_base_url",
        "CHATBOT_TRANSCRIBE_BASE_URL",
        (),
        None,
        _url,
        "server for transcriptions (default: OPENAI_BASE_URL): OpenAI's, or a local whisper server",
    ),
    Setting(
        "transcribe_api_key",
        "CHATBOT_TRANSCRIBE_API_KEY",
        (),
        None,
        _text,
        "API key for the transcription server (default: OPENAI_API_KEY; never a flag)",
        secret=True,
    ),
    # Roles (see the README's Roles section): a named system prompt, with optionally a model and temperature.
    Setting(
        "role",
        "CHATBOT_ROLE",
        ("--role",),
        None,
        _text,
        "start with this role: its system prompt (and model and temperature, if it sets them)",
        metavar="NAME",
    ),
    Setting(
        "roles_file",
        "CHATBOT_ROLES",
        (),
        None,
        _text,
        "the roles file (default: roles.toml in the user config directory)",
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
        secret=True,
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
        "telegram_admins",
        "TELEGRAM_ADMINS",
        (),
        (),
        _access_list,
        "Telegram assistant: the bot's owners (user ids or @usernames): may change any chat's settings; "
        "exempt from spending caps",
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
        "telegram_models",
        "TELEGRAM_MODELS",
        (),
        (),
        _names,
        "Telegram assistant: the models a chat may switch to with /model (comma-separated); unset means only "
        "OPENAI_MODEL",
    ),
    Setting(
        "telegram_db",
        "TELEGRAM_DB",
        (),
        None,
        _text,
        "Telegram assistant: chat histories database path (default: user data directory)",
    ),
    Setting(
        "telegram_budget_daily",
        "TELEGRAM_BUDGET_DAILY",
        (),
        None,
        _number(float, 0),
        "Telegram assistant: most USD each user may spend a day (UTC), all chats together; unset means no cap",
    ),
    Setting(
        "telegram_budget_monthly",
        "TELEGRAM_BUDGET_MONTHLY",
        (),
        None,
        _number(float, 0),
        "Telegram assistant: most USD each user may spend a calendar month (UTC); unset means no cap",
    ),
    Setting(
        "telegram_budget_daily_tokens",
        "TELEGRAM_BUDGET_DAILY_TOKENS",
        (),
        None,
        _number(int, 0),
        "Telegram assistant: most tokens (input + output) each user may use a day (UTC), the cap for a server "
        "whose prices are unknown; unset means no cap",
    ),
    Setting(
        "telegram_budget_monthly_tokens",
        "TELEGRAM_BUDGET_MONTHLY_TOKENS",
        (),
        None,
        _number(int, 0),
        "Telegram assistant: most tokens (input + output) each user may use a calendar month (UTC); unset means no cap",
    ),
    Setting(
        "telegram_rich",
        "TELEGRAM_RICH",
        (),
        True,
        _parse_bool,
        "Telegram assistant: send replies as rich messages (tables, headings, formulas; the Stop button "
        "while a reply streams) where the Bot API server has them; 0 turns them off",
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
        default = f" Default: {setting.shown_default}." if setting.shown_default else ""
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
        default = f"`{setting.shown_default}`" if setting.shown_default else setting.default_doc or "—"
        lines.append(f"| `{setting.env}` | {flags} | {default} | {setting.help} |")
    return "\n".join(lines)


@dataclass
class Settings:
    """Resolved configuration: one field per row of SETTINGS, in its order, typed here and defaulted
    only there (`resolve_settings` fills every field; a test checks names, order and types agree).
    `sources` says where each value that was set came from."""

    api_key: str | None
    base_url: str
    model: str
    system: str
    temperature: float
    max_tokens: int
    max_messages: int
    context_tokens: int | None
    price_in: float | None
    price_out: float | None
    app_url: str | None
    app_name: str | None
    api: str
    timeout: float
    first_token_timeout: float
    total_timeout: float
    retries: int
    fallback_model: str | None
    db: str | None
    no_save: bool
    summarize: bool
    show_usage: bool
    show_reasoning: bool
    raw: bool
    local_ports: tuple[int, ...]
    max_image_mb: float
    max_file_mb: float
    max_attachments_mb: float
    transcribe_model: str
    transcribe_base_url: str | None
    transcribe_api_key: str | None
    role: str | None
    roles_file: str | None
    telegram_token: str | None
    telegram_api_url: str
    telegram_allowed: tuple[str, ...]
    telegram_admins: tuple[str, ...]
    telegram_rate_limit: int
    telegram_models: tuple[str, ...]
    telegram_db: str | None
    telegram_budget_daily: float | None
    telegram_budget_monthly: float | None
    telegram_budget_daily_tokens: int | None
    telegram_budget_monthly_tokens: int | None
    telegram_rich: bool
    sources: dict[str, str] = field(default_factory=dict)
    discovered: str | None = None  # "a local server at 127.0.0.1:11434" when zero-config found one
    warnings: list[str] = field(default_factory=list)  # for the front-end to show: a .env others can read
    notes: list[str] = field(default_factory=list)  # what zero-config chose, for the front-end to say

    @property
    def host(self) -> str:
        """The server's host and port, for messages: openrouter.ai, 127.0.0.1:11434."""
        return host_of(self.base_url)


def host_of(url: str) -> str:
    """The host (and port) of a URL: http://127.0.0.1:8080/v1 -> 127.0.0.1:8080."""
    return re.sub(r"^https?://", "", url).split("/")[0]


def is_local_url(url: str) -> bool:
    """Whether the URL names this machine (localhost, 127.x, [::1], 0.0.0.0): no key is needed there."""
    host = host_of(url)
    host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return host in ("localhost", "[::1]", "0.0.0.0") or host.startswith("127.")


def resolve_settings(
    flags: Mapping[str, str | None], environ: Mapping[str, str], dotenv: Mapping[str, str | None]
) -> Settings:
    """Apply the precedence rules and validate every value. Pure: no I/O."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        values[setting.name] = setting.default
        raw, source = flags.get(setting.name), setting.flags[-1] if setting.flags else ""
        if raw is None and setting.env:
            raw, source = environ.get(setting.env), setting.env
            if raw is None:
                raw, source = dotenv.get(setting.env), f"{setting.env} (in .env)"
        if raw is None or (raw == "" and not setting.empty_ok):
            continue
        try:
            values[setting.name] = setting.parse(raw) if not isinstance(raw, bool) else raw
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r} is not valid: {exc}") from None
        sources[setting.name] = source
    return Settings(**values, sources=sources)


def check_credentials(settings: Settings) -> None:
    """A remote server needs a key: ConfigError saying where to put it, if there is none."""
    if not settings.api_key and not is_local_url(settings.base_url):
        raise ConfigError(
            "OPENAI_API_KEY is not set: put it in .env (see .env.example) or the environment, "
            "or point OPENAI_BASE_URL at a local server"
        )


# -- loading: read .env -> resolve -> discover what is missing -> check ------------


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str], env_file: str | None = None) -> Settings:
    """Resolve settings from flags, the environment and .env; find a local server if nothing is set."""
    env_path = env_file or ".env"
    dotenv = read_env_file(env_path, required=bool(env_file))
    settings = resolve_settings(flags, environ, dotenv)
    settings = replace(settings, warnings=exposed_secrets(env_path, dotenv))
    settings = discover_missing(settings)
    check_credentials(settings)
    return settings


def read_env_file(path: str, required: bool) -> dict[str, str | None]:
    """The variables in a .env file; none if it does not exist, unless it was asked for (--env-file)."""
    if required and os.path.isdir(path):
        raise ConfigError(f"--env-file {path} is a directory: give the path of a file (such as {path}/.env)")
    if required and not os.path.isfile(path):
        raise ConfigError(f"--env-file {path}: no such file")
    if not os.path.isfile(path):
        return {}
    from dotenv import dotenv_values

    return dict(dotenv_values(path))


def exposed_secrets(env_path: str, dotenv: Mapping[str, str | None]) -> list[str]:
    """A warning if the .env file holds a secret and other users can read it, as ssh warns of a private key."""
    secrets = [s.env for s in SETTINGS if s.secret and s.env and dotenv.get(s.env)]
    if not secrets or os.name != "posix":
        return []
    mode = os.stat(env_path).st_mode & 0o777
    if not mode & 0o077:
        return []
    return [
        f"{env_path} holds {' and '.join(secrets)} and other users can read it "
        f"(mode {mode:04o}): run chmod 600 {env_path}"
    ]


def discover_missing(settings: Settings) -> Settings:
    """Zero-config: what was not set, filled in from what a server says (at most one round of asking)."""
    if is_placeholder_key(settings.api_key):  # "ollama", "none", "lm-studio": a local-model guide's stand-in
        settings = replace(settings, api_key=None)
    if not settings.api_key and "base_url" not in settings.sources:
        return use_local_server(settings)
    if "base_url" in settings.sources and "model" not in settings.sources:
        return use_served_model(settings)
    return settings


def use_local_server(settings: Settings) -> Settings:
    """No key and no base URL: the first local server answering on `local_ports`, and its first model if none is set."""
    if not settings.local_ports:  # probing is off: check_credentials says the key is missing
        return settings
    found = probe_local_servers(settings.local_ports)
    if found is None:
        tried = ", ".join(str(port) for port in settings.local_ports)
        raise ConfigError(
            f"OPENAI_API_KEY is not set and no local server answered on 127.0.0.1 ports {tried}: "
            f"put the key in .env (see .env.example), start a local server, or set OPENAI_BASE_URL"
        )
    host = host_of(found.base_url)
    using = f"no key or base URL set: using the local server at {host}"
    settings = replace(settings, base_url=found.base_url, discovered=f"a local server at {host}")
    if "model" in settings.sources or not found.models:
        return replace(settings, notes=[*settings.notes, using])
    count = len(found.models)
    more = f" (the first of {count} it lists; set OPENAI_MODEL to choose)" if count > 1 else ""
    model = found.models[0]
    return replace(settings, model=model, notes=[*settings.notes, f"{using} and its model {model}{more}"])


def use_served_model(settings: Settings) -> Settings:
    """A base URL and no model: the model the server serves (the cloud default is for the cloud)."""
    models = served_models(settings.base_url, settings.api_key)
    if len(models) == 1:
        return replace(settings, model=models[0])
    if models and is_local_url(settings.base_url):
        note = f"no OPENAI_MODEL set: using {models[0]}, the first of {len(models)} models {settings.host} lists"
        return replace(settings, model=models[0], notes=[*settings.notes, note])
    if models:
        listed = ", ".join(models[:6]) + (" …" if len(models) > 6 else "")
        raise ConfigError(
            f"OPENAI_MODEL is not set and {settings.host} serves {len(models)} models ({listed}): "
            f"set OPENAI_MODEL or pass --model"
        )
    return settings  # the server does not say: the model stays as set
