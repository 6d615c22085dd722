"""Saved conversations in real SQLite files: resume, scripts, export, crashes, concurrency, migrations."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pexpect
import pytest
from conftest import CHATBOT, PROMPT, assert_clean, cancel_once_asked, saved, send
from server import chat_reply

from chatcore import store


def test_multi_invocation_script_holds_one_conversation(run, server, db):
    server.push(chat_reply("Step one noted."), chat_reply("Next comes step two."))
    first = run("--db", db, "--session", "plan", "step one")
    second = run("--db", db, "--session", "plan", "and next?")
    assert first.returncode == second.returncode == 0
    assert second.out == "Next comes step two.\n"
    sent = server.posts[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "step one"),
        ("assistant", "Step one noted."),
        ("user", "and next?"),
    ]
    assert [r[:2] for r in saved(db, "plan")] == [
        ("user", "step one"),
        ("assistant", "Step one noted."),
        ("user", "and next?"),
        ("assistant", "Next comes step two."),
    ]


def test_one_shot_without_session_saves_nothing(run, db):
    result = run("--db", db, "q")
    assert result.returncode == 0, result.err
    assert result.out == "Hello from the test server.\n"
    assert not os.path.exists(db)  # no session, and not even an empty database


def test_continue_resumes_the_most_recent(run, db):
    run("--db", db, "--session", "old", "first")
    time.sleep(0.01)
    run("--db", db, "--session", "recent", "second")
    run("--db", db, "-c", "third")
    assert [r[1] for r in saved(db, "recent") if r[0] == "user"] == ["second", "third"]


def test_repl_saves_by_default_and_resumes(spawn, server, db):
    child = spawn("--db", db, "--session", "talk")
    child.expect_exact(PROMPT)
    send(child, "remember the word pineapple")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child = spawn("--db", db, "--session", "talk")
    child.expect_exact("resumed session 'talk': 1 turn (2 messages)")
    child.expect_exact(PROMPT)
    send(child, "/stats")
    child.expect("session: 1 request · 12 in · 6 out")
    child.expect_exact(PROMPT)
    send(child, "what was the word?")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    contents = [m["content"] for m in server.posts[-1].body["messages"]]
    assert "remember the word pineapple" in contents


def test_automatic_name_and_no_save(spawn, db):
    child = spawn("--db", db)
    child.expect_exact(PROMPT)
    send(child, "hi")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    send(child, "/sessions")
    child.expect(r"\* chat-\d{8}-\d{6}\s+test-model\s+1 turn ")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    unsaved = spawn("--db", db + ".2", "--no-save")
    unsaved.expect_exact(PROMPT)
    send(unsaved, "hi")
    unsaved.expect_exact("Hello from the test server.")
    unsaved.expect_exact(PROMPT)
    unsaved.sendcontrol("d")
    unsaved.expect(pexpect.EOF)
    assert not os.path.exists(db + ".2")


def test_session_commands(spawn, db, tmp_path):
    child = spawn("--db", db, "--session", "first")
    child.expect_exact(PROMPT)
    send(child, "hello")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    send(child, "/rename renamed")
    child.expect_exact("session renamed to 'renamed'")
    send(child, "/session second")
    child.expect_exact("new session 'second'")
    child.expect_exact(PROMPT)
    send(child, "/sessions")
    child.expect_exact("second")  # most recent first
    child.expect_exact("renamed")
    send(child, "/delete renamed")
    child.expect_exact("Delete session 'renamed' for good? [y/N]")
    send(child, "n")
    child.expect_exact("kept")
    send(child, "/delete renamed")
    child.expect_exact("[y/N]")
    send(child, "y")
    child.expect_exact("deleted 'renamed'")
    send(child, "/session renamed")  # gone: starts empty
    child.expect_exact(PROMPT)
    send(child, "/stats")
    child.expect("messages in memory: 1")
    export_md = tmp_path / "out.md"
    send(child, f"/save {export_md}")
    child.expect_exact("saved 0 messages")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert export_md.read_text().startswith("# renamed")


def test_export_round_trip(run, db, tmp_path):
    run("--db", db, "--session", "trip", "one")
    run("--db", db, "--session", "trip", "two")
    exported = tmp_path / "trip.json"
    result = run("--db", db, "--export", "trip", str(exported))
    assert result.returncode == 0, result.err
    data = json.loads(exported.read_text())
    data["name"] = "trip-copy"
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(data))
    assert run("--db", db, "--import", str(copy)).returncode == 0
    again = tmp_path / "again.json"
    run("--db", db, "--export", "trip-copy", str(again))
    reimported = json.loads(again.read_text())
    assert reimported == data
    markdown = tmp_path / "trip.md"
    run("--db", db, "--export", "trip", str(markdown))
    assert "## User" in markdown.read_text()
    assert "two" in markdown.read_text()
    listing = run("--db", db, "--list-sessions")
    assert "trip-copy" in listing.out
    assert "2 turns" in listing.out


def test_sigkill_mid_reply_loses_nothing_committed(env, server, db, spawn):
    server.push(chat_reply("partial " * 200, size=8, delay=0.05))
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    with subprocess.Popen(
        [sys.executable, CHATBOT, "--db", db, "--session", "crash", "tell me a story"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        seen = process.stdout.read(200)
        time.sleep(0.8)  # past a checkpoint
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    messages = saved(db, "crash")
    assert messages[0] == ("user", "tell me a story", "")
    assert messages[1][0] == "assistant"
    assert messages[1][2] == "cut short"
    assert messages[1][1].startswith(seen.decode()[:100])
    with closing(sqlite3.connect(db)) as connection:  # `with connect()` alone commits but never closes
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    child = spawn("--db", db, "--session", "crash")
    child.expect_exact("resumed session 'crash': 1 turn (2 messages), 1 marked interrupted or cut short")
    child.expect_exact("assistant [cut short]: partial partial")
    child.expect_exact(PROMPT)


def test_kill_before_any_reply_puts_the_message_back(env, server, db, spawn):
    server.push(chat_reply("late", keepalives=100))
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    with subprocess.Popen(
        [sys.executable, CHATBOT, "--db", db, "--session", "early", "unanswered"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        deadline = time.monotonic() + 10
        while not server.posts and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert saved(db, "early") == [("user", "unanswered", "")]  # written ahead of the request
    child = spawn("--db", db, "--session", "early")
    child.expect_exact("back in the prompt")
    child.expect_exact(PROMPT)
    child.expect_exact("unanswered")
    send(child, "")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert [r[:2] for r in saved(db, "early")] == [("user", "unanswered"), ("assistant", "Hello from the test server.")]


def test_two_processes_write_at_once(env, server, db):
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    processes = []
    for round_number in range(4):
        for name in ("alpha", "beta"):
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        CHATBOT,
                        "--db",
                        db,
                        "--session",
                        f"{name}{round_number}",
                        f"{name} {round_number}",
                    ],
                    env=full_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    for round_number in range(4):
        for name in ("alpha", "beta"):
            assert [r[:2] for r in saved(db, f"{name}{round_number}")] == [
                ("user", f"{name} {round_number}"),
                ("assistant", "Hello from the test server."),
            ]


def test_same_session_in_two_processes_is_refused(spawn, run, db):
    child = spawn("--db", db, "--session", "busy")
    child.expect_exact(PROMPT)
    result = run("--db", db, "--session", "busy", "hello")
    assert_clean(result)
    assert result.returncode == 2
    assert "in use by another chatbot" in result.err
    other = run("--db", db, "--session", "free", "hello")
    assert other.returncode == 0
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    after = run("--db", db, "--session", "busy", "hello")  # released on exit
    assert after.returncode == 0


def test_migration_from_version_1(run, server, db):
    connection = sqlite3.connect(db)
    connection.executescript(store.MIGRATIONS[0])
    connection.execute("PRAGMA user_version = 1")
    connection.execute(
        "INSERT INTO sessions (name, model, host, system, created, updated) "
        "VALUES ('legacy', 'test-model', 'h', 'old system', 1, 1)"
    )
    connection.execute("INSERT INTO messages (session_id, role, content, created) VALUES (1, 'user', 'old q', 1)")
    connection.execute("INSERT INTO messages (session_id, role, content, created) VALUES (1, 'assistant', 'old a', 1)")
    connection.commit()
    connection.close()
    result = run("--db", db, "--session", "legacy", "new q")
    assert result.returncode == 0, result.err
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    sent = server.posts[-1].body["messages"]
    assert sent[0]["content"] == "old system"
    assert [m["content"] for m in sent[1:]] == ["old q", "old a", "new q"]


def test_future_version_is_refused_untouched(run, db, spawn):
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE future (x)")
    connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    before = hashlib.sha256(Path(db).read_bytes()).hexdigest()
    result = run("--db", db, "--session", "s", "q")
    assert_clean(result)
    assert result.returncode == 2
    assert "newer chatbot" in result.err
    child = spawn("--db", db)
    child.expect_exact("newer chatbot")
    child.expect_exact(PROMPT)
    send(child, "still chatting")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert hashlib.sha256(Path(db).read_bytes()).hexdigest() == before


def test_corrupt_file_gets_a_message_and_chat_goes_on(run, db, spawn):
    with open(db, "wb") as corrupt:
        corrupt.write(b"this is not a database" * 100)
    before = Path(db).read_bytes()
    result = run("--db", db, "--session", "s", "q")
    assert_clean(result)
    assert result.returncode == 2
    assert "unreadable" in result.err
    child = spawn("--db", db)
    child.expect_exact("unreadable")
    child.expect_exact("chatting without saving")
    child.expect_exact(PROMPT)
    send(child, "hello")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert Path(db).read_bytes() == before


def test_session_never_stores_the_key(run, db):
    secret = "sk-test-" + "s" * 30
    run("--db", db, "--session", "s", "q", extra_env={"OPENAI_API_KEY": secret})
    assert secret.encode() not in Path(db).read_bytes()
    for extra in (db + "-wal",):
        if os.path.exists(extra):
            assert secret.encode() not in Path(extra).read_bytes()


def test_a_chat_with_no_messages_leaves_no_session(spawn, run, db):
    child = spawn("--db", db)
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    assert run("--db", db, "--list-sessions").out.strip() == "no saved sessions"


def test_continue_when_the_newest_session_is_open_elsewhere_starts_a_new_one(spawn, db):
    first = spawn("--db", db, "--session", "busy")
    first.expect_exact(PROMPT)
    send(first, "hello")
    first.expect_exact("Hello from the test server.")
    second = spawn("--db", db, "-c")
    second.expect_exact("session 'busy' is in use by another chatbot")
    second.expect_exact("starting a new session instead: /sessions lists the saved ones, /session NAME opens one")
    second.expect_exact(PROMPT)
    send(second, "still usable")
    second.expect_exact("Hello from the test server.")
    send(second, "/exit")
    second.expect(pexpect.EOF)
    second.close()
    assert second.exitstatus == 0
    assert "--session" not in (second.before or "")
    send(first, "/exit")
    first.expect(pexpect.EOF)


@pytest.fixture
def immutable():
    """Make paths read-only even for root (chattr +i); undone afterwards so they can be deleted."""
    marked = []

    def mark(path):
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if result.returncode != 0:
            pytest.skip("chattr +i is not available here")
        marked.append(str(path))

    yield mark
    for path in reversed(marked):
        subprocess.run(["chattr", "-i", path], capture_output=True)


@pytest.mark.parametrize("what", ["directory", "file"])
def test_a_read_only_database_can_be_read_and_the_chat_goes_on_unsaved(run, spawn, server, tmp_path, immutable, what):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = str(folder / "s.db")
    assert run("--db", db, "--session", "s", "first question").returncode == 0
    immutable(folder if what == "directory" else db)
    listing = run("--db", db, "--list-sessions")
    assert listing.returncode == 0, listing.err
    assert "s " in listing.out, listing.err
    out = tmp_path / "export.md"
    exported = run("--db", db, "--export", "s", str(out))
    assert exported.returncode == 0
    assert "first question" in out.read_text()
    again = run("--db", db, "--session", "s", "second question")
    assert_clean(again)
    assert again.returncode == 0, again.err
    assert again.out == "Hello from the test server.\n", again.err
    assert again.err.count("\n") == 1
    assert "is read-only: this conversation will not be saved" in again.err
    sent = [m["content"] for m in server.posts[-1].body["messages"]]
    assert sent[1:] == ["first question", "Hello from the test server.", "second question"]  # history was read
    child = spawn("--db", db, "-c")
    child.expect_exact("is read-only: this conversation will not be saved")
    child.expect_exact(PROMPT)
    send(child, "third")
    child.expect_exact("Hello from the test server.")
    send(child, "/sessions")
    child.expect_exact("s ")
    send(child, "/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert run("--db", db, "--export", "s", str(out)).returncode == 0
    assert "second question" not in out.read_text()
    assert "third" not in out.read_text()


def test_a_retry_that_fails_or_is_stopped_keeps_the_reply_it_would_replace(server, env, db, monkeypatch):

    from server import Behaviour, error_status, sse

    from chatcore.chat import Chat
    from chatcore.provider import Failure
    from chatcore.settings import resolve_settings
    from chatcore.store import SessionStore
    from chatcore.turn import Cancel

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = resolve_settings(
        {"retries": "0"}, {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_MODEL": "test-model"}, {}
    )
    database = SessionStore(db)
    chat = Chat(settings, lambda _text: None, store=database)
    chat.open_session("s")
    chat.send("What is 2+2?", lambda _kind, _text: None)
    first = [("user", "What is 2+2?", ""), ("assistant", "Hello from the test server.", "")]
    assert saved(db) == first
    server.push(error_status(500, "boom"))  # the provider fails the retry
    with pytest.raises(Failure):
        chat.retry(lambda _kind, _text: None)
    assert [(m.role, m.content) for m in chat.conversation.history] == [r[:2] for r in first]
    assert saved(db) == first
    server.push(Behaviour(header_delay=6, pieces=[sse({"choices": [{"delta": {"content": "late"}}]})]))
    cancel = Cancel()
    cancel_once_asked(server, cancel)  # stopped before the new reply began
    assert chat.retry(lambda _kind, _text: None, cancel=cancel).interrupted
    assert saved(db) == first
    server.push(chat_reply(""))  # an empty retry does not take the answer away either
    chat.retry(lambda _kind, _text: None)
    assert saved(db) == first
    server.push(chat_reply("Four."))
    chat.retry(lambda _kind, _text: None)  # a new reply: it takes the old one's place
    assert saved(db) == [first[0], ("assistant", "Four.", "")]
    chat.leave()
    database.close()


def test_sigkill_during_a_retry_that_waits_for_headers_keeps_the_old_reply(server, db, spawn):
    from server import Behaviour, sse

    child = spawn("--db", db, "--session", "rk")
    send(child, "What is 2+2?")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    server.push(Behaviour(header_delay=20, pieces=[sse({"choices": [{"delta": {"content": "late"}}]})]))
    send(child, "/retry")
    deadline = time.monotonic() + 10
    while len(server.posts) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.expect(pexpect.EOF)
    assert saved(db, "rk") == [("user", "What is 2+2?", ""), ("assistant", "Hello from the test server.", "")]


def test_summaries_of_dropped_turns_are_requests_counted_like_any_other(run, server, db):
    long_turn = "tell me about this at length, please. " * 30  # about 290 tokens a message
    flags = ["--db", db, "--session", "sum", "--summarize", "--context-tokens", "1500", "--max-tokens", "200"]
    for turn in range(6):
        server.push(chat_reply(f"Answer {turn}. " + "More words in the answer. " * 40))
        assert run(*flags, f"{turn}: {long_turn}").returncode == 0
    summaries = [p for p in server.posts if "Summarise this conversation" in json.dumps(p.body)]
    assert summaries  # trimming dropped turns, and they were summarised
    with closing(sqlite3.connect(db)) as connection:
        counted = connection.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    assert counted == len(server.posts)  # every request the model answered is in /stats and the cost


def test_an_import_whose_messages_do_not_take_turns_is_refused(run, db, tmp_path):
    run("--db", db, "--session", "trip", "one")
    exported = tmp_path / "trip.json"
    run("--db", db, "--export", "trip", str(exported))
    data = json.loads(exported.read_text())
    user, assistant = data["messages"]
    data["name"], data["messages"] = "broken", [user, user, assistant, assistant, user]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    result = run("--db", db, "--import", str(broken))
    assert_clean(result)
    assert result.returncode == 2
    assert "not a valid conversation: message 2 is 'user'" in result.err
    assert "broken" not in run("--db", db, "--list-sessions").out  # nothing half imported


def test_clear_on_an_empty_chat_does_not_claim_a_session_was_kept(spawn, db):
    child = spawn("--db", db, "--session", "c")
    send(child, "hello")
    child.expect_exact("Hello from the test server.")
    send(child, "/clear")
    child.expect_exact("(The old one stays saved as 'c'")
    child.expect_exact(PROMPT)
    send(child, "/stats")
    child.expect_exact("no replies yet")
    child.logfile_read = io.StringIO()
    send(child, "/clear")
    child.expect_exact("Conversation cleared.")
    child.expect_exact(PROMPT)
    send(child, "/stats")
    child.expect_exact("no replies yet")
    shown = child.logfile_read.getvalue()
    assert "stays saved" not in shown
    assert "sent last turn" not in shown  # what the cleared conversation sent is not this one's


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_session_name_is_refused_not_taken_as_none(run, db, name):
    result = run("--db", db, "--session", name, "hello")
    assert result.returncode == 2
    assert result.err.count("\n") == 1
    assert "--session: a conversation needs a name" in result.err
    assert_clean(result)
    assert result.out == ""


def test_the_repl_says_a_resumed_session_keeps_its_own_model(run, spawn, server, db):
    server.models = ["served-model"]
    no_model = {"OPENAI_MODEL": ""}  # the server's model is the default, as with a local server
    assert run("--db", db, "--session", "m", "--model", "session-model", "hi", extra_env=no_model).returncode == 0
    child = spawn("--db", db, "--session", "m", extra_env=no_model)
    child.expect_exact("resumed session 'm': 1 turn (2 messages)")
    child.expect_exact("model: session-model, the session's own (not served-model; --model overrides)")
    child.expect_exact(PROMPT)
    send(child, "again")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["model"] == "session-model"
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_a_checkpoint_the_database_refuses_does_not_cost_the_reply(run, server, db):
    assert run("--db", db, "--session", "busy", "hi").returncode == 0
    with closing(sqlite3.connect(db)) as connection:  # the partial saves fail, as when another program holds the file
        connection.execute(
            "CREATE TRIGGER refuse_partial BEFORE INSERT ON messages WHEN NEW.flags = 'cut short' "
            "BEGIN SELECT RAISE(ABORT, 'database is locked'); END"
        )
        connection.commit()
    reply = "steady words " * 40
    server.push(chat_reply(reply, size=6, delay=0.02))  # ~1.7 s: past several checkpoints
    result = run("--db", db, "--session", "busy", "tell me more")
    assert_clean(result)
    assert result.returncode == 0, result.err
    assert result.out.strip() == reply.strip()
    assert "could not be saved while it streamed" in result.err
    assert saved(db, "busy")[-2:] == [("user", "tell me more", ""), ("assistant", reply, "")]
