"""meteorpi installed as docs/operations.rst installs it: from the source tree, not
editable. Its migrations, templates and static files must travel with it."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new environment with meteorpi installed from a wheel of this tree; the libraries
    it needs are borrowed from the test environment (a .pth file), not downloaded."""
    work = tmp_path_factory.mktemp("installed")
    # Built from a copy: a build writes build/ and *.egg-info beside its sources.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(work / "dist"), str(source)], check=True, cwd=work)
    [wheel] = (work / "dist").glob("meteorpi-*.whl")
    environment = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    # --ignore-installed: else pip, finding meteorpi (editable) in the environment it runs
    # from, would uninstall it there first.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--ignore-installed", "--prefix", str(environment), str(wheel)], check=True)
    site_packages = Path(subprocess.run(
        [str(environment / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return environment


def run(environment: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(environment / "bin" / "python"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_installing_elsewhere_leaves_the_test_environment_alone(installed, tmp_path):
    found = subprocess.run([sys.executable, "-m", "pip", "show", "--files", "meteorpi"],
                           capture_output=True, text=True)
    assert found.returncode == 0, "the test environment lost its meteorpi"


def test_an_installed_package_runs_from_its_own_files_not_the_source_tree(installed, tmp_path):
    found = run(installed, "-c", "import meteorpi_server; print(meteorpi_server.__file__)",
                cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert not found.stdout.startswith(str(ROOT / "meteorpi_server"))


def test_an_installed_package_migrates_a_new_database(installed, tmp_path):
    result = run(installed, "-m", "meteorpi_server", "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    check = run(installed, "-c", "from meteorpi_server import create_app\n"
                "from meteorpi_server.observe.health import readiness\n"
                "app = create_app()\n"
                "print(readiness(app.extensions['meteorpi']).check('schema').ok)",
                cwd=tmp_path)
    assert check.stdout.strip().splitlines()[-1] == "True", check.stdout + check.stderr


def test_an_installed_package_serves_its_status_page(installed, tmp_path):
    assert run(installed, "-m", "meteorpi_server", "db", "upgrade", cwd=tmp_path).returncode == 0
    result = run(installed, "-c", "from meteorpi_server import create_app\n"
                 "client = create_app().test_client()\n"
                 "print(client.get('/status/login').status_code,"
                 " client.get('/status/static/status.css').status_code)", cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "200 200", result.stdout + result.stderr
