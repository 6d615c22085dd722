#!/usr/bin/env python3
"""telegram_bot: the chapter's capstone, a Telegram assistant on the same engine as the terminal chat.

Each Telegram chat is one conversation:

    message -> history (trimmed) -> model call -> reply streamed into the chat -> saved -> repeat

In reading order: the command table -> who may talk to it -> sending to Telegram (flood control,
blocked chats, retries) -> showing a reply while it is written -> one chat's turn -> the handlers ->
main(), where the whole bot is wired. The engine (`chatcore`) does settings, trimming, the provider,
usage and sessions; python-telegram-bot does polling and the Bot API.

The engine is synchronous and fast (it parses the raw stream itself), so each turn runs in a
worker thread of a pool sized for dozens of chats, while the event loop paces what Telegram sees.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chatcore import __version__, files
from chatcore.chat import Chat
from chatcore.conversation import PromptTooLarge
from chatcore.log import redact
from chatcore.provider import Failure, Provider
from chatcore.settings import ConfigError, Settings, check_credentials, load_settings
from chatcore.store import SessionStore, StoreError
from chatcore.streams import TEXT
from chatcore.turn import Cancel, Outcome, TurnResult
from telegram_render import Part, split_message, to_telegram

log = logging.getLogger("chatbot.telegram")
T = TypeVar("T")

# ---------------------------------------------------------------------------
# Commands: one table drives the handlers, /help and Telegram's command menu
# ---------------------------------------------------------------------------

COMMANDS: tuple[tuple[str, str], ...] = (
    ("start", "what this assistant is and how to use it"),
    ("help", "list the commands"),
    ("clear", "forget this chat's conversation"),
    ("stats", "messages, requests, tokens and cost in this chat"),
    ("model", "which model answers"),
    ("cancel", "stop the reply in progress (what was written stays)"),
)


def help_text() -> str:
    return "\n".join(f"/{name} - {about}" for name, about in COMMANDS)


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


class RateLimiter:
    """At most `per_minute` messages from one user in any 60 seconds."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.sent: dict[int, collections.deque[float]] = {}

    def wait(self, user_id: int) -> float:
        """0 if the message may go now (and it is counted), else the seconds until it may."""
        now = self.clock()
        recent = self.sent.setdefault(user_id, collections.deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return recent[0] + 60 - now
        recent.append(now)
        return 0.0


# ---------------------------------------------------------------------------
# Sending to Telegram: flood control per chat, blocked chats, retries
# ---------------------------------------------------------------------------

STREAM_INTERVAL = {"draft": 0.35, "edit": 1.0, "group": 3.0}  # seconds between updates of one reply
TYPING_EVERY = 4.0  # "typing…" lasts 5 s
GROUP_PER_MINUTE = 20  # Telegram's limit for one group
FINAL_ATTEMPTS = 8  # a finished reply is retried through network errors and 5xx, with backoff


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
    """Everything the bot sends to one chat goes through here.

    After a 429 nothing is sent to this chat before `retry_after` has passed (other chats go on);
    "message is not modified" is ignored; a chat that blocked the bot (403) gets nothing more; a
    group that became a supergroup moves to its new id; an essential call (a finished reply) is
    retried through network errors and 5xx with backoff, a streaming update is simply skipped.
    """

    def __init__(self, chat_id: int, pace: Pace, on_migrate: Callable[[int, int], None]):
        self.chat_id = chat_id
        self.pace = pace
        self.on_migrate = on_migrate
        self.not_before = 0.0
        self.blocked = False
        self.stopping = False
        self.recent: collections.deque[float] = collections.deque()  # a group's messages and edits, last 60 s

    async def send(self, call: Callable[[int], Awaitable[T]], essential: bool, counts: bool = True) -> T | None:
        from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter

        attempt = 0
        while not self.blocked:
            wait = self.not_before - time.monotonic()
            if wait > 0:
                if not essential:
                    return None
                await asyncio.sleep(wait)
            if counts:
                if self.chat_id < 0 and not await self._group_room(essential):
                    return None
                if essential:
                    await self.pace.take()
                elif not self.pace.try_take():
                    return None
            try:
                return await call(self.chat_id)
            except RetryAfter as exc:
                delay = seconds(exc.retry_after)
                self.not_before = time.monotonic() + delay
                log.warning("chat=%s flood control: nothing sent to it for %.0fs", self.chat_id, delay)
                if not essential:
                    return None
            except Forbidden as exc:
                self.blocked = True
                log.warning("chat=%s cannot be written to (%s): skipped from now on", self.chat_id, exc.message)
                return None
            except ChatMigrated as exc:
                old, self.chat_id = self.chat_id, exc.new_chat_id
                self.on_migrate(old, exc.new_chat_id)
            except BadRequest as exc:
                if "not modified" in exc.message.lower():
                    return None
                raise
            except NetworkError as exc:  # timeouts, connection errors and 5xx
                attempt += 1
                if not essential or attempt >= FINAL_ATTEMPTS or self.stopping:
                    log.warning("chat=%s send failed (%s)", self.chat_id, exc.message)
                    return None
                await asyncio.sleep(min(20.0, 0.5 * 2**attempt))
        return None

    async def _group_room(self, essential: bool) -> bool:
        """A group takes at most GROUP_PER_MINUTE messages and edits in any minute: a finished reply
        waits for room, a streaming update is skipped."""
        while True:
            now = time.monotonic()
            while self.recent and self.recent[0] <= now - 60:
                self.recent.popleft()
            if len(self.recent) < GROUP_PER_MINUTE:
                self.recent.append(now)
                return True
            if not essential:
                return False
            await asyncio.sleep(self.recent[0] + 60 - now)


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


class ReplyView:
    """One reply in one chat: "typing…" until the first words, then the text as it grows
    (a draft in private chats, else one edited message), then the finished, formatted message(s)."""

    def __init__(self, bot: Any, line: Line, state: ChatState, private: bool, reply_to: int | None):
        self.bot, self.line, self.state = bot, line, state
        self.mode = "draft" if private and state.drafts_work else "edit"
        self.interval = STREAM_INTERVAL["draft" if self.mode == "draft" else "edit" if private else "group"]
        self.draft_id = random.randint(1, 2**31 - 1)
        self.reply_to = reply_to
        self.message_id: int | None = None  # the streamed message, in edit mode
        self.shown = ""

    def _reply_parameters(self) -> Any:
        from telegram import ReplyParameters

        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)

    async def follow(self, turn: asyncio.Future[Any], buffer: ReplyBuffer) -> None:
        """Until the turn ends: typing while nothing is written, updates at the chat's pace after."""
        from telegram.constants import ChatAction

        typed_at = updated_at = -1e9
        while not turn.done():
            now = time.monotonic()
            text = buffer.text()
            if not text.strip():
                if now - typed_at >= TYPING_EVERY:
                    typed_at = now
                    await self.line.send(
                        lambda chat: self.bot.send_chat_action(chat, ChatAction.TYPING), essential=False, counts=False
                    )
            elif now - updated_at >= self.interval and text != self.shown:
                await self.update(text)
                updated_at = time.monotonic()  # from the answer: the next update reaches Telegram an interval later
            await asyncio.wait({turn}, timeout=0.1)

    async def update(self, text: str) -> None:
        """Show the reply so far, formatted: its last message-sized part if it is already long."""
        from telegram import MessageEntity
        from telegram.error import BadRequest

        part = split_message(to_telegram(text))[-1]  # `text` is not blank: there is at least one part
        shown = part.text
        entities = [MessageEntity.de_json(entity, self.bot) for entity in part.entities] or None
        if self.mode == "draft":
            try:
                await self.line.send(
                    lambda chat: self.bot.send_message_draft(chat, self.draft_id, shown, entities=entities),
                    essential=False,
                    counts=False,
                )
            except BadRequest as exc:  # no drafts here: stream by editing one message instead
                log.info("chat=%s drafts refused (%s): streaming by editing a message", self.line.chat_id, exc.message)
                self.state.drafts_work = False
                self.mode, self.interval = "edit", STREAM_INTERVAL["edit"]
                return
        elif self.message_id is None:
            message = await self.line.send(
                lambda chat: self.bot.send_message(
                    chat, shown, entities=entities, reply_parameters=self._reply_parameters()
                ),
                essential=False,
            )
            self.message_id = message.message_id if message is not None else None
        else:
            await self.line.send(
                lambda chat: self.bot.edit_message_text(
                    shown, chat_id=chat, message_id=self.message_id, entities=entities
                ),
                essential=False,
            )
        self.shown = text

    async def finish(self, markdown: str) -> int:
        """Send the finished reply as real messages, formatted; returns how many were delivered."""
        parts = split_message(to_telegram(markdown)) or [Part("(empty reply)")]
        delivered = 0
        for index, part in enumerate(parts):
            first = index == 0
            sent = await self.line.send(
                functools.partial(
                    self._post,
                    part=part,
                    edit_id=self.message_id if first else None,
                    reply_to=self.reply_to if first else None,
                ),
                essential=True,
            )
            delivered += sent is not None
        return delivered

    async def _post(self, chat_id: int, part: Part, edit_id: int | None, reply_to: int | None) -> Any:
        """One message with its entities; as plain text if Telegram rejects the formatting."""
        from telegram import MessageEntity, ReplyParameters
        from telegram.error import BadRequest

        async def post(entities: list[Any] | None) -> Any:
            if edit_id is not None:
                return await self.bot.edit_message_text(
                    part.text, chat_id=chat_id, message_id=edit_id, entities=entities
                )
            reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
            return await self.bot.send_message(chat_id, part.text, entities=entities, reply_parameters=reply)

        entities = [MessageEntity.de_json(entity, self.bot) for entity in part.entities] or None
        try:
            return await post(entities)
        except BadRequest as exc:
            text = exc.message.lower()
            if entities and ("entit" in text or "parse" in text):
                log.info("chat=%s formatting rejected (%s): sent as plain text", chat_id, exc.message)
                return await post(None)
            if edit_id is not None and "not found" in text:
                return await self.bot.send_message(chat_id, part.text, entities=entities)
            raise


# ---------------------------------------------------------------------------
# One chat: its conversation, its line to Telegram, one reply at a time
# ---------------------------------------------------------------------------


@dataclass
class ChatState:
    chat: Chat
    line: Line
    lock: asyncio.Lock
    cancel: Cancel | None = None  # the turn in progress, if any
    drafts_work: bool = True
    answers: asyncio.Lock = field(default_factory=asyncio.Lock)  # command answers leave in the order asked


FRIENDLY = {
    "auth": "The assistant's model provider rejected its API key. The owner needs to check OPENAI_API_KEY.",
    "payment": "The assistant's model provider account is out of credit. The owner needs to top it up.",
    "rate_limit": "The model provider is rate-limiting requests right now. Please try again in a minute.",
    "unknown_model": "The configured model is not available at the provider. The owner needs to check OPENAI_MODEL.",
    "context_length": "This conversation has grown too long for the model, even trimmed. Send /clear to start afresh.",
    "message_too_long": "Your message is too long for this model, even on its own. Please shorten it.",
    "timeout": "The model took too long to answer. Please try again.",
    "deadline": "The model took too long to answer. Please try again.",
    "connection": "The model provider cannot be reached right now. Please try again shortly.",
    "server": "The model provider is having trouble right now. Please try again shortly.",
}


def friendly(failure: Failure) -> str:
    return FRIENDLY.get(failure.kind, "Sorry, the model could not answer that. Please try again.")


def closing_note(result: TurnResult) -> str:
    """What follows a reply that is not whole: stopped, cut short, or cut off at the limit."""
    outcome = result.outcome
    if outcome is Outcome.INTERRUPTED:
        return "⏹ Stopped." if result.reply else "⏹ Stopped before the reply began."
    if outcome is Outcome.FAILED_MID_REPLY and result.failure is not None:
        return f"⚠️ The reply was cut short: {friendly(result.failure)}"
    if outcome is Outcome.ENDED_EARLY:
        return f"… ({result.note().replace(' (--max-tokens)', '')})"
    if outcome is Outcome.EMPTY:
        return f"({result.note().capitalize()}.)"
    return ""


class Assistant:
    """The bot's state: settings, the shared provider and store, one ChatState per chat."""

    def __init__(self, settings: Settings, store: SessionStore):
        self.settings = settings
        self.store = store
        self.provider = Provider(settings, lambda text: log.info("%s", text))
        self.chats: dict[int, ChatState] = {}
        self.pace = Pace()
        self.rate = RateLimiter(settings.telegram_rate_limit)
        self.workers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="turn")
        self.stopping = False
        self.bot_id: int | None = None
        self.bot_username = ""

    def state(self, chat_id: int) -> ChatState:
        state = self.chats.get(chat_id)
        if state is None:
            chat = Chat(
                self.settings,
                lambda text: log.info("chat=%s %s", chat_id, text),
                provider=self.provider,
                store=self.store,
                label=f"chat={chat_id}",
                log_sink=lambda line: log.info("%s", line),
            )
            chat.open_session(f"telegram-{chat_id}")
            state = ChatState(chat, Line(chat_id, self.pace, self.migrate), asyncio.Lock())
            self.chats[chat_id] = state
        return state

    def migrate(self, old: int, new: int) -> None:
        """A group became a supergroup: its history belongs to the new id."""
        state = self.chats.pop(old, None)
        if state is None:
            return
        try:
            state.chat.rename_session(f"telegram-{new}")
        except StoreError as exc:
            log.warning("chat=%s moved to %s but its history could not follow: %s", old, new, exc)
        state.chat.label = f"chat={new}"
        self.chats[new] = state
        log.info("chat=%s became chat=%s (supergroup): history moved", old, new)

    async def answer(self, bot: Any, chat_id: int, text: str, private: bool, reply_to: int | None) -> None:
        """One turn, in order with the chat's other messages: stream the reply, then send it whole."""
        state = self.state(chat_id)
        async with state.lock:
            if self.stopping or state.line.blocked:
                return
            cancel = state.cancel = Cancel()
            buffer = ReplyBuffer()
            view = ReplyView(bot, state.line, state, private, reply_to)
            loop = asyncio.get_running_loop()
            turn = loop.run_in_executor(self.workers, state.chat.send, text, buffer.on_event, True, cancel)
            try:
                await view.follow(turn, buffer)
                result = await turn
            except PromptTooLarge as exc:
                await view.finish(
                    f"Your message is too long for this model: {exc.tokens:,} tokens, with room "
                    f"for {exc.budget:,}. Please shorten it."
                )
                return
            except Failure as failure:
                log.info("chat=%s model request failed: %s", chat_id, redact(str(failure), self.settings.api_key))
                await view.finish(friendly(failure))
                return
            except Exception:
                log.exception("chat=%s internal error", chat_id)
                await view.finish("Sorry, something went wrong on my side. Please try again.")
                return
            finally:
                state.cancel = None
            note = closing_note(result)
            await view.finish(f"{result.reply}\n\n{note}" if result.reply and note else note or result.reply)

    def stop(self, application: Any) -> None:
        """SIGINT/SIGTERM: stop every reply in progress (each keeps its partial text), then polling."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: %d replies in progress are cancelled", sum(1 for s in self.chats.values() if s.cancel))
        for state in self.chats.values():
            state.line.stopping = True
            if state.cancel is not None:
                state.cancel.set()
        application.stop_running()


# ---------------------------------------------------------------------------
# The handlers: each decides, the library does polling, retries and shutdown
# ---------------------------------------------------------------------------


def assistant_of(context: Any) -> Assistant:
    return context.application.bot_data["assistant"]


def addressed_to_bot(message: Any, assistant: Assistant) -> bool:
    """In groups only mentions and replies to the bot's own messages are for it (commands apart)."""
    if message.chat.type == "private":
        return True
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == assistant.bot_id:
        return True
    return bool(assistant.bot_username) and f"@{assistant.bot_username}".lower() in (message.text or "").lower()


async def admitted(update: Any, context: Any) -> bool:
    """Only TELEGRAM_ALLOWED_USERS get an answer; a stranger is told their id, and no model is called."""
    assistant = assistant_of(context)
    user, chat = update.effective_user, update.effective_chat
    if is_allowed(
        assistant.settings.telegram_allowed, user.id if user else None, user.username if user else None, chat.id
    ):
        return True
    log.info("chat=%s user=%s not allowed", chat.id, user.id if user else None)
    await reply_text(update, context, stranger_text(user.id if user else None))
    return False


async def reply_text(update: Any, context: Any, text: str) -> None:
    """A short answer to a command, through the chat's line (flood control, blocked chats)."""
    assistant = assistant_of(context)
    chat_id = update.effective_chat.id
    state = assistant.chats.get(chat_id)
    if state is None:  # a stranger, or a chat that has not talked yet: no history is loaded for it
        line = Line(chat_id, assistant.pace, assistant.migrate)
        await line.send(lambda chat: context.bot.send_message(chat, text), essential=True)
        return
    async with state.answers:
        await state.line.send(lambda chat: context.bot.send_message(chat, text), essential=True)


async def on_start(update: Any, context: Any) -> None:
    assistant = assistant_of(context)
    if not await admitted(update, context):
        return
    model = assistant.settings.model
    await reply_text(
        update,
        context,
        (
            f"Hi! I'm an AI assistant answering with {model}. Send me a message and I'll reply; I remember "
            "this chat's recent messages (older ones are trimmed to fit the model).\n\n" + help_text()
        ),
    )


async def on_help(update: Any, context: Any) -> None:
    if await admitted(update, context):
        await reply_text(update, context, help_text())


async def on_model(update: Any, context: Any) -> None:
    if not await admitted(update, context):
        return
    settings = assistant_of(context).settings
    fallback = f" (fallback: {settings.fallback_model})" if settings.fallback_model else ""
    await reply_text(update, context, f"Model: {settings.model}{fallback} at {settings.host}")


async def on_clear(update: Any, context: Any) -> None:
    if not await admitted(update, context):
        return
    assistant = assistant_of(context)
    state = assistant.state(update.effective_chat.id)
    if state.cancel is not None:
        state.cancel.set()
    async with state.lock:
        state.chat.clear()
    await reply_text(update, context, "Conversation cleared: I've forgotten this chat's messages.")


async def on_stats(update: Any, context: Any) -> None:
    if not await admitted(update, context):
        return
    stats = assistant_of(context).state(update.effective_chat.id).chat.stats()  # never asks the server: no blocking
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
    await reply_text(update, context, "\n".join(lines))


async def on_cancel(update: Any, context: Any) -> None:
    if not await admitted(update, context):
        return
    state = assistant_of(context).chats.get(update.effective_chat.id)
    if state is None or state.cancel is None:
        await reply_text(update, context, "Nothing to stop: no reply is in progress.")
        return
    state.cancel.set()  # the reply ends with what was written so far, marked as stopped


async def on_message(update: Any, context: Any) -> None:
    assistant = assistant_of(context)
    message = update.effective_message
    if message is None or not addressed_to_bot(message, assistant) or not await admitted(update, context):
        return
    chat, user = message.chat, message.from_user
    if not message.text:
        if chat.type == "private":
            await reply_text(update, context, "I can only read text messages.")
        return
    wait = assistant.rate.wait(user.id if user else chat.id)
    if wait:
        await reply_text(
            update,
            context,
            f"You're sending messages faster than I can answer (at most "
            f"{assistant.rate.per_minute} a minute). Please wait {wait:.0f} s.",
        )
        return
    text = message.text
    if assistant.bot_username:
        text = re.sub(rf"@{re.escape(assistant.bot_username)}\b", "", text, flags=re.I).strip() or text
    private = chat.type == "private"
    if not private:
        text = f"{user.first_name if user else 'Someone'}: {text}"  # several people share a group's history
    await assistant.answer(context.bot, chat.id, text, private, None if private else message.message_id)


async def on_migrate(update: Any, context: Any) -> None:
    message = update.effective_message
    if message is not None and message.migrate_to_chat_id:
        assistant_of(context).migrate(message.chat.id, message.migrate_to_chat_id)


async def on_error(update: object, context: Any) -> None:
    log.error("while handling an update: %s", context.error, exc_info=context.error)


# ---------------------------------------------------------------------------
# main(): settings, logging that never shows a secret, the wiring, polling
# ---------------------------------------------------------------------------

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
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


def build_application(settings: Settings, assistant: Assistant) -> Any:
    from telegram import BotCommand
    from telegram.ext import ApplicationBuilder, CommandHandler, MessageHandler, filters

    async def started(application: Any) -> None:
        me = application.bot
        assistant.bot_id, assistant.bot_username = me.id, me.username or ""
        await me.set_my_commands([BotCommand(name, about) for name, about in COMMANDS])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, assistant.stop, application)
        log.info("@%s is answering with %s at %s", me.username, settings.model, settings.host)

    api = settings.telegram_api_url
    application = (
        ApplicationBuilder()
        .token(settings.telegram_token or "")
        .base_url(f"{api}/bot")
        .base_file_url(f"{api}/file/bot")
        .concurrent_updates(True)
        .connection_pool_size(128)
        .post_init(started)
        .build()
    )
    application.bot_data["assistant"] = assistant
    handlers = {
        "start": on_start,
        "help": on_help,
        "clear": on_clear,
        "stats": on_stats,
        "model": on_model,
        "cancel": on_cancel,
    }
    for name, _ in COMMANDS:
        application.add_handler(CommandHandler(name, handlers[name]))
    application.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, on_migrate))
    application.add_handler(MessageHandler(~filters.COMMAND & ~filters.StatusUpdate.ALL, on_message))
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
    try:
        settings = load(dict(os.environ))
        store = SessionStore(settings.telegram_db or default_telegram_db())
    except (ConfigError, StoreError) as exc:
        sys.stderr.write(f"chatbot-telegram: {exc}\n")
        return EXIT_USAGE
    setup_logging(settings)
    for warning in settings.warnings:
        log.warning("%s", warning)
    for note in settings.notes:
        log.info("%s", note)
    return run(settings, store)


def default_telegram_db() -> str:
    return os.path.join(files.user_dir("data"), "telegram.db")


async def check_token(settings: Settings) -> None:
    """getMe once before polling starts: a token Telegram rejects raises InvalidToken here."""
    from telegram import Bot

    api = settings.telegram_api_url
    async with Bot(settings.telegram_token or "", base_url=f"{api}/bot", base_file_url=f"{api}/file/bot") as probe:
        await probe.get_me()


def run(settings: Settings, store: SessionStore) -> int:
    from telegram.error import InvalidToken, NetworkError

    assistant = Assistant(settings, store)
    application = build_application(settings, assistant)
    try:
        asyncio.run(check_token(settings))  # one clear line for a bad token, not the library's traceback
        application.run_polling(stop_signals=None, timeout=10, bootstrap_retries=3)
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
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
