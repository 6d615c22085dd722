"""One turn on the wire: send a request, consume its events, return the reply with timing and usage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .conversation import Request
from .log import one_line, redact
from .provider import Failure, Provider, describe_exception, events_from_response, is_context_error
from .streams import ERROR, FINISH, REASONING, TEXT, USAGE
from .usage import Usage

FINISH_NOTES = {
    "length": "reply cut off by the output token limit (--max-tokens)",
    "content_filter": "reply stopped by the provider's content filter",
    "error": "the provider reported an error and stopped the reply",
}


# Finish reasons that mean the reply is whole. Only these: any other reason (a gateway's
# "unexpected_eof", an incomplete response) means the reply may be cut short.
COMPLETE_REASONS = {"stop", "end_turn", "eos", "eos_token", "stop_sequence", "tool_calls", "function_call"}


def finish_note(reason: str | None, window_full: bool = False) -> str:
    """What to tell the user about a reply that ended with a reason that does not mean it is whole."""
    if reason == "length" and window_full:
        return "reply cut off because the model's context window is full (not by --max-tokens): send less history"
    return FINISH_NOTES.get(reason or "") or f"the reply ended early (finish reason {reason!r}): it may be incomplete"


def empty_reply_note(result: TurnResult) -> str:
    """What to say of a complete reply with no text in it."""
    if result.reasoning_chars:
        return f"the model sent only reasoning ({result.reasoning_chars:,} characters) and no answer"
    return "the model sent an empty reply"


@dataclass
class TurnResult:
    reply: str = ""
    reasoning_chars: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    ttft: float | None = None  # None when not measured (a whole reply without streaming)
    latency: float = 0.0
    failure: Failure | None = None  # why the turn failed or was cut short
    interrupted: bool = False
    model: str = ""
    sent_messages: int = 0
    window_full: bool = False  # a "length" finish well below the output limit: the context window ran out

    @property
    def cut_short(self) -> bool:
        return self.failure is not None and bool(self.reply)

    @property
    def ended_early(self) -> bool:
        """The stream ended cleanly, but its finish reason does not say the reply is whole."""
        return not self.interrupted and self.failure is None and self.finish_reason not in COMPLETE_REASONS

    @property
    def truncated(self) -> bool:
        return self.cut_short or self.interrupted or self.finish_reason not in COMPLETE_REASONS

    @property
    def flags(self) -> str:
        if self.interrupted:
            return "interrupted"
        if self.cut_short or self.ended_early:
            return "cut short"
        return ""


class Deadline(Exception):
    pass


class Cancelled(Exception):
    """Raised inside a turn whose Cancel was set; handled exactly like Ctrl-C."""


class Cancel:
    """Stops a turn from another thread (/cancel in a chat, shutdown): the partial reply is kept.

    The turn checks the flag after every event; setting it also closes the HTTP response, so a
    read that is waiting for the next byte returns at once instead of after --timeout.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self.finished = False  # the stream is over: setting the token now changes nothing

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            response, self._response = self._response, None
        if response is not None:
            try:
                response.close()
            except Exception:
                pass  # the reading thread sees the closed stream (or the flag) either way

    def watch(self, response: Any) -> None:
        """The response a turn is reading, to be closed by set()."""
        with self._lock:
            if not self._event.is_set():
                self._response = response
                return
        response.close()

    def release(self) -> None:
        with self._lock:
            self._response = None


def stream_turn(
    provider: Provider,
    request: Request,
    model: str,
    on_event: Callable[[str, str], None],
    stream: bool = True,
    cancel: Cancel | None = None,
) -> TurnResult:
    """Send one request and consume its events. Raises Failure only before any text arrived.

    Ctrl-C (KeyboardInterrupt in this thread) or `cancel` set from another thread ends the turn
    with `interrupted` set and whatever text had arrived kept.
    """
    settings = provider.settings
    result = TurnResult(model=model, sent_messages=len(request.turns) + 1)
    parts: list[str] = []
    import httpx2
    import openai

    _ = provider.client  # build the client before the clock starts
    started = time.monotonic()
    first_token_by = started + settings.first_token_timeout
    done_by = started + settings.total_timeout
    params = provider.request_params(request, model, stream)
    try:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        with provider.open(params) as response:
            if cancel is not None:
                cancel.watch(response)
            for event in events_from_response(response, settings.api):
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                kind = event[0]
                if kind is TEXT:
                    if result.ttft is None:
                        result.ttft = time.monotonic() - started
                    parts.append(event[1])
                    on_event(TEXT, event[1])
                elif kind is REASONING:
                    if result.ttft is None:
                        result.ttft = time.monotonic() - started
                    result.reasoning_chars += len(event[1])
                    on_event(REASONING, event[1])
                elif kind is USAGE:
                    result.usage = event[1]
                elif kind is FINISH:
                    result.finish_reason = event[1]
                elif kind is ERROR:
                    code, message = event[1], event[2]
                    failure = Failure(
                        f"the provider reported an error mid-reply: {one_line(redact(message, settings.api_key))}",
                        "stream_error",
                        code=code,
                    )
                    if is_context_error(code, message):
                        failure.kind = "context_length"
                    elif code in ("not_a_stream", "malformed"):
                        failure = Failure(message, code)
                    raise failure
                now = time.monotonic()
                if now > done_by:
                    raise Deadline(f"stopped after {settings.total_timeout:g}s (--total-timeout)")
                if result.ttft is None and now > first_token_by:
                    raise Deadline(f"no reply after {settings.first_token_timeout:g}s (--first-token-timeout)")
        if cancel is not None and cancel.is_set():
            raise Cancelled
        if result.finish_reason is None:
            raise Failure("the stream ended without a finish signal: the reply may be incomplete", "no_finish")
    except (KeyboardInterrupt, Cancelled):
        result.interrupted = True
    except Deadline as exc:
        result.failure = Failure(str(exc), "deadline")
    except Failure as exc:
        result.failure = exc
    except (httpx2.HTTPError, openai.APIConnectionError) as exc:
        if cancel is not None and cancel.is_set():
            result.interrupted = True  # the read ended because cancel closed the response
        elif isinstance(exc, httpx2.TimeoutException):
            result.failure = Failure(f"the stream stalled for {settings.timeout:g}s (--timeout)", "stall")
        elif parts or result.ttft is not None or isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadError)):
            result.failure = Failure(f"the connection was lost mid-reply ({type(exc).__name__})", "connection_lost")
        else:
            result.failure = describe_exception(exc, settings, model)
    except openai.APIError as exc:
        result.failure = describe_exception(exc, settings, model)
    finally:
        if cancel is not None:
            cancel.finished = True
            cancel.release()
    result.latency = time.monotonic() - started
    result.reply = "".join(parts)
    if not stream:
        result.ttft = None  # the whole reply arrived at once: no first token was timed
    if result.failure is not None and not result.reply and not result.interrupted:
        result.failure.latency = result.latency
        raise result.failure
    return result
