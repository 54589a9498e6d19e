"""Settings: embedded defaults, a YAML file, environment overrides, clear errors."""
from __future__ import annotations

import pytest

from meteorpi_server.config import SETTINGS, Config, ConfigError, load_config


def test_no_configuration_at_all_is_the_embedded_default():
    config = load_config(environ={})
    assert config.database_url == "sqlite:///var/meteorpi.db"
    assert config.file_store == "var/files"
    assert config.receiver == "meteorpi_server.receiver:DatabaseImportReceiver"


def test_a_yaml_file_sets_values(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("database_url: postgresql+psycopg://db/meteor\nimport_cache_size: 64\n")
    config = load_config(path, environ={})
    assert config.database_url == "postgresql+psycopg://db/meteor"
    assert config.import_cache_size == 64


def test_environment_variables_override_the_file(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("database_url: sqlite:///a.db\nfile_store: /a\n")
    config = load_config(path, environ={"METEORPI_DATABASE_URL": "sqlite:///b.db",
                                        "METEORPI_FILE_STORE": "/b", "METEORPI_PORT": "9000"})
    assert (config.database_url, config.file_store, config.port) == ("sqlite:///b.db", "/b", 9000)


def test_meteorpi_config_names_the_file(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("workers: 7\n")
    assert load_config(environ={"METEORPI_CONFIG": str(path)}).workers == 7


@pytest.mark.parametrize("content, message", [
    ("databse_url: x\n", "unknown setting(s) databse_url"),
    ("port: eighty\n", "port must be a whole number"),
    ("workers: 0\n", "workers must be a whole number of at least 1"),
    ("receiver: nocolon\n", "receiver must be 'module:ClassName'"),
    ("- a list\n", "must hold a mapping"),
    ("a: [unclosed\n", "is not valid YAML"),
])
def test_a_bad_file_says_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "server.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path, environ={})


@pytest.mark.parametrize("value, message", [
    ("", "database_url is empty"),
    ("   ", "database_url is empty"),
    ("not a url", "database_url is not an SQLAlchemy database URL"),
    ("postgresql://user:hunter2@host:notaport/db", "database_url is not an SQLAlchemy database URL"),
    ("bogus://x", "database_url names a kind of database SQLAlchemy does not know ('bogus')"),
])
def test_an_unusable_database_url_names_the_setting_and_where_it_came_from(tmp_path, value, message):
    with pytest.raises(ConfigError) as from_env:
        load_config(environ={"METEORPI_DATABASE_URL": value})
    assert str(from_env.value).startswith(f"environment variable METEORPI_DATABASE_URL: {message}")
    path = tmp_path / "server.yaml"
    path.write_text(f"database_url: '{value}'\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(path, environ={})
    assert str(from_file.value).startswith(f"{path}: {message}")
    assert "hunter2" not in str(from_env.value) + str(from_file.value)


def test_a_value_from_the_environment_is_blamed_on_its_variable_not_the_file(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("port: 9000\n")
    with pytest.raises(ConfigError, match="^environment variable METEORPI_PORT: port must be"):
        load_config(path, environ={"METEORPI_PORT": "eighty"})


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_file_store_is_refused(value):
    with pytest.raises(ConfigError, match="METEORPI_FILE_STORE: file_store must not be empty"):
        load_config(environ={"METEORPI_FILE_STORE": value})


def test_a_long_bad_value_is_not_echoed_in_full():
    with pytest.raises(ConfigError) as error:
        load_config(environ={"METEORPI_PORT": "9" * 50_000 + "x"})
    assert len(str(error.value)) < 300


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_every_setting_has_help_and_a_valid_default():
    assert all(setting.help for setting in SETTINGS)
    Config.from_mapping({})


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.rst").read_text()
    missing = [setting.name for setting in SETTINGS if f"``{setting.name}``" not in readme]
    assert missing == []
