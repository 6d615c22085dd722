"""Both APIs' streams as the same few plain events: text, reasoning, usage, finish, error (pure parsing)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any, Final, Literal

from .usage import Usage, usage_from_chat, usage_from_responses

# Events are tuples, cheap enough for thousands a second:
#   (TEXT, str) (REASONING, str) (USAGE, Usage) (FINISH, reason) (ERROR, code, message)
#   (PING,) for keep-alive comments and skipped events, so deadlines are checked.


class Event(StrEnum):
    """What an event is. Members are strings too, and the same objects every time: compare with `is`."""

    TEXT = "text"
    REASONING = "reasoning"
    USAGE = "usage"
    FINISH = "finish"
    ERROR = "error"
    PING = "ping"


# Short names for the hot loops. Final, so mypy sees each as its own literal member and can tell the
# event tuples below apart by their first item.
TEXT: Final = Event.TEXT
REASONING: Final = Event.REASONING
USAGE: Final = Event.USAGE
FINISH: Final = Event.FINISH
ERROR: Final = Event.ERROR
PING: Final = Event.PING

TextEvent = tuple[Literal[Event.TEXT], str]
ReasoningEvent = tuple[Literal[Event.REASONING], str]
UsageEvent = tuple[Literal[Event.USAGE], Usage]
FinishEvent = tuple[Literal[Event.FINISH], str]  # the finish reason: "stop", "length", ...
ErrorEvent = tuple[Literal[Event.ERROR], str | None, str]  # (ERROR, code, message)
PingEvent = tuple[Literal[Event.PING]]
StreamEvent = TextEvent | ReasoningEvent | UsageEvent | FinishEvent | ErrorEvent | PingEvent


def chat_events(data: str) -> Iterator[StreamEvent]:
    """Turn one Chat Completions `data:` payload into events."""
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        return
    error = chunk.get("error")
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or choice.get("message") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not reasoning and delta.get("reasoning_details"):
            reasoning = "".join(
                d.get("text") or d.get("summary") or "" for d in delta["reasoning_details"] if isinstance(d, dict)
            )
        if reasoning and isinstance(reasoning, str):
            yield (REASONING, reasoning)
        content = delta.get("content")
        if content and isinstance(content, str):
            yield (TEXT, content)
        reason = choice.get("finish_reason")
        if reason and not (reason == "error" and error):
            yield (FINISH, reason)
        break  # only the first choice: we never ask for n > 1
    usage = chunk.get("usage")
    if usage and isinstance(usage, dict):
        yield (USAGE, usage_from_chat(usage))
    if error:
        yield error_event(error)


def error_event(error: Any) -> ErrorEvent:
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message") or json.dumps(error)[:200]
        return (ERROR, str(code) if code is not None else None, str(message))
    return (ERROR, None, str(error))


INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def responses_events(data: str, event_name: str | None = None) -> Iterator[StreamEvent]:
    """Turn one Responses API event into events, dispatching on its `type` only."""
    event = json.loads(data)
    if not isinstance(event, dict):
        return
    kind = event.get("type") or event_name
    if kind == "response.output_text.delta":
        yield (TEXT, event.get("delta") or "")
    elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
        yield (REASONING, event.get("delta") or "")
    elif kind in ("response.completed", "response.done", "response.incomplete"):
        response = event.get("response") or {}
        if response.get("usage"):
            yield (USAGE, usage_from_responses(response["usage"]))
        if kind == "response.incomplete" or response.get("status") == "incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason") or "incomplete"
            yield (FINISH, INCOMPLETE_REASONS.get(reason, reason))
        elif response.get("status") == "failed" and response.get("error"):
            yield error_event(response["error"])
        else:
            yield (FINISH, "stop")
    elif kind == "response.failed":
        response = event.get("response") or {}
        yield error_event(response.get("error") or {"message": "the response failed"})
    elif kind == "error":
        yield error_event(event.get("error") if isinstance(event.get("error"), dict) else event)
    else:
        yield (PING,)  # created, in_progress, item and function-call events, unknown types


def sse_payloads(lines: Iterable[str]) -> Iterator[tuple[str | None, str | None]]:
    """Server-sent events: yields (event name, data); (None, None) for a comment line."""
    data: list[str] = []
    event_name = None
    for line in lines:
        if not line:
            if data:
                yield event_name, "\n".join(data)
                data = []
            event_name = None
            continue
        if line[0] == ":":
            yield None, None
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_name = value
    if data:
        yield event_name, "\n".join(data)


def parse_stream(lines: Iterable[str], api: str) -> Iterator[StreamEvent]:
    """Events from an SSE body. A malformed payload becomes an error event, ending the stream."""
    for event_name, data in sse_payloads(lines):
        if data is None:
            yield (PING,)
            continue
        if data == "[DONE]":
            return
        try:
            if api == "chat":
                yield from chat_events(data)
            else:
                yield from responses_events(data, event_name)
        except (ValueError, AttributeError, TypeError):
            yield (ERROR, "malformed", f"the provider sent malformed data: {data[:60]!r}")
            return


def parse_body(body: bytes, content_type: str, api: str) -> Iterator[StreamEvent]:
    """Events from a non-stream body: a whole JSON reply, or something that is not one."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        what = "an HTML page" if "html" in content_type or text.lower().startswith("<") else "no usable data"
        yield (ERROR, "not_a_stream", f"the server answered with {what} instead of a reply: check OPENAI_BASE_URL")
        return
    if payload.get("error"):
        yield error_event(payload["error"])
        return
    if api == "chat" and payload.get("choices"):
        yield from chat_events(json.dumps(payload))
        if not any(c.get("finish_reason") for c in payload["choices"]):
            yield (FINISH, "stop")
    elif api == "responses" and payload.get("output") is not None:
        for item in payload.get("output") or ():
            if item.get("type") == "message":
                for part in item.get("content") or ():
                    if part.get("type") == "output_text":
                        yield (TEXT, part.get("text") or "")
        yield from responses_events(json.dumps({"type": "response.completed", "response": payload}))
    else:
        yield (ERROR, "not_a_stream", "the server answered with JSON that is not a reply: check OPENAI_BASE_URL")
