"""`--api responses`: the seed router's stream, OpenAI's own, and every irregular ending.

Each case runs in one-shot, --json and REPL modes against the local server.
"""

from __future__ import annotations

import json

import pytest
from conftest import PROMPT, assert_clean, send
from server import SLEEP, Behaviour, error_status, responses_openai, responses_router, sse


def case_router():
    return responses_router("Hello from the router.", usage=(11, 7)), {
        "reply": "Hello from the router.",
        "status": 0,
        "finish": "stop",
        "usage": (11, 7),
    }


def case_openai():
    return responses_openai("Hello from OpenAI."), {
        "reply": "Hello from OpenAI.",
        "status": 0,
        "finish": "stop",
        "usage": (20, 9),
    }


def case_openai_done():
    return responses_openai("With a DONE.", done=True), {
        "reply": "With a DONE.",
        "status": 0,
        "finish": "stop",
        "usage": (20, 9),
    }


def case_response_done_event():
    return responses_openai(
        "Gateway style.",
        terminal={
            "type": "response.done",
            "response": {"status": "completed", "usage": {"input_tokens": 3, "output_tokens": 2}},
        },
    ), {"reply": "Gateway style.", "status": 0, "finish": "stop", "usage": (3, 2)}


def case_failed():
    return responses_openai(
        "Partial",
        terminal={
            "type": "response.failed",
            "response": {"status": "failed", "error": {"code": "server_error", "message": "the model crashed"}},
        },
    ), {"reply": "Partial", "status": 1, "finish": None, "needle": "the model crashed"}


def incomplete(reason: str, **response) -> dict:
    """A `response.incomplete` terminal event with this reason."""
    return {
        "type": "response.incomplete",
        "response": {"status": "incomplete", "incomplete_details": {"reason": reason}, **response},
    }


def case_incomplete():
    return responses_openai(
        "Cut by limit",
        terminal=incomplete("max_output_tokens", usage={"input_tokens": 5, "output_tokens": 1000}),
    ), {"reply": "Cut by limit", "status": 1, "finish": "length", "needle": "--max-tokens", "usage": (5, 1000)}


def case_content_filter():
    return responses_openai(
        "Filtered",
        terminal=incomplete("content_filter"),
    ), {"reply": "Filtered", "status": 1, "finish": "content_filter", "needle": "content filter"}


def case_incomplete_unknown_reason():
    """A gateway whose upstream died: response.incomplete with a reason nobody documents."""
    return responses_openai(
        "Half a rep",
        terminal=incomplete("unexpected_eof"),
    ), {"reply": "Half a rep", "status": 1, "finish": "unexpected_eof", "needle": "finish reason 'unexpected_eof'"}


def case_error_event():
    return responses_openai(
        "Some", terminal={"type": "error", "code": "rate_limit_exceeded", "message": "slow down please"}
    ), {"reply": "Some", "status": 1, "finish": None, "needle": "slow down please"}


def case_function_calls_and_unknown_events():
    extra = [
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "lookup", "arguments": ""},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": "{}"},
        {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0, "arguments": "{}"},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        },
        {"type": "response.some_future_event", "payload": {"x": 1}},
    ]
    return responses_openai("Tools skipped.", extra_events=extra), {
        "reply": "Tools skipped.",
        "status": 0,
        "finish": "stop",
        "usage": (20, 9),
    }


def case_reasoning_summary():
    return responses_openai("Reasoned.", reasoning="First I consider the question."), {
        "reply": "Reasoned.",
        "status": 0,
        "finish": "stop",
        "usage": (20, 9),
    }


def case_ends_early():
    return responses_openai("Never finished", end=False), {
        "reply": "Never finished",
        "status": 1,
        "finish": None,
        "needle": "without a finish signal",
    }


def case_context_failed():
    return responses_openai(
        "",
        terminal={
            "type": "response.failed",
            "response": {
                "status": "failed",
                "error": {
                    "code": "context_length_exceeded",
                    "message": "Your input exceeds the context window of this model.",
                },
            },
        },
    ), {"reply": "", "status": 1, "finish": None, "needle": "context window"}


CASES = [
    case_router,
    case_openai,
    case_openai_done,
    case_response_done_event,
    case_failed,
    case_incomplete,
    case_incomplete_unknown_reason,
    case_content_filter,
    case_error_event,
    case_function_calls_and_unknown_events,
    case_reasoning_summary,
    case_ends_early,
    case_context_failed,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_one_shot(run, server, case):
    behaviour, expect = case()
    server.push(behaviour)
    result = run("--api", "responses", "q")
    assert_clean(result)
    assert result.returncode == expect["status"], result.err
    assert result.out == (expect["reply"] + "\n" if expect["reply"] else "")
    if "needle" in expect:
        assert expect["needle"] in result.err
    body = server.posts[0].body
    assert server.posts[0].path.endswith("/responses")
    assert body["instructions"].startswith("You are")
    assert body["input"] == [{"role": "user", "content": "q"}]
    assert body["max_output_tokens"] == 1000
    assert body["stream"] is True
    assert body["temperature"] == 0.4
    assert "messages" not in body


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_json(run, server, case):
    behaviour, expect = case()
    server.push(behaviour)
    result = run("--api", "responses", "--json", "q")
    assert_clean(result)
    assert result.returncode == expect["status"]
    payload = json.loads(result.out)
    assert payload["reply"] == expect["reply"]
    assert payload["finish_reason"] == expect["finish"]
    assert payload["truncated"] is (expect["status"] != 0)
    if "usage" in expect and expect["status"] == 0:
        assert (payload["usage"]["input_tokens"], payload["usage"]["output_tokens"]) == expect["usage"]
        assert payload["usage"]["estimated"] is False
    if expect["reply"] == "" and expect["status"]:
        assert payload["error"]


def test_openai_usage_details(run, server):
    server.push(responses_openai("x"))
    payload = json.loads(run("--api", "responses", "--json", "q").out)
    assert payload["usage"]["cached_tokens"] == 4
    assert payload["usage"]["reasoning_tokens"] == 3


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_repl(spawn, server, case):
    behaviour, expect = case()
    server.push(behaviour)
    child = spawn("--api", "responses", "--no-save", "--raw")
    child.expect_exact(PROMPT)
    send(child, "q")
    if expect["reply"]:
        child.expect_exact(expect["reply"])
    if "needle" in expect:
        child.expect_exact(expect["needle"])
    child.expect_exact(PROMPT)
    if not expect["reply"]:
        child.expect_exact("q")  # the failed message is back at the prompt
        child.sendcontrol("u")
    send(child, "again")
    child.expect_exact("Hello from the router.")
    child.expect_exact(PROMPT)
    body = server.posts[-1].body
    roles = [item["role"] for item in body["input"]]
    # History stays well-formed whatever the first turn did: kept partial replies, no dangling user turn.
    assert roles == (["user", "assistant", "user"] if expect["reply"] else ["user"])
    assert body["input"][-1]["content"] == "again"
    assert "First I consider" not in json.dumps(body)
    send(child, "/api")
    child.expect_exact("API: responses")


def test_server_without_responses_endpoint(run, server):
    server.push(
        Behaviour(
            status=404,
            headers={"Content-Type": "application/json"},
            pieces=[b'{"error": {"message": "Not Found"}}'],
            path="/responses",
        )
    )
    result = run("--api", "responses", "q")
    assert result.returncode == 2  # a configuration problem, as the README says
    assert "no Responses API endpoint" in result.err
    assert "--api chat" in result.err
    server.push(error_status(405, "Method Not Allowed"))
    result = run("--api", "responses", "q")
    assert result.returncode == 2
    assert "--api chat" in result.err


def test_api_from_environment(run, server):
    result = run("q", extra_env={"OPENAI_API": "responses"})
    assert result.returncode == 0
    assert result.out == "Hello from the router.\n"
    assert server.posts[0].path.endswith("/responses")


def test_keep_alives_and_slow_stream_in_responses_mode(run, server):
    behaviour = responses_openai("slow " * 30, size=5, delay=0.1)
    behaviour.pieces = [b": keep-alive\n\n", (SLEEP, 0.05)] * 3 + behaviour.pieces
    server.push(behaviour)
    result = run("--api", "responses", "--total-timeout", "0.8", "q")
    assert result.returncode == 1
    assert result.out.startswith("slow")
    assert "--total-timeout" in result.err


def test_malformed_event_in_responses_mode(run, server):
    behaviour = responses_openai("Good part")
    behaviour.pieces = [*behaviour.pieces[:-1], b"data: {oops\n\n"]
    server.push(behaviour)
    result = run("--api", "responses", "q")
    assert result.returncode == 1
    assert result.out == "Good part\n"
    assert "malformed" in result.err


def test_event_name_only_dispatch_is_not_needed(run, server):
    # Dispatch is on the JSON `type`; an `event:` line that disagrees does not matter.
    server.push(
        Behaviour(
            pieces=[
                sse({"type": "response.output_text.delta", "delta": "Typed."}, "message"),
                sse({"type": "response.completed", "response": {"status": "completed"}}, "whatever"),
            ]
        )
    )
    result = run("--api", "responses", "q")
    assert result.returncode == 0
    assert result.out == "Typed.\n"


def test_no_stream_responses_body(run, server):
    body = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs", "summary": []},
            {
                "type": "message",
                "id": "m",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Whole answer.", "annotations": []}],
            },
        ],
        "usage": {"input_tokens": 8, "output_tokens": 3},
    }
    server.push(Behaviour(headers={"Content-Type": "application/json"}, pieces=[json.dumps(body).encode()]))
    result = run("--api", "responses", "--no-stream", "--json", "q")
    payload = json.loads(result.out)
    assert result.returncode == 0
    assert payload["reply"] == "Whole answer."
    assert payload["usage"]["input_tokens"] == 8
    assert server.posts[0].body["stream"] is False


def test_gateway_rejecting_store_is_retried_without_it(run, server):
    server.push(error_status(400, "Unrecognized request argument supplied: store", param="store"))
    result = run("--api", "responses", "q")
    assert result.returncode == 0
    assert result.out == "Hello from the router.\n"
    assert server.posts[0].body["store"] is False
    assert "store" not in server.posts[1].body
