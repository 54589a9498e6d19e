"""What recording who imports here (GET /imports/nodes) costs a legacy import.

A legacy exporter sends one request per entity, so a per-node write per request would
add a commit to each. The server adds the figures up in memory and writes them at most
once a second per worker; this measures a legacy status import with that log, with a
log that writes each record at once, and with none (the baseline), interleaved in the
same process so that the machine's noise hits all three alike.

    .venv/bin/python bench/import_activity.py [--database sqlite|postgresql] [--imports N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import choose_databases, fresh_database, progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import factories  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from meteorpi_server import create_app  # noqa: E402
from meteorpi_server.services import NODE_ACTIVITY_FLUSH_SECONDS  # noqa: E402
from meteorpi_server.storage.db import Database  # noqa: E402
from meteorpi_server.storage.node_activity import NodeActivityLog  # noqa: E402
from meteorpi_server.storage.orm import UserRoleRow, UserRow  # noqa: E402

PASSWORD = "a long enough password"
ROUNDS = 3


def build(url: str, folder: str):
    Database(url, create=True).upgrade()
    app = create_app({"database_url": url, "file_store": f"{folder}/files"})
    with app.extensions["meteorpi"].database.write() as session:
        # One round of PBKDF2: the password check is not what is measured here.
        session.add(UserRow(name="node", created_at=0, roles=[UserRoleRow(role="import")],
                            password_hash=generate_password_hash(PASSWORD, "pbkdf2:sha256:1")))
    return app


def ms_per_import(app, imports: int) -> float:
    client = app.test_client()
    documents = [{"type": "status", "status": factories.status(f"cam-{index}").to_dict()}
                 for index in range(imports)]
    started = time.perf_counter()
    for document in documents:
        response = client.post("/import", json=document, auth=("node", PASSWORD))
        assert response.status_code == 200, response.get_data(as_text=True)
    return (time.perf_counter() - started) / imports * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"])
    parser.add_argument("--imports", type=int, default=300)
    arguments = parser.parse_args()
    for kind in choose_databases(arguments.database):
        with tempfile.TemporaryDirectory() as folder, \
                fresh_database(kind, Path(folder) / "bench.db", "activity") as url:
            app = build(url, folder)
            activity = app.extensions["meteorpi"].activity
            database = app.extensions["meteorpi"].database
            logs = {"none (baseline)": None,
                    f"added up, written every {NODE_ACTIVITY_FLUSH_SECONDS:g} s":
                        NodeActivityLog(database, NODE_ACTIVITY_FLUSH_SECONDS),
                    "written at each import": NodeActivityLog(database)}
            samples: dict[str, list[float]] = {name: [] for name in logs}
            for round_number in range(ROUNDS):
                progress(f"{kind}: round {round_number + 1} of {ROUNDS}")
                for name, log in logs.items():
                    activity.nodes = log
                    samples[name].append(ms_per_import(app, arguments.imports))
                    activity.flush()
            database.dispose()
        baseline = min(samples["none (baseline)"])
        print(f"\n{kind}: a legacy status import, best of {ROUNDS} rounds of "
              f"{arguments.imports}")
        for name, values in samples.items():
            print(f"  {name:<32} {min(values):6.2f} ms  x{min(values) / baseline:.2f}")


if __name__ == "__main__":
    main()
