"""One turn on the wire: send a request, consume its events, return the reply with timing and usage."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .conversation import Request, Status
from .log import one_line, redact
from .pacing import pace
from .provider import Failure, Provider, describe_exception, events_from_response, is_context_error
from .streams import ERROR, FINISH, REASONING, TEXT, USAGE, Event
from .usage import Usage

FINISH_NOTES = {
    "length": "reply cut off by the output token limit (--max-tokens)",
    "content_filter": "reply stopped by the provider's content filter",
    "error": "the provider reported an error and stopped the reply",
}


# Finish reasons that mean the reply is whole. Only these: any other reason (a gateway's
# "unexpected_eof", an incomplete response) means the reply may be cut short.
COMPLETE_REASONS = {"stop", "end_turn", "eos", "eos_token", "stop_sequence", "tool_calls", "function_call"}


def finish_note(reason: str | None, window_full: bool = False, below_limit: bool = False) -> str:
    """What to tell the user about a reply that ended with a reason that does not mean it is whole."""
    if reason == "length" and window_full:
        return (
            "reply cut off because the model's context window is full (not by the output token limit): "
            "the next turn sends fewer older messages"
        )
    if reason == "length" and below_limit:
        return "reply cut off by the server well before --max-tokens (finish reason 'length'): a limit of its own"
    return FINISH_NOTES.get(reason or "") or f"the reply ended early (finish reason {reason!r}): it may be incomplete"


def empty_reply_note(result: TurnResult) -> str:
    """What to say of a complete reply with no text in it."""
    if result.reasoning_chars:
        return f"the model sent only reasoning ({result.reasoning_chars:,} characters) and no answer"
    return "the model sent an empty reply"


class Outcome(StrEnum):
    """How a turn ended: decided here once, shown by each front-end in its own words."""

    COMPLETE = "complete"  # a whole reply
    EMPTY = "empty"  # complete, with no text in it
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C, /cancel or shutdown; what arrived is kept
    FAILED_MID_REPLY = "failed mid-reply"  # the provider or the network failed after some text
    ENDED_EARLY = "ended early"  # the stream ended cleanly with a finish reason that is not "whole"


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
    below_limit: bool = False  # a "length" finish far below the output limit, with far too little to fill a window

    @property
    def outcome(self) -> Outcome:
        if self.interrupted:
            return Outcome.INTERRUPTED
        if self.failure is not None:
            return Outcome.FAILED_MID_REPLY
        if self.finish_reason not in COMPLETE_REASONS:
            return Outcome.ENDED_EARLY
        return Outcome.COMPLETE if self.reply else Outcome.EMPTY

    @property
    def truncated(self) -> bool:
        return self.outcome not in (Outcome.COMPLETE, Outcome.EMPTY)

    @property
    def status(self) -> Status:
        """The status the reply is saved with."""
        outcome = self.outcome
        if outcome is Outcome.INTERRUPTED:
            return Status.INTERRUPTED
        return Status.INCOMPLETE if self.truncated else Status.COMPLETE

    def note(self) -> str:
        """What to tell the user about how the reply ended ("" for a whole one); front-ends may reword."""
        outcome = self.outcome
        if outcome is Outcome.INTERRUPTED:
            return "interrupted" if self.reply else "interrupted before the reply began"
        if outcome is Outcome.FAILED_MID_REPLY:
            return f"reply cut short: {self.failure}"
        if outcome is Outcome.ENDED_EARLY:
            return finish_note(self.finish_reason, self.window_full, self.below_limit)
        if outcome is Outcome.EMPTY:
            return empty_reply_note(self)
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
            with contextlib.suppress(Exception):  # the reading thread sees the closed stream (or the flag) either way
                response.close()

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


class Opening:
    """The request being sent, in a thread of its own, so that waiting for the response headers (a
    local server loading a model, a queued request, the SDK's own retries) can be given up at once:
    on a Cancel, Ctrl-C or a deadline the caller goes on, and the response, should it ever come,
    is closed unread."""

    def __init__(self, provider: Provider, params: dict[str, Any]):
        self._provider, self._params = provider, params
        self._lock = threading.Lock()
        self.done = threading.Event()
        self._stop = threading.Event()  # set when the turn gives up: the SDK's retry wait ends with it
        self.response: Any = None
        self.error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._send, name="request", daemon=True).start()

    def _send(self) -> None:
        response, error = None, None
        try:
            response = self._provider.open(self._params, self._stop)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            error = exc
        with self._lock:
            abandoned = self._abandoned
            if not abandoned:
                self.response, self.error = response, error
                self.done.set()
        if abandoned and response is not None:
            response.close()

    def wait(self, cancel: Cancel | None, give_up_at: float, deadline: str) -> Any:
        """The response once its headers are in; Cancelled or Deadline if it is given up first."""
        try:
            while not self.done.wait(0.05):
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                if time.monotonic() > give_up_at:
                    raise Deadline(deadline)
        except BaseException:
            self.abandon()
            raise
        if self.error is not None:
            raise self.error
        return self.response

    def abandon(self) -> None:
        self._stop.set()
        with self._lock:
            self._abandoned = True
            response, self.response = self.response, None
        if response is not None:
            response.close()


def stream_turn(
    provider: Provider,
    request: Request,
    model: str,
    on_event: Callable[[Event, str], None],
    stream: bool = True,
    cancel: Cancel | None = None,
) -> TurnResult:
    """Send one request and consume its events. Raises Failure only before any text arrived.

    Ctrl-C (KeyboardInterrupt in this thread) or `cancel` set from another thread ends the turn
    with `interrupted` set and whatever text had arrived kept, from the moment the request starts.
    """
    _ = provider.client  # build the client before the clock starts
    turn = Turn(provider, request, model, on_event, cancel)
    result = turn.run(stream)
    if not stream:
        result.ttft = None  # the whole reply arrived at once: no first token was timed
    if result.failure is not None and not result.reply and not result.interrupted:
        result.failure.latency = result.latency
        raise result.failure
    return result


class Turn:
    """One request's life: open it, read its events, and turn whatever ends it into the result."""

    def __init__(
        self,
        provider: Provider,
        request: Request,
        model: str,
        on_event: Callable[[Event, str], None],
        cancel: Cancel | None,
    ):
        self.provider, self.request, self.model, self.on_event, self.cancel = provider, request, model, on_event, cancel
        self.settings = provider.settings
        self.result = TurnResult(model=model, sent_messages=len(request.kept) + 1)
        self.parts: list[str] = []
        self.started = time.monotonic()
        self.first_token_by = self.started + self.settings.first_token_timeout
        self.done_by = self.started + self.settings.total_timeout

    def run(self, stream: bool) -> TurnResult:
        import httpx2
        import openai

        result, cancel = self.result, self.cancel
        try:
            self.stopped_yet()
            response = self.open(stream)
            try:
                if cancel is not None:
                    cancel.watch(response)
                self.consume(response)
            finally:
                pace(response, False)  # the connection goes back to the pool as it came
                response.close()
            self.stopped_yet()
            if result.finish_reason is None:
                raise Failure("the stream ended without a finish signal: the reply may be incomplete", "no_finish")
        except (KeyboardInterrupt, Cancelled):
            result.interrupted = True
        except Deadline as exc:
            result.failure = Failure(str(exc), "deadline")
        except Failure as exc:
            result.failure = exc
        except (httpx2.HTTPError, openai.APIConnectionError) as exc:
            self.network_error(exc)
        except openai.APIError as exc:
            result.failure = describe_exception(exc, self.settings, self.model)
        except Exception:
            if self.cancel is None or not self.cancel.is_set():
                raise
            # Closing the response from another thread can surface as any of the HTTP library's own
            # errors (httpx's StreamClosed is no HTTPError): the turn was stopped, and what arrived is kept.
            result.interrupted = True
        finally:
            if cancel is not None:
                cancel.finished = True
                cancel.release()
        result.latency = time.monotonic() - self.started
        result.reply = "".join(self.parts)
        return result

    def stopped_yet(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled

    def open(self, stream: bool) -> Any:
        """Send the request; its response once the headers are in, unless stopped or out of time first."""
        settings = self.settings
        params = self.provider.request_params(self.request, self.model, stream)
        if self.first_token_by < self.done_by:
            give_up_at, why = (
                self.first_token_by,
                f"no reply after {settings.first_token_timeout:g}s (--first-token-timeout)",
            )
        else:
            give_up_at, why = self.done_by, f"stopped after {settings.total_timeout:g}s (--total-timeout)"
        return Opening(self.provider, params).wait(self.cancel, give_up_at, why)

    def consume(self, response: Any) -> None:
        result, parts, on_event, cancel = self.result, self.parts, self.on_event, self.cancel
        settings = self.settings
        for event in events_from_response(response, settings.api):
            if cancel is not None and cancel.is_set():  # inline: this runs for every chunk
                raise Cancelled
            # event[0] each time rather than a local: mypy narrows the tuple's type only this way
            if event[0] is TEXT:
                if result.ttft is None:
                    self.first_token(response)
                parts.append(event[1])
                on_event(TEXT, event[1])
            elif event[0] is REASONING:
                if result.ttft is None:
                    self.first_token(response)
                result.reasoning_chars += len(event[1])
                on_event(REASONING, event[1])
            elif event[0] is USAGE:
                result.usage = event[1]
            elif event[0] is FINISH:
                result.finish_reason = event[1]
                pace(response, False)  # what follows the finish (usage, the end) is read at once
            elif event[0] is ERROR:
                raise self.stream_error(event[1], event[2])
            now = time.monotonic()
            if now > self.done_by:
                raise Deadline(f"stopped after {settings.total_timeout:g}s (--total-timeout)")
            if result.ttft is None and now > self.first_token_by:
                raise Deadline(f"no reply after {settings.first_token_timeout:g}s (--first-token-timeout)")

    def first_token(self, response: Any) -> None:
        """The reply has begun: its time to first token, and the reads spaced out from now on."""
        self.result.ttft = time.monotonic() - self.started
        pace(response, True)

    def stream_error(self, code: str | None, message: str) -> Failure:
        if code == "not_a_stream":
            return Failure(message, "not_a_stream")
        if code == "malformed":
            return Failure(message, "malformed")
        failure = Failure(
            f"the provider reported an error mid-reply: {one_line(redact(message, self.settings.api_key))}",
            "stream_error",
            code=code,
        )
        return failure.retold(str(failure), "context_length") if is_context_error(code, message) else failure

    def network_error(self, exc: Exception) -> None:
        import httpx2

        result, settings = self.result, self.settings
        if self.cancel is not None and self.cancel.is_set():
            result.interrupted = True  # the read ended because cancel closed the response
        elif isinstance(exc, httpx2.TimeoutException):
            result.failure = Failure(f"the stream stalled for {settings.timeout:g}s (--timeout)", "stall")
        elif self.parts or result.ttft is not None or isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadError)):
            result.failure = Failure(f"the connection was lost mid-reply ({type(exc).__name__})", "connection_lost")
        else:
            result.failure = describe_exception(exc, settings, self.model)
