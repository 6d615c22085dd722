"""Roles in the terminal: --role in one-shot mode and in the chat, /role, and a session keeping its role."""

from __future__ import annotations

import pexpect
from conftest import PROMPT, assert_clean, send, started

from chatcore.roles import BUILTIN_ROLES

REVIEWER = next(role for role in BUILTIN_ROLES if role.name == "reviewer")


def sent_system(post) -> str:
    return post.body["messages"][0]["content"]


def test_role_flag_sends_the_roles_prompt_and_temperature(run, server):
    result = run("--role", "reviewer", "look at this")
    assert result.returncode == 0, result.err
    assert sent_system(server.posts[-1]) == REVIEWER.system
    assert server.posts[-1].body["temperature"] == 0.2
    result = run("plain question")  # no role: the configured prompt and temperature
    assert sent_system(server.posts[-1]) != REVIEWER.system
    assert server.posts[-1].body["temperature"] == 0.4


def test_unknown_role_is_one_line_listing_the_roles_and_exit_2(run, server):
    result = run("--role", "pirate", "hi")
    assert result.returncode == 2
    assert result.err.strip().count("\n") == 0, result.err
    assert "unknown role 'pirate': the roles are default, concise, reviewer, translator" in result.err
    assert not server.posts
    result = run("hi", extra_env={"CHATBOT_ROLE": "nope"})
    assert result.returncode == 2
    assert "unknown role 'nope'" in result.err


def test_a_bad_roles_file_is_exit_2_with_the_file_and_line_but_only_when_roles_are_used(run, server, tmp_path):
    roles = tmp_path / "roles.toml"
    roles.write_text('[pirate]\nsystem = "Arr."\ntemperature = 9\n')
    result = run("--role", "pirate", "hi", extra_env={"CHATBOT_ROLES": str(roles)})
    assert result.returncode == 2
    assert f"{roles}, line 3: role 'pirate': temperature 9 is out of range (0 to 2)" in result.err
    assert_clean(result)
    assert not server.posts
    result = run("hi", extra_env={"CHATBOT_ROLES": str(roles)})  # not asked for: never in the way
    assert result.returncode == 0, result.err


def test_a_role_of_the_users_own_with_a_model(run, server, tmp_path):
    roles = tmp_path / "roles.toml"
    roles.write_text('[pirate]\nsystem = "Answer as a pirate."\nmodel = "other-model"\ntemperature = 1.3\n')
    result = run("--json", "--role", "pirate", "hi", extra_env={"CHATBOT_ROLES": str(roles)})
    assert result.returncode == 0, result.err
    body = server.posts[-1].body
    assert (body["model"], body["temperature"], sent_system(server.posts[-1])) == (
        "other-model",
        1.3,
        "Answer as a pirate.",
    )
    result = run("--role", "pirate", "hi", extra_env={"CHATBOT_ROLES": str(roles), "OPENAI_MODEL": "x"})
    assert result.returncode == 0  # the server lists other-model: the role's model is taken


def test_a_session_keeps_its_role_and_a_flag_still_wins(run, server, db):
    assert run("--db", db, "--session", "s", "--role", "reviewer", "one").returncode == 0
    assert run("--db", db, "--session", "s", "two").returncode == 0
    assert sent_system(server.posts[-1]) == REVIEWER.system
    assert server.posts[-1].body["temperature"] == 0.2
    assert run("--db", db, "--session", "s", "-t", "1.1", "three").returncode == 0
    assert server.posts[-1].body["temperature"] == 1.1  # said on the command line: it wins
    assert sent_system(server.posts[-1]) == REVIEWER.system


def test_role_command_lists_marks_and_switches(spawn, server):
    child = started(spawn, "--no-save")
    send(child, "/role")
    child.expect(r"\* default ")
    child.expect(r"  reviewer +\[temperature 0.2\] You are a careful code reviewer")
    child.expect("/role NAME switches; your own roles go in .*roles.toml")
    child.expect_exact(PROMPT)
    send(child, "/role translator")
    child.expect_exact("role is now translator: its system prompt, model test-model, temperature 0.2")
    child.expect_exact(PROMPT)
    send(child, "bonjour")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert sent_system(server.posts[-1]).startswith("You are a translator.")
    assert server.posts[-1].body["temperature"] == 0.2
    send(child, "/role")
    child.expect(r"\* translator ")
    child.expect_exact(PROMPT)
    send(child, "/role nope")
    child.expect("unknown role 'nope': the roles are default, concise, reviewer, translator")
    child.expect_exact(PROMPT)
    send(child, "/system my own words")
    child.expect_exact(PROMPT)
    send(child, "/role")
    child.expect("the system prompt is one of your own")
    child.expect_exact(PROMPT)
    send(child, "/role default")
    child.expect_exact("role is now default: its system prompt, model test-model, temperature 0.4")
    child.expect_exact(PROMPT)
    send(child, "again")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert server.posts[-1].body["temperature"] == 0.4
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_role_flag_in_the_chat_shows_in_the_banner(spawn, server):
    child = spawn("--no-save", "--role", "concise")
    child.expect("role concise")
    child.expect_exact(PROMPT)
    send(child, "hi")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert sent_system(server.posts[-1]).startswith("You are a concise assistant.")
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_a_bad_roles_file_in_the_chat_is_one_error_line_and_the_chat_goes_on(spawn, server, tmp_path):
    roles = tmp_path / "roles.toml"
    roles.write_text("[broken\n")
    child = started(spawn, "--no-save", extra_env={"CHATBOT_ROLES": str(roles)})
    send(child, "/role")
    child.expect(f"{roles}, line 1: not valid TOML")
    child.expect_exact(PROMPT)
    roles.write_text('[fixed]\nsystem = "Now it works."\n')  # read again: no restart needed
    send(child, "/role fixed")
    child.expect_exact("role is now fixed")
    child.expect_exact(PROMPT)
    send(child, "hi")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    assert sent_system(server.posts[-1]) == "Now it works."
    send(child, "/exit")
    child.expect(pexpect.EOF)


def test_switching_sessions_takes_each_ones_temperature(spawn, server, db):
    child = started(spawn, "--db", db, "--session", "plain")
    send(child, "hello")
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    send(child, "/session warm")
    child.expect_exact(PROMPT)
    send(child, "/role reviewer")
    child.expect_exact("role is now reviewer")
    child.expect_exact(PROMPT)
    send(child, "review this")  # an empty session is not kept: this one has a message
    child.expect_exact("Hello from the test server.")
    child.expect_exact(PROMPT)
    for session in ("plain", "warm"):
        send(child, f"/session {session}")
        child.expect_exact(PROMPT)
        send(child, f"hello in {session}")
        child.expect_exact("Hello from the test server.")
        child.expect_exact(PROMPT)
    send(child, "/exit")
    child.expect(pexpect.EOF)
    assert [post.body["temperature"] for post in server.posts[-2:]] == [0.4, 0.2]
    assert sent_system(server.posts[-1]) == REVIEWER.system
