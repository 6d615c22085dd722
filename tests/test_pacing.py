"""Reads spaced out while a reply trickles in (chatcore.pacing): fewer wake-ups, the same bytes.

The real SDK reads from the real test server; the reads that reach the socket are counted by
wrapping `PacedStream.read` (ours) around the real read, which still does the work.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import cancel_once_asked
from server import chat_reply

from chatcore import pacing
from chatcore.chat import Chat
from chatcore.settings import resolve_settings
from chatcore.streams import TEXT
from chatcore.turn import Cancel

PIECES = 240


@pytest.fixture
def reads(monkeypatch) -> list[Any]:
    """Every read of a connection, as ("read", paced at the time), in order, with the events between them."""
    log: list[Any] = []
    real = pacing.PacedStream.read

    def counted(self: pacing.PacedStream, max_bytes: int, timeout: float | None = None) -> bytes:
        log.append(("read", self.paced))
        return real(self, max_bytes, timeout)

    monkeypatch.setattr(pacing.PacedStream, "read", counted)
    return log


@pytest.fixture
def chat(server, env, monkeypatch) -> Chat:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    given = {"context_tokens": "8192"}  # the window is known: nothing to ask the server first
    settings = resolve_settings(given, {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_MODEL": "test-model"}, {})
    return Chat(settings, lambda _text: None)


def trickle(pieces: int = PIECES, delay: float = 0.004) -> tuple[str, Any]:
    """A reply that arrives a word every few milliseconds, as a fast model streams it."""
    text = "".join(f"word{n} " for n in range(pieces))
    return text, chat_reply(text, pieces=pieces, delay=delay)


def test_a_trickling_reply_is_read_in_far_fewer_wake_ups_and_arrives_whole(server, chat, reads):
    text, reply = trickle()
    server.push(reply)
    shown: list[str] = []
    result = chat.send("go", lambda kind, piece: shown.append(piece) if kind == TEXT else None)
    assert result.reply == text
    assert "".join(shown) == text  # every character, in order
    socket_reads = [entry for entry in reads if entry[0] == "read"]
    assert socket_reads  # the SDK reads through the paced transport
    # one read per piece unpaced (each arrives in a packet of its own); paced, one per READ_EVERY at most
    # (a loaded machine only lowers the count further)
    assert len(socket_reads) < PIECES / 3, len(socket_reads)


def test_nothing_is_paced_before_the_first_text_nor_after_the_turn(server, chat, reads):
    _text, reply = trickle(pieces=60)
    server.push(reply, chat_reply("second"))

    def on_event(_kind: Any, piece: str) -> None:
        reads.append(("text", piece))

    def reads_before_the_first_text() -> list[Any]:
        return reads[: next(index for index, entry in enumerate(reads) if entry[0] == "text")]

    chat.send("go", on_event)
    assert reads_before_the_first_text()
    assert set(reads_before_the_first_text()) == {("read", False)}
    assert ("read", True) in reads  # ...and paced once the reply streams
    reads.clear()
    assert chat.send("again", on_event).reply == "second"
    assert reads_before_the_first_text()
    assert set(reads_before_the_first_text()) == {("read", False)}  # the connection came back unpaced


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def connection():
    """A PacedStream around httpcore's real socket stream, over a real socket pair, on a clock of our own."""
    import socket

    from httpcore2._backends.sync import SyncStream

    ours, peer = socket.socketpair()
    clock = Clock()
    stream = pacing.PacedStream(SyncStream(ours), clock=clock)
    yield stream, peer, clock
    stream.close()
    peer.close()


def test_a_read_that_fills_its_buffer_is_followed_at_once(connection):
    stream, peer, clock = connection
    stream.paced = True
    peer.sendall(b"x" * 300)
    assert stream.read(100) == b"x" * 100  # full: more is waiting
    assert stream.due_in() == 0
    assert stream.read(1000) == b"x" * 200  # all there was: the stream trickles
    assert stream.due_in() == pytest.approx(pacing.READ_EVERY)
    clock.now += pacing.READ_EVERY / 2
    assert stream.due_in() == pytest.approx(pacing.READ_EVERY / 2)
    clock.now += pacing.READ_EVERY
    assert stream.due_in() == 0


def test_an_unpaced_stream_never_waits(connection):
    stream, peer, _clock = connection
    peer.sendall(b"abc")
    assert stream.read(1000) == b"abc"
    assert stream.due_in() == 0
    stream.paced = True
    assert stream.due_in() == pytest.approx(pacing.READ_EVERY)


def test_a_cancel_ends_a_paced_wait_and_keeps_what_arrived(server, chat):
    text, reply = trickle(pieces=400, delay=0.01)
    server.push(reply)
    cancel = Cancel()
    cancel_once_asked(server, cancel, after=1.0)
    result = chat.send("go", lambda _kind, _text: None, cancel=cancel)
    assert result.interrupted
    assert result.reply
    assert text.startswith(result.reply)


def test_a_proxy_from_the_environment_is_still_used(server, env, monkeypatch):
    # the paced client is the SDK's own: HTTP_PROXY still routes the request (the model's host does not
    # even resolve; the test server answers as the proxy)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    given = {"context_tokens": "8192"}
    settings = resolve_settings(given, {**env, "OPENAI_BASE_URL": "http://model.invalid/v1", "OPENAI_MODEL": "m"}, {})
    server.push(chat_reply("through the proxy"))
    assert Chat(settings, lambda _text: None).send("go", lambda _kind, _text: None).reply == "through the proxy"
    assert server.posts[-1].path.startswith("http://model.invalid/")
