"""Each Telegram chat its own assistant: which models a chat may pick, who may change a chat's
settings, and the inline buttons (/model, /role, 🔄) with their callback data.

Pure apart from building the buttons (python-telegram-bot's classes, imported when first needed):
the handlers in telegram_bot.py ask here and do what the answer says. Callback data stays far
under Telegram's 64-byte limit: a model travels as a short hash of its name (names can be long),
a role by its name (at most 32 characters), a retry by the history row of the reply it redoes.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

from chatcore.roles import Role
from chatcore.settings import Settings

CALLBACK_LIMIT = 64  # bytes: Telegram refuses a button whose callback data is longer
RETRY_BUTTON = "🔄"
CHANGERS = ("creator", "administrator")  # getChatMember statuses that may change a group's settings


def allowed_models(settings: Settings) -> tuple[str, ...]:
    """The configured model, then TELEGRAM_MODELS: what a chat may switch to (unset: only the configured one)."""
    return tuple(dict.fromkeys((settings.model, *settings.telegram_models)))


def find_model(allowed: tuple[str, ...], name: str) -> str | None:
    """The allowed model of that name (exactly, else ignoring case), or None."""
    if name in allowed:
        return name
    return next((model for model in allowed if model.lower() == name.lower()), None)


def is_owner(owners: tuple[str, ...], user_id: int | None, username: str | None) -> bool:
    """TELEGRAM_ADMINS: user ids or @usernames (the bot's owners)."""
    names = {entry[1:].lower() for entry in owners if entry.startswith("@")}
    ids = {int(entry) for entry in owners if re.fullmatch(r"-?\d+", entry)}
    return (user_id is not None and user_id in ids) or bool(username and username.lower() in names)


# -- callback data ----------------------------------------------------------------


class Press(NamedTuple):
    """A button press: what kind ("model", "role", "retry") and for what."""

    kind: str
    value: str


def model_token(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()[:12]


def model_data(model: str) -> str:
    return f"model:{model_token(model)}"


def role_data(role: str) -> str:
    """A role by its name, or by a hash of it when the name is too long for the data (32 Cyrillic
    letters are 64 bytes)."""
    data = f"role:{role}"
    return data if len(data.encode()) <= CALLBACK_LIMIT else f"role:#{model_token(role)}"


def role_of_data(roles: dict[str, Role], value: str) -> Role | None:
    """The role a role button stands for (None: no longer offered)."""
    if not value.startswith("#"):
        return roles.get(value)
    return next((role for name, role in roles.items() if model_token(name) == value[1:]), None)


def retry_data(row_id: int) -> str:
    return f"retry:{row_id}"


def parse_press(data: str | None) -> Press | None:
    """The press a button's callback data stands for; None for data this bot never wrote."""
    kind, _, value = (data or "").partition(":")
    if kind not in ("model", "role", "retry") or not value:
        return None
    if kind == "retry" and not value.isdigit():
        return None
    return Press(kind, value)


def model_of_token(allowed: tuple[str, ...], token: str) -> str | None:
    """The allowed model a model button stands for (None: no longer offered)."""
    return next((model for model in allowed if model_token(model) == token), None)


# -- buttons ----------------------------------------------------------------------


def keyboard(rows: list[list[tuple[str, str]]]) -> Any:
    """An inline keyboard of (label, callback data) buttons."""
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    for row in rows:
        for _, data in row:
            assert len(data.encode()) <= CALLBACK_LIMIT, data
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(label, callback_data=data) for label, data in row] for row in rows]
    )


def in_rows(buttons: list[tuple[str, str]], per_row: int) -> list[list[tuple[str, str]]]:
    return [buttons[start : start + per_row] for start in range(0, len(buttons), per_row)]


def model_keyboard(allowed: tuple[str, ...], current: str) -> Any:
    """One button per allowed model, the current one ticked."""
    return keyboard([[(("✓ " if model == current else "") + model, model_data(model))] for model in allowed])


def role_keyboard(roles: dict[str, Role], current: Role | None) -> Any:
    """The roles, two a row, the current one ticked."""
    buttons = [(("✓ " if role is current else "") + name, role_data(name)) for name, role in roles.items()]
    return keyboard(in_rows(buttons, 2))


def retry_keyboard(row_id: int) -> Any:
    """The 🔄 button under a finished reply: regenerate it."""
    return keyboard([[(RETRY_BUTTON, retry_data(row_id))]])
