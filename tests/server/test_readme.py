"""The README's worked example of a custom receiver runs as written."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import factories
from protocol import ProtocolClient
from meteorpi_server import create_app

README = Path(__file__).parents[2] / "README.rst"


def readme_receiver_example() -> str:
    text = README.read_text()
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)[1]
    return "\n".join(line[4:] for line in block.splitlines())


def test_the_readme_receiver_example_works(settings, exporter_auth, tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "receivers.py").write_text(readme_receiver_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    settings["receiver"] = "mypkg.receivers:FilteringReceiver"
    app = create_app(settings)
    node = ProtocolClient(app.test_client(), exporter_auth)
    dataset = factories.DataSet(tmp_path / "node")
    blocked = dataset.add_event(factories.status("cam-under-repair"), file_count=0)
    allowed = dataset.add_event(factories.status("cam-fine"), file_count=1)
    assert node.send(blocked)["state"] == "failed"
    assert node.replicate(allowed, dataset.statuses, dataset.contents)[-1] == "complete"
    app.extensions["meteorpi"].database.dispose()
    sys.modules.pop("mypkg.receivers", None)
    sys.modules.pop("mypkg", None)
