#!/usr/bin/env python3
"""chatbot: a terminal streaming chatbot for any OpenAI-compatible provider.

The whole program is one loop:

    messages -> model call -> streamed answer -> save the reply -> repeat

`Repl.loop` below is that loop; `Repl.run_turn` is one pass of it. The engine (`chatcore`) owns
the conversation: `chat.send(text, ...)` adds the message, calls the model, streams the answer
into the view and saves the reply; this file only reads what the user types and shows what
comes back. Then come one-shot mode and main(). The slash commands are in `terminal_commands`,
the prompt's mechanics in `terminal_input`, the drawing of replies in `terminal_render`.

Importing this module only defines things: no .env is read, no client is built,
nothing touches the network. Heavy libraries (openai, rich, prompt_toolkit,
tiktoken, genai-prices) are imported where they are first needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from typing import Any

from chatcore import __version__
from chatcore.attachments import Attachment, AttachmentError, Kind, TranscriptionError, load_attachment
from chatcore.chat import Chat, Refused
from chatcore.conversation import PromptTooLarge
from chatcore.log import one_line, report_bug
from chatcore.provider import Failure
from chatcore.settings import ConfigError, Settings, load_settings
from chatcore.store import SessionStore, StoreError, default_db_path
from chatcore.turn import Cancel, Outcome, TurnResult
from chatcore.usage import TurnStats, usage_line
from terminal_cli import (
    UsageError,
    build_parser,
    load_attachments,
    read_attached_stdin,
    read_prompt,
    session_tool,
    setting_flags,
    starting_role,
    take_role,
)
from terminal_commands import COMMANDS, parse_command, run_command
from terminal_input import ctrl_c_stops, keys_not_lines, make_prompt_session
from terminal_render import HeldLog, MarkdownView, PlainView, Screen, Waiting, engine_notices_to, plural

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CTRL_C_GRACE = 1.0  # seconds after a turn in which Ctrl-C at the prompt leaves the line as it is

# ---------------------------------------------------------------------------
# The REPL: prompt -> command or turn -> render -> repeat
# ---------------------------------------------------------------------------


class Repl:
    """The interactive loop. The conversation is `chat`'s; this shows it and reads the next line."""

    def __init__(self, chat: Chat, screen: Screen, args: Any, typed_ahead: list[str], held_log: HeldLog):
        self.chat, self.screen, self.args, self.held_log = chat, screen, args, held_log
        self.typed_ahead = typed_ahead  # lines entered before the first prompt was drawn
        self.markdown = not (chat.settings.raw or os.environ.get("NO_COLOR"))
        self.pending_text = ""  # a message that failed comes back as the next prompt's text
        self.kept_message: str | None = None  # a failed message too tall to put back in the prompt
        self.session_name: str | None = None
        self.prompt_session: Any = None
        self.cancel: Cancel | None = None  # the turn in progress: what Ctrl-C stops
        self.turn_ended_at = 0.0  # Ctrl-C presses just after a turn are taken as meant for it
        self.attached: list[Attachment] = []  # /attach and -a: files queued for the next message
        self.say, self.note, self.error = screen.say, screen.note, screen.error

    def run(self, first_prompt: str | None = None) -> int:
        self.say(self.banner())
        self.prompt_session = make_prompt_session(
            COMMANDS, lambda: threading.Thread(target=self.chat.warm_up, daemon=True).start()
        )  # the prompt is on screen: load the SDK (and price table) while the user types
        self.screen.started()
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
            self.prompt_session.bottom_toolbar = self.attached_line()  # None: no bottom line at all
            try:
                text = self.prompt_session.prompt("❯ ", default=self.pending_text)
            except KeyboardInterrupt:
                if time.monotonic() - self.turn_ended_at > CTRL_C_GRACE:
                    self.pending_text = ""  # Ctrl-C at the prompt clears the line...
                continue  # ...but not a press that was meant for the reply that just ended
            except EOFError:
                break
            self.pending_text = ""
            kept, self.kept_message = self.kept_message, None
            if kept and not text.strip():
                text = kept  # Enter on the empty prompt resends the message that failed
            elif self.attached and not text.strip():
                self.run_turn("")  # Enter on the empty prompt sends what is attached, with no text
                continue
            try:
                if not self.handle(text):
                    break
            except KeyboardInterrupt:  # a Ctrl-C between two steps, outside the prompt: the chat goes on
                self.pending_text = self.pending_text or text
        return self.close()

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
                return run_command(self, command, arg)
            except KeyboardInterrupt:
                self.note("[interrupted]")
            except Exception as exc:
                self.error(f"internal error: {report_bug(exc)}")
            return True
        try:  # whatever fails, the engine has taken the message back out: it returns to the prompt
            self.run_turn(text[1:] if text.startswith("//") else text)
        except KeyboardInterrupt:  # outside the stream (preparing the request): nothing was sent
            self.pending_text = text
            self.note("[interrupted]")
        except Exception as exc:  # a bug of ours must not end the chat or lose the message
            self.pending_text = text
            self.error(f"internal error: {report_bug(exc)}")
        return True

    def run_turn(self, text: str | None) -> None:
        """Send `text` (None: /retry, the last message again) and show the reply as it streams."""
        chat = self.chat
        resend = text if text is not None else chat.conversation.last_user_text()
        history = chat.conversation.history
        # what goes back in the queue if the turn fails: /retry's message loses its place in the history
        resend_attachments = (
            self.attached
            if text is not None
            else next((m.attachments for m in reversed(history) if m.role == "user"), [])
        )
        view = self.view()
        self.cancel = cancel = Cancel()
        waiting = self.screen.waiting = Waiting(sys.stdout, shown=not os.environ.get("NO_COLOR")).start()
        on_event = waiting.until_first_event(view.on_event)
        stream = not self.args.no_stream
        try:
            if text is None:
                result = chat.retry(on_event, stream, cancel)
            else:
                result = chat.send(text, on_event, stream, cancel, attachments=self.attached)
                self.attached = []  # sent with the message (a failure below keeps them for the resend)
            waiting.stop()
            view.finish()
        except Refused as exc:
            waiting.stop()
            self.error(str(exc))
            return
        except (AttachmentError, TranscriptionError) as exc:
            waiting.stop()
            self.give_back(
                text, resend, resend_attachments, f"{exc} (nothing was sent; /attach lists what is attached)"
            )
            return
        except PromptTooLarge as exc:
            waiting.stop()
            self.give_back(text, resend, resend_attachments, str(exc))
            return
        except Failure as failure:
            waiting.stop()
            view.abort()
            hint = ": use /clear, /undo or lower --max-messages" if failure.kind == "context_length" else ""
            if resend_attachments and text is not None:
                hint += f" ({plural(len(resend_attachments), 'attachment')} still attached)"
            self.give_back(text, resend, resend_attachments, f"{failure}{hint}")
            return
        finally:
            waiting.stop()
            self.screen.waiting = None
            self.cancel = None  # no turn in progress: Ctrl-C has nothing to stop
            self.turn_ended_at = time.monotonic()
        if result.outcome is Outcome.INTERRUPTED and not result.reply and text is not None:
            self.attached = list(resend_attachments)  # stopped before the reply began: offered again
        self.show_ending(result, resend if text is not None else "")

    def give_back(self, text: str | None, resend: str, attachments: list[Attachment], error: str) -> None:
        """A message that was not sent comes back to the prompt with its attachments; a /retry that
        failed left the conversation as it was (the old reply too), so there is only the error."""
        if text is None:
            self.error(error)
            return
        self.attached = list(attachments)
        self.restore(resend, error)

    def show_ending(self, result: TurnResult, resend: str) -> None:
        """How the reply ended, when it is not simply whole; then usage and the log, if asked for."""
        outcome = result.outcome
        if outcome is Outcome.FAILED_MID_REPLY:
            self.error(result.note())
        elif outcome is not Outcome.COMPLETE:
            self.note(f"[{result.note()}]")
        if outcome is Outcome.INTERRUPTED and not result.reply and resend:
            self.pending_text = resend
        if self.chat.settings.show_usage and self.chat.requests:
            self.note(usage_line(self.chat.requests[-1]))
        self.held_log.show(sys.stderr)
        self.say("")  # a blank line between the reply and the next prompt

    def attached_line(self) -> str | None:
        """The prompt's bottom line while files are queued: what goes with the next message."""
        if not self.attached:
            return None
        names = ", ".join(f"{a.name} ({a.describe()})" for a in self.attached)
        return f" attached: {names} · sent with your next message · /attach clear empties"

    def attach(self, path: str) -> Attachment:
        """Queue a file for the next message (AttachmentError, TranscriptionError: nothing queued)."""
        attachment = load_attachment(path, settings=self.chat.settings)
        if attachment.kind is Kind.AUDIO:
            attachment = self.chat.transcribe(attachment)
            self.note(f"transcript of {attachment.name}: {one_line(attachment.text, 400)}")
        self.attached.append(attachment)
        return attachment

    def view(self) -> MarkdownView | PlainView:
        if self.markdown:
            return MarkdownView(sys.stdout, self.screen.console, show_reasoning=self.chat.settings.show_reasoning)
        return PlainView(sys.stdout, self.chat.settings.show_reasoning, sys.stdout, dim=not os.environ.get("NO_COLOR"))

    def restore(self, text: str, error: str) -> None:
        """Say why a message failed and give it back: in the prompt, or, when it is taller than the
        screen (its error would scroll out of sight), kept aside with the error as the last line."""
        if text.count("\n") + 4 < shutil.get_terminal_size().lines:
            self.error(error)
            self.pending_text = text
            return
        self.kept_message = text
        self.note(
            f"your message ({text.count(chr(10)) + 1} lines) is kept: Enter on the empty prompt resends it, "
            f"↑ brings it back to edit"
        )
        self.error(error)

    def banner(self) -> str:
        """One line, or several broken between its parts (never inside one) on a narrow terminal."""
        chat = self.chat
        parts = [f"chatbot {__version__}", chat.model, chat.settings.host]
        if chat.settings.role:
            parts.append(f"role {chat.settings.role}")
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

    def ask(self, question: str) -> str:
        try:
            return str(self.prompt_session.prompt(question)) if self.prompt_session else input(question)
        except (EOFError, KeyboardInterrupt):
            return ""

    # -- sessions: which saved conversation this chat is --------------------------

    def require_store(self) -> SessionStore:
        if self.chat.store is None:
            raise Refused(self.screen.store_problem or "sessions are off (--no-save)")
        return self.chat.store

    def start_session(self, name: str | None) -> bool:
        """Switch to a named session (resuming it if it exists) or start an automatic one."""
        chat = self.chat
        if chat.store is None:
            return False
        name = name or time.strftime("chat-%Y%m%d-%H%M%S")
        try:
            existed = chat.open_session(name)
        except StoreError as exc:
            self.screen.early(self.error, str(exc))
            return False
        self.session_name = name
        if existed:
            for text in self.resumed_notes(name):
                self.screen.early(self.note, text)
        return True

    def resumed_notes(self, name: str) -> list[str]:
        history = self.chat.conversation.history
        marked = sum(1 for m in history if m.status)
        extra = f", {marked} marked interrupted or cut short" if marked else ""
        exchanges = sum(1 for m in history if m.role == "user")
        notes = [f"resumed session {name!r}: {plural(exchanges, 'turn')} ({plural(len(history), 'message')}){extra}"]
        if self.chat.model != self.chat.settings.model:
            notes.append(f"  {session_model_note(self.chat)}")
        for message in history[-2:]:
            mark = f" [{message.status}]" if message.status else ""
            notes.append(f"  {message.role}{mark}: {one_line(message.content, 200)}")
        unanswered = self.chat.take_back_unanswered_message()  # the last run ended before its reply
        if unanswered is not None:
            self.pending_text = unanswered.content
            self.attached = unanswered.attachments + self.attached  # queued again, never lost
            notes.append("  (that message got no reply: it is back in the prompt, Enter sends it)")
        return notes

    def close(self) -> int:
        """Leave: an empty chat leaves no session behind, and the session is released."""
        self.chat.leave()
        if self.chat.store is not None:
            self.chat.store.close()
        return EXIT_OK


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
    screen = Screen()
    engine_notices_to(lambda text: screen.early(screen.note, text))
    settings = load_settings(setting_flags(args), environ, args.env_file)
    for warning in settings.warnings:
        screen.early(screen.warn, warning)
    for note in settings.notes:
        screen.early(screen.note, note)
    role = starting_role(settings)  # an unknown role or a bad roles file: one line, exit 2
    store = open_store(settings, screen) if not settings.no_save or args.session or args.continue_ else None
    held_log = HeldLog()
    log_sink = held_log.lines.append if args.verbose else None
    chat = Chat(settings, screen.note, store=store, log_sink=log_sink)
    repl = Repl(chat, screen, args, typed_ahead, held_log)
    if "-" in (args.attach or []):
        raise UsageError(
            "-a - attaches standard input, which is the chat's terminal here: pipe a file in one-shot mode"
        )
    repl.attached = load_attachments(chat, args.attach or [], None)  # sent with the first message
    if store is not None:
        name = store.latest() if args.continue_ else args.session
        if args.continue_ and name is None:
            screen.early(screen.note, "no saved conversation to continue: starting a new one")
        if not repl.start_session(name):  # open in another chatbot: go on in a new session
            screen.early(
                screen.note, "starting a new session instead: /sessions lists the saved ones, /session NAME opens one"
            )
            repl.start_session(None)
    try:
        take_role(chat, role)
    except ConfigError as exc:  # the role's model is not served: the chat goes on without the role
        screen.early(screen.error, str(exc))
    first = " ".join(args.prompt) if args.interactive and args.prompt else None
    return repl.run(first)


def open_store(settings: Settings, screen: Screen) -> SessionStore | None:
    """The sessions database; None (and one line saying so) when it cannot be opened at all."""
    try:
        store = SessionStore(default_db_path(settings))
    except StoreError as exc:
        screen.store_problem = str(exc)
        screen.early(screen.error, f"{exc}; chatting without saving")
        return None
    if store.readonly:  # a database that can be read but not written: listing and resuming work
        screen.store_problem = store.readonly_note
        screen.early(screen.note, store.readonly_note)
    return store


# ---------------------------------------------------------------------------
# One-shot mode: one prompt, the reply on stdout, the exit status says how it went
# ---------------------------------------------------------------------------

EXIT_FOR = {
    Outcome.COMPLETE: EXIT_OK,
    Outcome.EMPTY: EXIT_OK,
    Outcome.INTERRUPTED: EXIT_INTERRUPTED,
    Outcome.FAILED_MID_REPLY: EXIT_FAILED,
    Outcome.ENDED_EARLY: EXIT_FAILED,
}


def run_once(chat: Chat, prompt: str, args: Any, attachments: list[Attachment] | None = None) -> int:
    """Answer one prompt on stdout; diagnostics on stderr; the exit status says how it went."""
    settings = chat.settings
    err = sys.stderr
    cancel = Cancel()
    view = one_shot_view(settings, args)
    waiting = Waiting(sys.stdout) if sys.stdout.isatty() and not args.json and not os.environ.get("NO_COLOR") else None
    on_event = view.on_event if waiting is None else waiting.start().until_first_event(view.on_event)
    try:
        with ctrl_c_stops(lambda: cancel):
            try:
                result = chat.send(
                    prompt, on_event, stream=not args.no_stream, cancel=cancel, attachments=attachments or []
                )
            finally:
                if waiting is not None:
                    waiting.stop()  # before anything else is written, the error line included
            view.finish()
    except PromptTooLarge as exc:
        return report_failure(args.json, str(exc), EXIT_USAGE, "prompt_too_large", chat.model)
    except (AttachmentError, TranscriptionError) as exc:
        return report_failure(args.json, f"{exc} (nothing was sent)", EXIT_USAGE, "attachment", chat.model)
    except Failure as failure:
        view.abort()
        hint = ": lower --max-messages, or start a new --session" if failure.kind == "context_length" else ""
        # --api responses where there is none, a message no trimming can make fit, a model that cannot
        # see the image: the user's to change
        status = EXIT_USAGE if failure.kind in ("no_endpoint", "message_too_long", "no_vision") else EXIT_FAILED
        return report_failure(args.json, f"{failure}{hint}", status, failure.kind, chat.model)
    outcome = result.outcome
    if outcome is not Outcome.COMPLETE:
        err.write(f"chatbot: {'interrupted' if outcome is Outcome.INTERRUPTED else result.note()}\n")
    stats = chat.requests[-1]
    if args.json:
        payload = json_result(result, stats)
        chat_stats = chat.stats()
        payload["image_tokens"], payload["image_tokens_rule"] = chat_stats.image_tokens, chat_stats.image_rule
        print(json.dumps(payload, ensure_ascii=False))
    elif settings.show_usage:
        err.write(usage_line(stats) + "\n")
    return EXIT_FOR[outcome]


def one_shot_view(settings: Settings, args: Any) -> MarkdownView | PlainView:
    if args.json:
        return PlainView(_NullWriter())
    if sys.stdout.isatty() and not settings.raw and not os.environ.get("NO_COLOR"):
        from rich.console import Console

        return MarkdownView(sys.stdout, Console(highlight=False), show_reasoning=settings.show_reasoning)
    return PlainView(sys.stdout, settings.show_reasoning, sys.stderr if settings.show_reasoning else None)


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
        "image_tokens": 0,  # what the request's images count for, included in input_tokens
        "image_tokens_rule": "",  # how: "OpenAI's tile rule", or a rule marked as an estimate
    }
    if error:
        payload["error"] = error
    elif result is not None:
        outcome = result.outcome
        if outcome is Outcome.INTERRUPTED:
            payload["error"] = {"type": "interrupted", "message": "interrupted"}
        elif outcome is Outcome.FAILED_MID_REPLY and result.failure is not None:
            payload["error"] = {"type": result.failure.kind, "message": str(result.failure)}
        elif outcome is Outcome.ENDED_EARLY:
            payload["error"] = {"type": "incomplete", "message": result.note()}
    return payload


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


def one_shot(args: Any, environ: dict[str, str]) -> int:
    attached_stdin = read_attached_stdin(args, sys.stdin)
    prompt = read_prompt(args, None if attached_stdin is not None else sys.stdin, bool(args.attach))
    engine_notices_to(lambda text: print(f"chatbot: {text}", file=sys.stderr))
    settings = load_settings(setting_flags(args), environ, args.env_file)
    for warning in settings.warnings:
        print(f"chatbot: warning: {warning}", file=sys.stderr)
    for note in settings.notes:  # what zero-config chose
        print(f"chatbot: {note}", file=sys.stderr)
    role = starting_role(settings)
    store = SessionStore(default_db_path(settings)) if args.session or args.continue_ else None
    held_log = HeldLog()  # shown once the reply has ended, so a log line never joins the reply's last line
    chat = Chat(
        settings,
        lambda text: print(f"chatbot: {text}", file=sys.stderr),
        store=store,
        log_sink=held_log.lines.append if args.verbose else None,
        wants_cost=bool(args.json or settings.show_usage or store is not None),
    )
    try:
        attachments = load_attachments(chat, args.attach or [], attached_stdin)
        if store is not None:
            resume(chat, store, args)
        take_role(chat, role)
        return run_once(chat, prompt, args, attachments)
    finally:
        held_log.show(sys.stderr)
        chat.leave()
        if store is not None:
            store.close()


def resume(chat: Chat, store: SessionStore, args: Any) -> None:
    """The session --session or -c asks for, resumed or started."""
    if store.readonly:
        sys.stderr.write(f"chatbot: {store.readonly_note}\n")
    name = store.latest() if args.continue_ else args.session
    if name is None:
        raise StoreError("no saved conversation to continue")
    try:
        chat.open_session(name)
        if settings_chose_model(chat) and chat.model != chat.settings.model:
            sys.stderr.write(f"chatbot: {session_model_note(chat)}\n")
    except StoreError as exc:
        raise StoreError(f"{exc}: finish there first, or pick another --session") from None


def session_model_note(chat: Chat) -> str:
    """A resumed session keeps its own model: said, since the banner named the configured one."""
    return f"model: {chat.model}, the session's own (not {chat.settings.model}; --model overrides)"


def settings_chose_model(chat: Chat) -> bool:
    """Zero-config picked (and announced) a model: a session that switches away from it says so."""
    return any(chat.settings.model in note for note in chat.settings.notes)


# ---------------------------------------------------------------------------
# main(): which mode, and every failure as one line with its exit status
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv

    def fail(kind: str, message: str, status: int) -> int:
        return report_failure(wants_json, message, status, kind)

    try:
        return choose_mode(argv)
    except UsageError as exc:
        return fail("usage", str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return fail("configuration", str(exc), EXIT_USAGE)
    except StoreError as exc:
        return fail("sessions", str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            # the reader went away: exit quietly. Left open on purpose: it is stdout until the process ends.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return EXIT_FAILED
    except Exception as exc:  # a bug of ours: one line for the user, the traceback in the log
        return fail("internal", f"internal error: {report_bug(exc)}", EXIT_FAILED)


def choose_mode(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    if args.list_sessions or args.export or args.import_file:
        return session_tool(args, environ)
    interactive_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    wants_one_shot = bool(args.prompt) or not sys.stdin.isatty()
    if args.interactive and not interactive_terminal:
        raise UsageError("-i/--interactive needs a terminal on stdin and stdout")
    if not wants_one_shot and not interactive_terminal:
        raise UsageError("no prompt and no terminal: pass a prompt or pipe one on stdin")
    if not wants_one_shot or args.interactive:
        return run_chat(args, environ)
    return one_shot(args, environ)


def cli() -> None:
    """The `chatbot` command: main(), then out at once. Everything is saved and closed by the time
    main() returns, and the interpreter's own teardown (freeing every module the SDK brought in)
    took 0.4 s after the reply's last byte, which every `$(chatbot ...)` and pipeline waited for."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        status = status or EXIT_FAILED
    os._exit(status)


if __name__ == "__main__":
    cli()
