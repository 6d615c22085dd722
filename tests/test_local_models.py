"""Local models as first-class providers: the model, the window and the counts come from the server."""

from __future__ import annotations

import json

import pexpect
import pytest
from conftest import PROMPT, send
from server import chat_reply

SERVERS = [
    ("llama.cpp", "llama.cpp /props"),
    ("vllm", "vLLM /models max_model_len"),
    ("ollama", "Ollama /api/show num_ctx"),
    ("lmstudio", "LM Studio /api/v0/models"),
    ("openrouter", "/models context_length"),
]


@pytest.mark.parametrize(("local", "source"), SERVERS, ids=[s[0] for s in SERVERS])
def test_the_window_is_learned_from_the_server_and_said_with_its_source(run, server, local, source):
    server.local, server.n_ctx = local, 3072
    result = run("-v", "hi")
    assert result.returncode == 0, result.err
    assert f"window=3072({source.replace(' ', '_')})" in result.err
    asked = len(server.requests)
    assert run("-v", "again").returncode == 0  # remembered: not asked again
    assert [r.path for r in server.requests[asked:] if r.method == "GET" or "/api/" in r.path] == []


def test_stats_shows_the_window_and_where_it_came_from(spawn, server):
    server.local, server.n_ctx = "llama.cpp", 2048
    child = spawn("--no-save")
    child.expect_exact(PROMPT)
    send(child, "hi")
    child.expect_exact("Hello from the test server.")
    send(child, "/stats")
    child.expect_exact("context window: 2,048 tokens (llama.cpp /props)")
    send(child, "/exit")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("local", ["llama.cpp", "llama-cpp-python", "empty-stream", "vllm"])
def test_thirty_turns_in_a_2048_token_window_get_a_reply_every_turn(run, server, tmp_path, local):
    server.local, server.n_ctx = local, 2048
    db = str(tmp_path / "s.db")
    no_message_limit = {"OPENAI_MAX_HISTORY_MESSAGES": "1000"}  # only the window can keep the prompt in bounds
    for turn in range(30):
        server.push(chat_reply(f"Answer {turn}. " + "Some explanation of the point. " * 8))
        question = f"Question {turn}: " + "please tell me more about the topic we discussed. " * 6
        result = run("--db", db, "--session", "long", question, extra_env=no_message_limit)
        assert result.returncode == 0, (turn, result.err)
        assert result.out.startswith(f"Answer {turn}.")
        sent = server.posts[-1].body["messages"]
        assert sent[-1]["content"] == question
        assert sent[0]["role"] == "system"
    assert server.overflows <= (1 if local == "empty-stream" else 0)  # says nothing of its window: learned once
    assert server.window_cuts == 0
    assert len(server.posts) <= 31


def test_an_overflow_is_recovered_once_and_the_smaller_window_remembered(run, server, tmp_path):
    server.local, server.n_ctx = "empty-stream", 2048  # says nothing of its window; empty stream when full
    db = str(tmp_path / "s.db")
    results = []
    for turn in range(14):
        question = f"Question {turn}: " + "words and more words to fill the window. " * 24
        results.append(run("--db", db, "--session", "s", question, extra_env={"OPENAI_MAX_HISTORY_MESSAGES": "1000"}))
    assert all(r.returncode == 0 and r.out.startswith("Hello") for r in results)
    assert server.overflows == 1  # learned once, then remembered across runs
    [recovered] = [r for r in results if "overflowed" in r.err]
    assert "retrying once with fewer older turns" in recovered.err
    assert "older messages not sent" in recovered.err


def test_with_a_base_url_and_no_model_the_served_model_is_asked_for(run, server):
    server.models = ["qwen2.5-0.5b-instruct"]
    result = run("hi", extra_env={"OPENAI_MODEL": ""})
    assert result.returncode == 0
    assert server.posts[-1].body["model"] == "qwen2.5-0.5b-instruct"
    assert result.err == ""
    server.models = ["first-model", "second-model"]
    result = run("hi", extra_env={"OPENAI_MODEL": ""})
    assert server.posts[-1].body["model"] == "first-model"
    assert "using first-model, the first of 2 models" in result.err


def test_zero_config_with_a_placeholder_key_finds_the_local_server_and_says_so(run, server):
    server.models = ["llama3.2"]
    env = {"OPENAI_API_KEY": "ollama", "CHATBOT_LOCAL_PORTS": f"1,{server.port}"}
    result = run("hi", extra_env=env, base=False)
    assert result.returncode == 0, result.err
    assert server.posts[-1].body["model"] == "llama3.2"
    assert f"using the local server at 127.0.0.1:{server.port} and its model llama3.2" in result.err
    assert server.posts[-1].headers["authorization"] == "Bearer not-needed"  # the placeholder is not sent on


def test_when_no_local_server_answers_the_ports_tried_are_listed(run):
    result = run("hi", extra_env={"CHATBOT_LOCAL_PORTS": "1,2"}, base=False)
    assert result.returncode == 2
    assert "no local server answered on 127.0.0.1 ports 1, 2" in result.err


def test_a_length_finish_below_the_output_limit_is_blamed_on_the_window(run, server):
    server.push(chat_reply("Cut", finish="length", prompt_tokens=1500, completion_tokens=40))
    result = run("--json", "q")
    payload = json.loads(result.out)
    assert result.returncode == 1
    assert "context window is full" in payload["error"]["message"]
    server.push(chat_reply("Cut", finish="length", completion_tokens=1000))
    assert "--max-tokens" in run("q").err
    server.push(chat_reply("abc", finish="length", prompt_tokens=12, completion_tokens=1))  # 13 tokens: no window
    small = run("q").err
    assert "well before --max-tokens" in small
    assert "context window" not in small


def test_estimates_are_calibrated_by_the_server_and_never_exceed_the_output_limit(run, server, tmp_path):
    from chatcore.tokens import TokenCounter, estimate_tokens

    counter = TokenCounter("some-local-model", load_wait=0.0)
    counter._tried, counter._encoding = True, None  # no tokenizer: a byte estimate
    assert counter.calibrate(estimated=1250, reported=1000)
    assert counter.scale == 0.8
    assert not counter.calibrate(estimated=1000, reported=12)  # implausible: a placeholder usage is ignored
    assert counter.count_text("x" * 400) == round(estimate_tokens("x" * 400) * 0.8)
    assert "0.800" in counter.key
    # End to end: the server counts prompts 20% smaller than our estimate; the next estimate follows it.
    server.tokenizer_ratio = 0.8
    server.local, server.n_ctx = "llama.cpp", 2048  # a small window: requests come near it and are counted
    db = str(tmp_path / "s.db")
    question = "a question that is long enough to measure " * 24
    first = json.loads(run("--db", db, "--session", "s", "--json", question).out)
    assert first["usage"]["estimated"] is False  # the server counted: this run calibrates
    server.push(chat_reply("No usage this time.", usage="none"))
    second = json.loads(run("--db", db, "--session", "s", "--json", "and again").out)
    assert second["usage"]["estimated"] is True
    raw = server.prompt_tokens(server.posts[-1].body)  # our estimate, before calibration
    assert 0.72 * raw <= second["usage"]["input_tokens"] <= 0.88 * raw, (second["usage"], raw)
    # An output estimate is bounded by the limit the reply was asked to keep to.
    server.push(chat_reply("word " * 400, usage="none"))
    capped = json.loads(run("--json", "--max-tokens", "50", "long please").out)
    assert capped["usage"]["output_tokens"] <= 50


# -- llama-cpp-python: a window it never announces ------------------------------------------


NO_MESSAGE_LIMIT = {"OPENAI_MAX_HISTORY_MESSAGES": "1000"}  # only the window keeps the prompt in bounds


def long_conversation(run, server, db, turns=15, extra=()):
    """A conversation resumed with --session, with long replies (about 300 words): the window fills
    between a prompt and its reply, where llama-cpp-python stops the reply with "length"."""
    results = []
    for turn in range(turns):
        server.push(chat_reply(f"Answer {turn}. " + "A sentence that explains a little more of it. " * 35))
        question = f"Question {turn}: " + "tell me more about how this part of the system works. " * 2
        results.append(run("--db", db, "--session", "long", *extra, question, extra_env=NO_MESSAGE_LIMIT))
    return results


def test_llama_cpp_python_is_recognised_and_fifteen_turns_in_its_default_window_are_whole(run, server, tmp_path):
    server.local, server.n_ctx = "llama-cpp-python", 2048  # no window endpoint; "length" when the window fills
    results = long_conversation(run, server, str(tmp_path / "s.db"), extra=["-v"])
    for turn, result in enumerate(results):
        assert result.returncode == 0, (turn, result.err)
        assert result.out.startswith(f"Answer {turn}.")
        assert "cut off" not in result.err
    assert "window=2048(llama-cpp-python's_default_n_ctx)" in results[0].err
    assert server.window_cuts == 0
    assert server.overflows == 0


def test_a_length_finish_far_below_the_limit_teaches_the_window(run, server, tmp_path):
    server.local, server.n_ctx = "llama-cpp-python", 2048
    server.recognisable = False  # nothing says how big the window is: the guess is 8,192
    results = long_conversation(run, server, str(tmp_path / "s.db"), extra=["-v"])
    cut = [turn for turn, r in enumerate(results) if r.returncode != 0]
    assert len(cut) == 1, [r.err for r in results]  # the window fills once; from then on it is known
    first_cut = results[cut[0]]
    assert "context window is full" in first_cut.err
    assert "the next turn sends fewer older messages" in first_cut.err
    assert "--max-tokens" not in first_cut.err
    after = results[cut[0] + 1 :]
    assert after
    assert all(r.returncode == 0 and "cut off" not in r.err for r in after)
    assert "a_reply_cut_off_at" in after[0].err
    assert "older messages not sent" in after[0].err
    assert server.window_cuts == 1


def test_one_message_larger_than_a_silent_servers_window_is_said_to_be_too_long(run, server):
    server.local, server.n_ctx = "empty-stream", 2048  # answers an overflowing prompt with an empty stream
    result = run("please read this: " + "many words of a very long document " * 400)
    assert result.returncode == 2, result.err
    assert "larger than the model's context window" in result.err
    assert "shorten it" in result.err
    assert "finish signal" not in result.err
    assert "Traceback" not in result.err


def test_asking_a_slow_local_server_its_window_is_bounded_by_the_timeout(run, server):
    server.local, server.n_ctx = "llama-cpp-python", 2048
    server.probe_delay = 2.5  # each window endpoint takes 2.5 s to answer; asked one after another: 10 s
    result = run("--timeout", "1", "-v", "hi")
    assert result.returncode == 0, result.err
    probes = [r for r in server.requests if r.method == "GET" or r.path.endswith("/api/show")]
    assert len(probes) >= 3
    assert max(p.at for p in probes) - min(p.at for p in probes) < 0.5  # asked at once, not in turn
    assert server.posts[0].at - min(p.at for p in probes) < 1.9  # gave up within the timeout, then asked the model
    assert "window=-" not in result.err


def test_a_resumed_session_says_it_keeps_its_own_model_over_the_one_zero_config_announced(run, server, db):
    server.models = ["llama3.2", "qwen2.5"]
    env = {"OPENAI_API_KEY": "ollama", "CHATBOT_LOCAL_PORTS": str(server.port)}
    first = run("--db", db, "--session", "s", "--model", "qwen2.5", "hi", extra_env=env, base=False)
    assert first.returncode == 0, first.err
    resumed = run("--db", db, "--session", "s", "again", extra_env=env, base=False)
    assert resumed.returncode == 0, resumed.err
    assert server.posts[-1].body["model"] == "qwen2.5"
    assert "and its model llama3.2" in resumed.err  # what zero-config found ...
    assert "model: qwen2.5, the session's own (not llama3.2; --model overrides)" in resumed.err  # ... and what is used
