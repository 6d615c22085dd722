"""Attachments (#21): images, text files, PDFs and voice, one-shot and in the chat, against the fake server."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pexpect
import pytest
from conftest import assert_clean
from server import image_parts, text_of
from test_attachments_files import gif, jpeg, noisy_png, pdf, png, wav, webp_lossless_header

from chatcore.attachments import (
    AttachmentError,
    Kind,
    image_size,
    load_attachment,
    openai_tile_tokens,
    sniff,
    wire_content,
)

# -- the pure part: types from bytes, sizes from headers, the tile rule, the wire shape -------------


def test_types_come_from_the_bytes_and_sizes_from_the_headers():
    for data, mime, size in (
        (png(1024, 768), "image/png", (1024, 768)),
        (jpeg(16, 8), "image/jpeg", (16, 8)),
        (gif(3, 2), "image/gif", (3, 2)),
        (webp_lossless_header(300, 200), "image/webp", (300, 200)),
    ):
        kind, found = sniff(data)
        assert (kind, found) == (Kind.IMAGE, mime)
        assert image_size(data, mime) == size
    assert sniff(pdf(["x"]))[0] is Kind.PDF
    assert sniff(wav())[0] is Kind.AUDIO
    assert sniff("naïve code\n".encode())[0] is Kind.TEXT
    assert sniff(b"\x00\x01\x02binary")[0] is None


def test_openai_tile_rule_matches_the_published_examples():
    assert openai_tile_tokens(1024, 1024) == 765  # OpenAI's vision guide: 4 tiles
    assert openai_tile_tokens(2048, 4096) == 1105  # 6 tiles after scaling
    assert openai_tile_tokens(512, 512) == 255


def test_wire_content_for_both_apis():
    image = load_attachment(png(8, 8), "dot.png")
    chat = wire_content("look", [image], "chat")
    assert chat[0] == {"type": "text", "text": "look"}
    assert chat[1]["type"] == "image_url"
    assert chat[1]["image_url"]["url"].startswith("data:image/png;base64,")
    responses = wire_content("look", [image], "responses")
    assert responses[0] == {"type": "input_text", "text": "look"}
    assert responses[1]["type"] == "input_image"
    assert responses[1]["image_url"].startswith("data:image/png;base64,")
    text = load_attachment(b"a,b\n1,2\n", "t.csv")
    assert wire_content("sum it", [text], "chat") == "sum it\n\n[file t.csv]\n```\na,b\n1,2\n\n```"


def test_fit_to_window_cuts_each_text_by_the_same_share_and_leaves_images():
    from chatcore.attachments import fit_to_window

    image = load_attachment(png(8, 8), "p.png")
    big, small = load_attachment(b"a" * 4000, "big.txt"), load_attachment(b"b" * 1000, "small.txt")
    fitted, notes = fit_to_window([image, big, small], 500, lambda text: len(text) // 4)  # 1,250 tokens in all
    assert fitted[0] is image
    assert len(fitted[1].text) == int(4000 * 0.4 * 0.95)
    assert len(fitted[2].text) == int(1000 * 0.4 * 0.95)
    assert notes[0].startswith("big.txt: trimmed to fit the context window")
    assert len(notes) == 2
    assert "trimmed to fit" in fitted[1].as_text_block()
    unchanged, none = fit_to_window([big], 2000, lambda text: len(text) // 4)
    assert unchanged == [big]
    assert none == []


def test_load_errors_are_one_clear_line(tmp_path):
    for source, words in (
        (str(tmp_path / "missing.png"), "no such file"),
        (str(tmp_path), "is a directory"),
    ):
        with pytest.raises(AttachmentError, match=words) as caught:
            load_attachment(source)
        assert "\n" not in str(caught.value)
    with pytest.raises(AttachmentError, match=r"blob\.bin") as caught:
        load_attachment(b"\x00\x01\x02\x03", "blob.bin")
    assert "PNG" in str(caught.value)
    assert "PDF" in str(caught.value)


# -- one-shot --------------------------------------------------------------------------------


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_one_shot_image_is_an_image_url_part_and_json_counts_its_tokens(run, server, tmp_path):
    image = png(1024, 1024)
    path = write(tmp_path, "photo.png", image)
    result = run("--json", "-m", "gpt-4o", "-a", path, "what is in this picture?", extra_env={"OPENAI_MODEL": "gpt-4o"})
    assert_clean(result)
    assert result.returncode == 0, result.err
    content = server.posts[0].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what is in this picture?"}
    (url,) = image_parts(server.posts[0].body)
    assert url == "data:image/png;base64," + base64.b64encode(image).decode()
    payload = json.loads(result.out)
    assert payload["image_tokens"] == 765  # OpenAI's tile rule for gpt-4o
    assert payload["image_tokens_rule"] == "OpenAI's tile rule"
    server.reset()
    other = json.loads(run("--json", "-a", path, "and here?").out)  # test-model: no published rule
    assert other["image_tokens"] == 765
    assert other["image_tokens_rule"] == "estimate (OpenAI's tile rule)"


def test_one_shot_image_with_the_responses_api_is_an_input_image(run, server, tmp_path):
    path = write(tmp_path, "grey.jpg", jpeg(16, 8))
    result = run("--api", "responses", "-a", path, "describe")
    assert result.returncode == 0, result.err
    item = server.posts[0].body["input"][-1]
    assert item["content"][0] == {"type": "input_text", "text": "describe"}
    assert item["content"][1]["image_url"].startswith("data:image/jpeg;base64,")
    assert item["content"][1]["type"] == "input_image"
    assert item["content"][1]["detail"] == "auto"


def test_text_file_and_pdf_go_as_text_under_their_names(run, server, tmp_path):
    code = write(tmp_path, "app.py", b"def main():\n    return 42\n")
    report = write(tmp_path, "report.pdf", pdf(["Quarterly report", "revenue up 12 percent"]))
    result = run("-a", code, "-a", report, "review these")
    assert result.returncode == 0, result.err
    content = server.posts[0].body["messages"][-1]["content"]
    assert isinstance(content, str)  # no images: a plain string, as every server accepts
    assert content.startswith("review these\n\n[file app.py]\n```\ndef main():\n    return 42\n")
    assert "[PDF text of report.pdf]" in content
    assert "revenue up 12 percent" in content


def test_stdin_as_a_file(run, server):
    image = png(4, 4)
    result = run("-a", "-", "what is this?", input=image)
    assert result.returncode == 0, result.err
    assert image_parts(server.posts[0].body) == ["data:image/png;base64," + base64.b64encode(image).decode()]
    assert text_of(server.posts[0].body["messages"][-1]["content"]) == "what is this?"


def test_an_attachment_alone_is_a_message(run, server, tmp_path):
    path = write(tmp_path, "notes.md", b"# Plan\n- ship it\n")
    result = run("-a", path)
    assert result.returncode == 0, result.err
    assert server.posts[0].body["messages"][-1]["content"].startswith("[file notes.md]")


def test_bad_attachments_are_one_line_exit_2_and_nothing_is_sent(run, server, tmp_path):
    binary = write(tmp_path, "tool.bin", b"\x7fELF\x00\x00\x01\x02" * 10)
    big = write(tmp_path, "big.png", noisy_png(300_000))
    cases = [
        (["-a", str(tmp_path / "nope.png"), "q"], {}, "no such file"),
        (["-a", binary, "q"], {}, "is not a type that can be attached"),
        (["-a", write(tmp_path, "empty.txt", b""), "q"], {}, "empty.txt is empty"),
        (["-a", big, "q"], {"CHATBOT_MAX_IMAGE_MB": "0.1"}, "CHATBOT_MAX_IMAGE_MB"),
        (["-a", big, "-a", big, "q"], {"CHATBOT_MAX_ATTACHMENTS_MB": "0.4"}, "CHATBOT_MAX_ATTACHMENTS_MB"),
        (["-a", write(tmp_path, "scan.pdf", b"%PDF-1.4\nnot really\n"), "q"], {}, "cannot read scan.pdf"),
    ]
    for args, extra, words in cases:
        result = run(*args, extra_env=extra)
        assert_clean(result)
        assert result.returncode == 2, (args, result.err)
        assert words in result.err, result.err
        assert result.err.count("\n") == 1, result.err
    assert server.posts == []
    result = run("--json", "-a", binary, "q")
    assert json.loads(result.out)["error"]["type"] == "usage"


def test_a_conversation_the_image_would_overflow_is_refused_before_sending(run, server, tmp_path):
    path = write(tmp_path, "wide.png", png(2000, 1000))  # 6 tiles: 1,105 tokens by the tile rule
    result = run("-m", "gpt-4o", "--context-tokens", "1024", "--max-tokens", "100", "-a", path, "q")
    assert result.returncode == 2
    assert "your message is" in result.err
    assert "room for" in result.err
    assert server.posts == []


def test_text_larger_than_the_window_is_trimmed_with_a_note(run, server, tmp_path):
    path = write(tmp_path, "server.log", ("GET /index.html 200 0.003s\n" * 3000).encode())
    result = run("--context-tokens", "4096", "--max-tokens", "500", "-a", path, "any errors?")
    assert result.returncode == 0, result.err
    assert "server.log: trimmed to fit the context window" in result.err
    content = server.posts[0].body["messages"][-1]["content"]
    assert "(trimmed to fit the context window" in content
    assert len(content) < 4096 * 4


def test_voice_is_transcribed_shown_and_sent_as_text(run, server, tmp_path):
    path = write(tmp_path, "memo.wav", wav())
    server.transcript = "Remind me to water the plants."
    result = run("-a", path, "make it a todo")
    assert result.returncode == 0, result.err
    assert "transcript of memo.wav: Remind me to water the plants." in result.err
    (asked,) = server.transcriptions
    assert asked["model"] == "whisper-1"
    assert asked["filename"] == "memo.wav"
    assert asked["head"] == b"RIFF"
    content = server.posts[0].body["messages"][-1]["content"]
    assert "make it a todo" in content
    assert "Remind me to water the plants." in content


def test_transcription_on_its_own_server_and_model(run, server, tmp_path):
    from server import FakeServer

    whisper = FakeServer()
    try:
        whisper.transcript = "from the local whisper"
        path = write(tmp_path, "memo.wav", wav())
        result = run(
            "-a",
            path,
            extra_env={"CHATBOT_TRANSCRIBE_BASE_URL": whisper.base_url, "CHATBOT_TRANSCRIBE_MODEL": "large-v3"},
        )
        assert result.returncode == 0, result.err
        assert whisper.transcriptions[0]["model"] == "large-v3"
        assert server.transcriptions == []
        assert "from the local whisper" in server.posts[0].body["messages"][-1]["content"]
    finally:
        whisper.close()


def test_unavailable_transcription_is_one_line_and_nothing_is_sent(run, server, tmp_path):
    server.transcript = None  # a chat server with no /audio/transcriptions
    result = run("-a", write(tmp_path, "memo.wav", wav()), "q")
    assert_clean(result)
    assert result.returncode == 2
    assert "cannot be transcribed" in result.err
    assert "CHATBOT_TRANSCRIBE_BASE_URL" in result.err
    assert result.err.count("\n") == 1
    assert server.posts == []


def test_a_model_that_cannot_see_images_says_so_and_how_to_pick_one(run, server, tmp_path):
    path = write(tmp_path, "photo.png", png(8, 8))
    for style in ("openai", "llama.cpp"):
        server.reset()
        server.blind_models, server.blind_style = {"test-model"}, style
        result = run("--retries", "0", "-a", path, "what is this?")
        assert_clean(result)
        assert result.returncode == 2, result.err
        assert "test-model cannot see images" in result.err
        assert "--model" in result.err
        assert len(server.posts) == 1


def test_the_fallback_model_is_tried_when_the_model_cannot_see_images(run, server, tmp_path):
    server.blind_models = {"test-model"}
    result = run("--fallback-model", "other-model", "-a", write(tmp_path, "p.png", png(8, 8)), "q")
    assert result.returncode == 0, result.err
    assert "test-model cannot see images; trying the fallback model other-model" in result.err
    assert [p.body["model"] for p in server.posts] == ["test-model", "other-model"]
    assert image_parts(server.posts[1].body)


def test_sessions_keep_attachments_and_export_them(run, server, tmp_path):
    image = png(16, 16, marker=b"session-marker")
    path = write(tmp_path, "p.png", image)
    assert run("--session", "pics", "-a", path, "look").returncode == 0
    assert run("--session", "pics", "and now?").returncode == 0
    resent = server.posts[1].body["messages"]
    assert image_parts({"messages": resent}) == ["data:image/png;base64," + base64.b64encode(image).decode()]
    out_json, out_md = tmp_path / "pics.json", tmp_path / "pics.md"
    assert run("--export", "pics", str(out_json)).returncode == 0
    assert run("--export", "pics", str(out_md)).returncode == 0
    exported = json.loads(out_json.read_text())
    (attached,) = exported["messages"][0]["attachments"]
    assert attached["kind"] == "image"
    assert attached["name"] == "p.png"
    assert attached["width"] == 16
    assert base64.b64decode(attached["data_base64"]) == image
    markdown = out_md.read_text()
    assert "> Attached: p.png (image/png," in markdown
    assert "base64" not in markdown
    assert os.stat(out_json).st_mode & 0o077 == 0
    exported["name"] = "pics-copy"
    out_json.write_text(json.dumps(exported))
    assert run("--import", str(out_json)).returncode == 0
    server.reset()
    assert run("--session", "pics-copy", "third").returncode == 0
    assert image_parts(server.posts[0].body)


def test_the_request_log_names_attachments_by_type_and_size_never_content(run, home, tmp_path):
    path = write(tmp_path, "secret-plans.png", png(32, 32, marker=b"log-marker"))
    result = run("-v", "-a", path, "q")
    assert result.returncode == 0
    log = (home / "state" / "chatbot" / "log" / "chatbot.log").read_text()
    assert "attachments=image/png_32x32_" in log
    assert "attachments=image/png_32x32_" in result.err
    assert "secret-plans" not in log
    assert "log-marker" not in log
    assert "base64" not in log


# -- the chat ----------------------------------------------------------------------------------

PROMPT = "❯"


def started(spawn, *args, **kwargs):
    child = spawn(*args, **kwargs)
    child.expect_exact(PROMPT)
    return child


def files_holding(home, needle: bytes):
    hits = []
    for root in ("data", "state", "cache"):
        for directory, _, names in os.walk(home / root):
            for name in names:
                path = os.path.join(directory, name)
                if needle in Path(path).read_bytes():
                    hits.append(path)
    return hits


def test_repl_attach_lists_shows_the_bottom_line_sends_and_clears(spawn, server, tmp_path):
    path = write(tmp_path, "chart.png", png(1024, 1024))
    write(tmp_path, "notes.txt", b"remember the milk\n")
    child = started(spawn, "--no-save", "-m", "gpt-4o")
    child.send("/attach\r")
    child.expect_exact("nothing attached")
    child.expect_exact(PROMPT)
    child.send(f"/attach {path}\r")
    child.expect_exact("attached chart.png (image/png 1024x1024")
    child.expect_exact("attached: chart.png")  # the prompt's bottom line (drawn after the ❯)
    child.send(f"/attach {tmp_path}/not")
    child.expect_exact("notes.txt")  # offered as it is typed
    child.send("\t")  # Tab completes the path
    child.expect_exact("es.txt")
    child.send("\r")
    child.expect_exact("attached notes.txt (text/plain")
    child.expect_exact(PROMPT)
    child.send("/attach\r")
    child.expect_exact("chart.png (image/png 1024x1024")
    child.expect_exact("notes.txt (text/plain")
    child.expect_exact(PROMPT)
    child.send("what do you see?\r")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    body = server.posts[-1].body
    assert len(image_parts(body)) == 1
    assert "remember the milk" in text_of(body["messages"][-1]["content"])
    child.send("/stats\r")
    child.expect_exact("images last turn: 765 tokens (OpenAI's tile rule)")
    child.expect_exact(PROMPT)
    child.send("/attach\r")
    child.expect_exact("nothing attached")  # sent with that message: the queue is empty again
    child.send(f"/attach {path}\r")
    child.expect_exact("attached chart.png")
    child.send("/attach clear\r")
    child.expect_exact("removed 1 attachment")
    child.send("plain now\r")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert image_parts({"messages": server.posts[-1].body["messages"][-1:]}) == []  # the queue was emptied
    assert len(image_parts(server.posts[-1].body)) == 1  # the earlier message still carries its image
    child.send(f"/attach {tmp_path}/missing.png\r")
    child.expect_exact("no such file")
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_repl_refused_image_keeps_the_message_and_attachment_to_resend(spawn, server, tmp_path):
    server.blind_models = {"test-model"}
    path = write(tmp_path, "p.png", png(8, 8))
    child = started(spawn, "--no-save", "-a", path)
    child.send("what is it?\r")
    child.expect_exact("test-model cannot see images")
    child.expect_exact(PROMPT)
    child.expect_exact("what is it?")  # back in the prompt
    assert len(server.posts) == 1
    child.send("\r")  # again, to the same model: remembered, not sent
    child.expect_exact("refused images earlier in this session")
    child.expect_exact(PROMPT)
    assert len(server.posts) == 1
    child.sendcontrol("u")
    child.send("/model other-model\r")
    child.expect_exact("model is now other-model")
    child.expect_exact(PROMPT)
    child.send("what is it?\r")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["model"] == "other-model"
    assert image_parts(server.posts[-1].body)
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_repl_voice_attachment_is_transcribed_at_once(spawn, server, tmp_path):
    server.transcript = "Book a table for two."
    child = started(spawn, "--no-save")
    child.send(f"/attach {write(tmp_path, 'memo.wav', wav())}\r")
    child.expect_exact("transcript of memo.wav: Book a table for two.")
    child.expect_exact(PROMPT)
    child.send("\r")  # Enter on the empty prompt sends what is attached
    child.expect_exact("Hello from the test server.")
    assert "Book a table for two." in server.posts[-1].body["messages"][-1]["content"]
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_undo_and_clear_delete_attachments_from_every_file(spawn, home, tmp_path):
    first = write(tmp_path, "a.png", png(8, 8, marker=b"undo-marker-7731"))
    second = write(tmp_path, "b.txt", b"clear-marker-5519 in a text file\n")
    child = started(spawn, "--session", "private")
    child.send(f"/attach {first}\r")
    child.expect_exact("attached a.png")
    child.send("look\r")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert files_holding(home, b"undo-marker-7731")  # saved (so the check below can fail)
    child.send("/undo\r")
    child.expect_exact("removed the last exchange")
    child.expect_exact(PROMPT)
    assert files_holding(home, b"undo-marker-7731") == []
    child.send(f"/attach {second}\r")
    child.expect_exact("attached b.txt")
    child.send("read\r")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert files_holding(home, b"clear-marker-5519")
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child = started(spawn)
    child.send("/delete private\r")
    child.expect_exact("[y/N]")
    child.send("y\r")
    child.expect_exact("deleted 'private'")
    child.expect_exact(PROMPT)
    assert files_holding(home, b"clear-marker-5519") == []
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_a_schema_2_database_gains_the_attachments_table_and_keeps_its_messages(tmp_path):
    import sqlite3

    from chatcore.store import MIGRATIONS, SCHEMA_VERSION, SessionStore

    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO sessions (name, created, updated) VALUES ('old', 1, 1)")
    db.execute("INSERT INTO messages (session_id, role, content, created) VALUES (1, 'user', 'from before', 1)")
    db.commit()
    db.close()
    store = SessionStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conversation, _, _ = store.load(1)
        assert [m.content for m in conversation.history] == ["from before"]
        assert conversation.history[0].attachments == []
    finally:
        store.close()


def test_a_resumed_message_that_got_no_reply_comes_back_with_its_attachment(spawn, server, tmp_path):
    from chatcore.conversation import Message
    from chatcore.store import SessionStore

    db = str(tmp_path / "s.db")
    store = SessionStore(db)
    session_id, _ = store.open("left", "test-model", "127.0.0.1", "sys")
    store.add_message(session_id, Message("user", "what is this?", attachments=[load_attachment(png(8, 8), "p.png")]))
    store.close()
    child = spawn("--db", db, "--session", "left")
    child.expect_exact("that message got no reply")
    child.expect_exact("attached: p.png")
    child.send("\r")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert text_of(server.posts[-1].body["messages"][-1]["content"]) == "what is this?"
    assert len(image_parts(server.posts[-1].body)) == 1
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_interactive_first_prompt_carries_the_attachment(spawn, server, tmp_path):
    child = spawn("--no-save", "-i", "-a", write(tmp_path, "p.png", png(8, 8)), "explain this")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert text_of(server.posts[0].body["messages"][-1]["content"]) == "explain this"
    assert len(image_parts(server.posts[0].body)) == 1
    child.send("/attach\r")
    child.expect_exact("nothing attached")
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_interactive_with_a_bad_attachment_is_one_line_and_exit_2(spawn, server, tmp_path):
    child = spawn("--no-save", "-i", "-a", str(tmp_path / "gone.png"), "explain this")
    child.expect_exact("no such file")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "Traceback" not in (child.before or "")
    assert server.posts == []


def test_with_a_fallback_a_model_known_to_be_blind_is_not_asked_again(spawn, server, tmp_path):
    server.blind_models = {"test-model"}
    path = write(tmp_path, "p.png", png(8, 8))
    child = started(spawn, "--no-save", "--fallback-model", "other-model", "-a", path)
    child.send("first\r")
    child.expect_exact("trying the fallback model other-model")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    child.send("and a follow-up\r")  # the image is in the history: straight to the fallback
    child.expect_exact("asking other-model")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert [p.body["model"] for p in server.posts] == ["test-model", "other-model", "other-model"]
    child.send("/exit\r")
    child.expect(pexpect.EOF)


def test_chat_clear_deletes_attachments_from_the_database(server, tmp_path, env, monkeypatch):
    from chatcore.chat import Chat
    from chatcore.settings import resolve_settings
    from chatcore.store import SessionStore

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "engine.db"
    settings = resolve_settings({"base_url": server.base_url, "model": "test-model", "retries": "0"}, {}, {})
    store = SessionStore(str(db))
    chat = Chat(settings, lambda _text: None, store=store)
    chat.open_session("engine")
    image = load_attachment(png(8, 8, marker=b"engine-marker-9043"), "p.png")
    chat.send("look", lambda _kind, _text: None, attachments=[image])
    holding = [
        p for p in tmp_path.iterdir() if p.name.startswith("engine.db") and b"engine-marker-9043" in p.read_bytes()
    ]
    assert holding
    chat.clear()
    assert [p for p in tmp_path.iterdir() if p.is_file() and b"engine-marker-9043" in p.read_bytes()] == []
    chat.leave()
    store.close()


def test_a_rejected_transcription_key_names_the_setting_and_is_never_printed(run, server, tmp_path):
    secret = "fake-transcribe-secret-0123456789"  # obviously not a real key
    server.transcription_status = 401
    result = run("-a", write(tmp_path, "memo.wav", wav()), "q", extra_env={"CHATBOT_TRANSCRIBE_API_KEY": secret})
    assert_clean(result)
    assert result.returncode == 2
    assert "CHATBOT_TRANSCRIBE_API_KEY" in result.err
    assert secret not in result.err
    assert secret not in result.out
    (asked,) = [r for r in server.requests if r.path.endswith("/audio/transcriptions")]
    assert asked.headers["authorization"] == f"Bearer {secret}"  # its own key, not OPENAI_API_KEY
    assert server.posts == []
