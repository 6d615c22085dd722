"""What a server says: the models it serves, whether one answers on a local port, and a model's context window.

Zero-config asks the first two (`probe_local_servers`, `served_models`) while settings are loaded.
Local servers know their window and say so, each its own way: llama.cpp's `/props` (`n_ctx`),
vLLM's `max_model_len` in `/v1/models`, LM Studio's loaded context length in `/api/v0/models`,
Ollama's `/api/show` (its `num_ctx`, which is what it really uses, not the model's maximum), and
OpenRouter's `context_length` in `/models`. The answer is remembered per server and model in the
user cache directory (owner-only), and so is a window learned from a context-length error.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .files import open_private, private_dir, user_dir

# Keys that local-model guides put in OPENAI_API_KEY to satisfy clients that insist on one.
PLACEHOLDER_KEYS = {
    "ollama",
    "none",
    "lm-studio",
    "lmstudio",
    "empty",
    "not-needed",
    "no-key",
    "nokey",
    "sk-no-key-required",
    "dummy",
    "local",
    "llama",
    "vllm",
    "x",
    "-",
    "n/a",
    "na",
    "null",
    "sk-xxx",
    "sk-1234",
    "fake",
    "placeholder",
}
OLLAMA_DEFAULT_NUM_CTX = 2048  # what Ollama uses when nothing sets num_ctx (conservative: some versions use 4096)


def is_placeholder_key(key: str | None) -> bool:
    return key is not None and key.strip().lower() in PLACEHOLDER_KEYS


@dataclass
class Window:
    """A context window in tokens, and where the figure came from (for /stats and --verbose)."""

    tokens: int
    source: str


def _get_json(url: str, body: Any = None, api_key: str | None = None, timeout: float = 2.0) -> Any:
    """GET (or POST `body`) JSON from a server; None on any failure."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read(8_000_000) or b"null")
    except Exception:
        return None


def server_root(base_url: str) -> str:
    """The server itself, from an OpenAI-compatible base URL: http://host:8080/v1 -> http://host:8080."""
    return re.sub(r"/(api/)?v1/?$", "", base_url.rstrip("/"))


def _entry(listing: Any, model: str) -> dict[str, Any] | None:
    entries = listing.get("data") if isinstance(listing, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("id") == model:
            return entry
    return None


def _positive(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


LLAMA_CPP_PYTHON_DEFAULT_N_CTX = 2048  # llama-cpp-python's server when --n_ctx is not given; it never says


def ask_window(base_url: str, model: str, api_key: str | None, local: bool, timeout: float = 3.0) -> Window | None:
    """Ask the server for the model's context window; None if it does not say.

    Each kind of server says it at its own endpoint: all are asked at once, and the whole ask is
    bounded by `timeout`, so a slow or silent server costs at most that before the first request.
    The most specific answer wins (a local server's own endpoint before a generic `/models`)."""
    root = server_root(base_url)
    asks: list[Callable[[], Window | None]] = []
    if local:
        asks += [
            lambda: _llama_cpp_window(root, timeout),
            lambda: _ollama_window(root, model, timeout),
            lambda: _lm_studio_window(root, model, timeout),
        ]
    asks.append(lambda: _listed_window(base_url, model, api_key, local, timeout))
    return _first_answer(asks, timeout)


def _first_answer(asks: list[Callable[[], Window | None]], timeout: float) -> Window | None:
    """Run every ask at once; the first in order that answered within `timeout`."""
    answers: list[Window | None] = [None] * len(asks)

    def run(index: int) -> None:
        answers[index] = asks[index]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    give_up_at = time.monotonic() + timeout
    for index, thread in enumerate(threads):
        thread.join(max(0.0, give_up_at - time.monotonic()))
        if answers[index] is not None:
            return answers[index]  # what a more specific endpoint would say is not waited for
    return next((answer for answer in answers if answer is not None), None)


def _llama_cpp_window(root: str, timeout: float) -> Window | None:
    props = _get_json(root + "/props", timeout=timeout)
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings") or {}
    tokens = _positive(settings.get("n_ctx") if isinstance(settings, dict) else None) or _positive(props.get("n_ctx"))
    return Window(tokens, "llama.cpp /props") if tokens else None


def _ollama_window(root: str, model: str, timeout: float) -> Window | None:
    show = _get_json(root + "/api/show", {"model": model}, timeout=timeout)
    if not isinstance(show, dict) or ("parameters" not in show and "model_info" not in show):
        return None
    found = re.search(r"num_ctx\s+(\d+)", str(show.get("parameters") or ""))
    if found:
        return Window(int(found.group(1)), "Ollama /api/show num_ctx")
    return Window(OLLAMA_DEFAULT_NUM_CTX, "Ollama's default num_ctx")


def _lm_studio_window(root: str, model: str, timeout: float) -> Window | None:
    entry = _entry(_get_json(root + "/api/v0/models", timeout=timeout), model)
    if entry is None:
        return None
    tokens = _positive(entry.get("loaded_context_length")) or _positive(entry.get("max_context_length"))
    return Window(tokens, "LM Studio /api/v0/models") if tokens else None


def _listed_window(base_url: str, model: str, api_key: str | None, local: bool, timeout: float) -> Window | None:
    """What `/models` says of the model: vLLM's and OpenRouter's figures, or llama-cpp-python's default."""
    listing = _get_json(base_url.rstrip("/") + "/models", api_key=api_key, timeout=timeout)
    entry = _entry(listing, model)
    if entry is not None:
        if _positive(entry.get("max_model_len")):
            return Window(int(entry["max_model_len"]), "vLLM /models max_model_len")
        if _positive(entry.get("context_length")):
            return Window(int(entry["context_length"]), "/models context_length")
    if local and _is_llama_cpp_python(listing):
        return Window(LLAMA_CPP_PYTHON_DEFAULT_N_CTX, "llama-cpp-python's default n_ctx")
    return None


def _is_llama_cpp_python(listing: Any) -> bool:
    """llama-cpp-python's server says nothing of its window, but its `/models` is recognisable: every
    model is "owned_by": "me" (and, without an alias, its id is the path of a .gguf file)."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list) or not entries:
        return False
    return all(isinstance(e, dict) and e.get("owned_by") == "me" for e in entries)


def _cache_path() -> str:
    return os.path.join(private_dir(user_dir("cache")), "servers.json")


def _load_cache() -> dict[str, Any]:
    try:
        with open(_cache_path(), encoding="utf-8") as cache_file:
            cache = json.load(cache_file)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_window(base_url: str, model: str) -> tuple[bool, Window | None]:
    """(asked before, the window then learned): a server that did not say is not asked again."""
    entry = _load_cache().get(f"{base_url} {model}")
    if not isinstance(entry, dict) or "tokens" not in entry:
        return False, None
    if _positive(entry.get("tokens")):
        return True, Window(int(entry["tokens"]), str(entry.get("source") or "cache"))
    return True, None


def _remember(base_url: str, model: str, **facts: Any) -> None:
    """Keep what was learned about this server and model for the next run."""
    try:
        cache = _load_cache()
        entry = cache.get(f"{base_url} {model}")
        cache[f"{base_url} {model}"] = {**(entry if isinstance(entry, dict) else {}), **facts, "at": time.time()}
        path = _cache_path()
        with open_private(path + ".new", "w") as cache_file:
            json.dump(cache, cache_file)
        os.replace(path + ".new", path)
    except OSError:
        pass


def remember_window(base_url: str, model: str, window: Window | None) -> None:
    """What was learned about the window, or (None) that the server does not say."""
    if window is None:
        _remember(base_url, model, tokens=0)
    else:
        _remember(base_url, model, tokens=window.tokens, source=window.source)


def remember_scale(base_url: str, model: str, scale: float) -> None:
    """How the server's tokenizer compares with our estimate: later estimates are scaled by it."""
    _remember(base_url, model, scale=scale)


def cached_scale(base_url: str, model: str) -> float | None:
    entry = _load_cache().get(f"{base_url} {model}")
    scale = entry.get("scale") if isinstance(entry, dict) else None
    return float(scale) if isinstance(scale, (int, float)) and 0.5 <= scale <= 2.0 else None


def _model_ids(listing: Any) -> list[str]:
    """The model ids in a `/models` answer, in its order."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    return [str(e["id"]) for e in entries if isinstance(e, dict) and e.get("id")] if isinstance(entries, list) else []


def served_models(base_url: str, api_key: str | None) -> list[str]:
    """The model ids a server lists at /models, in its order; empty if it does not answer."""
    return _model_ids(_get_json(base_url.rstrip("/") + "/models", api_key=api_key, timeout=3.0))


@dataclass(frozen=True)
class LocalServer:
    """An OpenAI-compatible server that answered on this machine, and the models it lists."""

    base_url: str
    models: list[str]


def probe_local_servers(ports: Iterable[int], timeout: float = 0.4) -> LocalServer | None:
    """The first of `ports` (in their order) where a local server answers `/v1/models`; all are asked at once."""
    found: dict[int, LocalServer] = {}

    def probe(port: int) -> None:
        import urllib.request

        base = f"http://127.0.0.1:{port}/v1"
        try:  # an empty answer is a server listing nothing; one that is not a JSON object is not ours
            with urllib.request.urlopen(base + "/models", timeout=timeout) as response:
                listing = json.loads(response.read(1_000_000) or b"{}")
        except Exception:
            return
        if isinstance(listing, dict):
            found[port] = LocalServer(base, _model_ids(listing))

    ports = list(ports)
    threads = [threading.Thread(target=probe, args=(port,), daemon=True) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 0.2)
    return next((found[port] for port in ports if port in found), None)
