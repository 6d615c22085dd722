"""The chat's slash commands: one table drives dispatch, /help and Tab completion.

Each handler takes the REPL and the argument. Changes to the conversation are the engine's
(`repl.chat.retry()`, `.undo()`, `.switch_model()`...); a handler only asks and shows.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcore.attachments import AttachmentError, TranscriptionError
from chatcore.chat import Refused
from chatcore.roles import Role, RolesError, current_role, find_role, load_roles, roles_path
from chatcore.store import StoreError, export_data, pid_alive, write_export
from chatcore.usage import format_money, usage_line
from terminal_input import forget_typed
from terminal_render import fit, plural, wrapped

if TYPE_CHECKING:
    from chatbot import Repl


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    usage: str  # argument synopsis: "" for none, "[NAME]" optional, "NAME" required
    help: str
    handler: Callable[[Repl, str], None]
    paths: bool = False  # Tab completes its argument as a file path


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
    if repl.chat.saved and repl.chat.conversation.history:  # the old one stays saved; a new session begins
        old = repl.session_name
        repl.start_session(None)
        repl.say(f"Conversation cleared. (The old one stays saved as {old!r}; this is {repl.session_name!r}.)")
    else:
        repl.chat.clear()
        repl.say("Conversation cleared.")


def cmd_stats(repl: Repl, arg: str) -> None:
    stats = repl.chat.stats(ask_window=True)
    repl.say(f"messages in memory: {stats.messages} (system prompt included; {plural(stats.exchanges, 'turn')})")
    if stats.last_sent is not None:
        dropped = f", {stats.last_dropped} older not sent" if stats.last_dropped else ""
        repl.say(f"sent last turn: {plural(stats.last_sent, 'message')}{dropped}")
    if stats.last is None:
        repl.say("no replies yet")
        return
    if stats.window is not None:
        repl.say(f"context window: {stats.window.tokens:,} tokens ({stats.window.source})")
    if stats.image_tokens:
        repl.say(f"images last turn: {stats.image_tokens:,} tokens ({stats.image_rule}), counted in the input")
    repl.say(f"last turn: {usage_line(stats.last)}")
    usage, about = stats.usage, "~" if stats.estimated else ""
    estimated = {"": "", "all": " (estimated)", "some": " (some counts estimated)"}[stats.estimated]
    repl.say(
        f"session: {plural(stats.requests, 'request')} · {about}{usage.input_tokens:,} in · "
        f"{about}{usage.output_tokens:,} out · {stats.money}{estimated}"
    )


def cmd_attach(repl: Repl, arg: str) -> None:
    if not arg:
        if not repl.attached:
            repl.say("nothing attached: /attach PATH queues a file (image, PDF, text, audio) for your next message")
        for attachment in repl.attached:
            repl.say(f"  {attachment.name} ({attachment.describe()})")
        return
    if arg == "clear":
        count = len(repl.attached)
        repl.attached = []
        repl.say(f"removed {plural(count, 'attachment')}" if count else "nothing was attached")
        return
    path = arg[1:-1] if len(arg) > 1 and arg[0] == arg[-1] and arg[0] in "'\"" else arg
    try:
        attachment = repl.attach(path)
    except (AttachmentError, TranscriptionError) as exc:
        raise Refused(str(exc)) from None
    repl.say(f"attached {attachment.name} ({attachment.describe()}): it goes with your next message")


def cmd_model(repl: Repl, arg: str) -> None:
    chat = repl.chat
    if not arg:
        repl.say(f"model: {chat.model} ({chat.settings.host})")
        return
    chat.switch_model(arg)
    repl.say(f"model is now {arg}")


def cmd_system(repl: Repl, arg: str) -> None:
    if not arg:
        repl.say(f"system prompt: {repl.chat.conversation.system}")
        return
    repl.chat.set_system(arg)
    repl.say("system prompt replaced")


def cmd_role(repl: Repl, arg: str) -> None:
    chat = repl.chat
    path = roles_path(chat.settings)
    try:  # read each time: an edit of the file applies without a restart
        roles = load_roles(chat.settings)
        role = find_role(roles, arg, path) if arg else None
    except RolesError as exc:
        raise Refused(str(exc)) from None
    if role is None:
        current = current_role(roles, chat.conversation.system)
        width, columns = max(len(name) for name in roles), max(40, shutil.get_terminal_size().columns - 1)
        for name, listed in roles.items():
            mark = "*" if listed is current else " "
            repl.say(fit(f"{mark} {name:<{width}}  {role_summary(listed)}", columns))
        mine = "" if current is not None else " (the system prompt is one of your own: /system shows it)"
        repl.say(f"/role NAME switches{mine}; your own roles go in {path}")
        return
    chat.apply_role(role)
    repl.say(f"role is now {role.name}: its system prompt, model {chat.model}, temperature {chat.temperature:g}")


def role_summary(role: Role) -> str:
    """One line for /role: what sets it apart (model, temperature), then its prompt."""
    extras = [] if role.origin == "configured" else [f"model {role.model}"] if role.model else []
    if role.temperature is not None and role.origin != "configured":
        extras.append(f"temperature {role.temperature:g}")
    prompt = " ".join(role.system.split())
    return f"[{', '.join(extras)}] {prompt}" if extras else prompt


def cmd_retry(repl: Repl, arg: str) -> None:
    repl.run_turn(None)


def cmd_undo(repl: Repl, arg: str) -> None:
    removed = repl.chat.undo()
    forget_typed(repl.prompt_session, {m.content for m in removed if m.role == "user"})
    repl.say(f"removed the last exchange ({plural(len(removed), 'message')})")


def cmd_api(repl: Repl, arg: str) -> None:
    repl.say(f"API: {repl.chat.settings.api} (set with --api chat|responses or OPENAI_API)")


def cmd_summarize(repl: Repl, arg: str) -> None:
    settings = repl.chat.settings
    if arg not in ("", "on", "off"):
        raise Refused("usage: /summarize [on|off]")
    if arg:
        settings.summarize = arg == "on"
    repl.say(
        f"summaries of dropped turns: {'on' if settings.summarize else 'off'}" + ("" if arg else " (/summarize on|off)")
    )


def cmd_sessions(repl: Repl, arg: str) -> None:
    rows = repl.require_store().listing()
    if not rows:
        repl.say("no saved sessions")
    for line in session_lines(rows, repl.session_name):
        repl.say(line)


def session_lines(rows: list[tuple[Any, ...]], current: str | None = None) -> list[str]:
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
    repl.require_store()
    if repl.start_session(arg) and not repl.chat.conversation.history:
        repl.note(f"new session {arg!r}")


def cmd_rename(repl: Repl, arg: str) -> None:
    repl.require_store()
    if not repl.chat.saved:
        raise Refused("this conversation is not being saved: there is nothing to rename")
    repl.chat.rename_session(arg)
    repl.session_name = arg
    repl.say(f"session renamed to {arg!r}")


def cmd_delete(repl: Repl, arg: str) -> None:
    store = repl.require_store()
    if arg == repl.session_name:
        raise Refused("that is the current session: switch to another first (/session NAME)")
    row = store.find(arg)
    if row is None:
        raise Refused(f"no session named {arg!r}: see /sessions")
    if row.owner_pid and pid_alive(row.owner_pid) and row.owner_pid != os.getpid():
        raise Refused(f"session {arg!r} is in use by another chatbot (pid {row.owner_pid}): finish there first")
    answer = repl.ask(f"Delete session {arg!r} for good? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        repl.say("kept")
        return
    typed = {m["content"] for m in store.export(arg)["messages"] if m["role"] == "user"}
    store.delete(arg)
    forget_typed(repl.prompt_session, typed)
    repl.say(f"deleted {arg!r}")


def cmd_save(repl: Repl, arg: str) -> None:
    chat = repl.chat
    data = export_data(
        repl.session_name or "conversation", chat.model, chat.settings.host, chat.conversation, chat.requests
    )
    try:
        write_export(data, arg)
    except (OSError, ValueError) as exc:
        raise Refused(export_problem(arg, exc)) from None
    repl.say(f"saved {len(data['messages'])} messages to {arg}")


COMMANDS: tuple[Command, ...] = (
    Command("help", ("?",), "", "list commands", cmd_help),
    Command("exit", ("quit", "q"), "", "leave the chat", cmd_exit),
    Command("clear", (), "", "forget the conversation (the system prompt stays)", cmd_clear),
    Command("stats", (), "", "messages, tokens, cost and timing of the last turn and the session", cmd_stats),
    Command("attach", (), "[PATH|clear]", "attach a file to the next message; alone: list", cmd_attach, paths=True),
    Command("model", (), "[NAME]", "show or switch the model", cmd_model),
    Command("system", (), "[TEXT]", "show or replace the system prompt", cmd_system),
    Command("role", (), "[NAME]", "list roles, or take one on (its prompt, model, temperature)", cmd_role),
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


def run_command(repl: Repl, command: Command, arg: str) -> bool:
    """Run one command; False when the chat should end. What a command refuses is one error line."""
    try:
        command.handler(repl, arg)
    except EOFError:
        return False
    except (Refused, StoreError) as exc:
        repl.error(str(exc))
    return True
