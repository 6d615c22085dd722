"""The provider: the SDK client for one base URL, request shape, rejected parameters, and errors as one line."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

from .conversation import Request
from .log import one_line, redact
from .settings import Settings
from .streams import StreamEvent, parse_body, parse_stream

FailureKind = Literal[
    # the provider answered with an error status
    "auth",  # 401: the key
    "payment",  # 402: out of credit
    "forbidden",  # 403
    "not_found",  # 404 with no model named: the base URL
    "unknown_model",
    "no_endpoint",  # no Responses API here
    "rate_limit",
    "server",  # 5xx, 408, 409
    "context_length",  # the request is larger than the model's window
    "message_too_long",  # the newest message alone is larger than the model's window
    "roles",  # the server rejected the order of the messages
    "bad_request",
    "no_vision",  # the model cannot see images
    # the network, before any reply
    "timeout",
    "connection",
    # the reply itself
    "stream_error",  # the provider reported an error mid-stream
    "not_a_stream",  # an HTML page or other JSON where a reply should be
    "malformed",  # data that does not parse
    "no_finish",  # the stream ended without a finish signal
    "deadline",  # --first-token-timeout or --total-timeout
    "stall",  # no byte for --timeout
    "connection_lost",  # the connection broke mid-reply
    "unexpected",
]


class Failure(Exception):
    """A provider or network failure, already turned into one readable line."""

    def __init__(
        self,
        message: str,
        kind: FailureKind = "unexpected",
        status: int | None = None,
        retryable: bool = False,
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.kind, self.status, self.retryable, self.code, self.param = kind, status, retryable, code, param
        self.latency = 0.0  # how long the failed attempt took, for the log
        self.window: int | None = None  # a context window the error states (context-length errors)

    def retold(self, message: str, kind: FailureKind | None = None) -> Failure:
        """The same failure in other words (or recognised as another kind): a new one, this one untouched."""
        failure = Failure(message, kind or self.kind, self.status, self.retryable, self.code, self.param)
        failure.latency, failure.window = self.latency, self.window
        return failure


CONTEXT_PATTERNS = re.compile(
    r"context_length_exceeded|maximum context length|context length|context window|"
    r"too many tokens|prompt is too long|exceeds the (?:model'?s? )?(?:context|maximum)|"
    r"exceeds the available context size|exceed_context_size",
    re.I,
)
MAX_CONTEXT_NUMBER = re.compile(r"maximum context length is (\d+)", re.I)


def error_details(exc: Any) -> tuple[str | None, str, str | None]:
    """(code, message, param) from an SDK status error's body, never from str(exc)."""
    body = getattr(exc, "body", None)
    code, param = getattr(exc, "code", None), getattr(exc, "param", None)
    message = ""
    if isinstance(body, dict):
        inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
        message = str(inner.get("message") or body.get("detail") or "")
        code = code or inner.get("code") or inner.get("type")
        param = param or inner.get("param")
    elif isinstance(body, str):
        message = body
    if not message:
        response = getattr(exc, "response", None)
        try:
            message = response.text if response is not None else ""
        except Exception:
            message = ""
    return (str(code) if code else None), message, (str(param) if param else None)


def window_in_error(exc: Any, message: str) -> int | None:
    """The context window a context-length error states: llama.cpp's `n_ctx`, or "maximum context length is N"."""
    body = getattr(exc, "body", None)
    inner = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
    if isinstance(inner, dict) and isinstance(inner.get("n_ctx"), int) and inner["n_ctx"] > 0:
        return int(inner["n_ctx"])
    found = MAX_CONTEXT_NUMBER.search(message or "")
    return int(found.group(1)) if found else None


def is_context_error(code: str | None, message: str) -> bool:
    return code == "context_length_exceeded" or bool(CONTEXT_PATTERNS.search(message or ""))


OPTIONAL_PARAMETERS = ("stream_options", "max_tokens", "temperature", "store")  # what a server may reject
RENAMED_PARAMETERS = {"max_tokens": "max_completion_tokens"}  # sent under this name once the old is rejected


def rejected_parameter(message: str, param: str | None) -> str | None:
    """Which optional parameter a 400/422 rejects, if the error says so."""
    text = f"{param or ''} {message or ''}".lower()
    for name in OPTIONAL_PARAMETERS:
        if name in text and (
            "unsupported" in text
            or "not support" in text
            or "unknown" in text
            or "not allowed" in text
            or "extra" in text
            or "invalid" in text
            or "unrecognized" in text
            or "not permitted" in text
            or param == name
        ):
            return name
    return None


# The SDK does the retrying and logs why and how long; those records become one line for the user.
# The request runs in the calling thread, so a thread-local says whose notify hears about it: many
# chats (each in its own worker thread) can share one provider and one client.
_retrying = threading.local()
RETRY_REASONS: dict[object, str] = {429: "rate limited", 408: "request timeout", 409: "conflict"}  # by HTTP status


class RetryNotice(logging.Handler):
    """Turns the SDK's retry log records into one notice for the chat whose request is retrying."""

    def emit(self, record: logging.LogRecord) -> None:
        notify = getattr(_retrying, "notify", None)
        if notify is None:
            return
        message = str(record.msg)
        args = record.args if isinstance(record.args, tuple) else ()  # the SDK logs with %-style arguments
        if message.startswith("Encountered an HTTP status error"):
            status = args[0]
            _retrying.reason = RETRY_REASONS.get(status, f"server error {status}")
        elif message.startswith("Encountered a timeout"):
            _retrying.reason = "timed out"
        elif message.startswith("Encountered exception"):
            _retrying.reason = "connection failed"
        elif message.startswith("Retrying request in"):
            delay, attempt, total = args
            notify(
                f"retrying in {delay:.1f}s ({getattr(_retrying, 'reason', '') or 'failed'}, retry {attempt} of {total})"
            )


def watch_retries() -> None:
    logger = logging.getLogger("openai._base_client")
    if not any(type(h).__name__ == "RetryNotice" for h in logger.handlers):
        logger.addHandler(RetryNotice())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


class RequestAbandoned(Exception):
    """Raised in the thread sending a request whose turn was stopped while the SDK waited to retry."""


class Provider:
    """The SDK client and request shape for one base URL. The SDK is imported on first use."""

    def __init__(self, settings: Settings, notify: Callable[[str], None] = lambda _text: None):
        self.settings = settings
        self.rejected: set[str] = set()  # optional parameters this server rejected, for the rest of the session
        self.notify = notify
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._client_lock:  # the REPL builds it in the background while the user types
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import httpx2
        from openai import OpenAI

        from .pacing import paced_http_client

        settings = self.settings
        headers = {}
        if settings.app_url and settings.app_name:
            headers = {"HTTP-Referer": settings.app_url, "X-Title": settings.app_name}
        watch_retries()

        class Client(OpenAI):
            def _sleep_for_retry(self, *, retries_taken: int, max_retries: int, options: Any, response: Any) -> None:
                """The SDK's wait before a retry, given up the moment the turn that asked is stopped (the
                SDK would sleep it out and send the request again, for a reader who had left)."""
                stop = getattr(_retrying, "stop", None)
                if stop is None:
                    super()._sleep_for_retry(
                        retries_taken=retries_taken, max_retries=max_retries, options=options, response=response
                    )
                    return
                headers = response.headers if response is not None else None
                delay = self._calculate_retry_timeout(max_retries - retries_taken, options, headers)
                logging.getLogger("openai._base_client").info(  # what the retry notice listens for
                    "Retrying request in %f seconds (retry %i of %s)", delay, retries_taken + 1, max_retries
                )
                if stop.wait(delay):
                    raise RequestAbandoned

        return Client(
            api_key=settings.api_key or "not-needed",  # local servers need no key; the SDK insists on one
            base_url=settings.base_url,
            max_retries=settings.retries,
            timeout=httpx2.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            default_headers=headers or None,
            http_client=paced_http_client(),  # the SDK's own client, its reads spaced out while a reply streams
        )

    def request_params(self, request: Request, model: str, stream: bool = True) -> dict[str, Any]:
        settings = self.settings
        if settings.api == "responses":
            params: dict[str, Any] = {
                "model": model,
                "instructions": request.system,
                "input": [m.as_dict("responses") for m in request.kept],
                "max_output_tokens": settings.max_tokens,
                "stream": stream,
                "store": False,  # the conversation is ours; the provider need not keep it
            }
        else:
            params = {
                "model": model,
                "messages": request.messages("chat"),
                "stream": stream,
                "max_tokens": settings.max_tokens,
            }
            if stream:
                params["stream_options"] = {"include_usage": True}
        params["temperature"] = settings.temperature if request.temperature is None else request.temperature
        for name in self.rejected & params.keys():
            value = params.pop(name)
            if name in RENAMED_PARAMETERS:
                params[RENAMED_PARAMETERS[name]] = value
        return params

    def reject(self, parameter: str | None, sent: dict[str, Any]) -> bool:
        """Stop sending a parameter the server rejected; False if that cannot help."""
        if parameter is None or parameter not in sent or parameter in self.rejected:
            return False
        self.rejected.add(parameter)
        return True

    def open(self, params: dict[str, Any], stop: threading.Event | None = None) -> Any:
        """Send the request; the raw streaming HTTP response (once its headers are in), to be closed by the caller.

        The SDK does the request, authentication, retries and error mapping; the body is ours to
        parse. `client.post` (the SDK's way to call any endpoint) also skips importing the typed
        resource classes, which costs tens of milliseconds before the first token.
        """
        import httpx2

        # retry notices from this thread go to us, and `stop` set ends the SDK's wait before a retry
        _retrying.notify, _retrying.reason, _retrying.stop = self.notify, "", stop
        path = "/responses" if self.settings.api == "responses" else "/chat/completions"
        return self.client.post(path, cast_to=httpx2.Response, body=params, stream=bool(params.get("stream")))

    def list_models(self) -> list[str]:
        """The models the server lists, sorted; empty when it lists none or cannot be asked."""
        try:
            return sorted(model.id for model in self.client.with_options(max_retries=0, timeout=5).models.list())
        except Exception:
            return []


def shown_models(models: list[str], limit: int = 12) -> str:
    """A model list shortened for one line."""
    return ", ".join(models[:limit]) + (" …" if len(models) > limit else "")


def events_from_response(http: Any, api: str) -> Iterator[StreamEvent]:
    content_type = http.headers.get("content-type", "")
    if "event-stream" in content_type:
        yield from parse_stream(http.iter_lines(), api)
    else:
        yield from parse_body(http.read(), content_type, api)


def describe_status_error(exc: Any, settings: Settings, model: str) -> Failure:
    status = getattr(exc, "status_code", None)
    code, message, param = error_details(exc)
    detail = one_line(redact(message, settings.api_key)) if message else ""
    suffix = f": {detail}" if detail else ""
    retries = f" after {settings.retries} retries" if settings.retries else ""
    if status == 401:
        return Failure(
            f"the provider rejected the API key (401): check OPENAI_API_KEY in .env or the environment{suffix}",
            "auth",
            status,
        )
    if status == 402:
        return Failure(f"payment required (402): the account may be out of credits{suffix}", "payment", status)
    if status == 403:
        return Failure(f"access denied (403){suffix}", "forbidden", status)
    if status in (404, 405):
        if settings.api == "responses" and (status == 405 or "model" not in message.lower()):
            return Failure(
                f"this server has no Responses API endpoint ({status}): try --api chat", "no_endpoint", status
            )
        if "model" in message.lower() or code == "model_not_found":
            return Failure(f"unknown model {model!r} ({status}){suffix}", "unknown_model", status, retryable=True)
        return Failure(
            f"not found ({status}) at {settings.base_url}: check OPENAI_BASE_URL{suffix}", "not_found", status
        )
    if status == 429:
        return Failure(
            f"rate limited (429){retries}: wait a moment and try again{suffix}", "rate_limit", status, retryable=True
        )
    if status in (408, 409) or (status or 0) >= 500:
        return Failure(f"the provider failed ({status}){retries}{suffix}", "server", status, retryable=True)
    if is_context_error(code, message):
        failure = Failure(
            f"the conversation is too long for the model's context window{suffix}",
            "context_length",
            status,
            code=code,
        )
        failure.window = window_in_error(exc, message)
        return failure
    if "alternate" in message.lower():
        return Failure(f"the server rejected the message order ({status}){suffix}", "roles", status)
    return Failure(
        f"the provider rejected the request ({status}){suffix}", "bad_request", status, code=code, param=param
    )


def describe_exception(exc: BaseException, settings: Settings, model: str) -> Failure:
    """Any exception from the SDK or the network as one readable Failure."""
    import openai

    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return describe_status_error(exc, settings, model)
    if isinstance(exc, openai.APITimeoutError):
        return Failure(
            f"timed out waiting for {settings.host} (--timeout {settings.timeout:g}s)", "timeout", retryable=True
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        reason = one_line(str(cause)) if cause else "connection failed"
        if "refused" in reason.lower():
            reason = "connection refused"
        return Failure(
            f"cannot reach {settings.host}: {reason} (check OPENAI_BASE_URL and the network)",
            "connection",
            retryable=True,
        )
    return Failure(
        f"unexpected error: {one_line(redact(str(exc) or type(exc).__name__, settings.api_key))}", "unexpected"
    )
