"""Conversations at rest: owner-only files from the first byte, and deleted means gone from the disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pexpect
from conftest import PROMPT, assert_clean, send

PHRASE = "zebra-secret-4242 my diary entry"


def modes(root):
    """(path, mode) of every directory and file under root."""
    found = []
    for directory, _, names in os.walk(root):
        found.append((directory, stat.S_IMODE(os.stat(directory).st_mode)))
        found += [
            (os.path.join(directory, n), stat.S_IMODE(os.stat(os.path.join(directory, n)).st_mode)) for n in names
        ]
    return found


def assert_owner_only(home):
    checked = 0
    for root in ("data", "state", "cache"):
        for path, mode in modes(home / root):
            limit = 0o700 if os.path.isdir(path) else 0o600
            assert mode & ~limit == 0, f"{path} is {mode:04o}"
            checked += 1
    assert checked >= 4  # the sessions database and its directories were there to check
    return checked


def files_holding(home, needle):
    hits = []
    for root in ("data", "state", "cache"):
        for path, _ in modes(home / root):
            if os.path.isfile(path) and needle.encode() in Path(path).read_bytes():
                hits.append(path)
    return hits


def test_repl_session_files_are_owner_only_and_undo_leaves_no_trace(spawn, home):
    child = spawn()
    child.expect_exact(PROMPT)
    send(child, PHRASE)
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert files_holding(home, PHRASE)  # it was saved (the check below can fail)
    send(child, "/undo")
    child.expect_exact("removed the last exchange")
    child.expect_exact(PROMPT)
    # While the chat is still open (its write-ahead log too), the words are already gone.
    assert files_holding(home, PHRASE) == []
    send(child, "still here")
    child.expect_exact("Hello from the test server.")
    send(child, "/exit")
    child.expect(pexpect.EOF)
    assert_owner_only(home)
    assert files_holding(home, PHRASE) == []
    assert files_holding(home, "still here")  # what was not deleted is still saved


def test_deleting_a_session_removes_its_words_from_every_file(spawn, run, home):
    assert run("--session", "diary", PHRASE).returncode == 0
    assert files_holding(home, PHRASE)
    child = spawn("--session", "other")
    child.expect_exact(PROMPT)
    send(child, "/delete diary")
    child.expect_exact("for good? [y/N]")
    send(child, "y")
    child.expect_exact("deleted 'diary'")
    child.expect_exact(PROMPT)
    assert files_holding(home, PHRASE) == []  # at once, with the chat still open
    send(child, "/exit")
    child.expect(pexpect.EOF)
    assert files_holding(home, PHRASE) == []


def test_one_shot_session_files_are_owner_only(run, home):
    result = run("--session", "private", "hello")
    assert_clean(result)
    assert result.returncode == 0
    assert result.err == ""
    names = {os.path.basename(p) for p, _ in modes(home / "data")}
    assert "sessions.db" in names
    assert_owner_only(home)


def test_looser_existing_modes_are_tightened_with_one_line_each(run, home):
    data = home / "data" / "chatbot"
    data.mkdir(parents=True)
    os.chmod(data, 0o755)
    database = data / "sessions.db"
    database.write_bytes(b"")
    os.chmod(database, 0o644)
    result = run("--session", "s", "hello")
    assert result.returncode == 0, result.err
    lines = result.err.splitlines()
    assert any(str(data) in line and "0755" in line and "owner-only" in line for line in lines), result.err
    assert any(str(database) in line and "0644" in line for line in lines), result.err
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(database).st_mode) == 0o600
    assert run("--session", "s", "again").err == ""  # said once: now they are private


def test_a_dotenv_others_can_read_while_it_holds_a_key_gets_a_warning(run, home):
    env_file = home / ".env"
    env_file.write_text("OPENAI_API_KEY=sk-test-not-real-0000\n")
    os.chmod(env_file, 0o644)
    result = run("hello")
    assert result.returncode == 0
    assert ".env holds OPENAI_API_KEY and other users can read it (mode 0644): run chmod 600 .env" in result.err
    assert "sk-test" not in result.err
    os.chmod(env_file, 0o600)
    assert run("hello").err == ""
    env_file.write_text("OPENAI_MODEL=test-model\n")  # no secret in it: nothing to warn about
    os.chmod(env_file, 0o644)
    assert run("hello").err == ""


def test_exports_are_created_owner_only(run, tmp_path):
    assert run("--session", "s", "hello").returncode == 0
    target = tmp_path / "out.md"
    result = run("--export", "s", str(target))
    assert result.returncode == 0, result.err
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_request_log_is_owner_only(run, home):
    assert run("-v", "hello").returncode == 0
    [log] = [p for p, _ in modes(home / "state") if p.endswith("chatbot.log")]
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(log)).st_mode) == 0o700
