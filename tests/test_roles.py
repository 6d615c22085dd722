"""Roles: the built-in ones, the user's roles.toml, and every way that file can be wrong (one line each)."""

from __future__ import annotations

import pytest

from chatcore.roles import BUILTIN_ROLES, DEFAULT, RolesError, current_role, find_role, load_roles, parse_roles
from chatcore.settings import ConfigError, resolve_settings


def settings_with(**environ: str):
    return resolve_settings({}, environ, {})


def test_builtin_roles_and_default_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings = settings_with(OPENAI_SYSTEM_PROMPT="be brief")
    roles = load_roles(settings)
    assert list(roles)[:4] == [DEFAULT, "concise", "reviewer", "translator"]
    assert roles[DEFAULT].system == "be brief"
    assert roles[DEFAULT].model == settings.model
    assert {r.name for r in BUILTIN_ROLES} <= set(roles)


def test_user_file_adds_and_replaces_roles(tmp_path):
    path = tmp_path / "roles.toml"
    path.write_text(
        '[pirate]\nsystem = "Answer as a pirate."\nmodel = "other-model"\ntemperature = 1.5\n\n'
        '[concise]\nsystem = "Two words."\n'
    )
    roles = load_roles(settings_with(CHATBOT_ROLES=str(path)))
    assert roles["pirate"].system == "Answer as a pirate."
    assert roles["pirate"].model == "other-model"
    assert roles["pirate"].temperature == 1.5
    assert roles["concise"].system == "Two words."  # the user's replaces the built-in one
    assert roles["concise"].temperature is None


def test_the_default_file_is_read_from_the_config_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert "mine" not in load_roles(settings_with())
    (tmp_path / "chatbot").mkdir()
    (tmp_path / "chatbot" / "roles.toml").write_text('[mine]\nsystem = "mine"\n')
    assert "mine" in load_roles(settings_with())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[a]\nsystem = "x"\n\n[b\nsystem = "y"\n', "line 4: not valid TOML"),
        ('[a]\nsystem = "x"\n[b]\nmodel = "m"\n', "line 3: role 'b': no system prompt"),
        ('[a]\nsystem = "x"\ntemprature = 1\n', "line 3: role 'a': unknown key 'temprature'"),
        ('[a]\nsystem = "x"\ntemperature = 3.5\n', "line 3: role 'a': temperature 3.5 is out of range (0 to 2)"),
        ('[a]\nsystem = "x"\ntemperature = "hot"\n', "line 3: role 'a': temperature must be a number"),
        ('[a]\nsystem = "x"\ntemperature = true\n', "line 3: role 'a': temperature must be a number"),
        ("[a]\n\nsystem = 42\n", "line 3: role 'a': system must be non-empty text"),
        ('[a]\nsystem = "x"\nmodel = ""\n', "line 3: role 'a': model must be a model name"),
        ('a = "x"\n', "line 1: role 'a': not a table"),
        ('[default]\nsystem = "x"\n', "line 1: role 'default': 'default' is reserved"),
        ('["has space"]\nsystem = "x"\n', "line 1: role 'has space': a role name is 1 to 32 letters"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_the_line_and_the_problem(text, needle):
    with pytest.raises(RolesError) as caught:
        parse_roles(text, "/x/roles.toml")
    message = str(caught.value)
    assert message.startswith("/x/roles.toml, line "), message
    assert needle in message, message
    assert "\n" not in message


def test_missing_or_unreadable_files(tmp_path):
    with pytest.raises(RolesError, match="no such file"):
        load_roles(settings_with(CHATBOT_ROLES=str(tmp_path / "nope.toml")))
    with pytest.raises(RolesError, match="is a directory"):
        load_roles(settings_with(CHATBOT_ROLES=str(tmp_path)))
    (tmp_path / "bin.toml").write_bytes(b'[a]\nsystem = "\xff"\n')
    with pytest.raises(RolesError, match="line 2: not UTF-8"):
        load_roles(settings_with(CHATBOT_ROLES=str(tmp_path / "bin.toml")))
    assert issubclass(RolesError, ConfigError)  # the terminal's exit 2 for configuration


def test_find_role_lists_the_known_names_and_current_role_matches_the_prompt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    roles = load_roles(settings_with())
    assert find_role(roles, "Reviewer").name == "reviewer"
    with pytest.raises(RolesError) as caught:
        find_role(roles, "pirate", "/c/roles.toml")
    assert str(caught.value) == (
        "unknown role 'pirate': the roles are default, concise, reviewer, translator (add your own in /c/roles.toml)"
    )
    assert current_role(roles, roles["translator"].system) == roles["translator"]
    assert current_role(roles, "something of my own") is None


def test_the_readme_example_is_a_valid_roles_file():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("## Roles", 1)[1].split("```toml\n", 1)[1].split("\n```\n", 1)[0]
    roles = {role.name: role for role in parse_roles(example, "README.md")}
    assert set(roles) == {"pirate", "sql", "concise"}
    assert roles["sql"].model == "openai/gpt-4o-mini"
    assert roles["sql"].temperature == 0.0
