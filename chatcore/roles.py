"""Roles: a named system prompt, with optionally a model and a temperature, shared by both front-ends.

A few roles are built in; more live in one TOML file (`roles.toml` in the user config directory, or
the file `CHATBOT_ROLES` names), each a `[name]` table:

    [pirate]
    system = "Answer as a pirate would."
    model = "openai/gpt-4o-mini"   # optional
    temperature = 1.2              # optional, 0 to 2

A bad file is one line naming the file, the line and the problem (`RolesError`, a `ConfigError`: the
terminal exits 2 with it; the Telegram assistant logs it and goes on with the built-in roles).
The name `default` is reserved: the configured system prompt, model and temperature.
Pure apart from reading the file: nothing here knows a conversation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .settings import ConfigError, Settings

DEFAULT = "default"  # the configured prompt, model and temperature: what /role default goes back to
NAME = re.compile(r"[\w-]{1,32}")  # letters of any alphabet (a quoted TOML key), digits, - and _
KEYS = ("system", "model", "temperature")


class RolesError(ConfigError):
    """The roles file cannot be used, or a role name is unknown; one line saying where and what to do."""


@dataclass(frozen=True)
class Role:
    """A name, a system prompt, and optionally the model and temperature that go with it."""

    name: str
    system: str
    model: str | None = None
    temperature: float | None = None
    origin: str = "built in"  # "built in", the roles file's path, or "configured" for `default`


BUILTIN_ROLES: tuple[Role, ...] = (
    Role("concise", "You are a concise assistant. Answer in as few words as the question allows; no preamble."),
    Role(
        "reviewer",
        "You are a careful code reviewer. Point out bugs, unclear names, missing tests and risky changes, "
        "most important first, each with the line it concerns and a concrete fix.",
        temperature=0.2,
    ),
    Role(
        "translator",
        "You are a translator. Translate what the user writes into English; if it is already English, "
        "into French. Reply with the translation only, keeping the formatting.",
        temperature=0.2,
    ),
)


def default_roles_path() -> str:
    """`roles.toml` in the user config directory (~/.config/chatbot/roles.toml on Linux)."""
    from .files import user_dir

    return os.path.join(user_dir("config"), "roles.toml")


def roles_path(settings: Settings) -> str:
    return settings.roles_file or default_roles_path()


def default_role(settings: Settings) -> Role:
    return Role(DEFAULT, settings.system, settings.model, settings.temperature, origin="configured")


def load_roles(settings: Settings, read_file: bool = True) -> dict[str, Role]:
    """The default role, the built-in ones, then the file's (which may replace a built-in one).
    RolesError if the file is bad, or if CHATBOT_ROLES names a file that is not there."""
    roles = {DEFAULT: default_role(settings), **{role.name: role for role in BUILTIN_ROLES}}
    if not read_file:
        return roles
    path = roles_path(settings)
    text = read_roles_file(path, required=settings.roles_file is not None)
    if text is not None:
        roles.update((role.name, role) for role in parse_roles(text, path))
    return roles


def read_roles_file(path: str, required: bool) -> str | None:
    """The file's text; None when the default file does not exist (no roles of the user's own)."""
    try:
        with open(path, "rb") as file:
            data = file.read(1_000_001)
    except FileNotFoundError:
        if not required:
            return None
        raise RolesError(f"CHATBOT_ROLES={path}: no such file (give the path of a roles.toml)") from None
    except IsADirectoryError:
        raise RolesError(f"{path} is a directory: give the path of a roles.toml file") from None
    except OSError as exc:
        raise RolesError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(data) > 1_000_000:
        raise RolesError(f"{path}: larger than 1 MB; a roles file is a few [name] tables")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RolesError(f"{path}, line {line}: not UTF-8 text") from None


def parse_roles(text: str, path: str) -> list[Role]:
    """The roles a file's text defines, each checked; RolesError naming the line of the first problem."""
    import tomllib

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f", line {found.group(1)}" if found else ""
        problem = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(exc))
        raise RolesError(f"{path}{where}: not valid TOML: {problem}") from None
    return [checked_role(name, table, text, path) for name, table in document.items()]


def checked_role(name: str, table: Any, text: str, path: str) -> Role:
    """One `[name]` table as a Role, or RolesError saying what is wrong with it and on which line."""

    def fail(problem: str, key: str | None = None) -> RolesError:
        return RolesError(f"{path}, line {line_of(text, name, key)}: role {name!r}: {problem}")

    if not isinstance(table, dict):
        raise fail(f'not a table: write it as [{name}] with system = "..." under it')
    if not NAME.fullmatch(name):
        raise fail("a role name is 1 to 32 letters (of any alphabet), digits, - or _")
    if name == DEFAULT:
        raise fail("'default' is reserved (the configured system prompt): pick another name")
    for key in table:
        if key not in KEYS:
            raise fail(f"unknown key {key!r} (a role has system, and optionally model and temperature)", key)
    system = table.get("system")
    if system is None:
        raise fail('no system prompt: add system = "..."')
    if not isinstance(system, str) or not system.strip():
        raise fail("system must be non-empty text in quotes", "system")
    model = table.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise fail("model must be a model name in quotes", "model")
    temperature = table.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise fail("temperature must be a number from 0 to 2", "temperature")
        if not 0 <= temperature <= 2:
            raise fail(f"temperature {temperature} is out of range (0 to 2)", "temperature")
    return Role(
        name, system, model.strip() if model else None, None if temperature is None else float(temperature), path
    )


def line_of(text: str, name: str, key: str | None) -> int:
    """The line of a role's `[name]` header (or `name = {...}`), or of one of its keys after it."""
    quoted = rf"(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')"
    lines = text.splitlines()
    start = next(
        (
            number
            for number, line in enumerate(lines)
            if re.match(rf"\s*\[\s*{quoted}\s*\]", line) or re.match(rf"\s*{quoted}\s*=", line)
        ),
        0,
    )
    if key is not None:
        for number in range(start, len(lines)):
            if number > start and re.match(r"\s*\[", lines[number]):
                break
            if re.search(rf"(^|[\s{{,]){re.escape(key)}\s*=", lines[number]):
                return number + 1
    return start + 1


def find_role(roles: dict[str, Role], name: str, path: str = "") -> Role:
    """The role of that name (case-insensitive), or RolesError listing the names there are."""
    role = roles.get(name) or next((r for n, r in roles.items() if n.lower() == name.lower()), None)
    if role is None:
        where = f" (add your own in {path})" if path else ""
        raise RolesError(f"unknown role {name!r}: the roles are {', '.join(roles)}{where}")
    return role


def current_role(roles: dict[str, Role], system: str) -> Role | None:
    """The role whose prompt the conversation has (the default first); None for instructions of its own."""
    return next((role for role in roles.values() if role.system == system), None)
