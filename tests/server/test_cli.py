"""The meteorpi command, as an operator scripts it."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import requests
import yaml
from click.testing import CliRunner

from meteorpi_server.cli import ensure_first_user, main


@pytest.fixture
def config_file(tmp_path, database_url):
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url,
                                    "file_store": str(tmp_path / "files")}))
    return path


def meteorpi(config_file, *args, input=None):
    return CliRunner().invoke(main, ["--config", str(config_file), *args], input=input,
                              catch_exceptions=False)


def test_db_upgrade_creates_the_schema_then_has_nothing_to_do(tmp_path):
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/new/fresh.db"}))
    first = meteorpi(path, "db", "upgrade")
    assert first.exit_code == 0 and "(was None)" in first.output
    second = meteorpi(path, "db", "upgrade")
    assert second.exit_code == 0 and "was" not in second.output


def test_commands_on_a_database_without_schema_say_to_upgrade(tmp_path):
    (tmp_path / "fresh.db").touch()  # an empty file is an SQLite database without tables
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/fresh.db"}))
    result = meteorpi(path, "users", "list")
    assert result.exit_code == 1
    assert "run 'meteorpi db upgrade'" in result.output


def test_users_can_be_added_listed_changed_and_removed(config_file):
    added = meteorpi(config_file, "users", "add", "node7", "--role", "import", "--role", "user",
                     "--password-stdin", input="a long s3cret\n")
    assert added.exit_code == 0, added.output
    assert meteorpi(config_file, "users", "list").output == "node7\timport,user\n"
    assert meteorpi(config_file, "users", "roles", "node7", "--role", "camera_admin").exit_code == 0
    assert meteorpi(config_file, "users", "list").output == "node7\tcamera_admin\n"
    assert meteorpi(config_file, "users", "passwd", "node7", "--password-stdin",
                    input="a new long password\n").exit_code == 0
    assert meteorpi(config_file, "users", "remove", "node7").exit_code == 0
    assert meteorpi(config_file, "users", "list").output == ""


@pytest.mark.parametrize("args, stdin, exit_code, message", [
    (["users", "add", "x", "--role", "superuser", "--password-stdin"], "pw\n", 2, "superuser"),
    (["users", "add", "x", "--role", "user", "--password-stdin"], "\n", 2,
     "no password on standard input"),
    (["users", "add", "x", "--role", "user"], "", 2, "--password-stdin"),
    (["users", "remove", "ghost"], None, 1, "no user named ghost"),
    (["users", "add", "a:b", "--role", "user", "--password-stdin"], "a long password\n", 1,
     "without ':'"),
    (["users", "add", "x", "--role", "user", "--password-stdin"], "short pw\n", 1,
     "the password is 8 characters long; it must have at least 12 (setting min_password_length)"),
    (["users", "add", "x", "--password-stdin"], "a long password\n", 2,
     "give the user's roles with --role"),
    (["users", "add", "x", "--role", "user", "--no-roles", "--password-stdin"],
     "a long password\n", 2, "--no-roles and --role exclude each other"),
])
def test_user_commands_explain_their_errors(config_file, args, stdin, exit_code, message):
    result = meteorpi(config_file, *args, input=stdin)
    assert result.exit_code == exit_code
    assert message in result.output


def test_users_roles_without_a_role_is_refused_and_keeps_the_roles(config_file):
    meteorpi(config_file, "users", "add", "node7", "--role", "import", "--password-stdin",
             input="a long password\n")
    refused = meteorpi(config_file, "users", "roles", "node7")
    assert refused.exit_code == 2 and "--no-roles for none" in refused.output
    assert meteorpi(config_file, "users", "list").output == "node7\timport\n"
    stripped = meteorpi(config_file, "users", "roles", "node7", "--no-roles")
    assert stripped.exit_code == 0 and "node7 now has roles: none" in stripped.output
    assert meteorpi(config_file, "users", "list").output == "node7\t\n"


def test_a_user_without_roles_is_added_only_when_asked_for(config_file):
    added = meteorpi(config_file, "users", "add", "idle", "--no-roles", "--password-stdin",
                     input="a long password\n")
    assert added.exit_code == 0 and "with roles: none" in added.output
    assert meteorpi(config_file, "users", "list").output == "idle\t\n"


def test_a_short_new_password_is_refused_with_the_reason(config_file):
    meteorpi(config_file, "users", "add", "node7", "--role", "import", "--password-stdin",
             input="a long password\n")
    result = meteorpi(config_file, "users", "passwd", "node7", "--password-stdin",
                      input="short\n")
    assert result.exit_code == 1
    assert "it must have at least 12 (setting min_password_length)" in result.output


def test_the_minimum_password_length_is_a_setting(tmp_path, database_url):
    path = tmp_path / "lenient.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url, "min_password_length": 4}))
    result = meteorpi(path, "users", "add", "x", "--role", "user", "--password-stdin",
                      input="four\n")
    assert result.exit_code == 0, result.output


def test_adding_an_existing_user_is_refused(config_file):
    meteorpi(config_file, "users", "add", "x", "--role", "user", "--password-stdin",
             input="a long password\n")
    result = meteorpi(config_file, "users", "add", "x", "--role", "user", "--password-stdin",
                      input="a long password\n")
    assert result.exit_code == 1 and "already exists" in result.output


def test_a_bad_configuration_file_is_one_clear_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prot: 1\n")
    result = meteorpi(path, "users", "list")
    assert result.exit_code == 1
    assert "unknown setting(s) prot" in result.output


def run_command(*args, env=None):
    """The installed command in a subprocess, as an operator runs it from a shell."""
    import os

    environment = {**os.environ, **(env or {})}
    environment.pop("METEORPI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "meteorpi_server", *args], env=environment,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("url, message", [
    ("", "METEORPI_DATABASE_URL: database_url is empty"),
    ("bogus://x", "METEORPI_DATABASE_URL: database_url names a kind of database"),
    ("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nothing",
     "could not reach the database postgresql+psycopg://postgres:***@127.0.0.1:1/nothing"),
    ("mysql://someone@127.0.0.1/x", "needs a driver that is not installed"),
], ids=["empty", "unknown-kind", "unreachable-postgresql", "driver-missing"])
def test_an_unusable_database_is_one_clear_line_not_a_traceback(tmp_path, url, message):
    result = run_command("users", "list", env={"METEORPI_DATABASE_URL": url,
                                               "METEORPI_FILE_STORE": str(tmp_path / "files")})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("where, command, message", [
    # A folder is no database file.
    ("a-folder", ["users", "list"], "could not reach the database sqlite:///"),
    ("a-file/db.sqlite", ["db", "upgrade"], "database_url: cannot create the folder for"),
    ("a-file/db.sqlite", ["users", "list"], "no database at "),
])
def test_a_sqlite_file_that_cannot_be_opened_says_what_to_check(tmp_path, where, command,
                                                                 message):
    tmp_path.joinpath("a-folder").mkdir()
    tmp_path.joinpath("a-file").write_text("not a folder")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/{where}"}))
    result = CliRunner().invoke(main, ["--config", str(path), *command])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {message}")


def _meteorpi_environment() -> dict:
    """The environment without any METEORPI_ setting, as on a fresh shell."""
    import os

    return {name: value for name, value in os.environ.items()
            if not name.startswith("METEORPI_")}


@pytest.mark.parametrize("command", [["users", "list"], ["export", "status"], ["files", "gc"],
                                     ["serve"]],
                         ids=["users-list", "export-status", "files-gc", "serve"])
def test_a_command_in_a_directory_without_a_database_creates_nothing_and_says_where_it_looked(
        tmp_path, command):
    from conftest import free_port

    if command == ["serve"]:
        command = ["serve", "--port", str(free_port())]
    result = subprocess.run([sys.executable, "-m", "meteorpi_server", *command], cwd=tmp_path,
                            env=_meteorpi_environment(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert list(tmp_path.iterdir()) == []
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"no database at {tmp_path / 'var' / 'meteorpi.db'}" in result.stderr
    assert "--config FILE or METEORPI_CONFIG" in result.stderr
    assert "serving on" not in result.stdout


def test_a_configured_sqlite_file_that_is_missing_is_named_and_not_created(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/gone/meteorpi.db"}))
    result = meteorpi(path, "users", "list")
    assert result.exit_code == 1
    assert f"no database at {tmp_path}/gone/meteorpi.db (database_url from {path})" \
        in result.output
    assert not (tmp_path / "gone").exists()


def test_a_missing_postgresql_database_is_one_line_saying_how_to_point_at_another(
        postgres_database):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_database).set(database="meteorpi_never_created")
    result = subprocess.run(
        [sys.executable, "-m", "meteorpi_server", "users", "list"],
        env={**_meteorpi_environment(),
             "METEORPI_DATABASE_URL": url.render_as_string(hide_password=False)},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert 'database "meteorpi_never_created" does not exist' in result.stderr
    assert "--config FILE or METEORPI_CONFIG" in result.stderr


def test_an_unreachable_database_mid_command_is_one_line(config_file, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from meteorpi_server.auth import Users

    def refuse(self):
        raise OperationalError(None, None, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(Users, "list", refuse)
    result = CliRunner().invoke(main, ["--config", str(config_file), "users", "list"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: could not reach the database ")
    assert "server closed the connection unexpectedly" in result.output


def test_the_first_user_is_created_only_once(services):
    password = ensure_first_user(services.users)
    assert password and len(password) >= 20
    assert services.users.authenticate("admin", password).roles == {"user", "camera_admin", "import"}
    assert ensure_first_user(services.users) is None


@pytest.mark.slow
def test_serve_tells_the_first_password_once_and_it_works(tmp_path):
    from conftest import free_port

    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/db.sqlite",
                                      "file_store": str(tmp_path / "files")}))
    command = [sys.executable, "-m", "meteorpi_server", "--config", str(config)]
    subprocess.run(command + ["db", "upgrade"], check=True, capture_output=True)

    def start_and_read_banner() -> str:
        port = free_port()
        process = subprocess.Popen(command + ["serve", "--port", str(port), "--workers", "1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        for line in process.stdout:
            output.append(line)
            if "serving on" in line:
                break
        banner = "".join(output)
        password = re.search(r"Password: (\S+)", banner)
        if password:
            for _ in range(100):
                try:
                    response = requests.post(f"http://127.0.0.1:{port}/import", auth=("admin", password[1]),
                                             json={"type": "cached_entity", "cached_entity_id": "0" * 32})
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            assert response.json() == {"state": "continue-nocache"}
            # The command the banner suggests to try the password works as printed.
            suggested = re.search(r"curl -u (\S+?):(\S+) (http\S+)", banner)
            assert suggested and suggested[2] == password[1]
            tried = requests.get(suggested[3], auth=(suggested[1], suggested[2]), timeout=10)
            assert tried.status_code == 200, tried.text
        # Stopped once a worker answers: a SIGTERM that reaches a worker gunicorn is still
        # forking is lost, and the arbiter then waits out its graceful time-out.
        for _ in range(300):
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        process.terminate()
        process.wait(20)
        return banner

    first = start_and_read_banner()
    assert "created user 'admin'" in first and "shown only this once" in first
    second = start_and_read_banner()
    assert "Password:" not in second


def test_the_packages_the_command_imports_are_declared_dependencies():
    # Installing the project must install what `meteorpi` imports, not rely on Flask
    # happening to bring it in.
    import ast
    import configparser
    from importlib.metadata import packages_distributions
    from pathlib import Path

    root = Path(__file__).parents[2]
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    declared = {re.split(r"[<>=!~;\[ ]", line.strip())[0].lower()
                for line in setup["options"]["install_requires"].splitlines() if line.strip()}
    tree = ast.parse((root / "meteorpi_server" / "cli.py").read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    distributions = packages_distributions()
    third_party = {distributions[module][0].lower() for module in modules
                   if module not in sys.stdlib_module_names and module != "meteorpi_model"}
    assert third_party >= {"click"}
    assert third_party <= declared


def test_files_gc_removes_stale_leftovers_and_keeps_what_is_in_progress(config_file, tmp_path):
    import os
    import time
    import uuid

    from meteorpi_server.storage.files import FileStore

    assert meteorpi(config_file, "db", "upgrade").exit_code == 0
    files = FileStore(tmp_path / "files")
    day_ago = time.time() - 2 * 24 * 3600
    stale = files.upload_path(uuid.uuid4(), "0" * 32)  # a resumable upload abandoned long ago
    fresh = files.upload_path(uuid.uuid4(), "1" * 32)  # one still going
    unindexed = files.path_for(uuid.uuid4())  # a crash between file and row, long ago
    unindexed.parent.mkdir(parents=True)
    for path in (stale, fresh, unindexed):
        path.write_bytes(b"partial")
    for path in (stale, unindexed):
        os.utime(path, (day_ago, day_ago))
    result = meteorpi(config_file, "files", "gc")
    assert result.exit_code == 0, result.output
    assert result.output == "removed 0 orphaned, 1 unindexed and 1 partial files\n"
    assert not stale.exists() and not unindexed.exists()
    assert fresh.read_bytes() == b"partial"


def test_files_gc_quiet_prints_nothing_when_all_is_well(config_file):
    assert meteorpi(config_file, "db", "upgrade").exit_code == 0
    for flag in ("--quiet", "-q"):
        result = meteorpi(config_file, "files", "gc", flag)
        assert result.exit_code == 0, result.output
        assert (result.stdout, result.stderr) == ("", "")


def test_files_gc_quiet_still_says_what_went_wrong(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
                                    "file_store": str(tmp_path / "files")}))
    result = meteorpi(path, "files", "gc", "--quiet")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "could not reach the database" in result.stderr
