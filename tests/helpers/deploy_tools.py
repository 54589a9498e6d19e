"""The programs that check the files in deploy/ (systemd-analyze, nginx).

Tests skip when one is missing, unless METEORPI_REQUIRE_DEPLOY_TOOLS=1 (as in CI, whose
.ci/run installs them), which makes that a failure.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRE_DEPLOY_TOOLS = os.environ.get("METEORPI_REQUIRE_DEPLOY_TOOLS", "") not in ("", "0")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def require_tool(name: str, package: str) -> str:
    """The path of program ``name`` (from Debian package ``package``); skip or fail without."""
    # nginx lives in /usr/sbin, which an ordinary user's PATH may lack.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} not found (apt-get install {package})"
        if REQUIRE_DEPLOY_TOOLS:
            pytest.fail(f"METEORPI_REQUIRE_DEPLOY_TOOLS is set but {message}")
        pytest.skip(message)
    return path
