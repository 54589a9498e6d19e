"""Helpers for the status page's tests: logging in through the form, and records with
real images (the page shows thumbnails of them)."""
from __future__ import annotations

import io
import random
import re
import struct
import uuid
import zlib
from pathlib import Path

import factories
from PIL import Image, ImageDraw

from meteorpi_model import NSString
from meteorpi_server.node.recording import Recorder

_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(client, path: str = "/status/login") -> str:
    """The CSRF token of the form on ``path`` (the login form, or the page's log-out)."""
    match = _CSRF.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client, name: str, password: str):
    """Submit the login form as a browser does; returns the response."""
    return client.post("/status/login", data={"name": name, "password": password,
                                              "csrf_token": csrf_token(client)})


def png(width: int = 800, height: int = 600, colour=(20, 30, 60), seed: int = 0) -> bytes:
    """A real PNG image: a night sky with stars and a meteor's trail."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    for _ in range(width * height // 2000):
        x, y, level = rng.randrange(width), rng.randrange(height), rng.randrange(90, 256)
        draw.point((x, y), fill=(level, level, level))
    x, y = rng.randrange(width // 4, width * 3 // 4), rng.randrange(height // 5, height // 2)
    draw.line((x, y, x + width // 5, y + height // 7), fill=(245, 245, 220), width=2)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, without the pixels: a
    decompression bomb as far as any reader that believes the header is concerned."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def record_event(services, scratch: Path, camera_id: str = "cam-1", data: bytes | None = None,
                 mime_type: str = "image/png", time_ms: int = factories.NIGHT + 1000,
                 status=None):
    """Record an event with one file (a real PNG unless ``data`` says otherwise) on the
    server, as its own camera would; returns the event."""
    recorder = Recorder(services.database, services.files)
    if status is None:
        status = factories.status(camera_id)
        recorder.record_status(status)
    data = png() if data is None else data
    record = factories.file_record(status, data, time_ms, mime_type=mime_type,
                                   file_name="frame.png" if mime_type == "image/png" else "data.bin")
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / uuid.uuid4().hex
    path.write_bytes(data)
    event = factories.event(status, [record], time_ms, event_type=NSString("meteor", "meteorpi"))
    return recorder.record_event(event, {record.file_id: path})
