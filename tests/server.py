"""A local OpenAI-compatible server for tests and benchmarks: real HTTP on 127.0.0.1, real SSE.

A test queues behaviours (`server.push(...)`); each request to /chat/completions or /responses
takes the next one (or a default reply). Every request is recorded: path, headers, JSON body.
Bodies are sent with chunked transfer encoding, so a clean end and a cut connection differ
exactly as they do on the wire.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLEEP, CUT = "sleep", "cut"


@dataclass
class Behaviour:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/event-stream"})
    pieces: list[Any] = field(default_factory=list)  # bytes, (SLEEP, seconds) or (CUT,)
    path: str | None = None  # only for requests whose path ends with this
    header_delay: float = 0.0  # seconds before the status line: "slow headers"


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return (head + f"data: {payload}\n\n").encode()


def chunk(
    content: str | None = None,
    finish: str | None = None,
    usage: Any = "absent",
    reasoning: dict[str, str] | None = None,
    role: bool = False,
    choices: bool = True,
) -> dict:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    if reasoning:
        delta.update(reasoning)
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
    }
    if usage != "absent":
        body["usage"] = usage
    return body


def usage_of(prompt: int, completion: int, **extra: Any) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, **extra}


def chat_reply(
    text: str = "Hello from the test server.",
    *,
    pieces: int | None = None,
    size: int = 4,
    finish: str | None = "stop",
    usage: str = "separate",
    prompt_tokens: int = 12,
    completion_tokens: int | None = None,
    done: bool = True,
    delay: float = 0.0,
    reasoning: str | None = None,
    reasoning_field: str = "reasoning_content",
    keepalives: int = 0,
    empty_first: bool = False,
    usage_extra: dict | None = None,
    status: int = 200,
) -> Behaviour:
    """A Chat Completions stream: role chunk, content deltas, finish chunk, usage chunk, [DONE]."""
    completion_tokens = completion_tokens if completion_tokens is not None else max(1, len(text) // 4)
    total = usage_of(prompt_tokens, completion_tokens, **(usage_extra or {}))
    out: list[Any] = []
    for _ in range(keepalives):
        out += [b": keep-alive\n\n", (SLEEP, 0.05)]
    if empty_first:
        out.append(
            sse(
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "prompt_filter_results": [{"prompt_index": 0}],
                }
            )
        )
    out.append(sse(chunk(role=True, content="", usage=None if usage == "null" else "absent")))
    if reasoning:
        for start in range(0, len(reasoning), size):
            out.append(sse(chunk(reasoning={reasoning_field: reasoning[start : start + size]})))
    step = size if pieces is None else max(1, -(-len(text) // pieces))
    for start in range(0, len(text), step):
        out.append(sse(chunk(content=text[start : start + step], usage=None if usage == "null" else "absent")))
        if delay:
            out.append((SLEEP, delay))
    if finish is not None or usage == "finish":
        out.append(
            sse(chunk(finish=finish, usage=total if usage == "finish" else (None if usage == "null" else "absent")))
        )
    if usage == "separate":
        out.append(sse(chunk(choices=False, usage=total)))
    if done:
        out.append(b"data: [DONE]\n\n")
    return Behaviour(status=status, pieces=out)


def error_status(
    status: int,
    message: str = "error",
    code: str | None = None,
    headers: dict | None = None,
    body: Any = None,
    param: str | None = None,
) -> Behaviour:
    if body is None:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": param}}
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    content_type = "text/html" if isinstance(body, str) and body.lstrip().startswith("<") else "application/json"
    return Behaviour(status=status, headers={"Content-Type": content_type, **(headers or {})}, pieces=[raw])


# -- Responses API streams -----------------------------------------------------


def responses_router(
    text: str = "Hello from the router.", size: int = 5, usage: tuple[int, int] = (11, 7)
) -> Behaviour:
    """Exactly the seed router's sequence: `event:` lines, hyphenated ids, no [DONE]."""
    rid, mid = f"resp-{uuid.uuid4().hex[:16]}", f"msg-{uuid.uuid4().hex[:16]}"
    base = {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "model": "test-model",
        "error": None,
        "incomplete_details": None,
    }

    def event(data: dict) -> bytes:
        return sse(data, data["type"])

    out = [
        event({"type": "response.created", "response": {**base, "status": "in_progress", "output": []}}),
        event({"type": "response.in_progress", "response": {**base, "status": "in_progress", "output": []}}),
        event(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {"type": "message", "id": mid, "role": "assistant", "content": [], "status": "in_progress"},
            }
        ),
        event(
            {
                "type": "response.content_part.added",
                "item_id": mid,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
        ),
    ]
    for start in range(0, len(text), size):
        out.append(
            event(
                {
                    "type": "response.output_text.delta",
                    "item_id": mid,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": text[start : start + size],
                }
            )
        )
    item = {
        "type": "message",
        "id": mid,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
        "status": "completed",
    }
    out += [
        event(
            {"type": "response.output_text.done", "item_id": mid, "output_index": 0, "content_index": 0, "text": text}
        ),
        event(
            {
                "type": "response.content_part.done",
                "item_id": mid,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []},
            }
        ),
        event({"type": "response.output_item.done", "output_index": 0, "item": item}),
        event(
            {
                "type": "response.completed",
                "response": {
                    **base,
                    "status": "completed",
                    "output": [item],
                    "usage": {
                        "input_tokens": usage[0],
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": usage[1],
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": sum(usage),
                    },
                },
            }
        ),
    ]
    return Behaviour(pieces=out)


def responses_openai(
    text: str = "Hello from OpenAI.",
    size: int = 4,
    terminal: dict | None = None,
    extra_events: list[dict] | None = None,
    reasoning: str | None = None,
    done: bool = False,
    end: bool = True,
    delay: float = 0.0,
) -> Behaviour:
    """OpenAI's own sequence, with sequence_number, no `event:` needed; `terminal` replaces completion."""
    seq = itertools.count()
    resp = {
        "id": "resp_abc",
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "gpt-test",
        "output": [],
        "usage": None,
    }
    events: list[dict] = [
        {"type": "response.created", "response": resp},
        {"type": "response.in_progress", "response": resp},
    ]
    if reasoning:
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {"type": "reasoning", "id": "rs_1", "summary": []},
            }
        )
        for start in range(0, len(reasoning), size):
            events.append(
                {
                    "type": "response.reasoning_summary_text.delta",
                    "item_id": "rs_1",
                    "output_index": 0,
                    "summary_index": 0,
                    "delta": reasoning[start : start + size],
                }
            )
    events += extra_events or []
    events.append(
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": [], "status": "in_progress"},
        }
    )
    deltas = [
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "delta": text[start : start + size],
            "logprobs": [],
        }
        for start in range(0, len(text), size)
    ]
    events += deltas
    if end:
        events.append(
            terminal
            or {
                "type": "response.completed",
                "response": {
                    **resp,
                    "status": "completed",
                    "usage": {
                        "input_tokens": 20,
                        "input_tokens_details": {"cached_tokens": 4},
                        "output_tokens": 9,
                        "output_tokens_details": {"reasoning_tokens": 3},
                        "total_tokens": 29,
                    },
                },
            }
        )
    out: list[Any] = []
    for e in events:
        out.append(sse({**e, "sequence_number": next(seq)}))
        if delay and e["type"] == "response.output_text.delta":
            out.append((SLEEP, delay))
    if done:
        out.append(b"data: [DONE]\n\n")
    return Behaviour(pieces=out)


# -- content parts ---------------------------------------------------------------


def text_of(content: Any) -> str:
    """A message's text: the string, or its text parts joined (Chat `text`, Responses `input_text`)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") in ("text", "input_text"))


def image_parts(body: Any) -> list[str]:
    """Every image a request carries, as the data: URL sent (both APIs)."""
    found = []
    for message in (body or {}).get("messages") or (body or {}).get("input") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                found.append(part["image_url"]["url"])
            elif part.get("type") == "input_image":
                found.append(part["image_url"])
    return found


# -- the server ------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)  # when the request arrived


class FakeServer:
    """Start with `FakeServer()`; `.base_url` ends in /v1; `.close()` stops it."""

    def __init__(self, models: list[str] | None = None, port: int = 0):
        self.models = models if models is not None else ["test-model", "other-model"]
        self.queue: list[Behaviour] = []
        self.requests: list[Recorded] = []
        self.disconnects: list[float] = []  # when a client went away mid-body
        self.finished: list[float] = []  # when a body was sent completely
        self.lock = threading.Lock()
        self.strict_roles = True  # reject what strict chat templates reject, as vLLM and llama.cpp do
        self.default_chat = lambda: chat_reply()
        self.default_responses = lambda: responses_router()
        # A local server to emulate, with its context window and what it does when a prompt overflows it:
        # "llama.cpp" (/props; 400 exceed_context_size_error), "llama-cpp-python" (no window endpoint;
        # 200 with an empty stream), "vllm" (max_model_len in /models; 400 "maximum context length"),
        # "ollama" (/api/show num_ctx; truncates silently), "lmstudio" (/api/v0/models), "openrouter".
        # "llama-cpp-python" is recognisable by its /models ("owned_by": "me") and, like the real one, stops a
        # reply with finish_reason "length" when prompt and reply fill the window; "empty-stream" is a server
        # that cannot be recognised and answers an overflowing prompt with an empty stream.
        self.local: str | None = None
        self.recognisable = True  # False: a llama-cpp-python whose /models does not give it away
        self.probe_delay = 0.0  # seconds before answering a GET (the endpoints that say a server's window)
        self.n_ctx: int | None = None
        self.overflows = 0  # requests refused (or emptied) because the prompt did not fit
        self.window_cuts = 0  # replies llama-cpp-python stopped with "length" because the window was full
        self.tokenizer_ratio: float | None = None  # default replies report the prompt as the estimate times this
        # Images: models that refuse them, and how: "openai" (400 naming image_url), "llama.cpp" (500, no mmproj)
        self.blind_models: set[str] = set()
        self.blind_style = "openai"
        # Speech to text: POST /audio/transcriptions answers {"text": ...}; None: the endpoint does not exist
        self.transcript: str | None = "Hello from a voice note."
        self.transcriptions: list[dict[str, Any]] = []  # the model, file name and size of each request
        self.transcription_status = 200  # another status: answered with an error of that status
        # Each write sent at once (TCP_NODELAY), as production servers do (nginx, uvicorn, Go's); True: small
        # writes held until the last is acknowledged (Nagle's algorithm), as llama.cpp's server does.
        self.nagle = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.disable_nagle_algorithm = not server.nagle
                super().setup()

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._record(self, None)
                if server.probe_delay:
                    time.sleep(server.probe_delay)  # a server slow to answer anything but the model
                path = self.path.rstrip("/")
                info = server._local_info(path)
                if info is not None:
                    self._send(
                        Behaviour(headers={"Content-Type": "application/json"}, pieces=[json.dumps(info).encode()])
                    )
                elif path.endswith("/models") and server.models is not None:
                    entries = [{"id": m, "object": "model", **server._model_extra()} for m in server.models]
                    body = json.dumps({"object": "list", "data": entries}).encode()
                    self._send(Behaviour(headers={"Content-Type": "application/json"}, pieces=[body]))
                else:
                    self._send(error_status(404, "not found"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/").endswith("/audio/transcriptions"):
                    server._record(self, {"multipart": len(raw)})
                    self._send(server._transcribe(self.headers.get("Content-Type", ""), raw))
                    return
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                server._record(self, body)
                if self.path.rstrip("/") == "/api/show" and server.probe_delay:
                    time.sleep(server.probe_delay)
                if self.path.rstrip("/") == "/api/show" and server.local == "ollama":
                    show = {
                        "parameters": f'num_ctx                        {server.n_ctx}\nstop "<|eot_id|>"',
                        "model_info": {"llama.context_length": 131072},
                    }
                    self._send(
                        Behaviour(headers={"Content-Type": "application/json"}, pieces=[json.dumps(show).encode()])
                    )
                    return
                if not self.path.rstrip("/").endswith(("/chat/completions", "/responses")):
                    self._send(error_status(404, "not found"))  # an endpoint this server does not have
                    return
                problem = server._role_problem(body)
                overflow = server._overflow(body)
                blind = server._refuse_images(body)
                if blind is not None:
                    self._send(blind)
                elif problem:
                    self._send(error_status(400, problem))
                elif overflow is not None:
                    self._send(overflow)
                elif server.tokenizer_ratio and not server.queue and self.path.endswith("/chat/completions"):
                    reported = round(server.prompt_tokens(body) * server.tokenizer_ratio)
                    self._send(chat_reply(prompt_tokens=reported))
                else:
                    self._send(server._fill_window(body, server._next(self.path)))

            def _send(self, behaviour: Behaviour) -> None:
                try:
                    if behaviour.header_delay:
                        time.sleep(behaviour.header_delay)
                    self.send_response(behaviour.status)
                    for name, value in behaviour.headers.items():
                        self.send_header(name, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.flush()
                    for piece in behaviour.pieces:
                        if isinstance(piece, tuple):
                            if piece[0] == SLEEP:
                                time.sleep(piece[1])
                                continue
                            if piece[0] == CUT:
                                self.wfile.flush()
                                self.connection.shutdown(socket.SHUT_RDWR)
                                self.close_connection = True
                                return
                        if piece:
                            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                            self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    if (
                        behaviour.pieces
                        and behaviour.status == 200
                        and "event-stream" in behaviour.headers.get("Content-Type", "")
                    ):
                        server.finished.append(time.monotonic())  # a reply body sent whole
                except (BrokenPipeError, ConnectionResetError, OSError):
                    server.disconnects.append(time.monotonic())
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda _request, _address: None  # clients hanging up is part of the job
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        with self.lock:
            self.requests.append(
                Recorded(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
            )

    def _next(self, path: str) -> Behaviour:
        with self.lock:
            for index, behaviour in enumerate(self.queue):
                if behaviour.path is None or path.endswith(behaviour.path):
                    return self.queue.pop(index)
        return self.default_responses() if path.endswith("/responses") else self.default_chat()

    def _local_info(self, path: str) -> Any:
        """The window endpoints of the emulated local server, or None."""
        if self.local == "llama.cpp" and path == "/props":
            return {"default_generation_settings": {"n_ctx": self.n_ctx, "model": "model.gguf"}, "total_slots": 1}
        if self.local == "lmstudio" and path == "/api/v0/models":
            return {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "type": "llm",
                        "state": "loaded",
                        "max_context_length": 32768,
                        "loaded_context_length": self.n_ctx,
                    }
                    for m in self.models
                ],
            }
        return None

    def _fill_window(self, body: Any, behaviour: Behaviour) -> Behaviour:
        """llama-cpp-python generates until prompt and reply fill its window, then stops with "length"."""
        if self.local != "llama-cpp-python" or self.n_ctx is None or not isinstance(body, dict):
            return behaviour
        prompt = self.prompt_tokens(body)
        text = "".join(
            delta.get("content") or ""
            for piece in behaviour.pieces
            if isinstance(piece, bytes)
            for line in piece.decode("utf-8", "replace").splitlines()
            if line.startswith("data: {")
            for choice in json.loads(line[6:]).get("choices") or []
            for delta in [choice.get("delta") or {}]
        )
        room = self.n_ctx - prompt
        if len(text.encode()) // 4 <= room:
            return behaviour
        self.window_cuts += 1
        return chat_reply(text[: max(0, room) * 4], finish="length", prompt_tokens=prompt, completion_tokens=room)

    def _transcribe(self, content_type: str, raw: bytes) -> Behaviour:
        """Whisper's API: a multipart form with `model` and `file`; {"text": ...} back."""
        if self.transcript is None:
            return error_status(404, "not found")
        if self.transcription_status != 200:
            return error_status(self.transcription_status, "Incorrect API key provided", code="invalid_api_key")
        import email.parser
        import email.policy

        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw
        )
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                fields.update(filename=part.get_filename(), size=len(payload), head=payload[:4])
            else:
                fields[str(name)] = payload.decode()
        self.transcriptions.append(fields)
        if not fields.get("size"):
            return error_status(400, "no file")
        return Behaviour(
            headers={"Content-Type": "application/json"}, pieces=[json.dumps({"text": self.transcript}).encode()]
        )

    def _refuse_images(self, body: Any) -> Behaviour | None:
        """A model that cannot see images answers a request carrying one as real servers do."""
        if not isinstance(body, dict) or body.get("model") not in self.blind_models or not image_parts(body):
            return None
        if self.blind_style == "llama.cpp":
            return error_status(
                500, "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
            )
        return error_status(
            400, "Invalid content type. image_url is only supported by certain models.", code="invalid_value"
        )

    def _model_extra(self) -> dict:
        if self.local == "llama-cpp-python" and self.recognisable:
            return {"owned_by": "me"}
        if self.local == "vllm":
            return {"max_model_len": self.n_ctx, "owned_by": "vllm"}
        if self.local == "openrouter":
            return {"context_length": self.n_ctx}
        return {}

    @staticmethod
    def prompt_tokens(body: Any) -> int:
        """The prompt's size as the client estimates it offline (about 4 bytes a token, 3 per message)."""
        messages = (body or {}).get("messages") or []
        return 3 + sum(3 + 1 + (len(text_of(m.get("content", "")).encode()) + 3) // 4 for m in messages)

    def _overflow(self, body: Any) -> Behaviour | None:
        """What the emulated server does with a prompt its window cannot hold, or None if it fits."""
        if self.n_ctx is None or not isinstance(body, dict) or self.local in (None, "ollama"):
            return None
        prompt = self.prompt_tokens(body)
        wanted = prompt + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        if self.local == "vllm" and wanted > self.n_ctx:
            self.overflows += 1
            return error_status(
                400,
                f"This model's maximum context length is {self.n_ctx} tokens. However, you "
                f"requested {wanted} tokens ({prompt} in the messages, {wanted - prompt} in the "
                f"completion). Please reduce the length of the messages or completion.",
            )
        if prompt < self.n_ctx:
            return None
        self.overflows += 1
        if self.local in ("llama-cpp-python", "empty-stream"):
            return Behaviour(pieces=[])  # 200, event stream headers, and nothing at all
        return error_status(
            400,
            body={
                "error": {
                    "code": 400,
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": prompt,
                    "n_ctx": self.n_ctx,
                    "message": "the request exceeds the available context size, try increasing it",
                }
            },
        )

    def _role_problem(self, body: Any) -> str | None:
        """What a strict chat template (vLLM, llama.cpp) says about the message order, if anything."""
        if not self.strict_roles or not isinstance(body, dict):
            return None
        given = body.get("input")
        given = [{"role": "user"}] if isinstance(given, str) else list(given or [])
        messages = body.get("messages") or [{"role": "system"}, *given]
        roles = [m.get("role") for m in messages]
        if roles.count("system") > 1 or (roles and "system" in roles[1:]):
            return "System message must be at the beginning."
        turns = [r for r in roles if r != "system"]
        if not turns or turns[0] != "user" or any(a == b for a, b in itertools.pairwise(turns)):
            return "Conversation roles must alternate user/assistant/user/assistant/..."
        return None

    def push(self, *behaviours: Behaviour) -> FakeServer:
        with self.lock:
            self.queue.extend(behaviours)
        return self

    @property
    def posts(self) -> list[Recorded]:
        """The model requests (chat completions and responses), not the probes of a server's other endpoints."""
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.path.rstrip("/").endswith(("/chat/completions", "/responses"))
        ]

    def reset(self) -> None:
        with self.lock:
            self.queue.clear()
            self.requests.clear()
            self.disconnects.clear()
            self.finished.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # run by hand: python tests/server.py [PORT]
    import sys

    fake = FakeServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(fake.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()
