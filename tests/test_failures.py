"""Every behaviour in shared/docs/provider-behaviour.md, against the real SDK over real HTTP.

Each test checks: no traceback, the exit status, what the user sees, what the server received,
and (through a saved session) that the conversation is consistent afterwards.
"""

from __future__ import annotations

import email.utils
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import CHATBOT, assert_clean, cancel_once_asked, saved
from server import CUT, SLEEP, Behaviour, chat_reply, chunk, error_status, sse


def one_line_error(result, needle):
    assert_clean(result)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert any(needle.lower() in line.lower() for line in lines), result.err
    assert len(lines) <= 3, result.err  # retry notes at most, then the one line


# -- Chat Completions streams -------------------------------------------------------


def test_usage_on_the_finish_chunk(run, server):
    server.push(chat_reply("Hi.", usage="finish", prompt_tokens=7, completion_tokens=2))
    payload = json.loads(run("--json", "q").out)
    assert payload["usage"]["input_tokens"] == 7
    assert payload["usage"]["estimated"] is False


@pytest.mark.parametrize("usage", ["none", "null"])
def test_missing_usage_is_estimated_and_labelled(run, server, usage):
    server.push(chat_reply("Four words right here.", usage=usage))
    result = run("--json", "q")
    payload = json.loads(result.out)
    assert payload["reply"] == "Four words right here."
    assert payload["usage"]["estimated"] is True
    assert payload["usage"]["input_tokens"] > 0
    assert payload["usage"]["output_tokens"] > 0
    server.push(chat_reply("Again.", usage=usage))
    shown = run("--show-usage", "q")
    assert "estimated" in shown.err


def test_keep_alive_comments_are_ignored(run, server):
    server.push(chat_reply("Made it.", keepalives=5))
    result = run("q")
    assert result.returncode == 0
    assert result.out == "Made it.\n"


def test_keep_alives_cannot_hold_a_turn_open_forever(run, server):
    server.push(Behaviour(pieces=[b": OPENROUTER PROCESSING\n\n", (SLEEP, 0.2)] * 50))
    started = time.monotonic()
    result = run("--first-token-timeout", "1", "q")
    assert time.monotonic() - started < 8
    assert result.returncode == 1
    one_line_error(result, "no reply after 1s")


def test_total_deadline_cuts_a_slow_reply_short(run, server, db):
    server.push(chat_reply("slow " * 100, size=5, delay=0.1))
    result = run("--total-timeout", "1", "--db", db, "--session", "s", "q")
    assert result.returncode == 1
    assert result.out.startswith("slow")
    one_line_error(result, "cut short")
    rows = saved(db)
    assert rows[0][:2] == ("user", "q")
    assert rows[1][0] == "assistant"
    assert rows[1][2] == "cut short"


def test_first_chunk_without_choices_and_choice_without_delta(run, server):
    pieces = [
        sse({"id": "x", "choices": [], "prompt_filter_results": []}),
        sse({"id": "x", "choices": [{"index": 0, "finish_reason": None}]}),
        sse(chunk(content="Fine.")),
        sse(chunk(finish="stop")),
        b"data: [DONE]\n\n",
    ]
    server.push(Behaviour(pieces=pieces))
    result = run("q")
    assert result.returncode == 0
    assert result.out == "Fine.\n"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_is_not_printed_or_stored(run, server, db, field):
    server.push(chat_reply("The answer is 4.", reasoning="Let me think about 2+2.", reasoning_field=field))
    result = run("--db", db, "--session", "s", "q")
    assert result.out == "The answer is 4.\n"
    assert "think" not in result.out
    run("--db", db, "--session", "s", "next")
    sent = server.posts[-1].body["messages"]
    assert all("think" not in m["content"] for m in sent)
    assert [r[1] for r in saved(db)] == ["q", "The answer is 4.", "next", "Hello from the test server."]
    shown = run("--show-reasoning", "q2", extra_env={})
    assert shown.returncode == 0


def test_reasoning_details_and_show_reasoning(run, server):
    pieces = [
        sse(chunk(reasoning={"reasoning_details": [{"type": "reasoning.text", "text": "pondering"}]})),
        sse(chunk(content="Done.")),
        sse(chunk(finish="stop")),
        b"data: [DONE]\n\n",
    ]
    server.push(Behaviour(pieces=pieces))
    result = run("--show-reasoning", "q")
    assert result.out == "Done.\n"
    assert "pondering" in result.err


@pytest.mark.parametrize("with_finish", [False, True])
def test_error_object_mid_stream_with_http_200(run, server, db, with_finish):
    error = {"error": {"message": "upstream provider overloaded", "code": 502}}
    if with_finish:
        error["choices"] = [{"index": 0, "delta": {}, "finish_reason": "error"}]
    server.push(Behaviour(pieces=[sse(chunk(content="Partial ")), sse(chunk(content="answer")), sse(error)]))
    result = run("--db", db, "--session", "s", "q")
    assert result.returncode == 1
    assert result.out == "Partial answer\n"
    one_line_error(result, "upstream provider overloaded")
    assert saved(db)[-1] == ("assistant", "Partial answer", "cut short")


def test_malformed_data_line(run, server, db):
    server.push(
        Behaviour(pieces=[sse(chunk(content="Some text")), b"data: {not json\n\n", sse(chunk(content="never shown"))])
    )
    result = run("--db", db, "--session", "s", "q")
    assert result.returncode == 1
    assert result.out == "Some text\n"
    one_line_error(result, "malformed")
    assert saved(db)[-1] == ("assistant", "Some text", "cut short")


def test_connection_cut_mid_line(run, server, db):
    server.push(
        Behaviour(
            pieces=[
                sse(chunk(content="Half a ")),
                sse(chunk(content="reply")),
                b'data: {"choices":[{"delta":{"cont',
                (CUT,),
            ]
        )
    )
    result = run("--db", db, "--session", "s", "q")
    assert result.returncode == 1
    assert result.out == "Half a reply\n"
    one_line_error(result, "connection was lost")
    assert saved(db)[-1] == ("assistant", "Half a reply", "cut short")


def test_clean_close_without_done_or_finish(run, server, db):
    server.push(chat_reply("Looks complete", finish=None, usage="none", done=False))
    result = run("--db", db, "--session", "s", "q")
    assert result.returncode == 1
    assert result.out == "Looks complete\n"
    one_line_error(result, "without a finish signal")
    assert saved(db)[-1][2] == "cut short"


def test_clean_close_without_done_but_with_finish_is_fine(run, server):
    server.push(chat_reply("Complete.", done=False))
    result = run("q")
    assert result.returncode == 0
    assert result.err == ""


def test_stall_longer_than_the_read_timeout(run, server, db):
    server.push(Behaviour(pieces=[sse(chunk(content="Started ")), (SLEEP, 3), sse(chunk(content="late"))]))
    started = time.monotonic()
    result = run("--timeout", "0.5", "--db", db, "--session", "s", "q")
    assert time.monotonic() - started < 3
    assert result.returncode == 1
    assert result.out == "Started \n"
    one_line_error(result, "stalled")


@pytest.mark.parametrize(
    ("reason", "status", "needle"),
    [
        ("length", 1, "--max-tokens"),
        ("content_filter", 1, "content filter"),
        ("error", 1, "error"),
        ("eos", 0, None),
        ("end_turn", 0, None),
        ("unexpected_eof", 1, "the reply ended early (finish reason 'unexpected_eof')"),
        ("recitation", 1, "may be incomplete"),
    ],
)
def test_finish_reasons(run, server, reason, status, needle):
    # a "length" finish at the output limit (one far below it is the window's: test_local_models.py)
    server.push(chat_reply("Some reply", finish=reason, completion_tokens=1000 if reason == "length" else None))
    result = run("--json", "q")
    assert_clean(result)
    assert result.returncode == status
    payload = json.loads(result.out)
    assert payload["finish_reason"] == reason
    assert payload["truncated"] is (status == 1)
    if needle:
        assert needle in result.err


def test_null_finish_reason_is_a_reply_cut_short(run, server):
    server.push(chat_reply("No finish", finish=None, usage="separate"))
    result = run("q")
    assert result.returncode == 1
    assert "without a finish signal" in result.err


@pytest.mark.parametrize("status", [400, 422])
def test_stream_options_rejected_retries_without_and_estimates(run, server, status):
    server.push(error_status(status, "Unsupported parameter: stream_options", param="stream_options"))
    server.push(chat_reply("Worked.", usage="none"))
    result = run("--json", "q")
    assert result.returncode == 0
    assert json.loads(result.out)["usage"]["estimated"] is True
    first, second = server.posts
    assert "stream_options" in first.body
    assert "stream_options" not in second.body
    assert "rejected stream_options" in result.err


def test_max_tokens_rejected_retries_with_max_completion_tokens(run, server):
    server.push(
        error_status(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            code="unsupported_parameter",
            param="max_tokens",
        )
    )
    result = run("q")
    assert result.returncode == 0
    first, second = server.posts
    assert first.body["max_tokens"] == 1000
    assert "max_tokens" not in second.body
    assert second.body["max_completion_tokens"] == 1000


def test_temperature_rejected_retries_without(run, server):
    server.push(
        error_status(
            400,
            "Unsupported value: 'temperature' does not support 0.4 with this model. "
            "Only the default (1) value is supported.",
            code="unsupported_value",
            param="temperature",
        )
    )
    result = run("q")
    assert result.returncode == 0
    assert "temperature" in server.posts[0].body
    assert "temperature" not in server.posts[1].body


def test_strict_roles_never_see_two_user_turns(run, server, db):
    server.push(error_status(500, "boom"))
    failed = run("--retries", "0", "--db", db, "--session", "s", "first question")
    assert failed.returncode == 1
    assert saved(db) == []  # the failed turn left nothing dangling
    ok = run("--db", db, "--session", "s", "second question")
    assert ok.returncode == 0, ok.err
    assert [r[:2] for r in saved(db)] == [("user", "second question"), ("assistant", "Hello from the test server.")]
    run("--db", db, "--session", "s", "third")
    roles = [m["role"] for m in server.posts[-1].body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]


# -- errors before the stream ------------------------------------------------------


def test_context_length_exceeded_retries_once_with_fewer_turns(run, server, db):
    for question in ("one " * 50, "two " * 50, "three " * 50):
        run("--db", db, "--session", "s", question)
    server.reset()
    server.push(
        error_status(400, "This model's maximum context length is 8192 tokens.", code="context_length_exceeded")
    )
    result = run("--db", db, "--session", "s", "four", "--context-tokens", "2000", "--max-tokens", "200")
    assert result.returncode == 0, result.err
    first, second = server.posts
    assert len(second.body["messages"]) < len(first.body["messages"])
    assert second.body["messages"][-1]["content"] == "four"


def test_context_length_exceeded_twice_gives_a_clear_message(run, server, db):
    for question in ("one", "two"):
        run("--db", db, "--session", "s", question)
    before = saved(db)
    server.reset()
    server.push(
        error_status(400, "prompt is too long", code="context_length_exceeded"),
        error_status(400, "prompt is too long", code="context_length_exceeded"),
    )
    result = run("--db", db, "--session", "s", "q")
    assert result.returncode == 1
    one_line_error(result, "too long for the model's context window")
    assert len(server.posts) == 2
    assert saved(db) == before  # the failed question is not left dangling


def test_context_length_exceeded_with_nothing_to_drop_is_not_retried(run, server):
    server.push(error_status(400, "prompt is too long", code="context_length_exceeded"))
    result = run("q")
    assert result.returncode == 1
    assert "context window" in result.err
    assert len(server.posts) == 1  # the same oversized request would fail the same way


def test_vllm_context_wording_is_recognised(run, server):
    message = (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion)."
    )
    server.push(error_status(400, message))
    result = run("q")
    assert result.returncode == 1
    assert "context window" in result.err
    assert len(server.posts) == 1


@pytest.mark.parametrize(
    ("status", "needle"), [(402, "out of credits"), (403, "access denied"), (400, "rejected the request")]
)
def test_errors_that_are_not_retried(run, server, status, needle):
    server.push(error_status(status, "nope"))
    result = run("q")
    assert result.returncode == 1
    one_line_error(result, needle)
    assert len(server.posts) == 1


def test_unknown_model_lists_what_the_server_offers(run, server):
    server.push(error_status(404, "The model `nope` does not exist", code="model_not_found"))
    result = run("-m", "nope", "q")
    assert result.returncode == 1
    one_line_error(result, "unknown model 'nope'")
    assert "test-model" in result.err
    assert "other-model" in result.err


def test_unknown_model_without_a_listing_says_how_to_check(run, server):
    server.models = None
    server.push(error_status(404, "model not found"))
    result = run("-m", "nope", "q")
    assert result.returncode == 1
    assert "/models" in result.err


@pytest.mark.parametrize("headers", [{"Retry-After": "0.2"}, {"retry-after-ms": "150"}, "date"])
def test_429_then_200_honours_retry_after(run, server, headers):
    if headers == "date":
        headers = {"Retry-After": email.utils.formatdate(time.time() + 1, usegmt=True)}
    server.push(error_status(429, "slow down", headers=headers))
    result = run("q")
    assert result.returncode == 0, result.err
    assert result.out == "Hello from the test server.\n"
    assert len(server.posts) == 2
    assert "retrying in" in result.err
    assert "rate limited" in result.err


def test_429_until_retries_run_out(run, server):
    server.push(*[error_status(429, "slow down", headers={"retry-after-ms": "10"}) for _ in range(3)])
    result = run("--retries", "2", "q")
    assert result.returncode == 1
    assert len(server.posts) == 3
    assert "rate limited (429) after 2 retries" in result.err


def test_503_with_x_should_retry_false_is_not_retried(run, server):
    server.push(error_status(503, "down", headers={"x-should-retry": "false"}))
    result = run("q")
    assert result.returncode == 1
    assert len(server.posts) == 1


def test_502_with_an_html_body(run, server):
    server.push(*[error_status(502, body="<html><body><h1>502 Bad Gateway</h1></body></html>")] * 3)
    result = run("--retries", "1", "q")
    assert result.returncode == 1
    one_line_error(result, "502")
    assert "<html>" not in result.err
    assert "<h1>" not in result.err


def test_200_with_html_instead_of_a_stream(run, server):
    server.push(Behaviour(headers={"Content-Type": "text/html"}, pieces=[b"<html>login page</html>"]))
    result = run("q")
    assert result.returncode == 1
    one_line_error(result, "HTML page instead of a reply")


def test_200_with_json_error_instead_of_a_stream(run, server):
    server.push(
        Behaviour(
            headers={"Content-Type": "application/json"},
            pieces=[json.dumps({"error": {"message": "quota exceeded"}}).encode()],
        )
    )
    result = run("q")
    assert result.returncode == 1
    assert "quota exceeded" in result.err


def test_connection_refused(run):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = run("--retries", "1", "q", extra_env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    assert result.returncode == 1
    one_line_error(result, "cannot reach 127.0.0.1")


def test_slow_headers_past_the_timeout(run, server):
    server.push(Behaviour(header_delay=2, pieces=[]), Behaviour(header_delay=2, pieces=[]))
    result = run("--timeout", "0.5", "--retries", "1", "q")
    assert result.returncode == 1
    one_line_error(result, "timed out")
    assert "retrying in" in result.err


def test_fallback_model_after_retryable_failure(run, server):
    server.push(*[error_status(503, "overloaded", headers={"retry-after-ms": "10"}) for _ in range(2)])
    result = run("--retries", "1", "--fallback-model", "other-model", "--json", "q")
    assert result.returncode == 0, result.err
    assert [p.body["model"] for p in server.posts] == ["test-model", "test-model", "other-model"]
    assert json.loads(result.out)["model"] == "other-model"
    assert "fallback" in result.err


def test_fallback_model_when_the_model_is_unknown(run, server):
    server.push(error_status(404, "model `gone` not found", code="model_not_found"))
    result = run("-m", "gone", "--fallback-model", "test-model", "q")
    assert result.returncode == 0
    assert [p.body["model"] for p in server.posts] == ["gone", "test-model"]


def test_ctrl_c_mid_stream_closes_the_connection(env, server, db):
    server.push(chat_reply("word " * 400, size=5, delay=0.05))
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    process = subprocess.Popen(
        [sys.executable, CHATBOT, "--db", db, "--session", "s", "q"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    first = process.stdout.read(10)
    assert first.startswith(b"word")
    process.send_signal(signal.SIGINT)
    sent_at = time.monotonic()
    out, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert b"Traceback" not in err
    deadline = time.monotonic() + 3
    while not server.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.disconnects
    assert server.disconnects[0] - sent_at < 2.0
    assert not server.finished
    rows = saved(db)
    assert rows[0][:2] == ("user", "q")
    assert rows[1][0] == "assistant"
    assert rows[1][2] == "interrupted"
    assert (first + out).decode().startswith(rows[1][1].rstrip()[:20])


# -- stopping a request that is still waiting for its response headers -----------------


def test_first_token_timeout_counts_while_the_headers_are_awaited(run, server):
    # A local server loading a model answers nothing at all for a while: the deadline starts with the request.
    server.push(Behaviour(header_delay=6, pieces=[sse({"choices": [{"delta": {"content": "late"}}]})]))
    result = run("--first-token-timeout", "1", "--timeout", "30", "--retries", "0", "q")
    assert result.returncode == 1
    one_line_error(result, "no reply after 1s (--first-token-timeout)")
    assert "late" not in result.out


def test_a_cancel_from_another_thread_stops_a_request_still_waiting_for_headers(server, env, monkeypatch):

    from chatcore.chat import Chat
    from chatcore.settings import resolve_settings
    from chatcore.turn import Cancel

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server.push(Behaviour(header_delay=8, pieces=[sse({"choices": [{"delta": {"content": "late"}}]})]))
    settings = resolve_settings({}, {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_MODEL": "test-model"}, {})
    chat = Chat(settings, lambda _text: None)
    cancel = Cancel()
    cancel_once_asked(server, cancel)  # /cancel in a chat, or shutdown, while nothing has come back
    started = time.monotonic()
    result = chat.send("hello", lambda _kind, _text: None, cancel=cancel)
    assert time.monotonic() - started < 5  # the headers were 8 s away: the turn did not wait for them
    assert result.interrupted
    assert result.reply == ""
    assert chat.conversation.history == []  # nothing arrived: no message is left without its reply
    assert len(chat.requests) == 1
    assert chat.requests[0].usage.output_tokens == 0


def test_a_stopped_turn_ends_the_sdks_retry_wait_and_sends_nothing_more(server, env, monkeypatch):

    from chatcore.chat import Chat
    from chatcore.settings import resolve_settings
    from chatcore.turn import Cancel

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server.push(*[error_status(503, "busy", headers={"Retry-After": "3"}) for _ in range(3)])
    given = {"retries": "2", "context_tokens": "8192"}  # the window is known: nothing to ask the server first
    settings = resolve_settings(given, {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_MODEL": "test-model"}, {})
    notes: list[str] = []
    chat = Chat(settings, notes.append)
    cancel = Cancel()
    cancel_once_asked(server, cancel)  # Ctrl-C or /cancel while the SDK waits 3 s to retry
    result = chat.send("hello", lambda _kind, _text: None, cancel=cancel)
    assert result.interrupted
    assert chat.conversation.history == []
    time.sleep(4)  # past the retry the SDK had planned
    assert len(server.posts) == 1, server.requests  # the request was not sent again for a turn nobody waits for
    assert len(notes) == 1  # "retrying in 3.0s", and no notice after the turn ended
    assert notes[0].startswith("retrying in 3.0s")
