"""Fewer wake-ups while a reply trickles in: the socket is read at most every READ_EVERY seconds.

Models stream 30-150 chunks a second, each in a packet of its own, and what a chunk costs at that
pace is mostly waking up for it: the thread is scheduled, the HTTP library's body reader runs, the
view draws, with cold caches every time. While a reply's text is streaming, the connection's reads
are spaced out instead: a read that comes sooner than READ_EVERY after the last one waits out the
rest first, so one wake-up takes in every chunk that arrived meanwhile (what is read is the same,
byte for byte; only when it is read changes). Nothing waits before the first text (the time to
the first token is untouched), after the finish (the end of a reply is read at once), or when a
read fills its buffer (a fast server is read as fast as it sends). Closing the stream from another
thread (a Cancel) ends a wait at once.

The pacing lives in the HTTP library's network layer, under the SDK and h11: `paced_http_client()`
is the SDK's HTTP client on a transport whose connections are `PacedStream`s, and
`pace(response, on)` turns pacing on or off for the connection a streaming response is read from.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpcore2
    import httpx2

# 20 reads a second at most, the terminal's frame rate: a person reading sees text arrive as smoothly
# as before, and a 90-chunks-a-second stream wakes the reader a quarter as often. The end of a reply is
# read 0-50 ms after it arrives (measured: about 20 ms from the last byte to the exit). A server that
# holds small writes until the last is acknowledged (Nagle's algorithm: llama.cpp's) is acknowledged
# only when we read, so its chunks, and its end, come up to one interval later again.
READ_EVERY = 0.05


def paced_http_client() -> httpx2.Client:
    """The HTTP client the SDK would build for itself (its limits, redirects, proxies from the
    environment, closed when dropped), its direct connections paced (proxied ones read as usual)."""
    import httpx2

    class HttpClient(httpx2.Client):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            pool: Any = getattr(self._transport, "_pool", None)  # no public way to give it a network backend
            backend = getattr(pool, "_network_backend", None)
            if backend is not None:
                pool._network_backend = PacedBackend(backend)

        def __del__(self) -> None:  # as the SDK's own: a client dropped with its Provider closes its pool
            with contextlib.suppress(Exception):
                if not self.is_closed:
                    self.close()

    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)  # the SDK's defaults
    return HttpClient(limits=limits, follow_redirects=True)


def pace(response: Any, on: bool) -> None:
    """Space out the reads of the connection `response` streams from (or stop doing so)."""
    stream = response.extensions.get("network_stream") if hasattr(response, "extensions") else None
    if isinstance(stream, PacedStream):
        stream.paced = on


class PacedBackend:
    """A network backend whose streams are `PacedStream`s around the given backend's."""

    def __init__(self, backend: httpcore2.NetworkBackend):
        self.backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> PacedStream:
        return PacedStream(self.backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> PacedStream:
        return PacedStream(self.backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


class PacedStream:
    """A connection whose reads, while `paced`, come at most every READ_EVERY seconds."""

    def __init__(self, stream: httpcore2.NetworkStream, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.paced = False
        self.clock = clock
        self._read_at: float | None = None  # when the last read returned, unless it filled its buffer
        self._closed = threading.Event()

    def due_in(self) -> float:
        """Seconds before the next read may reach the socket: none unless paced, and none after a read
        that filled its buffer (more is waiting)."""
        if not self.paced or self._read_at is None:
            return 0.0
        return max(0.0, self._read_at + READ_EVERY - self.clock())

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wait = self.due_in()
        if wait:
            self._closed.wait(wait)  # closed from another thread (a Cancel): at once
        data = self.stream.read(max_bytes, timeout)
        self._read_at = self.clock() if len(data) < max_bytes else None
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, timeout)

    def close(self) -> None:
        self._closed.set()
        self.stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return PacedStream(self.stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)
