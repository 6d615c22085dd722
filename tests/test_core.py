"""The pure core: settings, token counting, trimming, usage and cost, stream parsing."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHATBOT, ROOT
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import chatbot
from chatcore import log, store, tokens
from chatcore import settings as config
from chatcore import usage as costs
from chatcore.conversation import Conversation, Message, PromptTooLarge, build_request, token_budget
from chatcore.settings import resolve_settings
from chatcore.streams import parse_stream
from chatcore.tokens import TokenCounter, encoding_for_model
from chatcore.usage import Usage

# -- settings ------------------------------------------------------------------


def test_precedence_flag_over_env_over_dotenv_over_default():
    settings = resolve_settings(
        {"model": "from-flag"},
        {"OPENAI_MODEL": "from-env", "OPENAI_TEMPERATURE": "0.9"},
        {"OPENAI_MODEL": "from-dotenv", "OPENAI_TEMPERATURE": "0.1", "OPENAI_MAX_OUTPUT_TOKENS": "77"},
    )
    assert settings.model == "from-flag"
    assert settings.temperature == 0.9
    assert settings.max_tokens == 77
    assert settings.max_messages == 20
    assert settings.sources["max_tokens"] == "OPENAI_MAX_OUTPUT_TOKENS (in .env)"


@pytest.mark.parametrize(
    ("flags", "environ", "needle"),
    [
        ({}, {"OPENAI_TEMPERATURE": "hot"}, "OPENAI_TEMPERATURE"),
        ({"max_tokens": "-5"}, {}, "--max-tokens"),
        ({}, {"OPENAI_BASE_URL": "api.example.com/v1"}, "OPENAI_BASE_URL"),
        ({"temperature": "3"}, {}, "from 0 to 2"),
        ({"api": "soap"}, {}, "chat, responses"),
    ],
)
def test_malformed_values_name_the_setting(flags, environ, needle):
    with pytest.raises(config.ConfigError) as info:
        resolve_settings(flags, environ, {})
    assert needle in str(info.value)


def test_key_required_unless_local():
    settings = resolve_settings({}, {}, {})
    with pytest.raises(config.ConfigError, match=r"OPENAI_API_KEY.*\.env\.example"):
        config.check_credentials(settings)
    config.check_credentials(resolve_settings({"base_url": "http://localhost:11434/v1"}, {}, {}))
    config.check_credentials(resolve_settings({"base_url": "http://127.0.0.1:8080/v1"}, {}, {}))


ENGINE = [
    f"chatcore.{os.path.splitext(name)[0]}"
    for name in sorted(os.listdir(os.path.join(ROOT, "chatcore")))
    if name.endswith(".py") and name != "__init__.py"
]
TERMINAL_LIBRARIES = {"rich", "prompt_toolkit"}
TELEGRAM_LIBRARIES = {"telegram", "telegramify_markdown"}
FRONT_ENDS = {
    "chatbot",
    "telegram_bot",
    "terminal_render",
    "terminal_input",
    "terminal_commands",
    "terminal_cli",
    "telegram_render",
    "telegram_rich",
}


def imported_modules(path):
    """Every module a file imports, at the top or inside a function, as top-level names."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_imports_run_one_way():
    """Front-ends import the engine; the engine imports no front-end, terminal or Telegram library."""
    for module in ENGINE:
        used = imported_modules(os.path.join(ROOT, *module.split(".")) + ".py")
        assert not used & (TERMINAL_LIBRARIES | TELEGRAM_LIBRARIES | FRONT_ENDS), (module, used)
    terminal = set().union(
        *(
            imported_modules(os.path.join(ROOT, name))
            for name in (
                "chatbot.py",
                "terminal_render.py",
                "terminal_input.py",
                "terminal_commands.py",
                "terminal_cli.py",
            )
        )
    )
    assert "chatcore" in terminal
    assert not terminal & (TELEGRAM_LIBRARIES | {"telegram_bot", "telegram_render", "telegram_rich"})
    telegram = set().union(
        *(
            imported_modules(os.path.join(ROOT, name))
            for name in ("telegram_bot.py", "telegram_render.py", "telegram_rich.py")
        )
    )
    assert "chatcore" in telegram
    assert not telegram & (
        TERMINAL_LIBRARIES | {"chatbot", "terminal_render", "terminal_input", "terminal_commands", "terminal_cli"}
    )


def test_importing_the_engine_does_nothing(tmp_path):
    (tmp_path / ".env").write_text("OPENAI_API_KEY=should-not-be-read\n")
    code = (
        "import sys, os; " + "; ".join(f"import {m}" for m in ENGINE) + "; "
        "bad = [m for m in ('openai', 'rich', 'prompt_toolkit', 'telegram', 'tiktoken', 'dotenv', "
        "'genai_prices', 'httpx2', 'httpx', 'sqlite3', 'platformdirs') if m in sys.modules]; "
        "print(bad, os.environ.get('OPENAI_API_KEY'), os.listdir('.'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] None ['.env']"


def test_import_has_no_side_effects(tmp_path):
    (tmp_path / ".env").write_text("OPENAI_API_KEY=should-not-be-read\n")
    code = (
        "import sys, os; import chatbot; "
        "bad = [m for m in ('openai', 'rich', 'prompt_toolkit', 'tiktoken', 'dotenv', 'genai_prices', "
        "'httpx2') if m in sys.modules]; "
        "print(bad, os.environ.get('OPENAI_API_KEY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = os.path.dirname(CHATBOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "[] None", out.stderr


def test_env_example_and_readme_list_every_setting():
    root = os.path.dirname(CHATBOT)
    example = Path(root, ".env.example").read_text()
    readme = Path(root, "README.md").read_text()
    assert example == config.env_example()
    assert config.settings_table() in readme
    for setting in config.SETTINGS:
        if setting.env:
            assert setting.env in readme
        for flag in setting.flags:
            assert flag in readme


# -- token counting ------------------------------------------------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to "
        "touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.fixture
def cl100k(tiktoken_cache, monkeypatch):
    """The real tiktoken code path, loading the real cl100k_base file from a local cache."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    tokens._encodings.pop("cl100k_base", None)
    tokens._encoding_threads.pop("cl100k_base", None)
    yield TokenCounter("openai/gpt-4")
    tokens._encodings.pop("cl100k_base", None)
    tokens._encoding_threads.pop("cl100k_base", None)


def test_cookbook_example_counts_129_with_cl100k(cl100k):
    # The openai-cookbook "How to count tokens with tiktoken" publishes 129 for gpt-4 / gpt-3.5-turbo.
    assert cl100k.count_chat(COOKBOOK_MESSAGES) == 129
    assert not cl100k.estimated


def test_exact_counts_of_known_strings(cl100k):
    assert cl100k.count_text("tiktoken is great!") == 6
    assert cl100k.count_text("") == 0
    # Special-token text is counted as text, not rejected.
    assert cl100k.count_text("<|endoftext|>") > 1


def test_message_count_is_cached_not_recomputed(cl100k):
    message = Message("user", "hello there, general kenobi")
    first = cl100k.count_message(message)
    assert message.tokens == ("cl100k_base", first)
    message.content = "changed without invalidation"  # the cache is what is used
    assert cl100k.count_message(message) == first


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("openai/gpt-5-nano", "o200k_base", True),
        ("gpt-4o-mini", "o200k_base", True),
        ("gpt-4.1", "o200k_base", True),
        ("o3-mini", "o200k_base", True),
        ("openai/gpt-4", "cl100k_base", True),
        ("gpt-3.5-turbo", "cl100k_base", True),
        ("meta-llama/llama-3.1-8b", "o200k_base", False),
        ("mistral", "o200k_base", False),
    ],
)
def test_encoding_from_model_name(model, encoding, exact):
    assert encoding_for_model(model) == (encoding, exact)


def test_unavailable_encoding_falls_back_to_labelled_estimate(tmp_path, monkeypatch):
    # An empty cache and no network: the download fails, and counting still works, labelled estimated.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens._encodings.pop("o200k_base", None)
    tokens._encoding_threads.pop("o200k_base", None)
    counter = TokenCounter("gpt-4o", load_wait=10)
    assert counter.count_text("x" * 400) == 100
    assert counter.estimated
    message = Message("user", "hello")
    counter.count_message(message)
    assert message.tokens[0] == "estimate"
    tokens._encodings.pop("o200k_base", None)
    tokens._encoding_threads.pop("o200k_base", None)


def test_hanging_download_is_bounded(tmp_path):
    """tiktoken's download has no timeout: a proxy that never answers must not hang the count."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)  # accepts connections and never answers
    port = listener.getsockname()[1]
    code = (
        "import time; from chatcore.tokens import TokenCounter; t = time.monotonic(); c = TokenCounter('gpt-4o', load_wait=1.0); "
        "n = c.count_text('abcdefgh'); print(n, c.estimated, round(time.monotonic() - t, 1))"
    )
    env = dict(
        os.environ,
        TIKTOKEN_CACHE_DIR=str(tmp_path),
        HTTPS_PROXY=f"http://127.0.0.1:{port}",
        https_proxy=f"http://127.0.0.1:{port}",
        NO_PROXY="",
        PYTHONPATH=os.path.dirname(CHATBOT),
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    listener.close()
    count, estimated, seconds = out.stdout.split()
    assert (count, estimated) == ("2", "True"), out.stderr
    assert float(seconds) < 5
    assert time.monotonic() - started < 20


# -- trimming --------------------------------------------------------------------


def conversation_of(lengths: list[int]) -> Conversation:
    conversation = Conversation("system prompt")
    for index, length in enumerate(lengths):
        role = "user" if index % 2 == 0 else "assistant"
        conversation.history.append(Message(role, f"{role} {index} " + "word " * length))
    if conversation.history[-1].role != "user":
        conversation.history.append(Message("user", "newest question"))
    return conversation


@hsettings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 400), min_size=1, max_size=40),
    max_messages=st.integers(1, 30),
    budget=st.integers(50, 3000),
)
def test_trimming_properties(lengths, max_messages, budget):
    conversation = conversation_of(lengths)
    counter = TokenCounter("mistral", load_wait=0)  # character estimate: deterministic and fast
    tokens._encodings.setdefault("o200k_base", None)
    try:
        request = build_request(conversation, max_messages, budget, counter)
    except PromptTooLarge as exc:
        refused: PromptTooLarge | None = exc
    else:
        refused = None
    if refused is not None:
        newest = conversation.history[-1]
        assert counter.count_message(newest) + counter.count_message(Message("system", "system prompt")) + 3 > budget
        assert refused.budget == budget
        return
    messages = request.messages()
    assert messages[0] == {"role": "system", "content": "system prompt"}
    assert [m for m in messages if m["role"] == "system"] == messages[:1]
    turns = request.kept
    assert turns[0].role == "user"
    assert turns[-1] is conversation.history[-1]
    assert len(turns) <= max(1, max_messages)
    assert turns == conversation.history[len(conversation.history) - len(turns) :]
    for previous, current in itertools.pairwise(turns):
        assert previous.role != current.role
    size = counter.count_messages([Message("system", request.system), *turns])
    assert size <= budget or len(turns) == 1
    assert request.dropped == len(conversation.history) - len(turns)


def test_newest_message_too_large_says_the_numbers():
    conversation = Conversation("sys", [Message("user", "word " * 5000)])
    with pytest.raises(PromptTooLarge) as info:
        build_request(conversation, 20, 1000, TokenCounter("mistral", load_wait=0))
    assert "1,000" in str(info.value)
    assert "tokens" in str(info.value)


def test_summary_is_merged_into_the_one_system_message():
    conversation = conversation_of([50] * 9)
    conversation.summary, conversation.summary_covers = "they discussed apples", 4
    request = build_request(conversation, 4, 10_000, None)
    messages = request.messages()
    assert sum(m["role"] == "system" for m in messages) == 1
    assert "they discussed apples" in messages[0]["content"]
    assert request.dropped == len(conversation.history) - len(request.kept) - 4


def test_budget_subtracts_output_and_margin():
    assert token_budget(8192, 1000) == 8192 - 1000 - 409
    assert token_budget(100, 1000) == 0


# -- usage, cost, parsing ------------------------------------------------------------


def test_cost_from_configured_prices_and_table_and_unknown():
    usage = Usage(1_000_000, 500_000)
    priced = resolve_settings({"price_in": "2", "price_out": "8"}, {}, {})
    assert costs.turn_cost(usage, priced, "whatever") == (6.0, "configured prices")
    table = resolve_settings({}, {}, {})
    cost, source = costs.turn_cost(Usage(1000, 500), table, "openai/gpt-5-nano")
    assert source == "genai-prices table"
    assert cost == pytest.approx(0.00025)
    local = resolve_settings({"base_url": "http://127.0.0.1:1/v1"}, {}, {})
    assert costs.turn_cost(usage, local, "llama3") == (None, "unknown")
    assert costs.turn_cost(usage, table, "no-such-model-xyz") == (None, "unknown")
    reported = Usage(10, 10, cost=0.5)
    assert costs.turn_cost(reported, priced, "x") == (0.5, "provider")


def test_context_window_from_the_model_table():
    _, window = costs.model_info("openai/gpt-5-nano", "https://openrouter.ai/api/v1")
    assert window == 400_000
    assert costs.model_info("no-such-model-xyz", "http://127.0.0.1/v1")[1] is None


def lines_of(*payloads: str) -> list[str]:
    out = []
    for payload in payloads:
        out += payload.split("\n")
    return out


def test_chat_stream_parsing_keeps_reading_after_finish_for_usage():
    body = lines_of(
        'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}',
        "",
        ": keep-alive",
        "",
        'data: {"choices":[{"delta":{"reasoning_content":"hmm"}}]}',
        "",
        'data: {"choices":[{"delta":{"content":"Hi"}}]}',
        "",
        'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}',
        "",
        'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,'
        '"prompt_tokens_details":{"cached_tokens":1},"cost":0.001}}',
        "",
        "data: [DONE]",
        "",
    )
    events = list(parse_stream(body, "chat"))
    assert ("text", "Hi") in events
    assert ("reasoning", "hmm") in events
    assert ("finish", "stop") in events
    usage = next(e[1] for e in events if e[0] == "usage")
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.cost) == (5, 2, 1, 0.001)


def test_malformed_data_becomes_an_error_event():
    events = list(parse_stream(['data: {"choices":[{"delta":{"content":"a"}}]}', "", "data: {bad json", ""], "chat"))
    assert events[0] == ("text", "a")
    assert events[-1][0] == "error"
    assert events[-1][1] == "malformed"


def test_redaction_hides_keys():
    key = "sk-test-" + "a1b2c3d4" * 4
    # the whole message stays readable: only the key itself is replaced
    assert log.redact(f"Incorrect API key provided: {key}", key) == "Incorrect API key provided: ***"
    fake = "sk-" + "abcdefghijklmnopqrstu"  # built at run time: no key-shaped literal in the source
    assert log.redact(f"key {fake}", None) == "key sk-abc***"  # key-shaped text, even when no key is known


def test_a_bug_of_ours_is_one_line_and_a_logged_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def broken(_store):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(store.SessionStore, "listing", broken)
    status = chatbot.main(["--list-sessions", "--db", str(tmp_path / "s.db")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("chatbot: internal error: RuntimeError: simulated bug")
    assert "Traceback" not in err
    log = next((tmp_path / "state").rglob("chatbot.log")).read_text()
    assert "Traceback" in log
    assert "simulated bug" in log
