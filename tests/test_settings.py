"""The settings table as the one declaration of each setting, and loading step by step: .env, zero-config discovery
against a real local server, the key check."""

from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing

import pytest

from chatcore import settings as config
from chatcore.serverinfo import LocalServer, probe_local_servers, served_models
from chatcore.settings import SETTINGS, ConfigError, Settings, load_settings, resolve_settings

# Values for the rows with neither an example nor a default to parse.
SAMPLES = {
    "context_tokens": "4096",
    "price_in": "0.5",
    "price_out": "2",
    "fallback_model": "other-model",
    "db": "~/chats.db",
    "telegram_db": "~/telegram.db",
    "telegram_allowed": "123,@someone,-100200",
    "transcribe_base_url": "https://api.openai.com/v1",
    "transcribe_api_key": "fake-transcribe",
    "telegram_budget_daily": "0.5",
    "telegram_budget_monthly": "10",
    "telegram_budget_daily_tokens": "20000",
    "telegram_budget_monthly_tokens": "500000",
}
STATE = ["sources", "discovered", "warnings", "notes"]  # what loading adds; not settings


def conforms(value: object, hint: object) -> bool:
    """Whether `value` has the annotated type: `str | None`, `tuple[int, ...]`, `float` (an int is not one)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(conforms(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(conforms(element, item) for element in value)
    return type(value) is hint


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_of(server) -> int:
    return int(server.base_url.rsplit(":", 1)[1].split("/")[0])


# -- the table is the one declaration ---------------------------------------------


def test_settings_fields_are_the_table_rows_in_order_and_then_what_loading_adds():
    assert [f.name for f in dataclasses.fields(Settings)] == [s.name for s in SETTINGS] + STATE


def test_the_table_alone_holds_the_defaults():
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for setting in SETTINGS:
        assert fields[setting.name].default is dataclasses.MISSING, setting.name
        assert fields[setting.name].default_factory is dataclasses.MISSING, setting.name
    defaults = resolve_settings({}, {}, {})
    assert {s.name: getattr(defaults, s.name) for s in SETTINGS} == {s.name: s.default for s in SETTINGS}
    assert defaults.sources == {}


def test_every_default_and_every_parsed_value_has_the_field_type():
    hints = typing.get_type_hints(Settings)
    for setting in SETTINGS:
        assert conforms(setting.default, hints[setting.name]), (setting.name, setting.default)
        text = setting.example or SAMPLES.get(setting.name) or config.shown(setting.default)
        parsed = setting.parse(text)
        assert conforms(parsed, hints[setting.name]), (setting.name, text, parsed)


def test_the_parsed_shown_default_is_the_default():
    """What .env.example and the README print as the default reads back as that default."""
    for setting in SETTINGS:
        if setting.shown_default is not None:
            assert setting.parse(setting.shown_default) == setting.default, setting.name


def test_rows_say_how_they_are_shown_instead_of_special_cases_by_name():
    rows = {s.name: s for s in SETTINGS}
    assert rows["system"].shown_default is None
    assert rows["system"].default_doc
    assert rows["api"].metavar == "{chat,responses}"
    assert rows["max_tokens"].metavar == "MAX-TOKENS"
    assert rows["local_ports"].shown_default == "11434,1234,8080,8000"
    assert rows["model"].shown_default == "openai/gpt-5-nano"
    for nothing_to_show in ("api_key", "no_save", "telegram_allowed", "context_tokens"):
        assert rows[nothing_to_show].shown_default is None
    assert {s.name for s in SETTINGS if s.secret} == {"api_key", "telegram_token", "transcribe_api_key"}


def test_secrets_are_never_flags():
    for setting in SETTINGS:
        if setting.secret:
            assert not setting.flags, setting.name
            assert setting.env, setting.name


def test_bool_settings_are_the_rows_parsed_as_booleans():
    hints = typing.get_type_hints(Settings)
    assert {s.name for s in SETTINGS if hints[s.name] is bool} == config.BOOL_SETTINGS


# -- reading .env ------------------------------------------------------------------


def test_a_readable_env_file_holding_a_secret_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_API_KEY=sk-test\nTELEGRAM_BOT_TOKEN=1:abc\n")
    env_file.chmod(0o644)
    settings = load_settings({}, {})
    if os.name == "posix":
        assert settings.warnings == [
            ".env holds OPENAI_API_KEY and TELEGRAM_BOT_TOKEN and other users can read it (mode 0644): "
            "run chmod 600 .env"
        ]
    env_file.chmod(0o600)
    assert load_settings({}, {}).warnings == []
    env_file.write_text("OPENAI_MODEL=m\n")
    env_file.chmod(0o644)
    assert config.exposed_secrets(".env", {"OPENAI_MODEL": "m"}) == []


def test_an_env_file_asked_for_must_exist_and_be_a_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings({}, {}, str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings({}, {}, str(tmp_path))
    assert config.read_env_file(str(tmp_path / "missing.env"), required=False) == {}


# -- what a server says ------------------------------------------------------------


def test_probing_returns_the_first_port_in_order_that_answers_with_its_models(server):
    other = type(server)(models=["second-model"])
    try:
        nothing = free_port()
        found = probe_local_servers([nothing, port_of(other), port_of(server)])
        assert found == LocalServer(other.base_url, ["second-model"])
        assert probe_local_servers([nothing]) is None
        assert probe_local_servers([]) is None
    finally:
        other.close()


def test_a_server_without_a_model_list_is_not_found_and_lists_nothing(server):
    server.models = None  # /models answers 404
    assert probe_local_servers([port_of(server)]) is None
    assert served_models(server.base_url, None) == []
    server.models = ["only-model"]
    assert served_models(server.base_url + "/", "key") == ["only-model"]


# -- zero-config: discovering what is missing ----------------------------------------


def resolved(**environ: str) -> Settings:
    return resolve_settings({}, environ, {})


def test_no_key_and_no_base_url_uses_the_local_server_and_its_first_model(server):
    settings = config.discover_missing(
        resolved(OPENAI_API_KEY="ollama", CHATBOT_LOCAL_PORTS=f"{free_port()},{port_of(server)}")
    )
    host = server.base_url.split("//")[1].split("/")[0]
    assert (settings.api_key, settings.base_url, settings.model) == (None, server.base_url, "test-model")
    assert settings.discovered == f"a local server at {host}"
    assert settings.notes == [
        f"no key or base URL set: using the local server at {host} and its model test-model "
        "(the first of 2 it lists; set OPENAI_MODEL to choose)"
    ]
    assert "base_url" not in settings.sources
    assert "model" not in settings.sources


def test_a_model_that_was_set_is_kept_when_a_local_server_is_found(server):
    settings = config.discover_missing(resolved(CHATBOT_LOCAL_PORTS=str(port_of(server)), OPENAI_MODEL="mine"))
    assert (settings.base_url, settings.model) == (server.base_url, "mine")
    assert settings.notes == [f"no key or base URL set: using the local server at {settings.host}"]


def test_no_local_server_answering_names_the_ports_tried():
    port = free_port()
    with pytest.raises(ConfigError, match=f"no local server answered on 127.0.0.1 ports {port}: "):
        config.discover_missing(resolved(CHATBOT_LOCAL_PORTS=str(port)))


def test_with_probing_off_nothing_is_discovered_and_the_key_check_says_what_is_missing():
    settings = config.discover_missing(resolved(CHATBOT_LOCAL_PORTS=""))
    assert settings == resolved(CHATBOT_LOCAL_PORTS="")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        config.check_credentials(settings)


def test_a_base_url_without_a_model_takes_the_one_the_server_serves(server):
    server.models = ["served-model"]
    settings = config.discover_missing(resolved(OPENAI_BASE_URL=server.base_url))
    assert (settings.model, settings.notes) == ("served-model", [])


def test_a_local_server_serving_several_models_gives_its_first_and_says_so(server):
    settings = config.discover_missing(resolved(OPENAI_BASE_URL=server.base_url))
    assert settings.model == "test-model"
    assert settings.notes == [f"no OPENAI_MODEL set: using test-model, the first of 2 models {settings.host} lists"]


def test_a_remote_server_serving_several_models_asks_for_one(monkeypatch):
    models = [f"model-{n}" for n in range(8)]
    monkeypatch.setattr(config, "served_models", lambda _base_url, _api_key: models)
    with pytest.raises(ConfigError) as info:
        config.discover_missing(resolved(OPENAI_BASE_URL="https://api.example.com/v1", OPENAI_API_KEY="sk"))
    assert str(info.value) == (
        "OPENAI_MODEL is not set and api.example.com serves 8 models "
        "(model-0, model-1, model-2, model-3, model-4, model-5 …): set OPENAI_MODEL or pass --model"
    )


def test_a_server_that_does_not_list_models_leaves_the_model_as_set(server):
    server.models = None
    settings = config.discover_missing(resolved(OPENAI_BASE_URL=server.base_url))
    assert settings.model == "openai/gpt-5-nano"


def test_nothing_is_asked_when_key_base_url_and_model_are_set(monkeypatch):
    def never(*_args: object) -> typing.NoReturn:
        raise AssertionError("no server should be asked")

    monkeypatch.setattr(config, "served_models", never)
    monkeypatch.setattr(config, "probe_local_servers", never)
    given = resolved(OPENAI_BASE_URL="https://api.example.com/v1", OPENAI_API_KEY="sk", OPENAI_MODEL="m")
    assert config.discover_missing(given) == given
    assert config.discover_missing(resolved(OPENAI_API_KEY="sk")) == resolved(OPENAI_API_KEY="sk")


def test_load_settings_reads_env_then_discovers_then_checks(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"OPENAI_BASE_URL={server.base_url}\n")
    assert load_settings({}, {}).model == "test-model"
    assert load_settings({"model": "flagged"}, {}).model == "flagged"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        load_settings({"base_url": "https://api.example.com/v1", "model": "m"}, {})
