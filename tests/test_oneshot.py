"""One-shot and scripted use: the real program as a subprocess against the local server."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import CHATBOT, PROMPT, assert_clean, run_chatbot, send
from server import SLEEP, chat_reply, error_status


def test_argument_prompt_prints_the_reply(run, server):
    result = run("explain KV cache")
    assert_clean(result)
    assert result.returncode == 0
    assert result.out == "Hello from the test server.\n"
    assert result.err == ""
    body = server.posts[0].body
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "explain KV cache"}
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 1000
    assert body["temperature"] == 0.4
    assert body["model"] == "test-model"


def test_piped_then_argument_separated_by_a_blank_line(run, server):
    result = run("summarise this", input="line one\nline two\n")
    assert result.returncode == 0
    assert server.posts[0].body["messages"][-1]["content"] == "line one\nline two\n\nsummarise this"


def test_piped_only(run, server):
    result = run(input="just piped\n  indented\n")
    assert result.returncode == 0
    assert server.posts[0].body["messages"][-1]["content"] == "just piped\n  indented"


def test_output_is_plain_with_no_escape_codes(run, server):
    server.push(chat_reply("# Heading\n\n**bold** and `code`\n"))
    result = run("md please")
    assert result.out == "# Heading\n\n**bold** and `code`\n"
    assert "\x1b" not in result.out
    assert "\x1b" not in result.err


def test_json_output(run, server):
    server.push(chat_reply("The answer.", prompt_tokens=30, completion_tokens=3))
    result = run("--json", "q")
    assert result.returncode == 0
    payload = json.loads(result.out)
    assert payload["model"] == "test-model"
    assert payload["reply"] == "The answer."
    assert payload["finish_reason"] == "stop"
    assert payload["usage"] == {
        "input_tokens": 30,
        "output_tokens": 3,
        "total_tokens": 33,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "estimated": False,
    }
    assert payload["cost_usd"] is None  # a local server: no invented price
    assert payload["truncated"] is False
    assert payload["latency_ms"] >= payload["ttft_ms"] >= 0


def test_json_cost_from_configured_prices(run, server):
    server.push(chat_reply("x", prompt_tokens=1_000_000, completion_tokens=1_000_000))
    result = run("--json", "--price-in", "1.5", "--price-out", "2", "q")
    assert json.loads(result.out)["cost_usd"] == 3.5


def test_no_stream_mode(run, server):
    from server import Behaviour

    body = {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Whole reply."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    server.push(Behaviour(headers={"Content-Type": "application/json"}, pieces=[json.dumps(body).encode()]))
    result = run("--no-stream", "--json", "q")
    assert json.loads(result.out)["reply"] == "Whole reply."
    assert server.posts[0].body["stream"] is False
    assert "stream_options" not in server.posts[0].body


def test_attribution_headers_only_when_both_set(run, server):
    run("q", extra_env={"APP_URL": "http://localhost:3000", "APP_NAME": "Test App"})
    run("q", extra_env={"APP_URL": "http://localhost:3000"})
    first, second = server.posts
    assert first.headers.get("http-referer") == "http://localhost:3000"
    assert first.headers.get("x-title") == "Test App"
    assert "http-referer" not in second.headers
    assert "x-title" not in second.headers


def test_dotenv_file_and_env_file_flag(env, server, home):
    (home / ".env").write_text(f"OPENAI_BASE_URL={server.base_url}\nOPENAI_MODEL=from-dotenv\n")
    result = run_chatbot(["q"], env, cwd=str(home))
    assert result.returncode == 0, result.stderr
    other = home / "other.env"
    other.write_text(f"OPENAI_BASE_URL={server.base_url}\nOPENAI_MODEL=from-env-file\n")
    env2 = dict(env, OPENAI_MODEL="from-environment")
    run_chatbot(["--env-file", str(other), "q"], env2)
    assert [p.body["model"] for p in server.posts] == ["from-dotenv", "from-environment"]
    missing = run_chatbot(["--env-file", str(home / "nope.env"), "q"], env)
    assert missing.returncode == 2
    assert b"--env-file" in missing.stderr


def test_zero_config_finds_a_local_server(env, server):
    env = dict(env, CHATBOT_LOCAL_PORTS=f"1,{server.port}")
    result = run_chatbot(["q"], env)
    assert result.returncode == 0, result.stderr
    assert server.posts[0].body["model"] == "test-model"  # the first model the server lists


def test_no_key_and_no_server_fails_fast(env):
    result = run_chatbot(["q"], dict(env, CHATBOT_LOCAL_PORTS="1"))
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "OPENAI_API_KEY" in lines[0]
    assert ".env.example" in lines[0]


def test_remote_url_without_key_fails_before_any_request(env):
    result = run_chatbot(["q"], dict(env, OPENAI_BASE_URL="https://api.example.invalid/v1"))
    assert result.returncode == 2
    assert b"OPENAI_API_KEY" in result.stderr


def test_bad_values_exit_2_with_one_line(run, server):
    for args, extra, needle in [
        (["--max-tokens", "-5", "q"], {}, "--max-tokens"),
        (["q"], {"OPENAI_TEMPERATURE": "hot"}, "OPENAI_TEMPERATURE"),
        (["--base-url", "example.com/v1", "q"], {}, "--base-url"),
        (["--retries", "many", "q"], {}, "--retries"),
        (["--frobnicate", "q"], {}, "--frobnicate"),
    ]:
        result = run(*args, extra_env=extra)
        assert_clean(result)
        assert result.returncode == 2, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1
        assert needle in result.err
    assert server.posts == []


def test_empty_and_whitespace_input_are_usage_errors(run, server):
    for stdin in (b"", b"   \n\t\n"):
        result = run(input=stdin)
        assert result.returncode == 2
        assert "nothing to send" in result.err
    assert server.posts == []


def test_non_utf8_stdin(run, server):
    result = run(input=b"caf\xe9 au lait\n")
    assert_clean(result)
    assert result.returncode == 2
    assert "UTF-8" in result.err
    assert server.posts == []


def test_ten_megabytes_on_stdin_is_refused_quickly(run, server):
    result = run(input=b"lorem ipsum dolor sit amet " * 400_000, timeout=30)
    assert_clean(result)
    assert result.returncode == 2
    assert "tokens" in result.err
    assert "room for" in result.err
    assert server.posts == []


def test_version_and_help_do_not_import_the_sdk(env):
    code = (
        "import sys, runpy; sys.argv = ['chatbot', '{flag}']\n"
        "try:\n    runpy.run_path({path!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('openai' in sys.modules, 'rich' in sys.modules)"
    )
    import subprocess
    import sys

    from conftest import CHATBOT

    for flag in ("--version", "--help"):
        out = subprocess.run(
            [sys.executable, "-c", code.format(flag=flag, path=CHATBOT)], env=env, capture_output=True, text=True
        )
        assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr


def test_log_line_per_request_without_content_or_key(run, home):
    secret = "sk-test-" + "x" * 30
    run("a very private question", extra_env={"OPENAI_API_KEY": secret})
    logs = list(home.rglob("chatbot.log"))
    assert logs, "no log file written"
    text = logs[0].read_text()
    assert "model=test-model" in text
    assert "host=127.0.0.1" in text
    assert "status=200" in text
    assert "private" not in text
    assert secret not in text
    verbose = run("-v", "q")
    assert "model=test-model" in verbose.err


def test_key_never_printed_on_auth_failure(run, server):
    from server import error_status

    secret = "sk-test-" + "k" * 32
    server.push(error_status(401, f"Incorrect API key provided: {secret}", code="invalid_api_key"))
    result = run("q", extra_env={"OPENAI_API_KEY": secret})
    assert result.returncode == 1
    assert secret not in result.err
    assert secret not in result.out
    assert "OPENAI_API_KEY" in result.err
    assert len(server.posts) == 1  # never retried
    assert server.posts[0].headers["authorization"] == f"Bearer {secret}"


def test_wheel_holds_the_engine_both_front_ends_and_their_console_scripts(tmp_path):
    """A non-editable install (pipx install .) gets everything: built here as the real wheel."""
    import zipfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("chatbot-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    engine = {os.path.basename(p) for p in glob.glob(os.path.join(root, "chatcore", "*.py"))}
    assert {n.split("/", 1)[1] for n in names if n.startswith("chatcore/")} == engine
    for module in (
        "chatbot.py",
        "telegram_bot.py",
        "terminal_render.py",
        "terminal_input.py",
        "terminal_commands.py",
        "terminal_cli.py",
        "telegram_render.py",
    ):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "chatbot = chatbot:cli" in entry_points
    assert "chatbot-telegram = telegram_bot:main" in entry_points


def test_piped_one_shot_imports_only_what_it_uses(server, env):
    """Piped output never loads rich, prompt_toolkit, tiktoken, genai-prices or the SDK's typed resources."""
    import subprocess
    import sys

    from conftest import CHATBOT

    code = (  # main() as the `chatbot` command runs it (cli() then leaves without the interpreter's teardown)
        f"import os, sys\nsys.path.insert(0, {os.path.dirname(CHATBOT)!r})\nimport chatbot\n"
        "status = chatbot.main(['hi'])\nsys.stdout.flush()\n"
        "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(status)\n"
    )
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=30)
    assert out.stdout == "Hello from the test server.\n", out.stderr
    modules = set(out.stderr.split("MODULES", 1)[1].split())
    for heavy in (
        "rich",
        "prompt_toolkit",
        "tiktoken",
        "genai_prices",
        "requests",
        "dotenv",
        "openai.resources.chat",
        "openai.resources.responses",
    ):
        assert heavy not in modules, heavy


def test_summary_of_dropped_turns_is_sent_stored_and_reused(run, server, tmp_path):
    db = str(tmp_path / "s.db")
    summary_system = "Summarise this conversation"
    server.push(chat_reply("A1"))
    args = ("--db", db, "--session", "s", "--max-messages", "2", "--summarize")
    run(*args, "my name is Ada")
    server.push(chat_reply("SUMMARY: the user is called Ada."), chat_reply("A2"))
    second = run(*args, "question two")
    assert second.returncode == 0, second.err
    summary_call, main_call = server.posts[-2:]
    assert summary_call.body["messages"][0]["content"].startswith(summary_system)
    assert "my name is Ada" in summary_call.body["messages"][1]["content"]
    system = main_call.body["messages"][0]["content"]
    assert "SUMMARY: the user is called Ada." in system
    assert [m["role"] for m in main_call.body["messages"]] == ["system", "user"]  # one system message
    third = run(*args, "question three")  # two more messages dropped: the stored summary is reused
    assert third.returncode == 0
    assert not server.posts[-1].body["messages"][0]["content"].startswith(summary_system)
    assert "SUMMARY: the user is called Ada." in server.posts[-1].body["messages"][0]["content"]
    assert sum(p.body["messages"][0]["content"].startswith(summary_system) for p in server.posts) == 1


def test_one_shot_in_a_terminal_renders_markdown_unless_no_color(env, server):
    import sys

    import pexpect
    from conftest import CHATBOT

    reply = "# Title\n\nSome **bold** words.\n"
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    server.push(chat_reply(reply))
    child = pexpect.spawn(sys.executable, [CHATBOT, "q"], env=full_env, encoding="utf-8", timeout=15)
    rendered = child.read()
    assert "\x1b[" in rendered
    assert "**bold**" not in rendered
    assert "Title" in rendered
    server.push(chat_reply(reply))
    child = pexpect.spawn(
        sys.executable, [CHATBOT, "q"], env=dict(full_env, NO_COLOR="1"), encoding="utf-8", timeout=15
    )
    plain = child.read()
    assert "\x1b" not in plain
    assert plain.replace("\r\n", "\n") == reply


def test_no_stream_does_not_pass_the_whole_reply_time_off_as_time_to_first_token(run, server):
    server.push(chat_reply("Whole.", delay=0.05))
    payload = json.loads(run("--no-stream", "--json", "q").out)
    assert payload["ttft_ms"] is None
    assert payload["latency_ms"] > 0
    result = run("--no-stream", "--show-usage", "q")
    assert "first token" not in result.err
    assert "tok/s" not in result.err


@pytest.mark.parametrize(
    ("args", "extra_env", "kind", "needle"),
    [
        (["--json", "--max-tokens", "-5", "q"], {}, "configuration", "--max-tokens"),
        (["--json", "--bogus-flag", "q"], {}, "usage", "--bogus-flag"),
        (["--json", "  "], {}, "usage", "nothing to send"),
        (["--json", "q"], {"OPENAI_BASE_URL": "https://api.example.invalid/v1"}, "configuration", "OPENAI_API_KEY"),
        (["--json", "--continue", "q"], {}, "sessions", "no saved conversation"),
    ],
)
def test_json_is_one_object_with_an_error_in_every_outcome(run, args, extra_env, kind, needle):
    result = run(*args, extra_env=extra_env)
    assert result.returncode == 2
    payload = json.loads(result.out)  # exactly one JSON object, nothing else
    assert payload["error"]["type"] == kind
    assert needle in payload["error"]["message"]
    assert payload["reply"] == ""
    assert payload["truncated"] is True


def test_json_error_for_a_provider_failure_names_its_type(run, server):
    server.push(error_status(401, "Incorrect API key provided"))
    payload = json.loads(run("--json", "q").out)
    assert payload["error"]["type"] == "auth"
    assert "OPENAI_API_KEY" in payload["error"]["message"]


def test_verbose_log_line_never_joins_the_reply_when_both_streams_share_a_pipe(env, server):
    """`chatbot -v q 2>&1 | ...`: one pipe for both; every log line starts a line of its own."""
    server.push(chat_reply("A reply with no final newline", size=3))
    full_env = dict(env, OPENAI_BASE_URL=server.base_url, OPENAI_MODEL="test-model")
    result = subprocess.run(
        [sys.executable, CHATBOT, "-v", "q"],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=30,
        cwd=env["HOME"],
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "A reply with no final newline"
    assert any(" model=test-model " in line for line in lines[1:])


def test_piped_output_has_no_waiting_line(run, server):
    behaviour = chat_reply("Late.")
    behaviour.pieces.insert(0, (SLEEP, 1.2))
    server.push(behaviour)
    result = run("q")
    assert result.out == "Late.\n"
    assert "waiting" not in result.err


def test_polish_env_file_directory_bad_ports_empty_reply_and_context_hint(run, server, home):
    folder = run("--env-file", str(home), "q")
    assert folder.returncode == 2
    assert "is a directory: give the path of a file" in folder.err
    ports = run("q", extra_env={"CHATBOT_LOCAL_PORTS": "abc"}, base=False)
    assert ports.returncode == 2
    assert "CHATBOT_LOCAL_PORTS='abc' is not valid" in ports.err
    server.push(chat_reply(""))
    empty = run("q")
    assert empty.returncode == 0
    assert empty.out == ""
    assert "the model sent an empty reply" in empty.err
    server.push(error_status(400, "This model's maximum context length is 100 tokens", code="context_length_exceeded"))
    too_long = run("q")
    assert too_long.returncode == 1
    assert "/clear" not in too_long.err
    assert "--max-messages" in too_long.err


def test_save_expands_the_home_directory(spawn, home):
    import pexpect

    child = spawn("--no-save")
    child.expect_exact(PROMPT)
    send(child, "hi")
    child.expect_exact("Hello from the test server.")
    send(child, "/save ~/talk.md")
    child.expect_exact("saved 2 messages to ~/talk.md")
    send(child, "/exit")
    child.expect(pexpect.EOF)
    assert "Hello from the test server." in (home / "talk.md").read_text()
