"""Benchmark of resumable chunked uploads against a real ``meteorpi serve``.

Run:  .venv/bin/python bench/resumable_upload.py [--quick]

One file of random bytes (1 GiB, 256 MiB with --quick) is uploaded over loopback by
the exporter's own client, ``ResumableUploader`` (``meteorpi_server/exporter/resumable.py``),
to ``meteorpi serve --workers 1`` (gunicorn, one ``gthread`` worker) with a fresh SQLite
database and file store in a temporary directory. Client and server share the machine's
two cores, so absolute rates vary from run to run; the figures
that matter are ratios to a baseline measured in the same run:

throughput, x raw PUT
    The baseline is a raw streaming PUT of the same bytes: ``requests`` sends the file as
    1 MiB pieces (with a Content-Length) to a minimal WSGI app in this file, which copies
    ``wsgi.input`` in 1 MiB pieces into a file (no md5, no fsync), served by gunicorn with
    the same settings as ``meteorpi serve`` (one ``gthread`` worker, same thread count,
    keep-alive and access log) on another port.
throughput, x floor
    A second baseline, the honest floor for a verified, durable upload: the same raw PUT
    to another route of the same app, which also computes the md5 of the pieces as they
    pass and calls fsync once at the end (the reply carries the md5, checked against the
    file's). It runs right after each raw PUT, so every candidate sits between two pairs
    of baseline runs, and a candidate's "x floor" is its rate over the median of the
    round's floor rates. The raw PUT stays: the gap between the two baselines shows what
    md5 and one fsync cost on the machine at that moment. The issue's target: a 1 GiB
    resumable upload with the exporter's defaults at 0.6 x the floor or better.
throughput, candidates
    Candidates: resumable uploads with
    1, 4, 8, 16 and 64 MiB chunks with a sha256 per chunk (the exporter's default), 8 MiB
    chunks without a checksum, and the legacy whole-file multipart POST. Each round runs
    baseline pair, candidate, baseline pair, candidate, ..., baseline pair (the candidate
    order rotates from round to round); a candidate's ratios are its rate divided by the
    median of the round's 8 rates of each baseline (a median, because writes of new data
    are bimodal: one baseline run can be 3x off its neighbour). The table shows medians
    over the rounds (3, 1 with --quick) of the rates and of the ratios, and the range of
    the ratios (of the baseline rates over their median for the baselines; the floor's
    "x raw PUT" is per round). A resumable upload is timed from the first request (asking for the offset) to the reply to the last chunk,
    which includes the server's md5 pass over the whole file and moving it into place.
    Both sides reuse a connection opened (and, for meteorpi, authenticated, so the auth
    cache is warm) before the clock starts. Each stored file is deleted after its run.
peak memory
    VmHWM of the gunicorn worker (the child of the master) from /proc, on a freshly
    started server for each file: once it answered /health, once it authenticated the
    client, and after a resumable upload of 100 MiB and of the full-size file with the
    exporter's default chunk size. The server reads chunks in 1 MiB pieces, so the two
    peaks should be about the same.
cut at 50 %
    A TCP proxy (a thread in this process) between client and server counts the bytes
    sent towards the server and closes both sockets of the connection once the count
    passes half the file size (once per upload). The resumable uploader (default chunk
    size and checksum) resyncs from the server's offset and goes on; the figure is all
    bytes forwarded to the server (headers included) divided by the file size: about 1.0
    if only the interrupted chunk is sent again. For contrast, the legacy whole-file
    upload through the same proxy, sent again after the cut: about 1.5.

Progress and each run's figures go to stderr; the table and a recommendation for the
exporter's default chunk size go to stdout. Everything is made in one temporary directory
(under $TMPDIR) and removed at the end, servers are stopped with SIGTERM to their process
group. MB/s means 10^6 bytes per second.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import requests
import yaml
from common import METEORPI, BenchError, free_port, log_tail, measured, missing_meteorpi, progress
from common import meteorpi as run_meteorpi

from meteorpi_server.config import Config
from meteorpi_server.exporter.multipart import MultipartFileBody
from meteorpi_server.exporter.resumable import DEFAULT_CHUNK_SIZE, ResumableUploader
from meteorpi_server.storage.files import FileStore

MiB = 1 << 20
PIECE = MiB
USER = "bench"
TIMEOUT = (10.0, 600.0)


@dataclass(frozen=True)
class Plan:
    file_size: int
    rounds: int
    small_size: int = 100 * MiB


QUICK = Plan(file_size=256 * MiB, rounds=1)
DEFAULT = Plan(file_size=1024 * MiB, rounds=3)


@dataclass(frozen=True)
class Candidate:
    label: str
    chunk_size: int | None  # None: the legacy whole-file multipart upload
    checksum: str | None = "sha256"

    @property
    def short(self) -> str:
        if self.chunk_size is None:
            return "legacy"
        return f"{self.chunk_size // MiB} MiB" + ("" if self.checksum else " no sum")


CANDIDATES = (
    Candidate("resumable, 1 MiB chunks, sha256", 1 * MiB),
    Candidate("resumable, 4 MiB chunks, sha256", 4 * MiB),
    Candidate("resumable, 8 MiB chunks, sha256", 8 * MiB),
    Candidate("resumable, 16 MiB chunks, sha256", 16 * MiB),
    Candidate("resumable, 64 MiB chunks, sha256", 64 * MiB),
    Candidate("resumable, 8 MiB chunks, no checksum", 8 * MiB, None),
    Candidate("legacy multipart POST, whole file", None, None),
)
SHA256_CHUNKS = [candidate for candidate in CANDIDATES
                 if candidate.chunk_size and candidate.checksum == "sha256"]


def mb(size: float) -> str:
    return f"{size / 1e6:,.0f}"


def mib(size: int) -> str:
    return f"{size // MiB} MiB" if size < 1024 * MiB else f"{size / (1024 * MiB):g} GiB"


# The raw baseline: a minimal WSGI app under gunicorn ------------------------------------

def raw_app(environ, start_response):
    """PUT /upload/<hex>: copy the body into <dir>/<hex>.bin in 1 MiB pieces.
    PUT /floor/<hex>: the same, computing the md5 of the pieces as they pass and calling
    fsync once at the end; the reply gives the md5. GET /health."""
    path = environ.get("PATH_INFO", "")
    status, body = "404 Not Found", b"{}"
    if path == "/health":
        status, body = "200 OK", b'{"status": "ok"}'
    elif environ["REQUEST_METHOD"] == "PUT" and path.startswith(("/upload/", "/floor/")):
        floor = path.startswith("/floor/")
        name = path.split("/", 2)[2]
        if name.isalnum():
            stream, total, md5 = environ["wsgi.input"], 0, hashlib.md5()
            with open(os.path.join(os.environ["METEORPI_BENCH_RAW_DIR"], name + ".bin"), "wb") as out:
                while piece := stream.read(PIECE):
                    out.write(piece)
                    total += len(piece)
                    if floor:
                        md5.update(piece)
                if floor:
                    out.flush()
                    os.fsync(out.fileno())
            reply = {"bytes": total, **({"md5": md5.hexdigest()} if floor else {})}
            status, body = "200 OK", json.dumps(reply).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def serve_raw(port: int, directory: str) -> None:
    """Serve raw_app with the options ``meteorpi serve --workers 1`` gives gunicorn."""
    from gunicorn.app.base import BaseApplication

    from meteorpi_server.serving import gunicorn_options

    os.environ["METEORPI_BENCH_RAW_DIR"] = directory
    options = gunicorn_options(Config.from_mapping(
        {"host": "127.0.0.1", "port": port, "workers": 1, "log_level": "warning"}))

    class RawServer(BaseApplication):
        def load_config(self) -> None:
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self):
            return raw_app

    RawServer().run()


class SizedPieces:
    """A file as 1 MiB pieces with a length, so requests streams it with a Content-Length."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as source:
            while piece := source.read(PIECE):
                yield piece


# Servers ----------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen

    def worker_pid(self) -> int:
        """The gunicorn worker: the one child of the master (the process we started)."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if not children:  # no CONFIG_PROC_CHILDREN: scan for processes whose parent it is
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, IndexError):
                    if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(stat.parent.name)
        if len(children) != 1:
            raise BenchError(f"{self.name}: expected one worker under pid {pid}, found {children}")
        return int(children[0])

    def worker_hwm(self) -> int:
        """The worker's peak resident memory (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise BenchError("no VmHWM in /proc/<pid>/status")


@contextlib.contextmanager
def serving(name: str, command: list[str], port: int, log_path: Path,
            env: dict | None = None) -> Iterator[Server]:
    """A gunicorn server in its own session; SIGTERM to its group at the end."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env)
    server = Server(name, f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise BenchError(f"{name} exited with status {process.returncode}")
            try:
                if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not answer /health within 60 s")
            time.sleep(0.1)
        yield server
    except BaseException:
        print(f"--- end of the {name} log {log_path} ---\n{log_tail(log_path)}\n---",
              file=sys.stderr)
        raise
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(35)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Bench:
    """The working directory, the meteorpi configuration and the source files."""

    plan: Plan
    workdir: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    def __post_init__(self) -> None:
        self.files = FileStore(self.workdir / "files")
        self.raw_dir = self.workdir / "raw"
        self.raw_dir.mkdir()
        self.config = self.workdir / "meteorpi.yaml"
        self.config.write_text(yaml.safe_dump({
            "database_url": f"sqlite:///{self.workdir / 'meteorpi.db'}",
            "file_store": str(self.workdir / "files"),
            "log_level": "warning",
            "max_upload_bytes": 2 * self.plan.file_size,
            "max_chunk_bytes": max(c.chunk_size or 0 for c in CANDIDATES),
            # Runs last longer than the default 300 s: keep the one password check cached.
            "auth_cache_seconds": 3600,
        }))

    def prepare(self) -> None:
        run_meteorpi(self.config, "db", "upgrade")
        run_meteorpi(self.config, "users", "add", USER, "--role", "import", "--password-stdin",
                     stdin=self.password + "\n")

    def meteorpi(self) -> contextlib.AbstractContextManager[Server]:
        port = free_port()
        return serving("meteorpi serve", [str(METEORPI), "--config", str(self.config), "serve",
                                          "--port", str(port), "--workers", "1"],
                       port, self.workdir / "meteorpi.log")

    def raw(self) -> contextlib.AbstractContextManager[Server]:
        port = free_port()
        return serving("raw baseline", [sys.executable, str(Path(__file__).resolve()),
                                        "--serve-raw", str(port), "--raw-dir", str(self.raw_dir)],
                       port, self.workdir / "raw.log")

    def session(self, server: Server | None = None, url: str | None = None) -> requests.Session:
        """An authenticated session whose connection is open and whose password check the
        worker has cached (one untimed GET /import)."""
        session = requests.Session()
        session.auth = (USER, self.password)
        response = session.get(f"{url or server.url}/import", timeout=TIMEOUT)
        if response.status_code != 200:
            raise BenchError(f"GET /import answered {response.status_code}: {response.text[:200]}")
        return session

    def check_stored(self, file_id: uuid.UUID, size: int) -> None:
        """The server holds the whole file; then delete it (it is not needed again)."""
        path = self.files.path_for(file_id)
        try:
            stored = path.stat().st_size
        except FileNotFoundError:
            raise BenchError(f"the server did not store file {file_id.hex}") from None
        path.unlink()
        if stored != size:
            raise BenchError(f"the server stored {stored} bytes of file {file_id.hex}, not {size}")


def make_source(path: Path, size: int) -> str:
    """Write ``size`` bytes that differ in every 1 MiB piece; return their md5."""
    pool = os.urandom(16 * MiB + PIECE)
    md5 = hashlib.md5()
    with open(path, "wb") as out:
        for index in range(-(-size // PIECE)):
            start = (index * 7919 * 4096) % (16 * MiB)
            piece = (index.to_bytes(8, "big") + pool[start:start + PIECE - 8])[:size - index * PIECE]
            md5.update(piece)
            out.write(piece)
    return md5.hexdigest()


# One upload of each kind --------------------------------------------------------------------

def raw_put(bench: Bench, server: Server, source: Path, md5: str | None = None) -> float:
    """Seconds for one streaming PUT of ``source`` to the raw app; with ``md5``, to its
    floor route (md5 while streaming, one fsync), whose md5 must match."""
    name = uuid.uuid4().hex
    body = SizedPieces(source)
    route = "floor" if md5 else "upload"
    with requests.Session() as session:
        session.get(f"{server.url}/health", timeout=TIMEOUT)  # open the connection
        start = time.perf_counter()
        response = session.put(f"{server.url}/{route}/{name}", data=body, timeout=TIMEOUT)
        seconds = time.perf_counter() - start
    if (response.status_code != 200 or response.json().get("bytes") != body.size
            or (md5 and response.json().get("md5") != md5)):
        raise BenchError(f"raw PUT to /{route} answered {response.status_code}: {response.text[:200]}")
    (bench.raw_dir / f"{name}.bin").unlink()
    return seconds


def resumable_put(bench: Bench, server: Server, source: Path, md5: str, chunk_size: int,
                  checksum: str | None) -> float:
    file_id = uuid.uuid4()
    size = source.stat().st_size
    with bench.session(server) as session, open(source, "rb") as handle:
        uploader = ResumableUploader(session, f"{server.url}/import", chunk_size=chunk_size,
                                     checksum=checksum)
        start = time.perf_counter()
        outcome = uploader.upload(file_id, md5, handle)
        seconds = time.perf_counter() - start
    if not outcome.complete or outcome.bytes_sent != size:
        raise BenchError(f"resumable upload ended {outcome}")
    bench.check_stored(file_id, size)
    return seconds


def legacy_post(bench: Bench, url: str, session: requests.Session, file_id: uuid.UUID,
                md5: str, handle: BinaryIO) -> requests.Response:
    handle.seek(0)
    body = MultipartFileBody("file", file_id.hex, handle)
    return session.post(f"{url}/import/data/{file_id.hex}/{md5}", data=body, timeout=TIMEOUT,
                        headers={"Content-Type": body.content_type})


def legacy_put(bench: Bench, server: Server, source: Path, md5: str) -> float:
    file_id = uuid.uuid4()
    with bench.session(server) as session, open(source, "rb") as handle:
        start = time.perf_counter()
        response = legacy_post(bench, server.url, session, file_id, md5, handle)
        seconds = time.perf_counter() - start
    if response.status_code != 200:
        raise BenchError(f"legacy upload answered {response.status_code}: {response.text[:200]}")
    bench.check_stored(file_id, source.stat().st_size)
    return seconds


def upload(bench: Bench, server: Server, candidate: Candidate, source: Path, md5: str) -> float:
    if candidate.chunk_size is None:
        return legacy_put(bench, server, source, md5)
    return resumable_put(bench, server, source, md5, candidate.chunk_size, candidate.checksum)


# 1. Throughput ---------------------------------------------------------------------------------

def measure_throughput(bench: Bench, meteorpi: Server, raw: Server, source: Path,
                       md5: str) -> dict[str, dict]:
    """Per candidate: median MB/s, and the median and range over rounds of its ratios to
    the round's median rates of the two baselines (raw PUT, and the md5 + fsync floor)."""
    size = source.stat().st_size
    rates: dict[str, list[float]] = {candidate.label: [] for candidate in CANDIDATES}
    ratios: dict[str, list[float]] = {candidate.label: [] for candidate in CANDIDATES}
    floor_ratios: dict[str, list[float]] = {candidate.label: [] for candidate in CANDIDATES}
    baselines: list[float] = []
    floors: list[float] = []
    floor_x_raw: list[float] = []
    for round_ in range(bench.plan.rounds):
        shift = round_ * 3 % len(CANDIDATES)
        order = CANDIDATES[shift:] + CANDIDATES[:shift]
        progress(f"throughput round {round_ + 1}/{bench.plan.rounds}: "
                 f"{len(order)} candidates between {len(order) + 1} pairs of baseline runs "
                 f"(raw PUT, then the md5 + fsync floor)")

        def baseline_pair() -> None:
            round_baselines.append(size / raw_put(bench, raw, source))
            round_floors.append(size / raw_put(bench, raw, source, md5))

        round_baselines: list[float] = []
        round_floors: list[float] = []
        baseline_pair()
        progress(f"  raw PUT {mb(round_baselines[0])} MB/s, floor {mb(round_floors[0])} MB/s")
        round_rates = {}
        for candidate in order:
            round_rates[candidate.label] = size / upload(bench, meteorpi, candidate, source, md5)
            baseline_pair()
            progress(f"  {candidate.label}: {mb(round_rates[candidate.label])} MB/s; "
                     f"raw PUT {mb(round_baselines[-1])} MB/s, floor {mb(round_floors[-1])} MB/s")
        # Writes of new data are bimodal on these VMs: a single neighbouring
        # baseline run can be off by 3x, the median of the round's runs is not.
        baseline = statistics.median(round_baselines)
        floor = statistics.median(round_floors)
        baselines += round_baselines
        floors += round_floors
        floor_x_raw.append(floor / baseline)
        for label, rate in round_rates.items():
            rates[label].append(rate)
            ratios[label].append(rate / baseline)
            floor_ratios[label].append(rate / floor)
        progress(f"  round {round_ + 1}: median raw PUT {mb(baseline)} MB/s, floor {mb(floor)} "
                 f"MB/s; x floor: " + ", ".join(
                     f"{candidate.short} {round_rates[candidate.label] / floor:.2f}"
                     for candidate in CANDIDATES))
    figures = {"raw": {"rate": statistics.median(baselines), "ratio": 1.0,
                       "low": min(baselines) / statistics.median(baselines),
                       "high": max(baselines) / statistics.median(baselines),
                       "floor": statistics.median(baselines) / statistics.median(floors)},
               "floor": {"rate": statistics.median(floors),
                         "ratio": statistics.median(floor_x_raw),
                         "low": min(floor_x_raw), "high": max(floor_x_raw),
                         "floor": 1.0, "floor_low": min(floors) / statistics.median(floors),
                         "floor_high": max(floors) / statistics.median(floors)}}
    for label in rates:
        figures[label] = {"rate": statistics.median(rates[label]),
                          "ratio": statistics.median(ratios[label]),
                          "low": min(ratios[label]), "high": max(ratios[label]),
                          "floor": statistics.median(floor_ratios[label]),
                          "floor_low": min(floor_ratios[label]),
                          "floor_high": max(floor_ratios[label])}
    return figures


# 2. Peak memory ------------------------------------------------------------------------------

def measure_memory(bench: Bench, sources: list[tuple[Path, str]]) -> list[dict]:
    results = []
    for source, md5 in sources:
        size = source.stat().st_size
        with bench.meteorpi() as server:
            started = server.worker_hwm()
            with bench.session(server) as session:
                authenticated = server.worker_hwm()
                file_id = uuid.uuid4()
                with open(source, "rb") as handle:
                    outcome = ResumableUploader(session, f"{server.url}/import").upload(
                        file_id, md5, handle)
                if not outcome.complete:
                    raise BenchError(f"resumable upload ended {outcome}")
            peak = server.worker_hwm()
        bench.check_stored(file_id, size)
        results.append({"size": size, "started": started, "authenticated": authenticated,
                        "peak": peak})
        progress(f"  {mib(size)}: worker VmHWM {mb(started)} MB after /health, "
                 f"{mb(authenticated)} MB after the password check, {mb(peak)} MB after the upload")
    return results


# 3. A connection cut at 50 % -----------------------------------------------------------------

class CuttingProxy:
    """Forwards loopback TCP connections to ``target_port``, counting the bytes sent
    towards it; closes both sockets of a connection once the count passes ``cut_after``
    (once: ``arm`` again for another cut)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.upstream_bytes = 0
        self.connections = 0
        self.cuts = 0
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, cut_after: int) -> None:
        with self._lock:
            self.upstream_bytes, self.connections, self.cuts = 0, 0, 0
            self._cut_after = cut_after

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            pair = (client, upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, pair), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket, counted: bool, pair) -> None:
        try:
            while data := source.recv(MiB):
                destination.sendall(data)
                if counted:
                    with self._lock:
                        self.upstream_bytes += len(data)
                        cut = self._cut_after is not None and self.upstream_bytes > self._cut_after
                        if cut:
                            self._cut_after = None
                            self.cuts += 1
                    if cut:
                        for sock in pair:
                            with contextlib.suppress(OSError):
                                sock.shutdown(socket.SHUT_RDWR)
                        return
            with contextlib.suppress(OSError):
                destination.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def measure_cut(bench: Bench, server: Server, source: Path, md5: str) -> dict[str, dict]:
    size = source.stat().st_size
    proxy = CuttingProxy(int(server.url.rsplit(":", 1)[1]))
    results = {}
    try:
        # Resumable, with the exporter's defaults (8 MiB, sha256, 1 s before a retry).
        file_id = uuid.uuid4()
        with bench.session(url=proxy.url) as session, open(source, "rb") as handle:
            uploader = ResumableUploader(session, f"{proxy.url}/import")
            proxy.arm(size // 2)
            start = time.perf_counter()
            outcome = uploader.upload(file_id, md5, handle)
            seconds = time.perf_counter() - start
        if not outcome.complete:
            raise BenchError(f"resumable upload through the proxy ended {outcome}")
        bench.check_stored(file_id, size)
        results["resumable"] = {"ratio": proxy.upstream_bytes / size, "cuts": proxy.cuts,
                                "connections": proxy.connections, "requests": uploader.requests_sent,
                                "seconds": seconds}
        progress(f"  resumable ({mib(uploader.chunk_size)} chunks, sha256): "
                 f"{proxy.upstream_bytes:,} bytes forwarded for {size:,} = "
                 f"{proxy.upstream_bytes / size:.3f} x; {proxy.cuts} cut, {proxy.connections} "
                 f"connections, {uploader.requests_sent} requests, {seconds:.1f} s")

        # Legacy: the whole file again after a failure.
        file_id = uuid.uuid4()
        with bench.session(url=proxy.url) as session, open(source, "rb") as handle:
            proxy.arm(size // 2)
            attempts = 0
            start = time.perf_counter()
            while True:
                attempts += 1
                try:
                    response = legacy_post(bench, proxy.url, session, file_id, md5, handle)
                except requests.RequestException as error:
                    if attempts >= 3:
                        raise BenchError(f"legacy upload failed {attempts} times: {error}") from error
                    continue
                if response.status_code == 200:
                    break
                raise BenchError(f"legacy upload answered {response.status_code}: {response.text[:200]}")
            seconds = time.perf_counter() - start
        bench.check_stored(file_id, size)
        results["legacy"] = {"ratio": proxy.upstream_bytes / size, "cuts": proxy.cuts,
                             "connections": proxy.connections, "requests": attempts,
                             "seconds": seconds}
        progress(f"  legacy multipart: {proxy.upstream_bytes:,} bytes forwarded = "
                 f"{proxy.upstream_bytes / size:.3f} x; {proxy.cuts} cut, {attempts} attempts, "
                 f"{seconds:.1f} s")
    finally:
        proxy.close()
    return results


# Output --------------------------------------------------------------------------------------

def recommendation(plan: Plan, throughput: dict[str, dict]) -> str:
    """Whether the figures support the exporter's default chunk size, and why."""
    figures = {candidate.chunk_size: throughput[candidate.label] for candidate in SHA256_CHUNKS}
    best_size = max(figures, key=lambda size: figures[size]["ratio"])
    best = figures[best_size]
    default = figures[DEFAULT_CHUNK_SIZE]
    # The smallest chunk within 5 % of the best: a cut costs at most one chunk resent.
    enough = min(size for size in figures if figures[size]["ratio"] >= 0.95 * best["ratio"])
    cost = f"a cut costs at most one chunk ({mib(DEFAULT_CHUNK_SIZE)}) sent again"
    if default["ratio"] >= 0.95 * best["ratio"]:
        smaller = (f"; {mib(enough)} chunks come as close" if enough < DEFAULT_CHUNK_SIZE else "")
        return (f"keep {mib(DEFAULT_CHUNK_SIZE)}: the figures support it. Its throughput is "
                f"{default['ratio'] / best['ratio']:.0%} of the best measured ({mib(best_size)} "
                f"chunks, {best['ratio']:.2f} x raw){smaller}, and {cost}.")
    if plan.rounds < 3:
        return (f"no change on this evidence: {mib(DEFAULT_CHUNK_SIZE)} came to "
                f"{default['ratio'] / best['ratio']:.0%} of the best ({mib(best_size)} chunks), but "
                f"{plan.rounds} round(s) on a noisy machine cannot separate chunk sizes (run "
                f"without --quick); {cost}.")
    if default["high"] >= best["low"]:
        return (f"keep {mib(DEFAULT_CHUNK_SIZE)} for now: its median is "
                f"{default['ratio'] / best['ratio']:.0%} of the best ({mib(best_size)} chunks), "
                f"but the rounds overlap ({default['low']:.2f}-{default['high']:.2f} against "
                f"{best['low']:.2f}-{best['high']:.2f} x raw), so these figures do not show a "
                f"real difference; {cost}.")
    return (f"change it to {mib(enough)}: {mib(DEFAULT_CHUNK_SIZE)} reaches only "
            f"{default['ratio'] / best['ratio']:.0%} of the best measured ({mib(best_size)} "
            f"chunks, {best['ratio']:.2f} x raw) and no round overlaps, while {mib(enough)} is the "
            f"smallest chunk within 5 % of the best (a cut costs at most one chunk sent again).")


def print_table(plan: Plan, throughput: dict, memory: list[dict], cut: dict) -> None:
    size = mib(plan.file_size)
    width = 52
    rule = "-" * (width + 32)
    print(f"\nmeteorpi resumable upload benchmark: a {size} file over loopback, one gthread "
          f"worker per server; medians of {plan.rounds} round(s)")
    print(f"{'throughput of one ' + size + ' upload':<{width}} {'MB/s':>7} {'x raw PUT':>10} "
          f"{'(range)':>12} {'x floor':>8} {'(range)':>12}")
    print(rule + "-" * 22)
    rows = [("raw streaming PUT, no md5, no fsync (baseline)", "raw"),
            ("raw PUT + md5 + one fsync (the floor)", "floor")]
    rows += [(candidate.label, candidate.label) for candidate in CANDIDATES]
    for label, key in rows:
        figures = throughput[key]
        floor_range = (f"{figures['floor_low']:>6.2f}-{figures['floor_high']:<5.2f}"
                       if "floor_low" in figures else "")
        print(f"{label:<{width}} {mb(figures['rate']):>7} {figures['ratio']:>10.2f} "
              f"{figures['low']:>6.2f}-{figures['high']:<5.2f} {figures['floor']:>8.2f} {floor_range}")
    default = next(candidate for candidate in SHA256_CHUNKS
                   if candidate.chunk_size == DEFAULT_CHUNK_SIZE)
    figures = throughput[default.label]
    print(f"\nresumable upload with the exporter's defaults ({mib(DEFAULT_CHUNK_SIZE)} chunks, "
          f"sha256) / the floor: {figures['floor']:.2f} (rounds {figures['floor_low']:.2f}-"
          f"{figures['floor_high']:.2f}); the issue's target for 1 GiB: at least 0.6")
    print(f"\n{'gunicorn worker peak memory (VmHWM), fresh server':<{width}} {'MB':>7}")
    print(rule)
    first = memory[0]
    print(f"{'after /health':<{width}} {mb(first['started']):>7}")
    print(f"{'after the first password check':<{width}} {mb(first['authenticated']):>7}")
    for result in memory:
        label = f"after a resumable upload of {mib(result['size'])} ({mib(DEFAULT_CHUNK_SIZE)} chunks)"
        print(f"{label:<{width}} {mb(result['peak']):>7}")
    print(f"{'  peak for ' + mib(memory[-1]['size']) + ' / peak for ' + mib(memory[0]['size']):<{width}} "
          f"{memory[-1]['peak'] / memory[0]['peak']:>7.2f}")
    print(f"\n{'connection cut once at 50 %':<{width}} {'sent':>7} {'requests':>10}")
    print(f"{'(bytes towards the server / file size)':<{width}} {'/ size':>7}")
    print(rule)
    print(f"{'resumable, ' + mib(DEFAULT_CHUNK_SIZE) + ' chunks, sha256 (resyncs)':<{width}} "
          f"{cut['resumable']['ratio']:>7.3f} {cut['resumable']['requests']:>10}")
    print(f"{'legacy multipart POST (sends it all again)':<{width}} "
          f"{cut['legacy']['ratio']:>7.3f} {cut['legacy']['requests']:>10}")
    print(f"\nrecommendation: {recommendation(plan, throughput)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a 256 MiB file and one round (about a minute)")
    parser.add_argument("--rounds", type=int, metavar="R",
                        help=f"throughput rounds (default {DEFAULT.rounds}, {QUICK.rounds} with --quick)")
    parser.add_argument("--serve-raw", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--raw-dir", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve_raw:
        serve_raw(arguments.serve_raw, arguments.raw_dir)
        return 0
    plan = QUICK if arguments.quick else DEFAULT
    if arguments.rounds:
        plan = replace(plan, rounds=arguments.rounds)
    if missing_meteorpi():
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="meteorpi-bench-resumable-"))
    try:
        return measured(lambda: measure(plan, workdir),
                        lambda figures: print_table(plan, *figures),
                        "the servers were stopped and the files removed")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(plan: Plan, workdir: Path) -> tuple:
    """Throughput, peak memory and the cost of a cut, measured in ``workdir``."""
    free = shutil.disk_usage(workdir).free
    if free < 4 * plan.file_size:
        raise BenchError(f"{workdir} has {mib(free)} free; this needs about {mib(4 * plan.file_size)}")
    bench = Bench(plan, workdir)
    progress(f"working in {workdir}; writing a {mib(plan.file_size)} source file")
    source, small = workdir / "source.bin", workdir / "small.bin"
    md5 = make_source(source, plan.file_size)
    small_md5 = make_source(small, plan.small_size)
    progress("migrating a fresh SQLite database and adding user bench")
    bench.prepare()
    with bench.meteorpi() as meteorpi, bench.raw() as raw:
        progress(f"servers up: meteorpi {meteorpi.url}, raw baseline {raw.url}")
        throughput = measure_throughput(bench, meteorpi, raw, source, md5)
        progress("cut at 50 %: through a proxy that closes the connection once")
        cut = measure_cut(bench, meteorpi, source, md5)
    progress("peak memory: a fresh server for each file")
    memory = measure_memory(bench, [(small, small_md5), (source, md5)])
    return throughput, memory, cut


if __name__ == "__main__":
    sys.exit(main())
