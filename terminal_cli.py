"""The terminal chatbot's command line: flags from the settings table, the prompt read from stdin and
the arguments, files attached with -a, and the session tools (--list-sessions, --export, --import)
that need no provider. chatbot.py's main() chooses the mode; the pieces it reads are here."""

from __future__ import annotations

import json
import sys
from typing import Any

from chatcore import __version__
from chatcore.attachments import Attachment, AttachmentError, Kind, TranscriptionError, load_attachment
from chatcore.chat import Chat, Refused
from chatcore.log import one_line
from chatcore.roles import Role, find_role, load_roles, roles_path
from chatcore.settings import BOOL_SETTINGS, SETTINGS, ConfigError, Settings, resolve_settings
from chatcore.store import SessionStore, default_db_path, write_export
from terminal_commands import export_problem, session_lines

EXIT_OK = 0


class UsageError(Exception):
    """Bad command-line use or input: exit status 2."""


def session_name(value: str) -> str:
    """--session NAME: a name to find the conversation by again; an empty one would silently mean none."""
    if not value.strip():
        import argparse

        raise argparse.ArgumentTypeError("a conversation needs a name, e.g. --session trip (or -c for the latest)")
    return value


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
            default = f"; default {setting.shown_default}" if setting.shown_default else ""
            parser.add_argument(
                *setting.flags,
                dest=setting.name,
                metavar=setting.metavar,
                help=help_text.replace("]", default + "]", 1) if default else help_text,
            )
    parser.add_argument("--env-file", metavar="PATH", help="read settings from this file instead of ./.env")
    parser.add_argument("--no-stream", action="store_true", help="wait for the whole reply instead of streaming")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the reply and its usage")
    parser.add_argument(
        "-a",
        "--attach",
        action="append",
        metavar="PATH",
        help="attach a file to the message: image, PDF, text or audio (transcribed); repeatable; - for stdin",
    )
    parser.add_argument("-i", "--interactive", action="store_true", help="send the prompt, then stay in the chat")
    parser.add_argument("--session", metavar="NAME", type=session_name, help="start or resume a saved conversation")
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


def setting_flags(args: Any) -> dict[str, Any]:
    return {s.name: getattr(args, s.name, None) for s in SETTINGS if s.flags}


def read_prompt(args: Any, stdin: Any, attached: bool = False) -> str:
    """The one-shot prompt: piped text first, then the argument, separated by a blank line (with
    attachments, the prompt may be empty: the files are the message)."""
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
    if not prompt.strip() and not attached:
        raise UsageError(
            "nothing to send: give a prompt as an argument or pipe one on stdin "
            "(run with a terminal and no prompt for a chat)"
        )
    return prompt


def read_attached_stdin(args: Any, stdin: Any) -> bytes | None:
    """`-a -`: standard input is a file to attach (then it is not part of the prompt)."""
    if "-" not in (args.attach or []):
        return None
    if args.attach.count("-") > 1:
        raise UsageError("-a - can be given once: standard input is one file")
    if stdin is None or stdin.isatty():
        raise UsageError("-a - attaches standard input, which is a terminal here: pipe a file in")
    return bytes(stdin.buffer.read())


def load_attachments(chat: Chat, paths: list[str], attached_stdin: bytes | None) -> list[Attachment]:
    """The -a files, checked before anything is sent (UsageError: one line, exit 2); voice transcribed,
    its transcript shown on stderr."""
    attachments = []
    try:
        for path in paths:
            if path == "-":
                attachment = load_attachment(attached_stdin or b"", "stdin", chat.settings)
            else:
                attachment = load_attachment(path, settings=chat.settings)
            if attachment.kind is Kind.AUDIO:
                attachment = chat.transcribe(attachment)
                sys.stderr.write(f"chatbot: transcript of {attachment.name}: {one_line(attachment.text, 400)}\n")
            attachments.append(attachment)
    except (AttachmentError, TranscriptionError) as exc:
        raise UsageError(f"{exc} (nothing was sent)") from None
    return attachments


def starting_role(settings: Settings) -> Role | None:
    """The role --role / CHATBOT_ROLE names; RolesError (exit 2) for an unknown name or a bad roles file.
    Without one the roles file is not read: a broken file never stands between you and a reply."""
    if not settings.role:
        return None
    return find_role(load_roles(settings), settings.role, roles_path(settings))


def take_role(chat: Chat, role: Role | None) -> None:
    """The chat takes on the starting role, once its session is open (so the session keeps it);
    ConfigError when the server does not list the role's model."""
    if role is None:
        return
    try:
        chat.apply_role(role)
    except Refused as exc:
        raise ConfigError(f"--role {role.name}: {exc}") from None


def session_tool(args: Any, environ: dict[str, str]) -> int:
    """--list-sessions, --export and --import: no provider needed."""
    settings = resolve_settings({"db": getattr(args, "db", None)}, environ, {})
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
