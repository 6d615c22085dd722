"""A fake Telegram Bot API for tests and benchmarks: real HTTP on 127.0.0.1, the Bot API's JSON.

Every call is `POST /bot{TOKEN}/{method}` with a form or JSON body, answered with
`{"ok": true, "result": ...}` or `{"ok": false, "error_code": N, "description": ..., "parameters": ...}`,
as Telegram does. A test pushes updates (`send_text`), injects failures (`fail`) and slow answers
(`slow`), and reads every call the bot made (`calls`). Long polling is real: getUpdates waits for
an update or its timeout. Flood control is checked: a call to a chat inside a `retry_after`
window it was given is recorded as a violation. With `flood = True` the fake also enforces
Telegram's per-chat limit itself (a burst of 3 messages or edits, then one a second): a call over
it is answered 429 with a `retry_after`, as Telegram does.

Beyond text messages a test can push any raw update (`push`), edit a user's message (`edit`),
delete one of the bot's messages as an admin would (`delete`), write in forum topics
(`send_text(..., thread_id=N)`), change the bot's membership (`member`), mute a group for the bot
(`mute`), and read `message_thread_id` on every call (`Call.thread_id`).

Files: `add_file(data)` stores bytes and returns the file object a message carries (`file_id`,
`file_unique_id`, `file_size`; a `file_size` over 20 MB may be claimed without the bytes);
`getFile` answers its `file_path` (400 "file is too big" over 20 MB, as Telegram does), and
`GET /file/bot<token>/<file_path>` serves the bytes; `downloads` lists the paths fetched.

Rich messages (Bot API 10.1-10.3): with `rich = True` the fake has `sendRichMessage`,
`sendRichMessageDraft` and `editMessageText` with a `rich_message`, checks them against the limits
the docs give (32,768 characters, 500 blocks, 20 table columns; exactly one of markdown, html or
blocks; a thinking block only in a draft; drafts in private chats only) and keeps, as a sent
message's `text`, the plain rendering of its Markdown, read as Telegram's parser reads it (a `<tag>`
is HTML and disappears, `&amp;` is a character reference, a backslash escapes). With `rich = False`
(the default: an older Bot API server) those methods answer 404 "Not Found" and an edit ignores
`rich_message`. `stop_generation` pushes the update the Stop button sends. `getUpdates` honours
`allowed_updates` as Telegram does (remembered from the last call that gave it).

Buttons: `reply_markup` on sendMessage and editMessageText is kept with the message
(`SentMessage.markup`; callback data over Telegram's 64 bytes is refused with 400 BUTTON_DATA_INVALID);
`press(message_id, data)` is a user pressing one of a message's buttons (a `callback_query` update),
and `answerCallbackQuery` answers it (`answers` maps each query id to the text it was answered with;
a query answered twice, or one never sent, is 400 "query is too old", as Telegram says). Group
admins: `make_admin(chat_id, user_id)`; `getChatMember` and `getChatAdministrators` answer from it.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "123456789:TEST-token-abcdefghijklmnopqrstuvwxyz"
GETFILE_LIMIT = 20 * 1024 * 1024  # the Bot API's getFile limit
STRING_PARAMS = {"text", "parse_mode", "action", "caption", "url", "description", "short_description"}
BOT_USER = {
    "id": 987654321,
    "is_bot": True,
    "first_name": "Test Assistant",
    "username": "test_assistant_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None else None

    @property
    def thread_id(self) -> int | None:
        value = self.params.get("message_thread_id")
        return int(value) if value is not None else None


@dataclass
class Injected:
    method: str
    status: int
    description: str
    chat_id: int | None = None
    times: int = 1
    parameters: dict[str, Any] | None = None


@dataclass
class SentMessage:
    message_id: int
    chat_id: int
    text: str
    entities: list[dict[str, Any]] = field(default_factory=list)
    edits: int = 0
    thread_id: int | None = None
    rich: str | None = None  # the Markdown of a rich message (`text` is its plain rendering)
    markup: dict[str, Any] | None = None  # the inline keyboard under it, as sent

    def buttons(self) -> list[tuple[str, str]]:
        """(label, callback data) of every button under the message."""
        rows = (self.markup or {}).get("inline_keyboard", [])
        return [(button["text"], button.get("callback_data", "")) for row in rows for button in row]


class FakeTelegram:
    """Start with `FakeTelegram()`; `.api_url` goes into TELEGRAM_API_URL; `.close()` stops it."""

    def __init__(self, token: str = TOKEN, poll_cap: float = 1.0):
        self.token = token
        self.poll_cap = poll_cap  # the longest a getUpdates waits, whatever timeout it asks for
        self.updates: list[dict[str, Any]] = []
        self.calls: list[Call] = []
        self.injected: list[Injected] = []
        self.delays: dict[str, float] = {}
        self.messages: dict[int, SentMessage] = {}  # message_id -> what the chat shows now
        self.blocked_until: dict[int, float] = {}  # chat id -> end of its retry_after window
        self.violations: list[Call] = []  # calls made to a chat inside its retry_after window
        self.update_ids = itertools.count(1)
        self.message_ids = itertools.count(1000)
        self.no_drafts = False  # answer sendMessageDraft with 400, as a server without drafts would
        self.flood = False  # enforce the per-chat limit (burst of 3, then 1 a second) with real 429s
        self.flood_tokens: dict[int, tuple[float, float]] = {}  # chat id -> (tokens, when counted)
        self.muted: set[int] = set()  # groups where the bot may not write
        self.user_messages: dict[int, dict[str, Any]] = {}  # message_id -> a user's message as sent
        self.files: dict[str, tuple[bytes, int]] = {}  # file_id -> (bytes, the size Telegram reports)
        self.file_ids = itertools.count(1)
        self.downloads: list[str] = []  # file paths fetched from /file/bot<token>/
        self.rich = False  # the Bot API server has rich messages (Bot API 10.1+); off: they answer 404
        self.allowed_updates: list[str] | None = None  # as the bot last asked for them (None: every kind)
        self.admins: dict[int, set[int]] = {}  # group id -> the user ids that are its admins
        self.queries = itertools.count(1)
        self.answers: dict[str, str | None] = {}  # callback query id -> the text it was answered with
        self.pending_queries: set[str] = set()  # pressed, not yet answered
        self.condition = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                params = parse_params(raw, self.headers.get("Content-Type") or "")
                parts = self.path.strip("/").split("/")
                if parts[0] == "file":
                    return self._file(parts[1:])
                if len(parts) != 2 or not parts[0].startswith("bot"):
                    return self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                if parts[0][3:] != server.token:
                    return self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                status, body = server.handle(parts[1], params)
                self._answer(status, body)
                return None

            do_GET = do_POST

            def _file(self, parts: list[str]) -> None:
                parts = [urllib.parse.unquote(part) for part in parts]
                if not parts or parts[0] != f"bot{server.token}":
                    return self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                path = "/".join(parts[1:])
                with server.condition:
                    server.downloads.append(path)
                    stored = server.files.get(path.rsplit("/", 1)[-1])
                if stored is None:
                    return self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(stored[0])))
                    self.end_headers()
                    self.wfile.write(stored[0])
                except OSError:
                    self.close_connection = True
                return None

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda _request, _address: None
        self.port = self.httpd.server_address[1]
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # -- what a test does ----------------------------------------------------------

    def send_text(
        self,
        chat_id: int,
        text: str | None,
        user_id: int | None = None,
        first_name: str = "Ada",
        username: str | None = "ada",
        chat_type: str | None = None,
        reply_to_bot: bool = False,
        thread_id: int | None = None,
        reply_to: dict[str, Any] | None = None,
        quote: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A user writes `text` in a chat (in a forum topic with `thread_id`); returns the update.
        `reply_to` is a message (as returned by `message_of`) this one answers; extra `fields` go
        into the message as they are (`caption`, `photo`, `sender_chat`, ...)."""
        chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
        user_id = user_id if user_id is not None else (chat_id if chat_id > 0 else 42)
        message_id = next(self.message_ids)
        chat: dict[str, Any] = {
            "id": chat_id,
            "type": chat_type,
            **({"title": "Group"} if chat_id < 0 else {"first_name": first_name}),
        }
        if thread_id is not None:
            chat["is_forum"] = True
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": {
                "id": user_id,
                "is_bot": False,
                "first_name": first_name,
                **({"username": username} if username else {}),
            },
            **fields,
        }
        if text is not None:
            message["text"] = text
            if "entities" not in fields:
                message["entities"] = entities_of(text)
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        if reply_to_bot:
            reply_to = {
                "message_id": 1,
                "date": int(time.time()),
                "text": "earlier",
                "chat": message["chat"],
                "from": BOT_USER,
            }
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if quote is not None:
            message["quote"] = {"text": quote, "position": 0}
        with self.condition:
            self.user_messages[message_id] = message
        return self.push({"message": message})

    def add_file(self, data: bytes, file_size: int | None = None, **fields: Any) -> dict[str, Any]:
        """Bytes a user sends; returns the file object (PhotoSize, Document, Voice...) carrying them."""
        number = next(self.file_ids)
        file_id = f"file{number}"
        size = len(data) if file_size is None else file_size
        with self.condition:
            self.files[file_id] = (data, size)
        return {"file_id": file_id, "file_unique_id": f"u{number}", "file_size": size, **fields}

    def press(
        self, message_id: int, data: str, user_id: int | None = None, username: str | None = "ada"
    ) -> dict[str, Any]:
        """A user presses a button (with this callback data) under one of the bot's messages."""
        with self.condition:
            sent = self.messages[message_id]
        user_id = user_id if user_id is not None else (sent.chat_id if sent.chat_id > 0 else 42)
        message = self._message(sent.chat_id, message_id, sent.text)
        if sent.thread_id is not None:
            message.update(message_thread_id=sent.thread_id, is_topic_message=True)
            message["chat"]["is_forum"] = True
        if sent.markup is not None:
            message["reply_markup"] = sent.markup
        query_id = f"q{next(self.queries)}"
        with self.condition:
            self.pending_queries.add(query_id)
        user = {"id": user_id, "is_bot": False, "first_name": "Ada", **({"username": username} if username else {})}
        return self.push(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "message": message,
                    "chat_instance": str(sent.chat_id),
                    "data": data,
                }
            }
        )

    def make_admin(self, chat_id: int, user_id: int) -> None:
        with self.condition:
            self.admins.setdefault(chat_id, set()).add(user_id)

    def message_of(self, update: dict[str, Any]) -> dict[str, Any]:
        return update.get("message") or update["edited_message"]

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Any update, as Telegram would deliver it (an update_id is added)."""
        update = {"update_id": next(self.update_ids), **update}
        with self.condition:
            self.updates.append(update)
            self.condition.notify_all()
        return update

    def redeliver(self, update: dict[str, Any]) -> None:
        """The same update again, as Telegram sends one it was not told was received."""
        with self.condition:
            self.updates.append(update)
            self.condition.notify_all()

    def edit(self, update: dict[str, Any], text: str) -> dict[str, Any]:
        """The user edits the message of an earlier update: an `edited_message` update."""
        message = {**self.message_of(update), "text": text, "edit_date": int(time.time())}
        message["entities"] = entities_of(text)
        return self.push({"edited_message": message})

    def delete(self, message_id: int) -> None:
        """An admin (or another bot) deletes one of the bot's messages."""
        with self.condition:
            self.messages.pop(message_id, None)

    def member(self, chat_id: int, status: str, old: str = "member", **rights: Any) -> dict[str, Any]:
        """The bot's own membership in a chat changes (`my_chat_member`): kicked, member, restricted..."""
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        chat.update({"first_name": "Ada"} if chat_id > 0 else {"title": "Group"})
        actor = {"id": chat_id if chat_id > 0 else 42, "is_bot": False, "first_name": "Ada"}

        def member(state: str) -> dict[str, Any]:
            value: dict[str, Any] = {"status": state, "user": BOT_USER}
            if state == "restricted":
                value.update(
                    {"is_member": True, "until_date": 0, "can_send_messages": False, **rights}
                    | {k: False for k in RESTRICTED_RIGHTS if k not in rights}
                )
            if state == "kicked":
                value["until_date"] = 0
            return value

        return self.push(
            {
                "my_chat_member": {
                    "chat": chat,
                    "from": actor,
                    "date": int(time.time()),
                    "old_chat_member": member(old),
                    "new_chat_member": member(status),
                }
            }
        )

    def stop_generation(self, chat_id: int, draft_id: int, thread_id: int | None = None) -> dict[str, Any]:
        """The user presses Stop under a draft (`stopped_message_generation`, Bot API 10.3)."""
        body: dict[str, Any] = {"chat": {"id": chat_id, "type": "private", "first_name": "Ada"}, "draft_id": draft_id}
        if thread_id is not None:
            body["message_thread_id"] = thread_id
        return self.push({"stopped_message_generation": body})

    def rich_sent(self, chat_id: int) -> list[SentMessage]:
        """The rich messages a chat shows, in order."""
        with self.condition:
            return [m for m in self.messages.values() if m.chat_id == chat_id and m.rich is not None]

    def mute(self, chat_id: int, muted: bool = True) -> None:
        """The bot may not write in this group: every send answers 400 "not enough rights"."""
        with self.condition:
            (self.muted.add if muted else self.muted.discard)(chat_id)

    def fail(
        self,
        method: str,
        status: int,
        description: str,
        chat_id: int | None = None,
        times: int = 1,
        retry_after: int | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        """The next `times` calls of `method` (to `chat_id`, if given) fail with this error."""
        if retry_after is not None:
            parameters = {**(parameters or {}), "retry_after": retry_after}
        with self.condition:
            self.injected.append(Injected(method, status, description, chat_id, times, parameters))

    def slow(self, method: str, seconds: float) -> None:
        """Every call of `method` takes this long to answer."""
        self.delays[method] = seconds

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        with self.condition:
            return [c for c in self.calls if c.method == method and (chat_id is None or c.chat_id == chat_id)]

    def sent_texts(self, chat_id: int, thread_id: int | str | None = "any") -> list[str]:
        """The final messages a chat shows, in order (drafts are not messages); in one topic if given."""
        with self.condition:
            return [
                m.text
                for m in self.messages.values()
                if m.chat_id == chat_id and (thread_id == "any" or m.thread_id == thread_id)
            ]

    def too_many(self) -> list[Call]:
        """Every call Telegram answered 429."""
        with self.condition:
            return [c for c in self.calls if c.status == 429]

    def wait_for(self, predicate: Any, timeout: float = 15.0, interval: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s; calls: {[(c.method, c.params) for c in self.calls][-12:]}")

    def close(self) -> None:
        with self.condition:
            self.condition.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the API ---------------------------------------------------------------------

    def handle(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        call = Call(method, params, time.monotonic())
        if method != "getUpdates" and self.delays.get(method):
            time.sleep(self.delays[method])
        with self.condition:
            self.calls.append(call)
            chat_id = call.chat_id
            if chat_id is not None and self.blocked_until.get(chat_id, 0) > call.at:
                self.violations.append(call)
            for injected in self.injected:
                if (
                    injected.method == method
                    and injected.times > 0
                    and (injected.chat_id is None or injected.chat_id == chat_id)
                ):
                    injected.times -= 1
                    retry_after = (injected.parameters or {}).get("retry_after")
                    if retry_after and chat_id is not None:
                        self.blocked_until[chat_id] = time.monotonic() + retry_after
                    call.status = injected.status
                    body: dict[str, Any] = {
                        "ok": False,
                        "error_code": injected.status,
                        "description": injected.description,
                    }
                    if injected.parameters:
                        body["parameters"] = injected.parameters
                    return injected.status, body
            limited = self._flood_check(method, chat_id, call)
            if limited is not None:
                return limited
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._get_updates(params)}
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return 200, {"ok": True, "result": True}
        status, body = handler(params)
        call.status = status
        return status, body

    def _flood_check(self, method: str, chat_id: int | None, call: Call) -> tuple[int, dict[str, Any]] | None:
        """Muted groups, then Telegram's per-chat limit (when `flood` is on): sends and edits only."""
        sends = ("sendMessage", "editMessageText", "sendChatAction", "sendMessageDraft", "sendRichMessage")
        if chat_id is None or method not in (*sends, "sendRichMessageDraft"):
            return None
        if chat_id in self.muted:
            call.status = 400
            return 400, {
                "ok": False,
                "error_code": 400,
                "description": "Bad Request: not enough rights to send text messages to the chat",
            }
        if not self.flood or method not in ("sendMessage", "editMessageText", "sendRichMessage"):
            return None
        tokens, counted = self.flood_tokens.get(chat_id, (3.0, call.at))
        tokens = min(3.0, tokens + (call.at - counted))
        if tokens < 1:
            retry_after = max(1, int(1 - tokens + 0.999))
            self.blocked_until[chat_id] = call.at + retry_after
            self.flood_tokens[chat_id] = (tokens, call.at)
            call.status = 429
            return 429, {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after}",
                "parameters": {"retry_after": retry_after},
            }
        self.flood_tokens[chat_id] = (tokens - 1, call.at)
        return None

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), self.poll_cap)
        deadline = time.monotonic() + timeout
        with self.condition:
            if params.get("allowed_updates"):
                self.allowed_updates = list(params["allowed_updates"])
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed ones are gone
            allowed = self.allowed_updates
            if allowed:  # Telegram never delivers what the bot did not ask for
                self.updates = [u for u in self.updates if any(kind in u for kind in allowed)]
            while not self.updates and time.monotonic() < deadline:
                self.condition.wait(deadline - time.monotonic())
            return list(self.updates[: int(params.get("limit") or 100)])

    def _getMe(self, _params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": BOT_USER}

    def _getFile(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        file_id = str(params.get("file_id"))
        stored = self.files.get(file_id)
        if stored is None:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"}
        if stored[1] > GETFILE_LIMIT:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: file is too big"}
        result = {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_size": stored[1],
            "file_path": f"media/{file_id}",
        }
        return 200, {"ok": True, "result": result}

    def _message(self, chat_id: int, message_id: int, text: str) -> dict[str, Any]:
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "text": text,
            "from": BOT_USER,
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
        }

    def _check_text(self, text: Any) -> tuple[int, dict[str, Any]] | None:
        if not isinstance(text, str) or not text.strip():
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
        return None

    def _check_markup(self, markup: Any) -> tuple[int, dict[str, Any]] | None:
        for row in (markup or {}).get("inline_keyboard", []) if isinstance(markup, dict) else []:
            for button in row:
                if len(str(button.get("callback_data", "")).encode()) > 64:
                    return 400, {"ok": False, "error_code": 400, "description": "Bad Request: BUTTON_DATA_INVALID"}
        return None

    def _sendMessage(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        text = params.get("text")
        problem = self._check_text(text) or self._check_markup(params.get("reply_markup"))
        if problem:
            return problem
        chat_id, message_id = int(params["chat_id"]), next(self.message_ids)
        thread = params.get("message_thread_id")
        with self.condition:
            self.messages[message_id] = SentMessage(
                message_id, chat_id, text, params.get("entities") or [], thread_id=int(thread) if thread else None
            )
            self.messages[message_id].markup = params.get("reply_markup")
        return 200, {"ok": True, "result": self._message(chat_id, message_id, text)}

    def _editMessageText(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        rich = params.get("rich_message") if self.rich else None
        text = params.get("text")
        if rich is not None:
            problem, text = check_rich(rich, draft=False)
        else:
            problem = self._check_text(text)
        problem = problem or self._check_markup(params.get("reply_markup"))
        if problem:
            return problem
        message_id = int(params.get("message_id") or 0)
        with self.condition:
            message = self.messages.get(message_id)
            if message is None:
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message to edit not found"}
            entities = params.get("entities") or []
            markdown = rich.get("markdown") if rich is not None else None
            markup = params.get("reply_markup")
            if markdown is not None and message.rich == markdown and message.markup == markup:
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message is not modified"}
            message.rich = markdown
            if markdown is None and message.text == text and message.entities == entities and message.markup == markup:
                return 400, {
                    "ok": False,
                    "error_code": 400,
                    "description": "Bad Request: message is not modified: specified new message content and reply "
                    "markup are exactly the same as a current content and reply markup of the message",
                }
            message.text, message.entities, message.markup = text, entities, markup  # no markup: the buttons go
            message.edits += 1
        return 200, {"ok": True, "result": self._message(message.chat_id, message_id, text)}

    def _answerCallbackQuery(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        query_id = str(params.get("callback_query_id"))
        with self.condition:
            if query_id not in self.pending_queries:
                return 400, {
                    "ok": False,
                    "error_code": 400,
                    "description": "Bad Request: query is too old and response timeout expired or query ID is invalid",
                }
            self.pending_queries.discard(query_id)
            self.answers[query_id] = params.get("text")
        return 200, {"ok": True, "result": True}

    def _getChatMember(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id, user_id = int(params.get("chat_id") or 0), int(params.get("user_id") or 0)
        with self.condition:
            admin = user_id in self.admins.get(chat_id, set())
        user = {"id": user_id, "is_bot": False, "first_name": "Ada"}
        member: dict[str, Any] = {"status": "administrator" if admin else "member", "user": user}
        if admin:
            member.update(ADMIN_RIGHTS)
        return 200, {"ok": True, "result": member}

    def _getChatAdministrators(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id = int(params.get("chat_id") or 0)
        with self.condition:
            ids = sorted(self.admins.get(chat_id, set()))
        admins = [
            {"status": "administrator", "user": {"id": i, "is_bot": False, "first_name": "Ada"}, **ADMIN_RIGHTS}
            for i in ids
        ]
        return 200, {"ok": True, "result": admins}

    def _sendMessageDraft(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.no_drafts:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: method is not available"}
        if int(params.get("chat_id") or 0) < 0:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat is not private"}
        if not int(params.get("draft_id") or 0):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: draft_id must be non-zero"}
        problem = self._check_text(params.get("text"))
        return problem or (200, {"ok": True, "result": True})

    def _sendRichMessage(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not self.rich:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        problem, text = check_rich(params.get("rich_message"), draft=False)
        problem = problem or self._check_markup(params.get("reply_markup"))
        if problem:
            return problem
        thread = params.get("message_thread_id")
        sent = SentMessage(
            next(self.message_ids), int(params["chat_id"]), text, thread_id=int(thread) if thread else None
        )
        sent.rich = params["rich_message"].get("markdown", "")
        sent.markup = params.get("reply_markup")
        with self.condition:
            self.messages[sent.message_id] = sent
        return 200, {"ok": True, "result": self._message(sent.chat_id, sent.message_id, text)}

    def _sendRichMessageDraft(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not self.rich:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        if int(params.get("chat_id") or 0) < 0:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat is not private"}
        if not int(params.get("draft_id") or 0):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: draft_id must be non-zero"}
        for flag in ("can_stop", "keep_on_stop"):
            if flag in params and not isinstance(params[flag], bool):
                return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {flag} must be a Boolean"}
        problem, _text = check_rich(params.get("rich_message"), draft=True)
        return problem or (200, {"ok": True, "result": True})


RESTRICTED_RIGHTS = (
    "can_send_messages",
    "can_send_audios",
    "can_send_documents",
    "can_send_photos",
    "can_send_videos",
    "can_send_video_notes",
    "can_send_voice_notes",
    "can_send_polls",
    "can_send_other_messages",
    "can_add_web_page_previews",
    "can_change_info",
    "can_invite_users",
    "can_pin_messages",
    "can_manage_topics",
    "can_edit_tag",
    "can_react_to_messages",
)


RICH_CHARS, RICH_BLOCKS, RICH_COLUMNS = 32_768, 500, 20  # the documented rich message limits
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
TAG = re.compile(r"(?<!\\)<[A-Za-z/!?][^>]*>")
REFERENCE = re.compile(r"(?<!\\)&#?\w+;")
ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")
OPENING = re.compile(r"(?:\s*(?:>|[-*+]\s|\d+[.)]\s|#{1,6}\s))*")  # the markers a line starts with
OPENS = re.compile(r">|[-*+]\s|\d+[.)]\s|#{1,6}\s")


def bad(description: str) -> tuple[int, dict[str, Any]]:
    return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {description}"}


def check_rich(rich: Any, draft: bool) -> tuple[tuple[int, dict[str, Any]] | None, str]:
    """An InputRichMessage checked as Telegram checks it; (the refusal or None, its plain text)."""
    if not isinstance(rich, dict):
        return bad("rich_message must be an InputRichMessage"), ""
    given = [name for name in ("markdown", "html", "blocks") if rich.get(name) is not None]
    if len(given) != 1:
        return bad("exactly one of markdown, html and blocks must be specified"), ""
    if "skip_entity_detection" in rich and not isinstance(rich["skip_entity_detection"], bool):
        return bad("skip_entity_detection must be a Boolean"), ""
    if given == ["blocks"]:
        blocks = rich["blocks"]
        if not isinstance(blocks, list) or not blocks or len(blocks) > RICH_BLOCKS:
            return bad("invalid rich message blocks"), ""
        if not draft and any(block.get("type") == "thinking" for block in blocks):
            return bad("thinking blocks can be used only in message drafts"), ""
        return None, "\n".join(str(block.get("text", "")) for block in blocks)
    if given == ["html"]:
        return None, html.unescape(TAG.sub("", rich["html"]))
    text, blocks, columns = render_rich(rich["markdown"])
    if not text.strip():
        return bad("rich message is empty"), ""
    if len(text.encode("utf-16-le")) // 2 > RICH_CHARS:
        return bad("rich message is too long"), text
    if blocks > RICH_BLOCKS:
        return bad("too many blocks in the rich message"), text
    if columns > RICH_COLUMNS:
        return bad("too many table columns"), text
    return None, text


def render_rich(markdown: str) -> tuple[str, int, int]:
    """Rich Markdown as the chat shows it, plain: (text, blocks, the widest table's columns). Fences
    keep their lines as they are; headings, emphasis, pipes and escapes are markup; `<tag>` is HTML."""
    lines: list[str] = []
    fence: str | None = None
    blocks = columns = 0
    paragraph = table = False  # inside one (its lines after the first are no new block)
    for line in markdown.split("\n"):
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(1).startswith(fence) and not match.group(2).strip():
                fence = None
            else:
                lines.append(line)
            continue
        if match:
            fence, blocks = match.group(1), blocks + 1
            continue
        if not line.strip():
            lines.append("")
            paragraph = table = False
            continue
        if RULE.match(line) and "-" in line:  # a table's delimiter row
            continue
        opened = len(OPENS.findall(OPENING.match(line).group()))
        if line.lstrip().startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            columns = max(columns, len(cells))
            line = " | ".join(cells)
            blocks += 1 if table else 2  # a row; the first row also opens the table
            table = True
        elif opened:
            blocks += opened  # a heading, a list item, a quote (nested ones: each)
            paragraph = False
        elif not paragraph:
            blocks, paragraph = blocks + 1, True
        lines.append(inline_plain(re.sub(r"^#{1,6}\s+", "", line)))
    return "\n".join(lines).strip(), blocks, columns


def inline_plain(line: str) -> str:
    """One line of rich Markdown outside fences, as text: code spans as they are, elsewhere HTML tags
    gone, character references decoded, emphasis markers gone, backslash escapes resolved."""
    pieces = re.split(r"(`+[^`]*`+)", line)
    out = []
    for index, piece in enumerate(pieces):
        if index % 2:
            out.append(piece.strip("`"))
            continue
        piece = TAG.sub("", piece)
        piece = REFERENCE.sub(lambda match: html.unescape(match.group()), piece)
        piece = re.sub(r"(?<!\\)(\*\*|__|~~)", "", piece)
        out.append(ESCAPED.sub(r"\1", piece))
    return "".join(out)


ADMIN_RIGHTS = {
    "can_be_edited": False,
    "is_anonymous": False,
    "can_manage_chat": True,
    "can_delete_messages": True,
    "can_manage_video_chats": True,
    "can_restrict_members": True,
    "can_promote_members": False,
    "can_change_info": True,
    "can_invite_users": True,
    "can_post_stories": False,
    "can_edit_stories": False,
    "can_delete_stories": False,
}


def entities_of(text: str) -> list[dict[str, Any]]:
    """The entities Telegram would find: a command at the start, @mentions (offsets in UTF-16 units)."""
    entities = []
    for match in re.finditer(r"(?<![\w@.])@[A-Za-z][A-Za-z0-9_]{3,31}(?![\w@])|^/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text):
        offset = len(text[: match.start()].encode("utf-16-le")) // 2
        kind = "bot_command" if match.group().startswith("/") else "mention"
        entities.append({"type": kind, "offset": offset, "length": len(match.group().encode("utf-16-le")) // 2})
    return entities


def parse_params(raw: bytes, content_type: str) -> dict[str, Any]:
    """A Bot API call's parameters, from JSON or a form whose non-string values are JSON-encoded."""
    if "json" in content_type:
        try:
            value = json.loads(raw or b"{}")
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}
    params: dict[str, Any] = {}
    for key, values in urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True).items():
        value: Any = values[-1]
        if key not in STRING_PARAMS:
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        params[key] = value
    return params


if __name__ == "__main__":  # run by hand: python tests/telegram_server.py
    fake = FakeTelegram()
    print(fake.api_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()
