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


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_every_setting_has_help_and_a_valid_default():
    assert all(setting.help for setting in SETTINGS)
    Config.from_mapping({})


def test_every_setting_is_documented_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    missing = [setting.name for setting in SETTINGS if f"``{setting.name}``" not in readme]
    assert missing == []
