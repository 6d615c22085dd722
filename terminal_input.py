"""Terminal input: the chat's prompt and its history, Ctrl-C during a reply, and keys typed before the prompt.

The mechanics a reader of the loop in chatbot.py need not see: prompt_toolkit's set-up, the input
history kept owner-only (and cleaned when messages are deleted), a SIGINT handler that stops only a
streaming reply, and the terminal mode that keeps typed-ahead keys (even Ctrl-D) as keys.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from chatcore.files import open_private, private_dir, private_file, user_dir
from chatcore.turn import Cancel


def make_prompt_session(commands: Sequence[Any], on_drawn: Callable[[], None]) -> Any:
    """The chat's prompt: persistent owner-only history, suggestions, Tab completion of the command
    table (and of paths for commands that take one), Esc Enter for a new line; `on_drawn` runs once,
    when the prompt is first on screen. Its `bottom_toolbar` is set before each prompt (None: none).
    (One function on purpose: prompt_toolkit's set-up reads best in one place, and nothing else needs it.)"""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
    from prompt_toolkit.completion import Completer, Completion, PathCompleter
    from prompt_toolkit.document import Document
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    paths = PathCompleter(expanduser=True)
    path_commands = {f"/{name} " for c in commands if getattr(c, "paths", False) for name in (c.name, *c.aliases)}

    class SlashCompleter(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Iterator[Any]:
            text = document.text_before_cursor
            command = next((c for c in path_commands if text.lower().startswith(c)), None)
            if command is not None:  # /attach PATH: Tab completes the path
                yield from paths.get_completions(Document(text[len(command) :]), complete_event)
                return
            if text.startswith("/") and " " not in text and not text.startswith("//"):
                for command in commands:
                    for name in (command.name, *command.aliases):
                        if name.startswith(text[1:].lower()):
                            yield Completion("/" + name, start_position=-len(text), display_meta=command.help)

    # prompt_toolkit asks the terminal where the cursor is, and at exit waits up to a second for
    # the answer: in a terminal that never answers, every /exit took a second. The chat does not
    # need the answer (space for the completion menu is reserved either way).
    os.environ.setdefault("PROMPT_TOOLKIT_NO_CPR", "1")
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    try:
        history: Any = FileHistory(history_path())
    except OSError:
        history = InMemoryHistory()
    session: Any = PromptSession(
        history=history,
        auto_suggest=AutoSuggestFromHistory(),
        completer=SlashCompleter(),
        complete_while_typing=True,
        key_bindings=bindings,
        enable_history_search=False,
        prompt_continuation="… ",
    )
    # Without the cursor-position answer prompt_toolkit does not know the rows below the prompt, and
    # then draws no bottom toolbar (the /attach line). One row is always there: the line the prompt is on.
    session.app.output.get_rows_below_cursor_position = lambda: 1
    warmed: list[bool] = []

    def drawn(_: Any) -> None:
        if not warmed:
            warmed.append(True)
            on_drawn()

    session.app.after_render += drawn
    return session


def history_path() -> str:
    """The input history: in the state directory, owner-only (it holds everything typed)."""
    path = os.path.join(private_dir(user_dir("state")), "prompt-history")
    older = os.path.join(user_dir("data"), "prompt-history")  # where versions before 0.2 kept it
    if os.path.exists(older) and not os.path.exists(path):
        os.replace(older, path)
    return private_file(path)


def forget_typed(session: Any, texts: set[str]) -> None:
    """Deleted means gone: take deleted messages out of the input history too, file and memory."""
    texts = {t for t in texts if t}
    if not texts:
        return
    history = getattr(session, "history", None)
    loaded = getattr(history, "_loaded_strings", None)
    if isinstance(loaded, list):
        loaded[:] = [t for t in loaded if t not in texts]
    try:
        path = history_path()
        with open(path, encoding="utf-8") as history_file:
            entries = history_file.read().split("\n\n")  # FileHistory: "# time" then "+line"s, blank-separated
        kept = [
            entry
            for entry in entries
            if "\n".join(line[1:] for line in entry.split("\n") if line.startswith("+")) not in texts
        ]
        with open_private(path + ".new", "w") as new_file:
            new_file.write("\n\n".join(kept))
        os.replace(path + ".new", path)
    except OSError:
        pass


@contextlib.contextmanager
def ctrl_c_stops(turn: Callable[[], Cancel | None]) -> Iterator[None]:
    """Ctrl-C stops the turn in progress (`turn()`), once; every other press changes nothing.

    Python raises KeyboardInterrupt wherever the program happens to be: a second press arriving
    while a reply was being recorded or drawn, or between two prompts, used to leave the history
    and the screen half done, or end the chat. Here a press interrupts only a reply that is still
    streaming, and only the first time (the stream keeps what arrived). At the prompt, Ctrl-C is a
    key that prompt_toolkit reads, not a signal. The terminal does not echo ^C.
    """

    def on_ctrl_c(signum: int, frame: Any) -> None:  # noqa: ARG001 - a signal handler's signature
        cancel = turn()
        if cancel is None or cancel.is_set() or cancel.finished:
            return
        cancel.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    echo = quiet_ctrl_echo()
    try:
        yield
    finally:
        echo()
        signal.signal(signal.SIGINT, previous)


def quiet_ctrl_echo() -> Callable[[], None]:
    """Stop the terminal echoing ^C; returns what puts it back (nothing to do off a terminal)."""
    try:
        import termios
    except ImportError:  # Windows: no ^C echo to quiet
        return lambda: None
    try:
        descriptor = sys.stdin.fileno()
        saved = termios.tcgetattr(descriptor)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHOCTL
        termios.tcsetattr(descriptor, termios.TCSANOW, quiet)
    except (termios.error, OSError, ValueError, AttributeError):  # not a terminal
        return lambda: None
    return lambda: termios.tcsetattr(descriptor, termios.TCSANOW, saved)


def keys_not_lines() -> tuple[Callable[[], None], list[str] | None]:
    """Put the terminal in cbreak mode at once, so keys typed before the prompt is drawn wait as keys.

    What was typed even earlier, while Python was starting, is still in the terminal's line buffer:
    lines finished with Enter are read now, to be handled first as if typed at the prompt (a line
    not yet finished stays for the prompt to read), and a Ctrl-D there (an end-of-file, which used
    to leave the prompt deaf for good) means leave: then the lines are None. Returns (restore, lines).
    """
    try:
        import select
        import termios
        import tty
    except ImportError:
        return (lambda: None), []
    try:
        descriptor = sys.stdin.fileno()
        saved = termios.tcgetattr(descriptor)
    except (termios.error, OSError, ValueError):
        return (lambda: None), []
    typed = b""
    # Still in line mode: whole lines and an end-of-file (Ctrl-D) are what a read can return now.
    while select.select([descriptor], [], [], 0)[0]:
        chunk = os.read(descriptor, 4096)
        if not chunk:
            return (lambda: None), None  # Ctrl-D typed ahead: leave
        typed += chunk
    lines = typed.decode("utf-8", "replace").splitlines()
    try:
        tty.setcbreak(descriptor, termios.TCSANOW)
    except termios.error:
        return (lambda: None), lines

    def restore() -> None:
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)

    return restore, lines
