#!/usr/bin/env python3
"""telegram_bot: the chapter's capstone, a Telegram assistant on the same engine as the terminal chat.

Each Telegram chat (each forum topic) is one conversation:

    message -> inbox (SQLite) -> history (trimmed) -> model call -> reply streamed into the chat -> saved -> repeat

In reading order: who may talk to it -> sending to Telegram (flood control, chats that cannot be
written to, retries) -> showing a reply while it is written -> one conversation's turn -> the
handlers and the command table -> main(), where the whole bot is wired. The engine (`chatcore`)
does settings, trimming, the provider, usage, sessions and the inbox; python-telegram-bot does
polling and the Bot API.

Nothing is lost: python-telegram-bot confirms updates to Telegram (the next getUpdates offset)
long before they are answered, so every message is written to the inbox before that confirmation
is sent, settled once answered, and handed back in order on the next start if it was not.

Files (photos, albums, documents, voice) are the engine's attachments: after the gate and the rate
limit, they are fetched with getFile in the message's own turn (so in order), voice is transcribed
and shown back, and a photo update replays after a crash like a text one (downloaded again).

The engine is synchronous and fast (it parses the raw stream itself), so each turn runs in a
worker thread of a pool sized for dozens of chats, while the event loop paces what Telegram sees.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from chatcore import __version__, files
from chatcore.attachments import Attachment, AttachmentError, Kind, TranscriptionError, load_attachment
from chatcore.budget import Budget, OverBudget, Payer
from chatcore.chat import Chat, Refused
from chatcore.conversation import PromptTooLarge
from chatcore.inbox import DatabaseInUse, Inbox, lock_database
from chatcore.log import redact
from chatcore.provider import Failure, Provider
from chatcore.roles import DEFAULT, Role, RolesError, current_role, find_role, load_roles
from chatcore.settings import ConfigError, Settings, check_credentials, load_settings
from chatcore.store import SessionStore, StoreError
from chatcore.streams import TEXT
from chatcore.tokens import estimate_tokens
from chatcore.turn import Cancel, Outcome, TurnResult
from telegram_choices import (
    CHANGERS,
    allowed_models,
    find_model,
    is_owner,
    model_keyboard,
    model_of_token,
    parse_press,
    retry_keyboard,
    role_keyboard,
    role_of_data,
)
from telegram_render import Drafts, Part, split_message, to_telegram, utf16_len
from telegram_rich import (
    Capability,
    RichDrafts,
    RichRefused,
    Stop,
    Stops,
    draft_call,
    final_message,
    is_missing,
    rich_edit,
    split_rich,
    stop_of,
    thinking_message,
)

if TYPE_CHECKING:  # telegram is imported where first used: start-up (and --help) stays fast
    from telegram import Message, Update
    from telegram.ext import Application, ContextTypes

log = logging.getLogger("chatbot.telegram")
T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# A conversation is a chat, or one forum topic of it: (chat id, topic thread id or None).
Key = tuple[int, int | None]


def key_of(message: Message) -> Key:
    """Which conversation a message belongs to: its topic's own, or the chat's (General included)."""
    thread = message.message_thread_id if message.is_topic_message else None
    return message.chat.id, thread if thread not in (None, 1) else None


def conversation_name(key: Key) -> str:
    chat_id, thread = key
    return f"{chat_id}" if thread is None else f"{chat_id}:{thread}"


def session_name(key: Key) -> str:
    chat_id, thread = key
    return f"telegram-{chat_id}" if thread is None else f"telegram-{chat_id}-topic-{thread}"


def in_thread(thread: int | None) -> dict[str, Any]:
    """The keyword every call for a topic carries; none for General or a chat without topics."""
    return {"message_thread_id": thread} if thread else {}


# ---------------------------------------------------------------------------
# Who may talk to it, and how often
# ---------------------------------------------------------------------------


def is_allowed(entries: tuple[str, ...], user_id: int | None, username: str | None, chat_id: int) -> bool:
    """TELEGRAM_ALLOWED_USERS: user ids, @usernames, group ids (every member), or * (everyone)."""
    if "*" in entries:
        return True
    ids = {int(entry) for entry in entries if re.fullmatch(r"-?\d+", entry)}
    names = {entry[1:].lower() for entry in entries if entry.startswith("@")}
    if user_id is not None and user_id in ids:
        return True
    if username and username.lower() in names:
        return True
    return chat_id < 0 and chat_id in ids


def stranger_text(user_id: int | None) -> str:
    return (
        "Sorry, this assistant is private.\n"
        f"Your Telegram user id is {user_id}. To let you in, its owner adds that number to "
        "TELEGRAM_ALLOWED_USERS and restarts it."
    )


STRANGER_NOTE_EVERY = 3600.0  # seconds: a stranger is told their id once an hour at most


class RateLimiter:
    """At most `per_minute` messages from one sender in any 60 seconds; one note per limit window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.sent: dict[int, collections.deque[float]] = {}
        self.noted_until: dict[int, float] = {}

    def wait(self, sender: int) -> float:
        """0 if the message may go now (and it is counted), else the seconds until it may."""
        now = self.clock()
        recent = self.sent.setdefault(sender, collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if not recent:
            self.noted_until.pop(sender, None)
        if len(self.sent) > 10_000:  # senders idle for a minute are forgotten
            for idle in [s for s, times in self.sent.items() if not times and s != sender]:
                del self.sent[idle]
        if len(recent) >= self.per_minute:
            return recent[0] + 60 - now
        recent.append(now)
        return 0.0

    def should_note(self, sender: int, wait: float) -> bool:
        """A sender over the limit is told once per window, not once per message."""
        now = self.clock()
        if self.noted_until.get(sender, 0.0) > now:
            return False
        self.noted_until[sender] = now + wait
        return True


# ---------------------------------------------------------------------------
# Sending to Telegram: flood control per chat, chats that cannot be written to, retries
# ---------------------------------------------------------------------------

STREAM_INTERVAL = {"draft": 0.35, "edit": 1.0, "group": 3.0}  # seconds between updates of one reply
TYPING_EVERY = 4.0  # "typing…" lasts 5 s
GROUP_PER_MINUTE = 20  # Telegram's limit for one group
CHAT_BURST, CHAT_PER_SECOND = 2.0, 1.0  # messages and edits to one chat: a short burst, then one a second
FINAL_ATTEMPTS = 8  # a finished reply is retried through network errors and 5xx, with backoff
NO_RIGHTS = re.compile(r"not enough rights|have no rights|chat_write_forbidden|need administrator rights", re.I)


def seconds(value: Any) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


class Pace:
    """About 30 messages a second across all chats (Telegram's broadcast limit), as a token bucket.

    Finished replies wait for a token; a streaming update takes one only while a reserve is left for
    them, and is otherwise skipped (the next update carries the same text and more)."""

    def __init__(self, per_second: float = 30.0, reserve: float = 10.0):
        self.rate, self.capacity, self.reserve = per_second, per_second, reserve
        self.tokens, self.updated = per_second, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_take(self) -> bool:
        self._refill()
        if self.tokens >= self.reserve + 1:
            self.tokens -= 1
            return True
        return False

    async def take(self) -> None:
        self._refill()
        while self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) / self.rate)
            self._refill()
        self.tokens -= 1


class Line:
    """Everything the bot sends to one chat goes through here (one per chat, its topics share it).

    After a 429 nothing is sent to this chat before `retry_after` has passed, and a waiting call looks
    again when it wakes (another may have been told to wait meanwhile); other chats go on. Each chat
    also gets at most a short burst and then about one message or edit a second, so Telegram's limit
    is not reached in the first place. "Message is not modified" is ignored. A chat that cannot be
    written to (403: blocked or removed; 400: no right to write) is `closed` until it can again; a
    group that became a supergroup moves to its new id; an essential call (a finished reply) is
    retried through network errors and 5xx with backoff; a streaming update that fails is skipped.
    """

    def __init__(self, chat_id: int, pace: Pace, on_migrate: Callable[[int, int], None]):
        self.chat_id = chat_id
        self.pace = pace
        self.on_migrate = on_migrate
        self.not_before = 0.0
        self.closed: str | None = None  # why the chat cannot be written to: "blocked" or "muted"
        self.stopping = False
        self.tokens, self.counted = CHAT_BURST, time.monotonic()
        self.recent: collections.deque[float] = collections.deque()  # a group's messages and edits, last 60 s

    def reopen(self, why: str) -> None:
        if self.closed is not None:
            log.info("chat=%s can be written to again (%s)", self.chat_id, why)
        self.closed = None

    def idle(self) -> bool:
        return self.closed is None and self.not_before <= time.monotonic() and not self.recent

    def _room(self) -> float:
        """Seconds until one more message or edit may go to this chat (0: now)."""
        now = time.monotonic()
        self.tokens = min(CHAT_BURST, self.tokens + (now - self.counted) * CHAT_PER_SECOND)
        self.counted = now
        wait = 0.0 if self.tokens >= 1 else (1 - self.tokens) / CHAT_PER_SECOND
        if self.chat_id < 0:
            while self.recent and self.recent[0] <= now - 60:
                self.recent.popleft()
            if len(self.recent) >= GROUP_PER_MINUTE:
                wait = max(wait, self.recent[0] + 60 - now)
        return wait

    def _count(self) -> None:
        self.tokens -= 1
        if self.chat_id < 0:
            self.recent.append(time.monotonic())

    async def send(self, call: Callable[[int], Awaitable[T]], essential: bool, counts: bool = True) -> T | None:
        """Make one call to this chat; None when it was skipped, refused or the chat is closed."""
        from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter

        attempt = 0
        while self.closed is None:
            wait = max(self.not_before - time.monotonic(), self._room() if counts else 0.0)
            if wait > 0:
                if not essential or (self.stopping and wait > 1.0):  # shutting down: no long waits
                    return None
                await asyncio.sleep(wait)
                continue  # look again: the window may have been lengthened meanwhile
            if counts:
                self._count()
                if essential:
                    await self.pace.take()
                elif not self.pace.try_take():
                    return None
            try:
                return await call(self.chat_id)
            except RetryAfter as exc:
                delay = seconds(exc.retry_after)
                self.not_before = max(self.not_before, time.monotonic() + delay)
                log.warning("chat=%s flood control: nothing sent to it for %.0fs", self.chat_id, delay)
                if not essential:
                    return None
            except Forbidden as exc:
                self.close("blocked", exc.message)
            except ChatMigrated as exc:
                old, self.chat_id = self.chat_id, exc.new_chat_id
                self.on_migrate(old, exc.new_chat_id)
            except BadRequest as exc:
                if "not modified" in exc.message.lower():
                    return None
                if NO_RIGHTS.search(exc.message):
                    self.close("muted", exc.message)
                elif "chat not found" in exc.message.lower():
                    self.close("blocked", exc.message)
                elif essential:
                    raise
                else:  # a streaming update that failed is skipped, like one that was rate-limited
                    log.info("chat=%s streaming update refused (%s): skipped", self.chat_id, exc.message)
                    return None
            except NetworkError as exc:  # timeouts, connection errors and 5xx
                attempt += 1
                if not essential or attempt >= FINAL_ATTEMPTS or self.stopping:
                    log.warning("chat=%s send failed (%s)", self.chat_id, exc.message)
                    return None
                await asyncio.sleep(min(20.0, 0.5 * 2**attempt))
        return None

    def close(self, why: str, description: str) -> None:
        self.closed = why
        log.warning("chat=%s cannot be written to (%s): skipped until that changes", self.chat_id, description)


# ---------------------------------------------------------------------------
# Showing a reply while it is written
# ---------------------------------------------------------------------------


class ReplyBuffer:
    """The reply's text as the engine's worker thread streams it in."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def on_event(self, kind: str, text: str) -> None:
        if kind is TEXT:
            self.parts.append(text)  # one list append: safe to read from the event loop's thread

    def text(self) -> str:
        return "".join(self.parts)


def entities_for(part: Part, bot: Any) -> list[Any] | None:
    from telegram import MessageEntity

    return [MessageEntity.de_json(entity, bot) for entity in part.entities] or None


THINKING_EVERY = 20.0  # a draft is a 30-second preview: the thinking block is shown again this often
RICH_DRAFT_REFUSALS = 3  # rich drafts Telegram refused (400) before this reply streams the way drafts did before


class ReplyView:
    """One reply in one conversation: "typing…" until the first words, then the text as it grows
    (a draft in private chats, else one edited message), then the finished, formatted message(s).
    Every call carries the topic's thread id, if the conversation is a topic.

    Where the Bot API server has rich messages (`rich`, learned from its answers), a private chat's
    draft is a rich one (a thinking block until the first words, with Telegram's Stop button, which
    `stops` hears of) and the finished reply is sent as rich messages, in groups too; whatever
    Telegram refuses of that goes the entities path, the same text, never twice."""

    def __init__(
        self,
        bot: Any,
        state: ChatState,
        private: bool,
        reply_to: int | None,
        resume: int | None = None,
        on_message: Callable[[int], None] = lambda _message_id: None,
        rich: Capability | None = None,
        stops: Stops | None = None,
    ):
        """`resume`: a message an earlier run streamed this reply into (a crash cut it): the reply
        replaces its text. `on_message` hears of the message a reply streams into, when it is sent."""
        self.bot, self.line, self.state = bot, state.line, state
        self.on_message = on_message
        self.thread = state.key[1]
        self.rich, self.stops = rich, stops
        self.refused_drafts = 0
        self.mode = "draft" if private and state.drafts_work else "edit"
        if private and rich is not None and rich.drafts and stops is not None:
            self.mode = "rich"
        self.interval = STREAM_INTERVAL["draft" if self.mode in ("draft", "rich") else "edit" if private else "group"]
        self.draft_id = random.randint(1, 2**31 - 1)
        self.reply_to = reply_to
        self.message_id: int | None = resume  # the streamed message, in edit mode
        self.shown = ""
        self.last_sent: int | None = None  # the finished reply's last message
        self.drafts = Drafts()  # the reply so far, converted a finished block at a time
        self.rich_drafts = RichDrafts()  # the same, as rich drafts: the settled units converted once

    def _reply_parameters(self, reply_to: int | None) -> Any:
        from telegram import ReplyParameters

        return ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None

    async def follow(self, turn: asyncio.Future[Any], buffer: ReplyBuffer, cancel: Cancel) -> None:
        """Until the turn ends: typing while nothing is written, updates at the chat's pace after.
        A chat that can no longer be written to stops the turn: no more credit is spent on it. While
        a rich draft is shown, its Stop button stops the turn too."""
        stop = Stop(self.line.chat_id, self.thread, self.draft_id)
        if self.stops is not None and self.mode == "rich":
            self.stops.shown(stop, cancel)
        try:
            await self._follow(turn, buffer, cancel)
        finally:
            if self.stops is not None:
                self.stops.gone(stop)

    async def _follow(self, turn: asyncio.Future[Any], buffer: ReplyBuffer, cancel: Cancel) -> None:
        from telegram.constants import ChatAction

        typed_at = updated_at = -1e9
        while not turn.done():
            if self.line.closed is not None:
                cancel.set()
            now = time.monotonic()
            text = buffer.text()
            if not text.strip() and self.mode == "rich":
                if now - typed_at >= THINKING_EVERY:
                    typed_at = now
                    await self.line.send(
                        functools.partial(self._rich_draft, rich_message=thinking_message()),
                        essential=False,
                        counts=False,
                    )
                    if self.mode != "rich":  # the server has no rich drafts: "typing…" instead, now
                        typed_at = -1e9
            elif not text.strip():
                if now - typed_at >= TYPING_EVERY:
                    typed_at = now
                    await self.line.send(
                        lambda chat: self.bot.send_chat_action(chat, ChatAction.TYPING, **in_thread(self.thread)),
                        essential=False,
                        counts=False,
                    )
            elif now - updated_at >= self.interval and text != self.shown:
                await self.update(text)
                updated_at = time.monotonic()  # from the answer: the next update reaches Telegram an interval later
            await asyncio.wait({turn}, timeout=0.1)

    async def update(self, text: str) -> None:
        """Show the reply so far, formatted: its last message-sized part if it is already long."""
        if self.mode == "rich":
            await self.line.send(
                functools.partial(self._rich_draft, rich_message=self.rich_drafts.message(text)),
                essential=False,
                counts=False,
            )
            if self.mode == "rich":
                self.shown = text
                return
        part = self.drafts.part(text)  # the last message-sized part; `text` is not blank
        if self.mode == "draft":
            await self.line.send(functools.partial(self._draft, part=part), essential=False, counts=False)
        elif self.message_id is None:
            message = await self.line.send(
                lambda chat: self.bot.send_message(
                    chat,
                    part.text,
                    entities=entities_for(part, self.bot),
                    reply_parameters=self._reply_parameters(self.reply_to),
                    **in_thread(self.thread),
                ),
                essential=False,
            )
            self.message_id = message.message_id if message is not None else None
            if self.message_id is not None:
                self.on_message(self.message_id)
        else:
            await self.line.send(functools.partial(self._edit, part=part), essential=False)
        self.shown = text

    async def _draft(self, chat_id: int, part: Part) -> None:
        from telegram.error import BadRequest

        try:
            await self.bot.send_message_draft(
                chat_id, self.draft_id, part.text, entities=entities_for(part, self.bot), **in_thread(self.thread)
            )
        except BadRequest as exc:
            if not re.search(r"not available|not found|unknown method|not supported", exc.message, re.I):
                raise  # one refused update: skipped (by Line), the next one is tried
            log.info("chat=%s drafts refused (%s): streaming by editing a message", chat_id, exc.message)
            self.state.drafts_work = False
            self.mode, self.interval = "edit", STREAM_INTERVAL["edit"]

    async def _rich_draft(self, chat_id: int, rich_message: dict[str, Any]) -> None:
        """One rich draft update; a server without rich drafts sends this reply, and every later one,
        the way drafts went before them."""
        from telegram.error import BadRequest

        assert self.rich is not None
        try:
            await self.bot.do_api_request(
                "sendRichMessageDraft", api_kwargs=draft_call(chat_id, self.draft_id, self.thread, rich_message)
            )
        except Exception as exc:
            if is_missing(exc):
                self.rich.lacks("drafts", "sendRichMessageDraft", str(exc))
            elif isinstance(exc, BadRequest) and not NO_RIGHTS.search(exc.message):
                self.refused_drafts += 1
                if self.refused_drafts < RICH_DRAFT_REFUSALS:
                    raise  # one refused update: skipped (by Line), the next one is tried
                log.info("chat=%s rich drafts refused (%s): this reply streams as before", chat_id, exc.message)
            else:
                raise
            self.mode = "draft" if self.state.drafts_work else "edit"
            self.interval = STREAM_INTERVAL[self.mode]

    async def _edit(self, chat_id: int, part: Part) -> None:
        """One streaming edit; a message that is gone (deleted by an admin) is forgotten, and the next
        update starts a new one."""
        from telegram.error import BadRequest

        try:
            await self.bot.edit_message_text(
                part.text, chat_id=chat_id, message_id=self.message_id, entities=entities_for(part, self.bot)
            )
        except BadRequest as exc:
            if "not found" not in exc.message.lower() and "message_id_invalid" not in exc.message.lower():
                raise
            log.info("chat=%s the streamed message is gone (%s): a new one follows", chat_id, exc.message)
            self.message_id = None

    async def finish(self, markdown: str, reply_markup: Any = None) -> int:
        """Send the finished reply as real messages: rich ones where the server has them, else text with
        entities (what Telegram refused as rich, from the part it refused on); `reply_markup` goes under
        the last message. Returns how many were delivered."""
        delivered = 0
        if self.rich is not None and self.rich.messages:
            delivered, markdown = await self._finish_rich(markdown, reply_markup)
            if not markdown:
                return delivered
        return delivered + await self._finish_entities(markdown, reply_markup)

    async def _finish_rich(self, markdown: str, reply_markup: Any) -> tuple[int, str]:
        """The reply as rich messages: how many were delivered, and the Markdown Telegram refused to
        take as rich messages ('' when it took it all). Only a refusal moves a part to the entities
        path: a part whose fate is unknown (a timeout) is retried as it was, so none is sent twice."""
        assert self.rich is not None
        if self.message_id is not None and not self.rich.edits:
            return 0, markdown  # the streamed message takes the reply, and this server cannot make it rich
        parts = split_rich(markdown) or ["(empty reply)"]
        delivered = 0
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            try:
                sent = await self.line.send(
                    functools.partial(self._post_rich, part=part, reply_markup=reply_markup if last else None),
                    essential=True,
                )
            except RichRefused:
                return delivered, "\n\n".join(parts[index:])
            delivered += sent is not None
        return delivered, ""

    async def _post_rich(self, chat_id: int, part: str, reply_markup: Any) -> Any:
        """One rich message: into the streamed message if there is one (a group's), else a new one (the
        first replying to the user's message). Telegram's refusal raises RichRefused; a chat that cannot
        be written to, a 429 or a network error are Line's, as for any message."""
        call: dict[str, Any] = {"chat_id": chat_id, "rich_message": final_message(part)}
        if reply_markup is not None:
            call["reply_markup"] = reply_markup
        edit_id = self.message_id
        try:
            if edit_id is not None:
                result = await rich_edit(self.bot, call | {"message_id": edit_id})
            else:
                reply = self._reply_parameters(self.reply_to)
                call |= in_thread(self.thread) | ({"reply_parameters": reply} if reply else {})
                result = await self.bot.do_api_request("sendRichMessage", api_kwargs=call)
        except Exception as exc:
            if edit_id is not None and "not modified" in getattr(exc, "message", "").lower():
                self.message_id = self.reply_to = None
                self.last_sent = edit_id
                return True  # the message already shows this part (an earlier try whose answer was lost)
            if self._refused(exc, chat_id, edit_id):
                return await self._post_rich(chat_id, part, reply_markup)  # the streamed message is gone
            raise
        self.message_id = self.reply_to = None  # the parts after the first are new messages of their own
        self.last_sent = result.get("message_id") if isinstance(result, dict) else edit_id  # where 🔄 goes
        return result

    def _refused(self, exc: Exception, chat_id: int, edit_id: int | None) -> bool:
        """Sort a rich call's failure: True to send the part anew (the streamed message is gone); raises
        RichRefused for Telegram's refusal; False for what Line handles (429, no rights, network)."""
        from telegram.error import BadRequest

        assert self.rich is not None
        description = getattr(exc, "message", str(exc))
        if is_missing(exc):
            self.rich.lacks("edits" if edit_id is not None else "messages", "rich messages", description)
            raise RichRefused(description) from exc
        if not isinstance(exc, BadRequest) or NO_RIGHTS.search(description) or "chat not found" in description.lower():
            return False
        lowered = description.lower()
        if edit_id is not None and "text is empty" in lowered:  # a server that ignores rich_message in edits
            self.rich.lacks("edits", "rich edits (editMessageText with rich_message)", description)
        elif edit_id is not None and ("not found" in lowered or "can't be edited" in lowered):
            log.info("chat=%s the streamed message cannot take the reply (%s): sent anew", chat_id, description)
            self.message_id = None
            return True
        log.info("chat=%s rich message refused (%s): this reply goes as text with entities", chat_id, description)
        raise RichRefused(description) from exc

    async def _finish_entities(self, markdown: str, reply_markup: Any) -> int:
        """The reply as text messages with entities, formatted; returns how many were delivered."""
        from telegram.error import BadRequest

        parts = split_message(to_telegram(markdown)) or [Part("(empty reply)")]
        delivered = 0
        for index, part in enumerate(parts):
            first = index == 0
            try:
                sent = await self.line.send(
                    functools.partial(
                        self._post,
                        part=part,
                        edit_id=self.message_id if first else None,
                        reply_to=self.reply_to if first else None,
                        reply_markup=reply_markup if index == len(parts) - 1 else None,
                    ),
                    essential=True,
                )
            except BadRequest as exc:
                log.warning("chat=%s part %d of a reply refused: %s", self.line.chat_id, index + 1, exc.message)
                continue
            delivered += sent is not None
            self.last_sent = getattr(sent, "message_id", self.message_id if first else None)
        return delivered

    async def _post(
        self, chat_id: int, part: Part, edit_id: int | None, reply_to: int | None, reply_markup: Any = None
    ) -> Any:
        """One message with its entities; as plain text if Telegram rejects the formatting; as a new
        message if the one it was streamed into is gone."""
        from telegram.error import BadRequest

        async def post(entities: list[Any] | None, edit_id: int | None) -> Any:
            if edit_id is not None:
                return await self.bot.edit_message_text(
                    part.text, chat_id=chat_id, message_id=edit_id, entities=entities, reply_markup=reply_markup
                )
            return await self.bot.send_message(
                chat_id,
                part.text,
                entities=entities,
                reply_parameters=self._reply_parameters(reply_to),
                reply_markup=reply_markup,
                **in_thread(self.thread),
            )

        entities = entities_for(part, self.bot)
        try:
            return await post(entities, edit_id)
        except BadRequest as exc:
            text = exc.message.lower()
            if entities and ("entit" in text or "parse" in text):
                log.info("chat=%s formatting rejected (%s): sent as plain text", chat_id, exc.message)
                return await self._post(chat_id, Part(part.text), edit_id, reply_to, reply_markup)
            if edit_id is not None and "not modified" in text:
                return True  # the streamed message already shows the whole reply: it is delivered
            if edit_id is not None:  # the streamed message is gone, or cannot be edited: the reply is still owed
                log.info("chat=%s the streamed message cannot take the reply (%s): sent anew", chat_id, exc.message)
                self.message_id = None
                return await self._post(chat_id, part, None, self.reply_to, reply_markup)
            raise


# ---------------------------------------------------------------------------
# One conversation: its history, its line to Telegram, one reply at a time
# ---------------------------------------------------------------------------

PASTE_PART = 3500  # UTF-16 units: a message this long may be one part of a paste the client split
PASTE_WAIT = 2.0  # seconds to wait for the next part of a paste


@dataclass
class Paste:
    """A long paste arriving as several messages from one sender: one turn once all parts are in."""

    sender: int
    texts: list[str]
    update_ids: list[int]
    last_long: bool = True
    more: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, text: str, update_id: int) -> None:
        self.texts.append(text)
        self.update_ids.append(update_id)
        self.last_long = utf16_len(text) >= PASTE_PART
        self.more.set()

    async def gather(self) -> None:
        """Until a short part ends the paste, or no part has come for PASTE_WAIT seconds."""
        while self.last_long:
            self.more.clear()
            try:
                await asyncio.wait_for(self.more.wait(), PASTE_WAIT)
            except TimeoutError:
                return


@dataclass
class ChatState:
    key: Key
    chat: Chat
    line: Line
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one turn at a time, in arrival order
    cancel: Cancel | None = None  # the turn in progress, if any
    drafts_work: bool = True
    answers: asyncio.Lock = field(default_factory=asyncio.Lock)  # command answers leave in the order asked
    paste: Paste | None = None  # a long paste still arriving
    reply_message: int | None = None  # the last finished reply's last message (where its 🔄 button is)

    def busy(self) -> bool:
        return self.lock.locked() or self.answers.locked() or self.cancel is not None or self.paste is not None


# A message's files made ready in its turn: (the text the model reads, the attachments), or None
# when the user was already told why not.
Prepare = Callable[[ChatState], Awaitable[tuple[str, list[Attachment]] | None]]

FRIENDLY = {
    "auth": "The assistant's model provider rejected its API key. The owner needs to check OPENAI_API_KEY.",
    "payment": "The assistant's model provider account is out of credit. The owner needs to top it up.",
    "rate_limit": "The model provider is rate-limiting requests right now. Please try again in a minute.",
    "unknown_model": "The configured model is not available at the provider. The owner needs to check OPENAI_MODEL.",
    "context_length": "This conversation has grown too long for the model, even trimmed. Send /clear to start afresh.",
    "timeout": "The model took too long to answer. Please try again.",
    "deadline": "The model took too long to answer. Please try again.",
    "connection": "The model provider cannot be reached right now. Please try again shortly.",
    "server": "The model provider is having trouble right now. Please try again shortly.",
    "no_vision": (
        "The model answering here cannot see images, so your photo was not read (nothing was kept). "
        "Send your question as text, or ask the owner for a vision model (OPENAI_MODEL)."
    ),
}
CUT_SHORT = {  # after a partial reply: what stopped it, never "the model could not answer"
    "timeout": "the model stopped sending for too long.",
    "deadline": "the reply took longer than the time allowed.",
    "context_length": "the conversation is too long for the model. Send /clear to start afresh.",
}


def friendly(failure: Failure) -> str:
    return FRIENDLY.get(failure.kind, "Sorry, the model could not answer that. Please try again.")


def finish_text(result: TurnResult) -> str:
    """A reply that ended early, in Telegram's words (no command-line flags)."""
    if result.finish_reason == "length":
        if result.window_full:
            return "cut off: this conversation fills the model's context window; send /clear to start afresh"
        if result.below_limit:
            return "cut off early by the model's server"
        return "cut off at the longest reply the assistant is set to write"
    return result.note()


def closing_note(result: TurnResult) -> str:
    """What follows a reply that is not whole: stopped, cut short, or cut off at the limit."""
    outcome = result.outcome
    if outcome is Outcome.INTERRUPTED:
        return "⏹ Stopped." if result.reply else "⏹ Stopped before the reply began."
    if outcome is Outcome.FAILED_MID_REPLY and result.failure is not None:
        reason = CUT_SHORT.get(result.failure.kind, "the connection to the model was lost mid-reply.")
        return f"⚠️ The reply was cut short: {reason}"
    if outcome is Outcome.ENDED_EARLY:
        return f"… ({finish_text(result)})"
    if outcome is Outcome.EMPTY:
        return f"({result.note().capitalize()}.)"
    return ""


def take_turn(
    chat: Chat,
    text: str,
    buffer: ReplyBuffer,
    cancel: Cancel,
    on_added: Callable[[int | None], None],
    attachments: list[Attachment],
    payer: Payer | None = None,
    replaces: int | None = None,
) -> TurnResult:
    """In a worker thread: one turn of the engine's. A message an earlier run left without a reply is
    answered through the inbox's replay, so one still dangling here is dropped, never merged into this
    one; a message the model answered with nothing stays, and this one joins it (the engine's rule)."""
    chat.take_back_unanswered()
    return chat.send(
        text,
        buffer.on_event,
        True,
        cancel,
        attachments=attachments,
        on_added=lambda message: on_added(message.row_id),
        payer=payer,
        in_place_of=replaces,
    )


def take_retry(chat: Chat, buffer: ReplyBuffer, cancel: Cancel, payer: Payer | None = None) -> TurnResult:
    """In a worker thread: the last reply again, in its place (the engine's retry: the old one goes
    only once the new one has text)."""
    return chat.retry(buffer.on_event, True, cancel, payer)


class Sender(NamedTuple):
    """Who wrote a message: the id rate limits count, and the name a group's history shows."""

    id: int
    name: str


def sender_of(message: Message) -> Sender:
    """Anonymous admins and channels write as a chat (`sender_chat`): each such chat is one sender."""
    if message.sender_chat is not None:
        return Sender(message.sender_chat.id, message.sender_chat.title or "Admin")
    user = message.from_user
    return Sender(user.id, user.first_name) if user else Sender(message.chat.id, "Someone")


def payer_of(message: Message, settings: Settings) -> Payer:
    """Whom a message's model calls are counted for (the sender, across all chats); the bot's owners
    (TELEGRAM_ADMINS) are exempt from the caps."""
    sender, user = sender_of(message), message.from_user
    owner = is_allowed(settings.telegram_admins, user.id if user else None, user.username if user else None, sender.id)
    return Payer(str(sender.id), exempt=owner)


def presser_of(user: Any, settings: Settings) -> Payer:
    """Whom a button press's model call (🔄) is counted for: who pressed it, not who sent the message."""
    return Payer(str(user.id), exempt=is_allowed(settings.telegram_admins, user.id, user.username, user.id))


MAX_LOADED = 500  # conversations kept in memory; idle ones beyond this are dropped and reloaded from SQLite


class Assistant:
    """The bot's state: settings, the shared provider, store and inbox, one ChatState per conversation
    and one Line per chat."""

    def __init__(self, settings: Settings, store: SessionStore, inbox: Inbox):
        self.settings = settings
        self.store = store
        self.inbox = inbox
        self.provider = Provider(settings, lambda text: log.info("%s", text))
        self.budget = Budget(settings, store)  # per-user spending caps, in the same database
        self.chats: collections.OrderedDict[Key, ChatState] = collections.OrderedDict()
        self.lines: collections.OrderedDict[int, Line] = collections.OrderedDict()
        self.pace = Pace()
        self.rate = RateLimiter(settings.telegram_rate_limit)
        self.workers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="turn")
        self.stopping = False
        self.exit_status = EXIT_OK
        self.bot_id: int | None = None
        self.bot_username = ""
        self.application: Any = None  # the python-telegram-bot Application, once built around this
        self.held: set[int] = set()  # updates whose settling is not their handler's: left pending, or pasted
        self.settled: collections.OrderedDict[int, None] = collections.OrderedDict()  # settled by their turn
        self.unfinished: dict[int, int] = {}  # update id -> the user message an earlier run's turn added
        self.resumed: dict[int, int] = {}  # update id -> the message an earlier run streamed its reply into
        self.begun: collections.OrderedDict[int, None] = collections.OrderedDict()  # updates handled in this run
        self.strangers_told: collections.OrderedDict[tuple[int, int | None], float] = collections.OrderedDict()
        self.albums: dict[tuple[int, str], Album] = {}  # (chat id, media_group_id) -> an album still arriving
        self.rich = Capability(settings.telegram_rich)  # what the Bot API server has of rich messages
        self.stops = Stops()  # drafts shown with a Stop button, and the turn each one stops
        self.allowed_models = allowed_models(settings)  # what /model may switch a chat to
        self.roles = self.read_roles()
        self.replayed: set[int] = set()  # updates handed back by the inbox at start-up (a crash cut them)

    def read_roles(self) -> dict[str, Role]:
        """The roles /role offers: a bad roles file is one log line, and the bot goes on with the built-in ones."""
        try:
            return load_roles(self.settings)
        except RolesError as exc:
            log.error("%s: going on with the built-in roles", exc)
            return load_roles(self.settings, read_file=False)

    def line(self, chat_id: int) -> Line:
        """The chat's line to Telegram, for every chat the bot writes to (strangers' included)."""
        line = self.lines.get(chat_id)
        if line is None:
            line = self.lines[chat_id] = Line(chat_id, self.pace, self.migrate)
            if len(self.lines) > 4 * MAX_LOADED:
                in_use = {state.line for state in self.chats.values()}
                for idle in [c for c, ln in self.lines.items() if ln.idle() and ln not in in_use][: MAX_LOADED // 2]:
                    del self.lines[idle]
        self.lines.move_to_end(chat_id)
        return line

    def state(self, key: Key) -> ChatState:
        """A conversation's state, its history loaded from SQLite the first time (and after eviction)."""
        state = self.chats.get(key)
        if state is None:
            chat = Chat(
                self.settings,
                lambda text: log.info("chat=%s %s", conversation_name(key), text),
                provider=self.provider,
                store=self.store,
                label=f"chat={conversation_name(key)}",
                log_sink=lambda line: log.info("%s", line),
                budget=self.budget,
                saved_choices_win=True,  # each chat its own model, instructions and temperature
            )
            try:
                chat.open_session(session_name(key))
            except StoreError as exc:  # never a silent chat: it goes on, unsaved
                log.warning("chat=%s history not available (%s): this conversation is not saved", key[0], exc)
            if chat.model not in self.allowed_models:  # the owner no longer offers it
                log.info("chat=%s model %s is no longer offered: back to %s", key[0], chat.model, self.settings.model)
                chat.reset_model()
            state = self.chats[key] = ChatState(key, chat, self.line(key[0]))
            self._evict()
        self.chats.move_to_end(key)
        return state

    def _evict(self) -> None:
        """Thousands of idle chats do not stay in memory: the least recently used idle ones go."""
        if len(self.chats) <= MAX_LOADED:
            return
        for key in [k for k, s in self.chats.items() if not s.busy()][: len(self.chats) - MAX_LOADED]:
            self.chats.pop(key).chat.leave()

    def migrate(self, old: int, new: int) -> None:
        """A group became a supergroup: its history (every topic's) and its line belong to the new id."""
        line = self.lines.pop(old, None)
        if line is not None:
            self.lines[new] = line
        for key in [k for k in self.chats if k[0] == old]:
            state = self.chats.pop(key)
            new_key = (new, key[1])
            try:
                state.chat.rename_session(session_name(new_key))
            except StoreError as exc:
                log.warning("chat=%s moved to %s but its history could not follow: %s", old, new, exc)
            state.key = new_key
            state.chat.label = f"chat={conversation_name(new_key)}"
            self.chats[new_key] = state
        log.info("chat=%s became chat=%s (supergroup): history moved", old, new)

    # -- settling what was received --------------------------------------------------

    def begin(self, update_id: int) -> bool:
        """False for an update already handled in this run (Telegram delivered it again)."""
        if update_id in self.begun:
            return False
        self.begun[update_id] = None
        if len(self.begun) > 10_000:
            self.begun.popitem(last=False)
        return True

    async def settle(self, update_ids: list[int]) -> None:
        """Answered (or decided not to be): never handed back. Written off the event loop."""
        self.held.difference_update(update_ids)
        for update_id in update_ids:
            self.settled[update_id] = None
        while len(self.settled) > 10_000:
            self.settled.popitem(last=False)
        await asyncio.to_thread(self.inbox.done, update_ids)

    def take_back(self, state: ChatState, rows: list[int]) -> None:
        """An earlier run's unfinished turn (its user message, and the partial reply a crash left, seen
        by the user only as a draft or a partial edit) is taken out: the turn is answered anew."""
        gone = state.chat.take_back(set(rows))
        if not gone:
            return
        log.info("chat=%s %d messages of an unfinished turn taken back: answering again", state.key[0], len(gone))

    # -- a turn ----------------------------------------------------------------------

    async def answer(
        self,
        bot: Any,
        key: Key,
        text: str,
        private: bool,
        reply_to: int | None,
        update_ids: list[int],
        replaces: int | None = None,
        prepare: Prepare | None = None,
        payer: Payer | None = None,
    ) -> None:
        """One turn, in order with the conversation's other messages: stream the reply, then send it
        whole; then the messages it answers are settled. `replaces`: the history row of a message the
        user edited, whose exchange this turn redoes (only if it is still the last one). `prepare`:
        the files of a message, downloaded (and voice transcribed) in its turn, so a photo is answered
        in order with the texts around it; None from it means it already answered (a file refused).
        `payer`: whom the turn is counted for; past their spending cap the message is answered with a
        note, and no file is fetched and no model called."""
        state = self.state(key)
        async with state.lock:
            if self.stopping:
                self.held.update(update_ids)  # left pending in the inbox: the next start answers it
                return
            if state.line.closed is None:
                if replaces is not None and not self.is_last_exchange(state, replaces):
                    log.info("chat=%s an older message was edited: ignored", key[0])
                else:
                    rows = [self.unfinished.pop(i) for i in update_ids if i in self.unfinished]
                    resume = next((self.resumed.pop(i) for i in update_ids if i in self.resumed), None)
                    over = await self.over_budget(bot, state, payer, reply_to, resume)
                    self.take_back(state, rows)  # an edit's own exchange: the engine's, put back if the redo fails
                    prepared: tuple[str, list[Attachment]] | None = (text, [])
                    if over:
                        prepared = None
                    elif prepare is not None:
                        prepared = await prepare(state)
                    if prepared is not None:
                        text, attachments = prepared
                        await self.turn(
                            bot,
                            state,
                            text,
                            private,
                            reply_to,
                            update_ids,
                            resume,
                            attachments,
                            payer,
                            replaces=replaces,
                        )
        await self.settle(update_ids)

    async def over_budget(
        self, bot: Any, state: ChatState, payer: Payer | None, reply_to: int | None, resume: int | None = None
    ) -> bool:
        """True when the payer reached a spending cap: they were told which, and when it resets (in the
        message a crash left half a reply in, `resume`, so none is left behind)."""
        if payer is None:
            return False
        standing = await asyncio.to_thread(self.budget.standing, payer)
        if standing.reached is None:
            return False
        log.info("chat=%s user=%s spending cap reached: not sent to the model", state.key[0], payer.user)
        if resume is None:
            await say(bot, state, standing.note(), reply_to)
        else:
            await ReplyView(bot, state, False, reply_to, resume).finish(standing.note())
        return True

    def is_last_exchange(self, state: ChatState, row: int) -> bool:
        history = state.chat.conversation.history
        last_user = next((m for m in reversed(history) if m.role == "user"), None)
        return last_user is not None and last_user.row_id == row

    async def turn(
        self,
        bot: Any,
        state: ChatState,
        text: str,
        private: bool,
        reply_to: int | None,
        update_ids: list[int],
        resume: int | None = None,
        attachments: list[Attachment] | None = None,
        payer: Payer | None = None,
        retrying: bool = False,
        replaces: int | None = None,
    ) -> None:
        """The model call in a worker thread, followed in the chat; a turn always finishes (or is
        cancelled and awaited) before the conversation's next one starts. `retrying`: the last reply
        again (`resume` is then the old reply's message, replaced only once the new one has text).
        `replaces`: the history row of an edited message, whose exchange this turn redoes."""
        cancel = state.cancel = Cancel()
        buffer = ReplyBuffer()
        view = ReplyView(
            bot,
            state,
            private,
            reply_to,
            resume,
            lambda message_id: self.inbox.streamed(update_ids, message_id),
            self.rich,
            self.stops,
        )
        loop = asyncio.get_running_loop()
        turn = (
            loop.run_in_executor(self.workers, take_retry, state.chat, buffer, cancel, payer)
            if retrying
            else loop.run_in_executor(
                self.workers,
                take_turn,
                state.chat,
                text,
                buffer,
                cancel,
                lambda row: self.inbox.started(update_ids, row),
                attachments or [],
                payer,
                replaces,
            )
        )
        try:
            try:
                await view.follow(turn, buffer, cancel)
            finally:
                if not turn.done():
                    cancel.set()
                    await asyncio.wait({turn})
            result = turn.result()
        except (AttachmentError, TranscriptionError) as exc:  # checked before anything is sent
            await view.finish(f"I couldn't use that file: {exc}")
            return
        except OverBudget as exc:  # reached meanwhile (another chat of the payer's): no call was made
            await view.finish(exc.standing.note())
            return
        except PromptTooLarge as exc:
            await view.finish(too_large_note(exc, state.chat.conversation.system))
            return
        except Failure as failure:
            log.info("chat=%s model request failed: %s", state.key[0], redact(str(failure), self.settings.api_key))
            if retrying:
                view.message_id = None  # the old reply stays, in the history and in the chat
            await view.finish(friendly(failure))
            return
        except Exception as exc:
            if cancel.is_set():  # stopped while reading: some clients raise on a closed stream (engine issue)
                log.info("chat=%s reply stopped (%s)", state.key[0], type(exc).__name__)
                partial = buffer.text()
                await view.finish(
                    f"{partial}\n\n⏹ Stopped." if partial.strip() else "⏹ Stopped before the reply began."
                )
                return
            log.exception("chat=%s internal error", state.key[0])
            await view.finish("Sorry, something went wrong on my side. Please try again.")
            return
        finally:
            state.cancel = None
        if state.line.closed is not None:
            return  # nobody to show it to: the reply is saved, marked as stopped
        if retrying and not result.reply:
            view.message_id = None  # no new text: the old reply stays, in the history and in the chat
        note = closing_note(result)
        button = self.retry_button(state) if result.reply else None
        await view.finish(f"{result.reply}\n\n{note}" if result.reply and note else note or result.reply, button)
        if button is not None:
            state.reply_message = view.last_sent

    def retry_button(self, state: ChatState) -> Any:
        """The 🔄 button for the conversation's last reply, tied to its history row (None: not saved)."""
        history = state.chat.conversation.history
        last = history[-1] if history else None
        if last is None or last.role != "assistant" or last.row_id is None:
            return None
        return retry_keyboard(last.row_id)

    async def regenerate(
        self,
        bot: Any,
        key: Key,
        private: bool,
        update_ids: list[int],
        payer: Payer,
        pressed: int | None = None,
        row: str = "",
    ) -> None:
        """/retry or 🔄: the last reply again, in order with the conversation's turns. It replaces the
        old one in place when that was one message (the one pressed, or the last one sent in this run),
        else it comes as a new message. `row`: a 🔄 press, for the reply of that history row only (a
        second press while the first one's retry runs finds the reply replaced, and does nothing)."""
        state = self.state(key)
        async with state.lock:
            if self.stopping:
                self.held.update(update_ids)
                return
            if row and not self.is_last_reply(state, row) and not self.replayed.intersection(update_ids):
                log.info("chat=%s a 🔄 for a reply already replaced: nothing to do", key[0])
            elif state.line.closed is None:
                if not state.chat.conversation.history:
                    await say(bot, state, "Nothing to retry yet: send me a message first.", None)
                else:
                    resume = next((self.resumed.pop(i) for i in update_ids if i in self.resumed), None)
                    resume = resume or self.in_place(state, pressed)
                    await self.turn(bot, state, "", private, None, update_ids, resume, payer=payer, retrying=True)
        await self.settle(update_ids)

    def is_last_reply(self, state: ChatState, row: str) -> bool:
        """Whether the conversation ends with the reply of this history row (a 🔄 button's)."""
        history = state.chat.conversation.history
        return bool(history) and history[-1].role == "assistant" and str(history[-1].row_id) == row

    def in_place(self, state: ChatState, pressed: int | None) -> int | None:
        """The chat message a regenerated reply may replace: the old reply's, if it was one message."""
        history = state.chat.conversation.history
        if not history or history[-1].role != "assistant":
            return None
        if self.messages_for(history[-1].content) != 1:
            return None
        return pressed if pressed is not None else state.reply_message

    def messages_for(self, reply: str) -> int:
        """How many messages a finished reply takes: rich ones while the server has them (32,768
        characters each), else text ones (4,096)."""
        if self.rich.messages:
            return len(split_rich(reply))
        return len(split_message(to_telegram(reply)))

    async def change(self, key: Key, change: Callable[[Chat], str]) -> str:
        """A change of a chat's settings, in order with its turns (after the reply in progress) and off
        the event loop (a model switch may ask the server); what to say about it."""
        state = self.state(key)
        async with state.lock:
            try:
                return await asyncio.to_thread(change, state.chat)
            except Refused as exc:
                return f"I can't do that: {exc}."

    def role_for_chat(self, role: Role) -> tuple[Role, str]:
        """A role as this bot may apply it: a model it does not offer is left out (and said)."""
        if role.name == DEFAULT or not role.model or find_model(self.allowed_models, role.model):
            return role, ""
        return Role(role.name, role.system, None, role.temperature, role.origin), (
            f" (its model {role.model} is not offered here, so the model stays)"
        )

    def stop(self, application: Any, status: int = EXIT_OK) -> None:
        """SIGINT/SIGTERM: stop every reply in progress (each keeps its partial text), then polling.
        Messages still waiting are left in the inbox for the next start."""
        self.exit_status = max(self.exit_status, status)
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: %d replies in progress are cancelled", sum(1 for s in self.chats.values() if s.cancel))
        for line in self.lines.values():
            line.stopping = True
        for state in self.chats.values():
            if state.cancel is not None:
                state.cancel.set()
            if state.paste is not None:
                state.paste.last_long = False
                state.paste.more.set()
        application.stop_running()


# ---------------------------------------------------------------------------
# The handlers: each decides, the library does polling, retries and shutdown
# ---------------------------------------------------------------------------


def too_large_note(exc: PromptTooLarge, system: str) -> str:
    """What to shorten when a request does not fit: the message, or this chat's instructions when
    they are most of it (a long /system leaves no room, however short the message)."""
    if 2 * estimate_tokens(system) < exc.tokens:
        return f"Your message is too long for this model: {exc.tokens:,} tokens, with room for {exc.budget:,}. Please shorten it."
    return (
        f"This chat's instructions are too long for this model: with your message they are {exc.tokens:,} "
        f"tokens, with room for {exc.budget:,}. Shorten them (/system TEXT) or go back to the default "
        "(/system reset)."
    )


def assistant_of(context: ContextTypes.DEFAULT_TYPE) -> Assistant:
    assistant: Assistant = context.application.bot_data["assistant"]
    return assistant


def mentions_bot(message: Message, assistant: Assistant) -> bool:
    """An exact @mention of the bot (not @bot2, not ada@bot.example), or a text_mention of it."""
    username = f"@{assistant.bot_username}".lower()
    for entity, text in {**message.parse_entities(), **message.parse_caption_entities()}.items():
        if entity.type == "mention" and text.lower() == username:
            return True
        if entity.type == "text_mention" and entity.user is not None and entity.user.id == assistant.bot_id:
            return True
    return False


def replies_to_bot(message: Message, assistant: Assistant) -> bool:
    replied = message.reply_to_message
    return replied is not None and replied.from_user is not None and replied.from_user.id == assistant.bot_id


def addressed_to_bot(message: Message, assistant: Assistant) -> bool:
    """In groups only mentions and replies to the bot's own messages are for it (commands apart)."""
    return message.chat.type == "private" or replies_to_bot(message, assistant) or mentions_bot(message, assistant)


def command_for_bot(message: Message, assistant: Assistant) -> bool:
    """A /command meant for this bot: any in a private chat, `/x` or `/x@thisbot` in a group."""
    words = (message.text or "").split()
    if not words or not words[0].startswith("/"):
        return False
    _, _, target = words[0].partition("@")
    return target.lower() == assistant.bot_username.lower() or (not target and message.chat.type == "private")


async def gate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Group -1, before every handler: only TELEGRAM_ALLOWED_USERS (and the owners, TELEGRAM_ADMINS)
    go further. A stranger writing to the bot is told their id once an hour at most, and no model is
    called; button presses pass as messages do (gate_press); other updates that are not messages
    (channel posts) go no further. A chat that writes again after it answered 403 (the user pressed
    Restart) can be written to again."""
    from telegram.ext import ApplicationHandlerStop

    if update.my_chat_member is not None or stop_of(update) is not None:
        return  # a Stop is matched to a draft of ours, which only an allowed user's turn can have
    assistant = assistant_of(context)
    if update.callback_query is not None:
        await gate_press(update, assistant)
        return
    message = update.message or update.edited_message
    if message is None:
        raise ApplicationHandlerStop
    line = assistant.lines.get(message.chat.id)
    if update.message is not None and line is not None and line.closed == "blocked":
        line.reopen("a new message from it")
    user = message.from_user
    if is_allowed(
        assistant.settings.telegram_allowed,
        user.id if user else None,
        user.username if user else None,
        message.chat.id,
    ) or (user is not None and is_owner(assistant.settings.telegram_admins, user.id, user.username)):
        return
    if update.message is not None and (addressed_to_bot(message, assistant) or command_for_bot(message, assistant)):
        log.info("chat=%s user=%s not allowed", message.chat.id, user.id if user else None)
        await tell_stranger(update, context, user.id if user else None)
    raise ApplicationHandlerStop


async def gate_press(update: Update, assistant: Assistant) -> None:
    """A button press passes the gate like a message: the allowed users and the owners, within the
    rate limit; anyone else is answered with a short note, and nothing is done."""
    from telegram.ext import ApplicationHandlerStop

    query = update.callback_query
    assert query is not None
    user, message = query.from_user, query.message
    chat_id = message.chat.id if message is not None else 0
    if not is_allowed(assistant.settings.telegram_allowed, user.id, user.username, chat_id) and not is_owner(
        assistant.settings.telegram_admins, user.id, user.username
    ):
        log.info("chat=%s user=%s not allowed (a button)", chat_id, user.id)
        await answer_press(query, f"Sorry, this assistant is private. Your Telegram user id is {user.id}.")
        raise ApplicationHandlerStop
    wait = assistant.rate.wait(user.id)
    if wait:
        await answer_press(query, f"Too fast: please wait {wait:.0f} s.")
        raise ApplicationHandlerStop


async def answer_press(query: Any, text: str | None = None) -> None:
    """answerCallbackQuery: the button stops spinning, with a short note if there is one. A press the
    inbox handed back after a restart is too old to answer: then nothing is shown, and that is fine."""
    from telegram.error import TelegramError

    try:
        await query.answer(text)
    except TelegramError as exc:
        log.info("a button press could not be answered (%s)", exc.message)


async def tell_stranger(update: Update, context: ContextTypes.DEFAULT_TYPE, user_id: int | None) -> None:
    assistant = assistant_of(context)
    chat_id = update.effective_chat.id if update.effective_chat else 0
    told = assistant.strangers_told
    now = time.monotonic()
    if told.get((chat_id, user_id), -1e9) > now - STRANGER_NOTE_EVERY:
        return
    told[(chat_id, user_id)] = now
    if len(told) > 10_000:
        told.popitem(last=False)
    await reply_text(update, context, stranger_text(user_id))


async def reply_text(update: Update, context: ContextTypes.DEFAULT_TYPE, text: str, reply_markup: Any = None) -> None:
    """A short answer to a command, through the chat's line (flood control, closed chats), in the
    message's topic (with buttons under it, if given)."""
    assistant = assistant_of(context)
    message = update.effective_message
    if message is None:
        return
    key = key_of(message)
    line = assistant.line(key[0])
    state = assistant.chats.get(key)

    pieces = [part.text for part in split_message(Part(text))]  # a long /system is several messages

    def sender(piece: str, markup: Any) -> Callable[[int], Awaitable[Any]]:
        async def send(chat: int) -> Any:
            return await context.bot.send_message(chat, piece, reply_markup=markup, **in_thread(key[1]))

        return send

    async def send_all() -> None:
        for index, piece in enumerate(pieces):
            await line.send(sender(piece, reply_markup if index == len(pieces) - 1 else None), essential=True)

    if state is None:  # a stranger, or a chat that has not talked yet: no history is loaded for it
        await send_all()
        return
    async with state.answers:
        await send_all()


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """What the assistant is, which model answers (this chat's), the commands."""
    message, assistant = update.effective_message, assistant_of(context)
    model = assistant.state(key_of(message)).chat.model if message is not None else assistant.settings.model
    await reply_text(
        update,
        context,
        (
            f"Hi! I'm an AI assistant answering with {model}. Send me a message and I'll reply; I remember "
            "this chat's recent messages (older ones are trimmed to fit the model).\n\n" + help_text()
        ),
    )


async def on_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The commands."""
    await reply_text(update, context, help_text())


async def on_model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """This chat's model; `/model NAME` switches among the allowed ones; alone in a private chat, buttons."""
    assistant, message = assistant_of(context), update.effective_message
    if message is None:
        return
    key, name = key_of(message), command_argument(message)
    if not name:
        allowed, current = assistant.allowed_models, assistant.state(key).chat.model
        buttons = model_keyboard(allowed, current) if len(allowed) > 1 and message.chat.type == "private" else None
        await reply_text(update, context, model_text(assistant, current, buttons is not None), buttons)
        return
    model = find_model(assistant.allowed_models, name)
    if model is None:
        offered = ", ".join(assistant.allowed_models)
        await reply_text(update, context, f"{name} is not one of the models offered here: {offered}.")
        return
    if await refused_change(update, context):
        return
    await reply_text(update, context, await assistant.change(key, switching_to(model)))


def switching_to(model: str) -> Callable[[Chat], str]:
    def switch(chat: Chat) -> str:
        chat.switch_model(model)
        return f"Model is now {model}."

    return switch


def model_text(assistant: Assistant, current: str, buttons: bool) -> str:
    settings = assistant.settings
    fallback = f" (fallback: {settings.fallback_model})" if settings.fallback_model else ""
    lines = [f"Model: {current}{fallback} at {settings.host}"]
    if len(assistant.allowed_models) > 1:
        lines.append(
            "Tap one to switch." if buttons else f"Offered here: {', '.join(assistant.allowed_models)} (/model NAME)"
        )
    return "\n".join(lines)


def command_argument(message: Message) -> str:
    """What follows the command word (`/system be brief` -> "be brief"), its line breaks kept."""
    text = message.text or ""
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


ONLY_ADMINS = "Only this group's admins (and the bot's owners) can change its model, instructions or role."


async def may_change(bot: Any, settings: Settings, chat: Any, user: Any, sender_chat: Any = None) -> bool:
    """Who may change a chat's settings: anyone allowed in a private chat; in a group, its admins
    (Telegram is asked: getChatMember), an anonymous admin writing as the group, and the bot's owners."""
    from telegram.error import TelegramError

    if chat.type == "private":
        return True
    if user is not None and is_owner(settings.telegram_admins, user.id, user.username):
        return True
    if sender_chat is not None:
        return bool(sender_chat.id == chat.id)  # an anonymous admin writes as the group itself
    if user is None:
        return False
    try:
        member = await bot.get_chat_member(chat.id, user.id)
    except TelegramError as exc:
        log.info("chat=%s could not ask Telegram who is an admin (%s): refused", chat.id, exc.message)
        return False
    return bool(member.status in CHANGERS)


async def refused_change(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """True (and the sender told so) when the sender may not change this chat's settings."""
    message = update.effective_message
    assert message is not None
    settings = assistant_of(context).settings
    if await may_change(context.bot, settings, message.chat, message.from_user, message.sender_chat):
        return False
    await reply_text(update, context, ONLY_ADMINS)
    return True


async def on_system(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/system` shows this chat's instructions, `/system TEXT` sets them, `/system reset` goes back."""
    assistant, message = assistant_of(context), update.effective_message
    if message is None:
        return
    key, text = key_of(message), command_argument(message)
    if not text:
        chat = assistant.state(key).chat
        own = "system" in chat.chosen
        where = "this chat's own (/system reset goes back to the default)" if own else "the default"
        await reply_text(update, context, f"Instructions ({where}):\n{chat.conversation.system}")
        return
    if utf16_len(message.text or "") >= PASTE_PART:  # long instructions the client split: the rest follows
        paste = await rest_of_paste(assistant, key, sender_of(message).id, text, [update.update_id])
        text = "\n".join(paste.texts)
        await assistant.settle(paste.update_ids[1:])
    if await refused_change(update, context):
        return

    def set_system(chat: Chat) -> str:
        if text.lower() == "reset":
            chat.reset_system()
            return "Instructions are back to the default."
        chat.set_system(text)
        return "Instructions set: they apply from your next message (/system shows them, /system reset undoes)."

    await reply_text(update, context, await assistant.change(key, set_system))


async def on_role(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/role` lists the roles (as buttons), `/role NAME` takes one on."""
    assistant, message = assistant_of(context), update.effective_message
    if message is None:
        return
    key, name = key_of(message), command_argument(message)
    if not name:
        current = current_role(assistant.roles, assistant.state(key).chat.conversation.system)
        await reply_text(update, context, role_text(current), role_keyboard(assistant.roles, current))
        return
    try:
        role = find_role(assistant.roles, name)
    except RolesError as exc:
        await reply_text(update, context, f"{str(exc).capitalize()}.")
        return
    if await refused_change(update, context):
        return
    await reply_text(update, context, await assistant.change(key, taking_on(assistant, role)))


def taking_on(assistant: Assistant, role: Role) -> Callable[[Chat], str]:
    applied, note = assistant.role_for_chat(role)

    def take(chat: Chat) -> str:
        chat.apply_role(applied)
        return f"Role is now {role.name}: model {chat.model}, temperature {chat.temperature:g}{note}."

    return take


def role_text(current: Role | None) -> str:
    now = f"Role: {current.name}." if current is not None else "Role: none (this chat has instructions of its own)."
    return f"{now} Tap one to switch, or send /role NAME."


async def on_retry(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Regenerate the last reply (edited in place when it was one message)."""
    message = update.effective_message
    if message is None:
        return
    assistant = assistant_of(context)
    payer = payer_of(message, assistant.settings)
    await assistant.regenerate(context.bot, key_of(message), message.chat.type == "private", [update.update_id], payer)


async def on_new(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A fresh conversation: the messages are forgotten (on disk too); model, instructions and role stay."""
    await forget_conversation(
        update, context, "New conversation: I've forgotten this chat's messages; its model, instructions and role stay."
    )


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A button under one of the bot's messages: 🔄 regenerates the last reply; a model or role button
    switches this chat (its admins only, in a group). Every press is answered (answerCallbackQuery)."""
    from telegram import Message as TelegramMessage

    assistant, query = assistant_of(context), update.callback_query
    if query is None:
        return
    press, message = parse_press(query.data), query.message
    if press is None or not isinstance(message, TelegramMessage):
        await answer_press(query, "This button no longer does anything.")
        return
    key = key_of(message)
    if press.kind == "retry":
        await press_retry(update, context, message, press.value)
        return
    if not await may_change(context.bot, assistant.settings, message.chat, query.from_user):
        await answer_press(query, ONLY_ADMINS)
        return
    if press.kind == "model":
        model = model_of_token(assistant.allowed_models, press.value)
        if model is None:
            await answer_press(query, "That model is no longer offered here.")
            return
        await answer_press(query, await assistant.change(key, switching_to(model)))
        state = assistant.state(key)
        buttons = model_keyboard(assistant.allowed_models, state.chat.model)
        await edit_buttons(
            context.bot, state, message.message_id, model_text(assistant, state.chat.model, True), buttons
        )
        return
    role = role_of_data(assistant.roles, press.value)
    if role is None:
        await answer_press(query, "That role is no longer offered here.")
        return
    await answer_press(query, await assistant.change(key, taking_on(assistant, role)))
    state = assistant.state(key)
    current = current_role(assistant.roles, state.chat.conversation.system)
    await edit_buttons(
        context.bot, state, message.message_id, role_text(current), role_keyboard(assistant.roles, current)
    )


async def press_retry(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message, row: str) -> None:
    """🔄: only under the conversation's last reply (an older one's button says so); a press the inbox
    handed back after a crash goes ahead whatever became of the reply it was cut in."""
    assistant, query = assistant_of(context), update.callback_query
    assert query is not None
    key = key_of(message)
    if not assistant.is_last_reply(assistant.state(key), row) and update.update_id not in assistant.replayed:
        await answer_press(query, "That's an older reply: only the last one can be regenerated.")
        return
    await answer_press(query, "Writing it again…")
    private = message.chat.type == "private"
    payer = presser_of(query.from_user, assistant.settings)
    await assistant.regenerate(context.bot, key, private, [update.update_id], payer, message.message_id, row)


async def edit_buttons(bot: Any, state: ChatState, message_id: int, text: str, buttons: Any) -> None:
    """The message with the buttons, brought up to date (the new choice ticked)."""
    await state.line.send(
        lambda chat: bot.edit_message_text(text, chat_id=chat, message_id=message_id, reply_markup=buttons),
        essential=True,  # waits its turn at the chat's pace: a skipped edit would leave the old tick
    )


async def on_clear(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Forget this conversation (this topic's, in a forum), on disk too."""
    await forget_conversation(update, context, "Conversation cleared: I've forgotten this chat's messages.")


async def forget_conversation(update: Update, context: ContextTypes.DEFAULT_TYPE, said: str) -> None:
    """/clear and /new: the conversation's messages go, from disk too; its settings stay."""
    assistant = assistant_of(context)
    if update.effective_message is None:
        return
    key = key_of(update.effective_message)
    state = assistant.state(key)
    if state.cancel is not None:
        state.cancel.set()
    async with state.lock:
        state.chat.clear()
        assistant.inbox.forget(conversation_name(key))
    state.reply_message = None
    await reply_text(update, context, said)


async def on_stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Messages, requests, tokens and cost of this conversation, and the model that answered."""
    if update.effective_message is None:
        return
    assistant = assistant_of(context)
    # as learned by the requests so far: asking the server here would block the event loop
    chat = assistant.state(key_of(update.effective_message)).chat
    stats = chat.stats(ask_window=False)
    lines = [f"Messages kept: {stats.messages - 1}", f"Requests: {stats.requests}"]
    if stats.last is not None:
        usage, about = stats.usage, "~" if stats.estimated else ""
        lines.append(
            f"Tokens: {about}{usage.input_tokens:,} in · {about}{usage.output_tokens:,} out"
            + (" (~ estimated)" if stats.estimated else "")
        )
        lines.append(f"Cost: {stats.money} (estimate)" if stats.money[:1] == "$" else f"Cost: {stats.money}")
    if stats.last_dropped:
        lines.append(f"Trimmed: {stats.last_dropped} older messages not sent last time")
    window = stats.window
    known = f" · context window {window.tokens:,} tokens ({window.source})" if window else ""
    lines.append(f"Model: {stats.model}{known}")
    if stats.last is not None and stats.last.model and stats.last.model != stats.model:
        lines.append(f"Last reply by: {stats.last.model} (the fallback)")
    role = current_role(assistant.roles, chat.conversation.system)
    lines.append(f"Role: {role.name}" if role is not None else "Role: none (instructions of this chat's own: /system)")
    lines.append(f"Temperature: {chat.temperature:g}")
    payer = payer_of(update.effective_message, assistant.settings)
    lines += assistant.budget.standing(payer).lines()  # yours, across all chats (here: answers keep their order)
    await reply_text(update, context, "\n".join(lines))


async def on_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop the reply in progress; what was written stays, marked."""
    if update.effective_message is None:
        return
    state = assistant_of(context).chats.get(key_of(update.effective_message))
    if state is None or state.cancel is None:
        await reply_text(update, context, "Nothing to stop: no reply is in progress.")
        return
    state.cancel.set()  # the reply ends with what was written so far, marked as stopped


async def on_stop(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Telegram's Stop button under a draft: the reply is stopped as /cancel stops it (what was written
    stays, marked). A Stop for a draft no reply is being written into any more (it finished, or an
    earlier run showed it and a crash ended that turn, which the inbox answers again) changes nothing."""
    stop = stop_of(update)
    if stop is None:
        return
    if assistant_of(context).stops.press(stop):
        log.info("chat=%s Stop pressed: the reply is stopped", stop.chat_id)
    else:
        log.info("chat=%s Stop pressed under a draft no reply is being written into: nothing to stop", stop.chat_id)


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A command the bot does not have: one line pointing at /help (in groups only when it is ours)."""
    message = update.effective_message
    if message is None or not command_for_bot(message, assistant_of(context)):
        return
    name = (message.text or "").split()[0].split("@")[0]
    await reply_text(update, context, f"I don't know {name}. Send /help for the commands I understand.")


def compose(message: Message, text: str, assistant: Assistant) -> str:
    """The user's message as the model reads it: the mention taken out, the sender's name in groups
    (several people share the history), and the message it replies to, with its author."""
    if assistant.bot_username:
        text = re.sub(rf"(?<![\w@.])@{re.escape(assistant.bot_username)}(?!\w)", "", text, flags=re.I).strip() or text
    replied = message.reply_to_message
    if replied is not None and not replies_to_bot(message, assistant):
        quoted = message.quote.text if message.quote is not None else (replied.text or replied.caption or "")
        if quoted:
            author = sender_of(replied).name
            text = f'(In reply to {author}: "{quoted}")\n{text}'
    if message.chat.type != "private":
        text = f"{sender_of(message).name}: {text}"
    return text


# -- files: photos, documents, voice -------------------------------------------------

GETFILE_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile limit: a larger file cannot be fetched by a bot
DOWNLOAD_TIMEOUT = 60.0  # seconds: up to 20 MB on a slow link (the library's default read timeout is 5 s)
ALBUM_WAIT = 1.0  # seconds without a new photo before an album is complete
ACCEPTS = "photos, text and code files, PDFs, and voice or audio messages"
TOO_BIG = "That file is larger than the 20 MB Telegram lets bots download. Please send a smaller one."


class FileTooBig(Exception):
    """Over the Bot API's getFile limit: Telegram will not hand it to a bot."""


@dataclass
class Media:
    """One file a message carries: its Telegram file id, the size Telegram reports, a name for it."""

    file_id: str | None  # None: every size of a photo is over the limit
    size: int | None
    name: str
    voice: bool = False  # voice notes, audio and video notes: transcribed and shown back


def media_of(message: Message) -> list[Media]:
    """The file of a message: a photo (the largest size within the limit), a document, a voice note,
    an audio file or a video note. Stickers, videos and the like carry none the model can read."""
    if message.photo:
        fitting = [p for p in message.photo if (p.file_size or 0) <= GETFILE_LIMIT]
        if not fitting:
            return [Media(None, message.photo[-1].file_size, "photo.jpg")]
        best = max(fitting, key=lambda p: (p.width * p.height, p.file_size or 0))
        return [Media(best.file_id, best.file_size, f"photo-{message.message_id}.jpg")]
    document = message.document
    if document is not None:
        return [Media(document.file_id, document.file_size, document.file_name or "file")]
    if message.voice is not None:
        return [Media(message.voice.file_id, message.voice.file_size, "voice.ogg", voice=True)]
    if message.audio is not None:
        name = message.audio.file_name or "audio"
        return [Media(message.audio.file_id, message.audio.file_size, name, voice=True)]
    if message.video_note is not None:
        return [Media(message.video_note.file_id, message.video_note.file_size, "video-note.mp4", voice=True)]
    return []


async def download(bot: Any, media: Media, settings: Settings) -> Attachment:
    """getFile, then the bytes, then the engine's checks (type from the bytes, limits). The download
    URL holds the bot token: it is never logged (the library's HTTP loggers are quiet, see setup_logging)."""
    from telegram.error import BadRequest

    if media.file_id is None or (media.size or 0) > GETFILE_LIMIT:
        raise FileTooBig
    try:
        file = await bot.get_file(media.file_id, read_timeout=DOWNLOAD_TIMEOUT)
    except BadRequest as exc:
        if "too big" in exc.message.lower():
            raise FileTooBig from None
        raise
    data = bytes(await file.download_as_bytearray(read_timeout=DOWNLOAD_TIMEOUT))
    return await asyncio.to_thread(load_attachment, data, media.name, settings)


def refusal(exc: AttachmentError, name: str) -> str:
    """A file the engine refused, in the chat's words: the type line names what is accepted here."""
    text = str(exc)
    if "not a type that can be attached" in text:
        return f"I can't read {name}: I understand {ACCEPTS}."
    return f"I can't use {name}: {text}."


async def typing_until(bot: Any, state: ChatState, task: asyncio.Future[T]) -> T:
    """ "typing…" in the chat while a download or a transcription runs."""
    from telegram.constants import ChatAction

    while not task.done():
        await state.line.send(
            lambda chat: bot.send_chat_action(chat, ChatAction.TYPING, **in_thread(state.key[1])),
            essential=False,
            counts=False,
        )
        await asyncio.wait({task}, timeout=TYPING_EVERY)
    return task.result()


async def say(bot: Any, state: ChatState, text: str, reply_to: int | None) -> None:
    """A one-line answer inside a turn (a file refused, a transcript shown back)."""
    from telegram import ReplyParameters

    reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
    await state.line.send(
        lambda chat: bot.send_message(chat, text, reply_parameters=reply, **in_thread(state.key[1])),
        essential=True,
    )


def preparing(
    bot: Any, message: Message, media: list[Media], caption: str, assistant: Assistant, reply_to: int | None
) -> Prepare:
    """The files of one turn, fetched in the turn (in order with the chat's other messages), with
    "typing…" while they download and voice is transcribed. A voice note's transcript is shown back,
    quoted, and answered as the user's message (with any caption after it)."""

    async def prepare(state: ChatState) -> tuple[str, list[Attachment]] | None:
        async def fetch() -> list[Attachment]:
            loaded = [await download(bot, item, assistant.settings) for item in media]
            return [await asyncio.to_thread(state.chat.transcribe, a) if a.kind is Kind.AUDIO else a for a in loaded]

        from telegram.error import TelegramError

        cancel = state.cancel = Cancel()  # /cancel while a file downloads: no turn follows
        try:
            attachments = await typing_until(bot, state, asyncio.ensure_future(fetch()))
        except FileTooBig:
            await say(bot, state, TOO_BIG, reply_to)
            return None
        except AttachmentError as exc:
            await say(bot, state, refusal(exc, media[0].name if len(media) == 1 else "one of those files"), reply_to)
            return None
        except TranscriptionError as exc:
            log.info("chat=%s transcription failed: %s", state.key[0], exc)
            await say(bot, state, f"I couldn't transcribe that voice message: {exc}.", reply_to)
            return None
        except TelegramError as exc:
            log.warning("chat=%s a file could not be downloaded (%s)", state.key[0], type(exc).__name__)
            await say(bot, state, "I couldn't download that file from Telegram. Please send it again.", reply_to)
            return None
        finally:
            state.cancel = None
        if cancel.is_set():
            await say(bot, state, "⏹ Stopped before the reply began.", reply_to)
            return None
        heard = [a for a in attachments if a.kind is Kind.AUDIO]
        if not heard:
            return compose(
                message, caption, assistant
            ) if caption or message.chat.type != "private" else "", attachments
        transcript = "\n".join(a.text.strip() for a in heard).strip()
        if not transcript:
            await say(bot, state, "I couldn't hear any words in that voice message.", reply_to)
            return None
        await say(bot, state, "🎤 I heard:\n" + "\n".join(f"> {line}" for line in transcript.splitlines()), reply_to)
        said = f"{transcript}\n{caption}" if caption else transcript
        others = [a for a in attachments if a.kind is not Kind.AUDIO]
        return compose(message, said, assistant), others

    return prepare


@dataclass
class Album:
    """Photos sent together (one media_group_id) arrive as one update each: one turn for them all."""

    messages: list[Message]
    update_ids: list[int]
    more: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message: Message, update_id: int) -> None:
        self.messages.append(message)
        self.update_ids.append(update_id)
        self.more.set()

    async def gather(self) -> None:
        """Until no photo of the album has come for ALBUM_WAIT seconds."""
        while True:
            self.more.clear()
            try:
                await asyncio.wait_for(self.more.wait(), ALBUM_WAIT)
            except TimeoutError:
                return


async def rest_of_paste(assistant: Assistant, key: Key, sender: int, text: str, update_ids: list[int]) -> Paste:
    """A long message's later parts (a paste the client split), gathered behind its first part."""
    state = assistant.state(key)
    paste = state.paste = Paste(sender, [text], update_ids)
    try:
        await paste.gather()
    finally:
        state.paste = None
    return paste


async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A message (text, or files with their caption) for the assistant: one turn, in order with the
    conversation's others; the parts of a long paste the client split, and the photos of an album,
    are gathered into one. The rate limit is counted before any file is downloaded."""
    assistant = assistant_of(context)
    message = update.message
    if message is None:
        return
    key, sender = key_of(message), sender_of(message)
    raw = message.text or message.caption or ""
    media = media_of(message)
    state = assistant.chats.get(key)
    if raw and not media and state is not None and state.paste is not None and state.paste.sender == sender.id:
        state.paste.add(raw, update.update_id)  # a later part of a paste: its first part's turn answers it
        assistant.held.add(update.update_id)
        return
    album: Album | None = None
    if media and message.media_group_id:
        group = (message.chat.id, message.media_group_id)
        if group in assistant.albums:  # a later photo of an album: its first photo's turn answers it
            assistant.albums[group].add(message, update.update_id)
            assistant.held.add(update.update_id)
            return
        album = assistant.albums[group] = Album([message], [update.update_id])
        try:
            await album.gather()
        finally:
            del assistant.albums[group]
        later = album.update_ids[1:]
        addressed = any(addressed_to_bot(m, assistant) for m in album.messages)
        if not addressed:
            await assistant.settle(later)
            return
        first = next((m for m in album.messages if m.caption), message)
        message, raw = first, first.caption or ""
        media = [item for m in album.messages for item in media_of(m)]
    elif not addressed_to_bot(message, assistant):
        return
    update_ids = album.update_ids if album is not None else [update.update_id]
    private = message.chat.type == "private"
    if not raw and not media:
        if private:
            await reply_text(update, context, f"I can read text messages, and {ACCEPTS}.")
        return
    wait = assistant.rate.wait(sender.id)
    if wait:
        if assistant.rate.should_note(sender.id, wait):
            await reply_text(
                update,
                context,
                f"You're sending messages faster than I can answer (at most "
                f"{assistant.rate.per_minute} a minute). Please wait {wait:.0f} s.",
            )
        if album is not None:
            await assistant.settle(album.update_ids[1:])
        return
    reply_to = None if private and key[1] is None else message.message_id
    if media:
        prepare = preparing(context.bot, message, media, raw, assistant, reply_to or message.message_id)
        payer = payer_of(message, assistant.settings)
        await assistant.answer(context.bot, key, raw, private, reply_to, update_ids, prepare=prepare, payer=payer)
        return
    text = compose(message, raw, assistant)
    if utf16_len(raw) >= PASTE_PART:
        text = "\n".join((await rest_of_paste(assistant, key, sender.id, text, update_ids)).texts)
    await assistant.answer(
        context.bot, key, text, private, reply_to, update_ids, payer=payer_of(message, assistant.settings)
    )


async def on_edit(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An edit of the last message answered redoes its reply (the old exchange is replaced, never
    kept beside the new one); an edit of an older message, or into a command, is ignored."""
    assistant = assistant_of(context)
    message = update.edited_message
    raw = (message.text or message.caption or "") if message is not None else ""
    if message is None or not raw or raw.startswith("/") or not addressed_to_bot(message, assistant):
        return
    if media_of(message):  # an edited caption: the files would have to come again; the old answer stands
        return
    key = key_of(message)
    row = assistant.inbox.user_row_of(conversation_name(key), message.message_id)
    if row is None:
        return
    private = message.chat.type == "private"
    await assistant.answer(
        context.bot,
        key,
        compose(message, raw, assistant),
        private,
        message.message_id,
        [update.update_id],
        row,
        payer=payer_of(message, assistant.settings),
    )


async def on_membership(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The bot's own membership changed: removed or blocked closes the chat, added back opens it,
    muted (restricted without the right to write) closes it until the right is given back."""
    change = update.my_chat_member
    if change is None:
        return
    line = assistant_of(context).line(change.chat.id)
    member = change.new_chat_member
    if member.status in ("left", "kicked"):
        line.close("blocked", f"the bot is {member.status}")
    elif member.status == "restricted" and not getattr(member, "can_send_messages", True):
        line.close("muted", "the bot may not send messages")
    else:
        line.reopen(f"the bot is {member.status}")


async def on_migrate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A group became a supergroup: its history follows."""
    message = update.effective_message
    if message is not None and message.migrate_to_chat_id:
        assistant_of(context).migrate(message.chat.id, message.migrate_to_chat_id)


async def on_error(_update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    log.error("while handling an update: %s", context.error, exc_info=context.error)


# ---------------------------------------------------------------------------
# Commands: one table drives the handlers, /help and Telegram's command menu
# ---------------------------------------------------------------------------


class Command(NamedTuple):
    name: str
    about: str
    handler: Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]


COMMANDS: tuple[Command, ...] = (
    Command("start", "what this assistant is and how to use it", on_start),
    Command("help", "list the commands", on_help),
    Command("new", "start a fresh conversation (same as /clear; model, instructions and role stay)", on_new),
    Command("clear", "forget this chat's messages (same as /new; model, instructions and role stay)", on_clear),
    Command("retry", "write the last reply again", on_retry),
    Command("stats", "messages, requests, tokens, cost and settings in this chat", on_stats),
    Command("model", "show this chat's model; /model NAME switches", on_model),
    Command("system", "show this chat's instructions; /system TEXT sets them, /system reset", on_system),
    Command("role", "list the roles; /role NAME takes one on", on_role),
    Command("cancel", "stop the reply in progress (what was written stays)", on_cancel),
)


def help_text() -> str:
    return "\n".join(f"/{command.name} - {command.about}" for command in COMMANDS)


# ---------------------------------------------------------------------------
# main(): settings, logging that never shows a secret, the wiring, polling
# ---------------------------------------------------------------------------

TOKEN_PATTERN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")


class RedactingFormatter(logging.Formatter):
    """Every log line, traceback included, with the bot token and the API key taken out."""

    def __init__(self, secrets: list[str]):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return TOKEN_PATTERN.sub("***", text)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter([settings.telegram_token or "", settings.api_key or ""]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2"):  # they log request URLs, and ours hold the token
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("telegram.ext.Updater").setLevel(logging.WARNING)


MISSING_TOKEN = (
    "TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and put its token in .env (see .env.example)"
)


def token_given(environ: dict[str, str]) -> bool:
    if environ.get("TELEGRAM_BOT_TOKEN"):
        return True
    if not os.path.isfile(".env"):
        return False
    from dotenv import dotenv_values

    return bool(dotenv_values(".env").get("TELEGRAM_BOT_TOKEN"))


def load(environ: dict[str, str]) -> Settings:
    try:
        settings = load_settings({}, environ)
    except ConfigError:
        if not token_given(environ):  # the Telegram program's first need: name the token before the key
            raise ConfigError(MISSING_TOKEN) from None
        raise
    if not settings.telegram_token:
        raise ConfigError(MISSING_TOKEN)
    if not TOKEN_PATTERN.fullmatch(settings.telegram_token.strip()):
        raise ConfigError(
            "TELEGRAM_BOT_TOKEN does not look like a bot token (digits, a colon, then letters): "
            "copy it again from @BotFather"
        )
    check_credentials(settings)
    return settings


def recording_bot(settings: Settings, assistant: Assistant) -> Any:
    """The Bot, with getUpdates writing every message it fetched to the inbox before returning: the
    library confirms updates to Telegram with its next getUpdates, so what Telegram was told was
    received is always in SQLite first. A 409 Conflict (another process polls this token) ends the
    bot with one line."""
    from telegram.error import Conflict
    from telegram.ext import ExtBot
    from telegram.request import HTTPXRequest

    class RecordingBot(ExtBot[None]):
        async def get_updates(self, *args: Any, **kwargs: Any) -> Any:
            try:
                updates = await super().get_updates(*args, **kwargs)
            except Conflict:
                if not assistant.stopping:
                    log.error(
                        "another process is polling this bot token (409 Conflict from Telegram): stopping; "
                        "run one chatbot-telegram per token"
                    )
                    assistant.stop(assistant.application, EXIT_USAGE)
                await asyncio.sleep(0.5)
                return ()
            # In SQLite before this returns: the library's next getUpdates confirms them to Telegram.
            for update_id in await asyncio.to_thread(record, assistant.inbox, updates):
                assistant.begin(update_id)  # settled in an earlier run: not again
            return updates

    api = settings.telegram_api_url
    return RecordingBot(
        settings.telegram_token or "",
        base_url=f"{api}/bot",
        base_file_url=f"{api}/file/bot",
        request=HTTPXRequest(connection_pool_size=128),
        get_updates_request=HTTPXRequest(),
    )


def record(inbox: Inbox, updates: Any) -> set[int]:
    """Messages, edits and button presses, with what is needed to answer them again after a restart;
    returns the ids of those settled before (delivered again after a crash between answering and
    confirming)."""
    from telegram import Message as TelegramMessage

    received = []
    for update in updates:
        message = update.message or update.edited_message
        if message is not None:
            payload = json.dumps(update.to_dict(), ensure_ascii=False)
            received.append((update.update_id, conversation_name(key_of(message)), message.message_id, payload))
        elif (stop := stop_of(update)) is not None:  # a Stop, too, is handled once, even across a crash
            payload = json.dumps(update.to_dict(), ensure_ascii=False)
            received.append((update.update_id, conversation_name((stop.chat_id, stop.thread)), None, payload))
        elif update.callback_query is not None:  # a button press (🔄 starts a turn): answered after a crash too
            pressed = update.callback_query.message
            where = conversation_name(key_of(pressed)) if isinstance(pressed, TelegramMessage) else "button"
            received.append((update.update_id, where, None, json.dumps(update.to_dict(), ensure_ascii=False)))
    if not received:
        return set()
    new = inbox.record(received)
    return {update_id for update_id, *_ in received if update_id not in new} & inbox.settled(
        [update_id for update_id, *_ in received]
    )


def build_application(settings: Settings, assistant: Assistant) -> Application[Any, Any, Any, Any, Any, Any]:
    """The whole bot at a glance: the gate, one handler per command (from the table), messages,
    edits, membership changes; start-up answers what an earlier run left unanswered.
    (Longer than most functions here on purpose: the wiring reads best in one place.)"""
    from telegram import BotCommand, Update
    from telegram.ext import (
        Application,
        ApplicationBuilder,
        CallbackQueryHandler,
        ChatMemberHandler,
        CommandHandler,
        MessageHandler,
        TypeHandler,
        filters,
    )

    class SettlingApplication(Application[Any, Any, Any, Any, Any, Any]):  # the library's defaults
        """Every update whose handlers are done is settled in the inbox, unless it was left for later."""

        async def process_update(self, update: object) -> None:
            if not isinstance(update, Update):
                return await super().process_update(update)
            if not assistant.begin(update.update_id):
                return None  # delivered again (Telegram, or the inbox after a restart): handled once
            await super().process_update(update)
            if update.update_id not in assistant.held and update.update_id not in assistant.settled:
                await assistant.settle([update.update_id])
            return None

    async def started(application: Any) -> None:
        me = application.bot
        assistant.bot_id, assistant.bot_username = me.id, me.username or ""
        await me.set_my_commands([BotCommand(command.name, command.about) for command in COMMANDS])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, assistant.stop, application)
        owed = assistant.inbox.pending()
        for received in owed:  # before anything new: in the order they came
            assistant.replayed.add(received.update_id)
            if received.user_row is not None:
                assistant.unfinished[received.update_id] = received.user_row
            if received.reply_message is not None:
                assistant.resumed[received.update_id] = received.reply_message
            try:
                update = Update.de_json(json.loads(received.payload), me)
            except Exception as exc:  # written by another version, or damaged: never a start-up failure
                log.warning("a message received before the last stop cannot be read again (%s): skipped", exc)
                await assistant.settle([received.update_id])
                continue
            application.update_queue.put_nowait(update)
        if owed:
            log.info("answering %d messages received before the last stop", len(owed))
        log.info("@%s is answering with %s at %s", me.username, settings.model, settings.host)

    application = (
        ApplicationBuilder()
        .application_class(SettlingApplication)
        .bot(recording_bot(settings, assistant))
        .concurrent_updates(True)
        .post_init(started)
        .build()
    )
    assistant.application = application
    application.bot_data["assistant"] = assistant
    messages, edits = filters.UpdateType.MESSAGE, filters.UpdateType.EDITED_MESSAGE
    application.add_handler(TypeHandler(Update, gate), group=-1)
    for command in COMMANDS:
        application.add_handler(CommandHandler(command.name, command.handler, filters=messages))
    application.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, on_migrate))
    application.add_handler(MessageHandler(messages & filters.COMMAND, on_unknown_command))
    application.add_handler(MessageHandler(messages & ~filters.COMMAND & ~filters.StatusUpdate.ALL, on_message))
    application.add_handler(MessageHandler(edits, on_edit))
    application.add_handler(ChatMemberHandler(on_membership, ChatMemberHandler.MY_CHAT_MEMBER))
    application.add_handler(TypeHandler(Update, on_stop), group=1)  # stopped_message_generation (no typed support)
    application.add_handler(CallbackQueryHandler(on_button))
    application.add_error_handler(on_error)
    return application


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: chatbot-telegram\n\nThe Telegram assistant. Configured by the environment and .env only "
            "(TELEGRAM_BOT_TOKEN, TELEGRAM_ALLOWED_USERS and the OPENAI_* settings): see .env.example."
        )
        return EXIT_OK
    if argv and argv[0] == "--version":
        print(f"chatbot-telegram {__version__}")
        return EXIT_OK
    if argv:
        sys.stderr.write(
            f"chatbot-telegram: unexpected argument {argv[0]!r}: it takes none (settings come from "
            f".env and the environment; see --help)\n"
        )
        return EXIT_USAGE
    import sqlite3

    path = ""
    try:
        settings = load(dict(os.environ))
        path = settings.telegram_db or default_telegram_db()
        files.private_dir(os.path.dirname(os.path.abspath(path)))
        lock_database(path)  # held until the process ends: one bot per database
        store = SessionStore(path)
        store.take_over_claims()  # this process owns the database: any claim in it is stale
        inbox = Inbox(path, store.db, store.lock)  # one connection: the inbox never waits on the store's writes
    except DatabaseInUse as exc:
        sys.stderr.write(
            f"chatbot-telegram: another chatbot-telegram (pid {exc}) is running on {path}: stop it first\n"
        )
        return EXIT_USAGE
    except (ConfigError, StoreError) as exc:
        sys.stderr.write(f"chatbot-telegram: {exc}\n")
        return EXIT_USAGE
    except (OSError, sqlite3.Error) as exc:
        sys.stderr.write(f"chatbot-telegram: cannot use the database {path}: {exc}\n")
        return EXIT_USAGE
    setup_logging(settings)
    for warning in settings.warnings:
        log.warning("%s", warning)
    for note in settings.notes:
        log.info("%s", note)
    return run(settings, store, inbox)


def default_telegram_db() -> str:
    return os.path.join(files.user_dir("data"), "telegram.db")


async def check_token(settings: Settings) -> None:
    """getMe once before polling starts: a token Telegram rejects raises InvalidToken here."""
    from telegram import Bot

    api = settings.telegram_api_url
    async with Bot(settings.telegram_token or "", base_url=f"{api}/bot", base_file_url=f"{api}/file/bot") as probe:
        await probe.get_me()


# What the bot asks Telegram for, by name: the Stop button's update is new, and not documented as a default.
ALLOWED_UPDATES = ["message", "edited_message", "my_chat_member", "callback_query", "stopped_message_generation"]


def run(settings: Settings, store: SessionStore, inbox: Inbox) -> int:
    from telegram.error import InvalidToken, NetworkError

    assistant = Assistant(settings, store, inbox)
    for note in assistant.budget.notes:  # the caps in force, or why there are none: once, at start
        log.info("%s", note)
    application = build_application(settings, assistant)
    try:
        asyncio.run(check_token(settings))  # one clear line for a bad token, not the library's traceback
        application.run_polling(stop_signals=None, timeout=10, bootstrap_retries=3, allowed_updates=ALLOWED_UPDATES)
    except InvalidToken:
        sys.stderr.write(
            "chatbot-telegram: Telegram rejected TELEGRAM_BOT_TOKEN (401 at getMe): copy the token "
            "again from @BotFather\n"
        )
        return EXIT_USAGE
    except NetworkError as exc:
        sys.stderr.write(
            f"chatbot-telegram: cannot reach Telegram at {settings.telegram_api_url}: "
            f"{redact(exc.message, settings.telegram_token)}\n"
        )
        return EXIT_FAILED
    finally:
        assistant.workers.shutdown(wait=False, cancel_futures=True)
        store.close()
        inbox.close()
    return assistant.exit_status


if __name__ == "__main__":
    sys.exit(main())
