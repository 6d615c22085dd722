#!/usr/bin/env python3
"""chatbot: a terminal streaming chatbot for any OpenAI-compatible provider.

The whole program is one loop:

    messages -> model call -> streamed answer -> save the reply -> repeat

This file is the terminal front-end, in reading order: the command table -> the REPL ->
one-shot mode -> main(). The engine it drives lives in the `chatcore` package (settings,
conversation and trimming, tokens, usage and cost, the provider and its streams, one turn,
sessions); `terminal_render` draws replies. Follow a name there for the details.

Importing this module only defines things: no .env is read, no client is built,
nothing touches the network. Heavy libraries (openai, rich, prompt_toolkit,
tiktoken, genai-prices) are imported where they are first needed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatcore import __version__, files
from chatcore.chat import Chat
from chatcore.conversation import PromptTooLarge
from chatcore.log import report_bug
from chatcore.provider import Failure, one_line
from chatcore.settings import BOOL_SETTINGS, SETTINGS, ConfigError, load_settings, resolve_settings
from chatcore.store import SessionStore, StoreError, default_db_path, export_data, write_export
from chatcore.turn import Cancel, TurnResult, empty_reply_note, finish_note
from chatcore.usage import TurnStats, format_money, total_usage, usage_line
from terminal_input import ctrl_c_stops, forget_typed, keys_not_lines, make_prompt_session
from terminal_render import MarkdownView, PlainView, Waiting, fit, plural, wrapped

# ---------------------------------------------------------------------------
# Commands: one table drives dispatch, /help and completion
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    usage: str  # argument synopsis: "" for none, "[NAME]" optional, "NAME" required
    help: str
    handler: Callable[[Repl, str], None]


def cmd_help(repl: Repl, arg: str) -> None:
    width = max(len(f"/{c.name} {c.usage}") for c in COMMANDS)
    for command in COMMANDS:
        names = f"/{command.name} {command.usage}".strip()
        aliases = f" (also {', '.join('/' + a for a in command.aliases)})" if command.aliases else ""
        repl.say(wrapped(f"  {names:<{width}}  {command.help}{aliases}", width + 4))
    repl.say(
        wrapped(
            "  Enter sends · Esc Enter adds a line · Ctrl-C stops a reply · Ctrl-D quits · "
            "start a message with // to send a leading slash",
            2,
        )
    )


def cmd_exit(repl: Repl, arg: str) -> None:
    raise EOFError


def cmd_clear(repl: Repl, arg: str) -> None:
    repl.chat.conversation.clear()
    if repl.chat.store is not None and repl.saving:
        old = repl.session_name
        repl.start_session(None)
        repl.say(f"Conversation cleared. (The old one stays saved as {old!r}; this is {repl.session_name!r}.)")
    else:
        repl.say("Conversation cleared.")


def cmd_stats(repl: Repl, arg: str) -> None:
    chat = repl.chat
    turns = chat.turns
    history = chat.conversation.history
    exchanges = sum(1 for m in history if m.role == "user")
    repl.say(f"messages in memory: {len(history) + 1} (system prompt included; {plural(exchanges, 'turn')})")
    if chat.last_request is not None:
        request = chat.last_request
        dropped = f", {request.dropped} older not sent" if request.dropped else ""
        repl.say(f"sent last turn: {plural(len(request.turns) + 1, 'message')}{dropped}")
    if not turns:
        repl.say("no replies yet")
        return
    window = chat.context_window(False)
    repl.say(f"context window: {window.tokens:,} tokens ({window.source})")
    repl.say(f"last turn: {usage_line(turns[-1])}")
    usage, money = total_usage(turns)
    about = "~" if usage.estimated else ""
    estimated = ""
    if usage.estimated:
        estimated = " (estimated)" if all(t.usage.estimated for t in turns) else " (some counts estimated)"
    repl.say(
        f"session: {plural(len(turns), 'request')} · {about}{usage.input_tokens:,} in · "
        f"{about}{usage.output_tokens:,} out · {money}{estimated}"
    )


def cmd_model(repl: Repl, arg: str) -> None:
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


def cmd_system(repl: Repl, arg: str) -> None:
    chat = repl.chat
    if not arg:
        repl.say(f"system prompt: {chat.conversation.system}")
        return
    chat.conversation.system = arg
    if chat.store is not None and chat.session_id is not None:
        chat.store.set_meta(chat.session_id, system=arg)
    repl.say("system prompt replaced")


def cmd_retry(repl: Repl, arg: str) -> None:
    history = repl.chat.conversation.history
    if not history:
        repl.error("nothing to retry yet")
        return
    if history[-1].role == "assistant":
        removed = history.pop()
        if repl.chat.store is not None and removed.row_id is not None:
            repl.chat.store.delete_messages([removed.row_id])
    repl.run_turn(None)


def cmd_undo(repl: Repl, arg: str) -> None:
    chat = repl.chat
    start = chat.conversation.last_exchange_start()
    if start is None:
        repl.error("nothing to undo")
        return
    removed = chat.conversation.history[start:]
    del chat.conversation.history[start:]
    if chat.store is not None:
        chat.store.delete_messages([m.row_id for m in removed if m.row_id is not None])
    forget_typed(repl.prompt_session, {m.content for m in removed if m.role == "user"})
    repl.say(f"removed the last exchange ({len(removed)} message{'s' if len(removed) != 1 else ''})")


def cmd_api(repl: Repl, arg: str) -> None:
    repl.say(f"API: {repl.chat.settings.api} (set with --api chat|responses or OPENAI_API)")


def cmd_summarize(repl: Repl, arg: str) -> None:
    settings = repl.chat.settings
    if arg not in ("", "on", "off"):
        repl.error("usage: /summarize [on|off]")
        return
    if arg:
        settings.summarize = arg == "on"
    repl.say(
        f"summaries of dropped turns: {'on' if settings.summarize else 'off'}" + ("" if arg else " (/summarize on|off)")
    )


def cmd_sessions(repl: Repl, arg: str) -> None:
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
        lines.append(
            f"{mark} {fit(name, 24):<24} {fit(model or '-', 24):<24} {plural(turns, 'turn'):>10}  {when}  {money}"
        )
    return lines


def export_problem(path: str, exc: Exception) -> str:
    """Why an export failed, worded the same for /save and --export."""
    return f"cannot export to {path}: {getattr(exc, 'strerror', None) or exc}"


def cmd_session(repl: Repl, arg: str) -> None:
    if repl.require_store() is not None and repl.start_session(arg) and not repl.chat.conversation.history:
        repl.note(f"new session {arg!r}")


def cmd_rename(repl: Repl, arg: str) -> None:
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


def cmd_delete(repl: Repl, arg: str) -> None:
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
    typed = {m["content"] for m in store.export(arg)["messages"] if m["role"] == "user"}
    try:
        store.delete(arg)
        forget_typed(repl.prompt_session, typed)
    except StoreError as exc:
        repl.error(str(exc))
        return
    repl.say(f"deleted {arg!r}")


def cmd_save(repl: Repl, arg: str) -> None:
    chat = repl.chat
    data = export_data(
        repl.session_name or "conversation", chat.model, chat.settings.host, chat.conversation, chat.turns
    )
    try:
        write_export(data, arg)
    except (OSError, ValueError) as exc:
        repl.error(export_problem(arg, exc))
        return
    repl.say(f"saved {len(data['messages'])} messages to {arg}")


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
        return (
            None,
            "",
            (
                f"unknown command /{word}: type /help for the list. Your text is back in the prompt: "
                f"start it with // to send it as a message"
            ),
        )
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
        self.cancel: Cancel | None = None  # the turn in progress: what Ctrl-C stops
        self.typed_ahead: list[str] = []  # lines entered before the first prompt was drawn
        self.waiting: Waiting | None = None  # the "waiting for the model…" line, until the first token
        self.kept_message: str | None = None  # a failed message too tall to put back in the prompt
        self.readonly_store: SessionStore | None = None  # a database that can be read but not written
        self.startup_notes: list[tuple[Callable[[str], None], str]] = []  # shown under the banner
        chat.notify = chat.provider.notify = self.note
        if args.verbose:
            chat.log_sink = held_log.append
        files.notice = lambda text: self.early(self.note, text)
        for warning in chat.settings.warnings:
            self.early(self.warn, warning)
        for note in chat.settings.notes:
            self.early(self.note, note)

    # -- output ------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        if self.waiting is not None:
            self.waiting.clear()  # a retry notice while waiting: on a line of its own
        self.console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True)

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
        store = self.chat.store or self.readonly_store  # a read-only database can still be listed
        if store is None:
            self.error(self._store_error or "sessions are off (--no-save)")
        return store

    def open_store(self) -> None:
        try:
            self.chat.store = SessionStore(default_db_path(self.chat.settings))
        except StoreError as exc:
            self._store_error = str(exc)
            self.early(self.error, f"{exc}; chatting without saving")
            return
        if self.chat.store.readonly:
            self.readonly_store = self.chat.store
            self._store_error = self.chat.store.readonly_note
            self.early(self.note, self._store_error)

    def start_session(self, name: str | None) -> bool:
        """Switch to a named session (resuming it if it exists) or start an automatic one."""
        chat = self.chat
        if chat.store is None:
            return False
        name = name or time.strftime("chat-%Y%m%d-%H%M%S")
        try:
            existed = chat.use_session(name)
        except StoreError as exc:
            self.early(self.error, str(exc))
            return False
        self.session_name = name
        if existed:
            conversation = chat.conversation
            flagged = sum(1 for m in conversation.history if m.flags)
            extra = f", {flagged} marked interrupted or cut short" if flagged else ""
            turns = sum(1 for m in conversation.history if m.role == "user")
            notes = [
                f"resumed session {name!r}: {plural(turns, 'turn')} "
                f"({plural(len(conversation.history), 'message')}){extra}"
            ]
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
        return PlainView(sys.stdout, self.chat.settings.show_reasoning, sys.stdout, dim=not os.environ.get("NO_COLOR"))

    def run_turn(self, text: str | None) -> None:
        """Send `text` (or, for /retry, the history as it is) and show the reply."""
        try:
            self._run_turn(text)
        finally:
            self.cancel = None  # no turn in progress: Ctrl-C has nothing to stop

    def _run_turn(self, text: str | None) -> None:
        chat = self.chat
        if text is not None:
            chat.add_user(text)
        elif not chat.conversation.history or chat.conversation.history[-1].role != "user":
            self.error("nothing to send")
            return
        resend = chat.conversation.history[-1].content
        view = self.view()
        cancel = self.cancel = Cancel()
        waiting = self.waiting = Waiting(sys.stdout, shown=not os.environ.get("NO_COLOR")).start()
        try:
            result = chat.respond(
                waiting.until_first_event(view.on_event), stream=not self.args.no_stream, cancel=cancel
            )
            waiting.stop()
            view.finish()
        except PromptTooLarge as exc:
            waiting.stop()
            chat.drop_last_user()
            self.restore(resend, str(exc))
            return
        except Failure as failure:
            waiting.stop()
            view.abort()
            hint = ": use /clear, /undo or lower --max-messages" if failure.kind == "context_length" else ""
            self.restore(resend, f"{failure}{hint}")
            return
        finally:
            waiting.stop()
            self.waiting = None
        if result.interrupted:
            self.note("[interrupted]" if result.reply else "[interrupted before the reply began]")
            if not result.reply:
                self.pending_text = resend
        elif result.failure is not None:
            self.error(f"reply cut short: {result.failure}")
        elif result.ended_early:
            self.note(f"[{finish_note(result.finish_reason, result.window_full)}]")
        elif not result.reply:
            self.note(f"[{empty_reply_note(result)}]")
        if self.chat.settings.show_usage and chat.turns:
            self.note(usage_line(chat.turns[-1]))
        show_held_log(sys.stderr)
        self.say("")  # a blank line between the reply and the next prompt

    # -- the loop --------------------------------------------------------------------

    def banner(self) -> str:
        """One line, or several broken between its parts (never inside one) on a narrow terminal."""
        chat = self.chat
        parts = [f"chatbot {__version__}", chat.model, chat.settings.host]
        if chat.settings.discovered:
            parts.append(f"found {chat.settings.discovered}")
        if chat.settings.api == "responses":
            parts.append("responses API")
        parts.append("/help for commands")
        width = max(40, shutil.get_terminal_size().columns - 1)
        lines = [parts[0]]
        for part in parts[1:]:
            if len(lines[-1]) + 3 + len(part) > width:
                lines.append(part)
            else:
                lines[-1] += f" · {part}"
        return "\n".join(lines)

    def restore(self, text: str, error: str) -> None:
        """Say why a message failed and give it back: in the prompt, or, when it is taller than the
        screen (its error would scroll out of sight), kept aside with the error as the last line."""
        if text.count("\n") + 4 < shutil.get_terminal_size().lines:
            self.error(error)
            self.pending_text = text
            return
        lines = text.count("\n") + 1
        self.kept_message = text
        self.note(
            f"your message ({lines} lines) is kept: Enter on the empty prompt resends it, ↑ brings it back to edit"
        )
        self.error(error)

    def handle(self, text: str) -> bool:
        """One line from the prompt: a command, or a message to send. False when the chat should end."""
        if not text.strip():
            return True
        if text.startswith("/") and not text.startswith("//") and "\n" not in text.strip():
            command, arg, problem = parse_command(text.strip())
            if command is None:
                self.pending_text = text  # never lose what was typed or pasted
                self.error(problem or "unknown command")
                return True
            try:
                command.handler(self, arg)
            except EOFError:
                return False
            except KeyboardInterrupt:
                self.note("[interrupted]")
            except Exception as exc:
                self.error(f"internal error: {report_bug(exc)}")
            return True
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
        return True

    def run(self, first_prompt: str | None = None) -> int:
        self.say(self.banner())
        for show, text in self.startup_notes:
            show(text)
        self.prompt_session = make_prompt_session(
            COMMANDS, lambda: threading.Thread(target=self.chat.warm_up, daemon=True).start()
        )  # the prompt is on screen: load the SDK (and price table) while the user types
        with ctrl_c_stops(lambda: self.cancel):
            return self.loop(first_prompt)

    def loop(self, first_prompt: str | None) -> int:
        if first_prompt:
            self.say(f"❯ {first_prompt}")  # -i: the prompt shows, as if typed, above its reply
            self.run_turn(first_prompt)
        for line in self.typed_ahead:  # entered before the prompt was drawn: handled as if typed at it
            if not self.handle(line):
                return self.close()
        while True:
            try:
                text = self.prompt_session.prompt("❯ ", default=self.pending_text)
            except KeyboardInterrupt:
                self.pending_text = ""
                continue
            except EOFError:
                break
            self.pending_text = ""
            kept, self.kept_message = self.kept_message, None
            if kept and not text.strip():
                text = kept  # Enter on the empty prompt resends the message that failed
            try:
                if not self.handle(text):
                    break
            except KeyboardInterrupt:  # a Ctrl-C between two steps, outside the prompt: the chat goes on
                self.pending_text = self.pending_text or text
                continue
        return self.close()

    def close(self) -> int:
        """Leave: an empty chat leaves no session behind, and the session is released."""
        if self.chat.store is not None:
            if self.chat.session_id is not None:
                self.chat.store.drop_if_empty(self.chat.session_id)
            self.chat.store.close()
        return EXIT_OK


# ---------------------------------------------------------------------------
# One-shot mode and main()
# ---------------------------------------------------------------------------

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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
        "short, 2 usage or configuration error, 130 interrupted.",
    )
    parser.add_argument("prompt", nargs="*", help="prompt to send (piped stdin comes first, then this)")
    for setting in SETTINGS:
        if not setting.flags:
            continue
        help_text = f"{setting.help} [{setting.env}]" if setting.env else setting.help
        if setting.name in BOOL_SETTINGS:
            parser.add_argument(*setting.flags, dest=setting.name, action="store_const", const="1", help=help_text)
        else:
            default = (
                f"; default {setting.default}" if setting.default not in (None, "") and setting.name != "system" else ""
            )
            parser.add_argument(
                *setting.flags,
                dest=setting.name,
                metavar=setting.name.upper().replace("_", "-") if setting.name not in ("api",) else "{chat,responses}",
                help=help_text.replace("]", default + "]", 1) if default else help_text,
            )
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this file instead of ./.env")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole reply instead of streaming")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the reply and its usage")
    parser.add_argument("-i", "--interactive", action="store_true", help="send the prompt, then stay in the chat")
    parser.add_argument("--session", metavar="NAME", help="start or resume a saved conversation")
    parser.add_argument(
        "-c", "--continue", dest="continue_", action="store_true", help="resume the most recent conversation"
    )
    parser.add_argument("--list-sessions", action="store_true", help="list saved conversations and exit")
    parser.add_argument(
        "--export",
        nargs=2,
        metavar=("NAME", "FILE"),
        help="export a saved conversation to FILE (.md or .json) and exit",
    )
    parser.add_argument(
        "--import", dest="import_file", metavar="FILE", help="import a conversation exported as JSON and exit"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr too")
    parser.add_argument("--version", action="version", version=f"chatbot {__version__}")
    return parser


def read_prompt(args: Any, stdin: Any) -> str:
    """The one-shot prompt: piped text first, then the argument, separated by a blank line."""
    parts = []
    if stdin is not None and not stdin.isatty():
        data = stdin.buffer.read()
        try:
            piped = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"stdin is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                f"convert it first, e.g. with iconv"
            ) from None
        if piped.strip():
            parts.append(piped.rstrip("\n"))
    if args.prompt:
        parts.append(" ".join(args.prompt))
    prompt = "\n\n".join(parts)
    if not prompt.strip():
        raise UsageError(
            "nothing to send: give a prompt as an argument or pipe one on stdin "
            "(run with a terminal and no prompt for a chat)"
        )
    return prompt


def open_session(chat: Chat, args: Any) -> None:
    """Attach the sessions store and resume or start the session --session or -c asks for."""
    chat.store = SessionStore(default_db_path(chat.settings))
    if chat.store.readonly:
        sys.stderr.write(f"chatbot: {chat.store.readonly_note}\n")
    name = chat.store.latest() if args.continue_ else args.session
    if name is None:
        raise StoreError("no saved conversation to continue")
    try:
        chat.use_session(name)
    except StoreError as exc:
        raise StoreError(f"{exc}: finish there first, or pick another --session") from None


def run_once(chat: Chat, prompt: str, args: Any) -> int:
    """Answer one prompt on stdout; diagnostics on stderr; the exit status says how it went."""
    settings = chat.settings
    err = sys.stderr
    markdown = not args.json and sys.stdout.isatty() and not settings.raw and not os.environ.get("NO_COLOR")
    if args.json:
        view: Any = PlainView(_NullWriter())
    elif markdown:
        from rich.console import Console

        view = MarkdownView(sys.stdout, Console(highlight=False), show_reasoning=settings.show_reasoning)
    else:
        view = PlainView(sys.stdout, settings.show_reasoning, err if settings.show_reasoning else None)
    chat.wants_cost = bool(args.json or settings.show_usage or chat.store is not None)
    chat.add_user(prompt)
    cancel = Cancel()
    waiting = Waiting(sys.stdout) if sys.stdout.isatty() and not args.json and not os.environ.get("NO_COLOR") else None
    on_event = view.on_event if waiting is None else waiting.start().until_first_event(view.on_event)
    try:
        with ctrl_c_stops(lambda: cancel):
            try:
                result = chat.respond(on_event, stream=not args.no_stream, cancel=cancel)
            finally:
                if waiting is not None:
                    waiting.stop()  # before anything else is written, the error line included
            view.finish()
    except PromptTooLarge as exc:
        chat.drop_last_user()
        return report_failure(args.json, str(exc), EXIT_USAGE, "prompt_too_large", chat.model)
    except Failure as failure:
        view.abort()
        hint = ": lower --max-messages, or start a new --session" if failure.kind == "context_length" else ""
        status = EXIT_USAGE if failure.kind == "no_endpoint" else EXIT_FAILED  # --api responses where there is none
        return report_failure(args.json, f"{failure}{hint}", status, failure.kind, chat.model)
    status = EXIT_OK
    if result.interrupted:
        err.write("chatbot: interrupted\n")
        status = EXIT_INTERRUPTED
    elif result.failure is not None:
        err.write(f"chatbot: reply cut short: {result.failure}\n")
        status = EXIT_FAILED
    elif result.ended_early:
        err.write(f"chatbot: {finish_note(result.finish_reason, result.window_full)}\n")
        status = EXIT_FAILED
    elif not result.reply:
        err.write(f"chatbot: {empty_reply_note(result)}\n")
    stats = chat.turns[-1]
    if args.json:
        print(json.dumps(json_result(result, stats), ensure_ascii=False))
    elif settings.show_usage:
        err.write(usage_line(stats) + "\n")
    return status


def json_result(
    result: TurnResult | None, stats: TurnStats | None, error: dict[str, str] | None = None, model: str = ""
) -> dict[str, Any]:
    """The one JSON object --json prints, in every outcome; `error` ({type, message}) when something failed."""
    usage = stats.usage if stats else None
    payload: dict[str, Any] = {
        "model": result.model if result else model,
        "reply": result.reply if result else "",
        "finish_reason": result.finish_reason if result else None,
        "usage": None
        if usage is None
        else {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "estimated": usage.estimated,
        },
        "cost_usd": stats.cost if stats else None,
        "latency_ms": round(result.latency * 1000, 1) if result else None,
        "ttft_ms": round(result.ttft * 1000, 1) if result and result.ttft is not None else None,
        "truncated": result.truncated if result else True,
    }
    if error:
        payload["error"] = error
    elif result is not None and result.interrupted:
        payload["error"] = {"type": "interrupted", "message": "interrupted"}
    elif result is not None and result.failure is not None:
        payload["error"] = {"type": result.failure.kind, "message": str(result.failure)}
    elif result is not None and result.ended_early:
        payload["error"] = {"type": "incomplete", "message": finish_note(result.finish_reason, result.window_full)}
    return payload


held_log: list[str] = []  # -v request log lines, written out once the reply has ended


def show_held_log(out: Any) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for line in held_log:
        out.write(f"{stamp} {line}\n")
    held_log.clear()
    out.flush()


def report_failure(wants_json: bool, message: str, status: int, kind: str, model: str = "") -> int:
    """One line on stderr; with --json, stdout is still one JSON object, carrying the error."""
    sys.stderr.write(f"chatbot: {message}\n")
    if wants_json:
        print(json.dumps(json_result(None, None, {"type": kind, "message": message}, model), ensure_ascii=False))
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
                raise UsageError(export_problem(path, exc)) from None
        else:
            try:
                with open(args.import_file, encoding="utf-8") as import_file:
                    data = json.load(import_file)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read {args.import_file}: {getattr(exc, 'strerror', None) or exc}") from None
            print(f"imported session {store.import_session(data)!r}")
    finally:
        store.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv

    def fail(kind: str, message: str, status: int) -> int:
        return report_failure(wants_json, message, status, kind)

    try:
        return _main(argv)
    except UsageError as exc:
        return fail("usage", str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return fail("configuration", str(exc), EXIT_USAGE)
    except StoreError as exc:
        return fail("sessions", str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # the reader went away: exit quietly
        except OSError:
            pass
        return EXIT_FAILED
    except Exception as exc:  # a bug of ours: one line for the user, the traceback in the log
        return fail("internal", f"internal error: {report_bug(exc)}", EXIT_FAILED)


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
    if not one_shot or args.interactive:
        return run_chat(args, environ)
    prompt = read_prompt(args, sys.stdin)
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS if s.flags}
    settings = load_settings(flags, environ, args.env_file)
    for warning in settings.warnings:
        print(f"chatbot: warning: {warning}", file=sys.stderr)
    for note in settings.notes:  # what zero-config chose
        print(f"chatbot: {note}", file=sys.stderr)
    chat = Chat(settings, lambda text: print(f"chatbot: {text}", file=sys.stderr))
    if args.verbose:  # shown once the reply has ended, so a log line never joins the reply's last line
        chat.log_sink = held_log.append
    if args.session or args.continue_:
        open_session(chat, args)
    try:
        return run_once(chat, prompt, args)
    finally:
        show_held_log(sys.stderr)
        if chat.store is not None:
            chat.store.close()


def run_chat(args: Any, environ: dict[str, str]) -> int:
    """The interactive chat. Keys typed before the prompt is drawn wait as keys, and leaving is
    immediate: once everything is saved, the process ends without the interpreter's slow teardown."""
    restore_terminal, typed_ahead = keys_not_lines()
    try:
        status = EXIT_OK if typed_ahead is None else start_chat(args, environ, typed_ahead)
    finally:
        restore_terminal()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def start_chat(args: Any, environ: dict[str, str], typed_ahead: list[str]) -> int:
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS if s.flags}
    settings = load_settings(flags, environ, args.env_file)
    chat = Chat(settings, lambda text: None)
    repl = Repl(chat, args)
    repl.typed_ahead = typed_ahead
    if not settings.no_save or args.session or args.continue_:
        repl.open_store()
        if chat.store is not None:
            name = args.session
            if args.continue_:
                name = chat.store.latest()
                if name is None:
                    repl.early(repl.note, "no saved conversation to continue: starting a new one")
            if not repl.start_session(name):  # open in another chatbot: go on in a new session
                repl.early(
                    repl.note, "starting a new session instead: /sessions lists the saved ones, /session NAME opens one"
                )
                repl.start_session(None)
            repl.saving = True
    first = " ".join(args.prompt) if args.interactive and args.prompt else None
    return repl.run(first)


if __name__ == "__main__":
    sys.exit(main())
