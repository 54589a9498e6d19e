"""docs/operations.rst names only commands that exist, and installs every file in deploy/."""
from __future__ import annotations

import re

import click
from deploy_tools import DEPLOY

from meteorpi_server.cli import main

PAGE = DEPLOY.parent / "docs" / "operations.rst"


def _commands(text: str) -> set[str]:
    """``meteorpi ...`` in inline literals, and command lines in literal blocks."""
    found = set(re.findall(r"``meteorpi ([a-z][^`]*)``", text))
    found.update(re.findall(r"^\s+meteorpi ([a-z].*)$", text, re.MULTILINE))
    found.update(re.findall(r"/bin/meteorpi ([a-z].*)$", text, re.MULTILINE))
    return found


def _problem(line: str) -> str | None:
    """Why ``meteorpi LINE`` would not run (an unknown command or option), else None."""
    command, words = main, line.split("#")[0].split()
    while isinstance(command, click.Group):
        if not words or words[0] not in command.commands:
            return f"no command {line!r}"
        command, words = command.commands[words[0]], words[1:]
    options = {name for param in command.params for name in param.opts}
    unknown = [word for word in words if word.startswith("--") and word not in options]
    return f"{line!r}: no option {', '.join(unknown)}" if unknown else None


def test_every_meteorpi_command_on_the_page_exists():
    commands = _commands(PAGE.read_text())
    assert {"serve", "db upgrade", "files gc", "export status"} <= commands
    problems = [problem for problem in map(_problem, sorted(commands)) if problem]
    assert not problems, problems


def test_the_page_installs_every_file_in_deploy():
    text = PAGE.read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert f"deploy/{path.relative_to(DEPLOY)}" in text, path
