"""Small JPEG previews of stored images, made on first request and kept on disk.

No Flask here. A thumbnail is named by its file's id and md5
(``<cache_dir>/thumbnails/<file_id>-<md5>.jpg``), so it can never show other bytes than
its file's; it is written to a temporary file and renamed into place, so a reader never
sees half of one, and two workers making the same one at once both succeed.

Memory is bounded: a JPEG is decoded at a reduced scale (``Image.draft``), any image
larger than :data:`MAX_DECODED_PIXELS` once so reduced is refused before it is decoded,
and each process makes at most :data:`CONCURRENT` thumbnails at a time. A file that is
not an image, or that Pillow cannot read, is a :class:`NoThumbnail`; an unreadable one
is remembered (an empty ``.bad`` file beside where its thumbnail would be) so that it is
not decoded again on every request.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from ..storage import store
from ..storage.db import Database
from ..storage.files import FileStore

log = logging.getLogger("meteorpi.web")

#: Longest side of a thumbnail, in pixels.
SIZE = 320
#: Largest image decoded (after a JPEG's reduction), in pixels: about 100 MB as RGBA.
MAX_DECODED_PIXELS = 25_000_000
#: Thumbnails one process makes at the same time.
CONCURRENT = 2
QUALITY = 80

_making = threading.BoundedSemaphore(CONCURRENT)


class NoThumbnail(Exception):
    """No thumbnail can be made; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class Thumbnails:
    """Thumbnails of the images in ``files``, cached under ``cache_dir``/thumbnails."""

    def __init__(self, database: Database, files: FileStore, cache_dir: str | os.PathLike):
        self.database = database
        self.files = files
        self.root = Path(cache_dir) / "thumbnails"

    def path(self, file_id: uuid.UUID) -> tuple[Path, str]:
        """The thumbnail of the file (made now if need be) and its file's md5.

        Raises NoThumbnail: 404 when there is no such file or its bytes are missing, or it
        is not an image; 422 when its bytes are not an image Pillow can read within the
        limits.
        """
        with self.database.read() as session:
            record = store.get_file_record(session, file_id)
        found = self.files.stat(file_id) if record is not None else None
        if found is None:
            raise NoThumbnail(404, "not_found", f"this server holds no file {file_id.hex}")
        if not record.mime_type.lower().startswith("image/"):
            raise NoThumbnail(404, "not_an_image", f"file {file_id.hex} is {record.mime_type}, "
                                                   "not an image: it has no thumbnail")
        md5 = record.md5 or "none"
        target = self.root / f"{file_id.hex}-{md5}.jpg"
        refused = target.with_suffix(".bad")
        if target.is_file():
            return target, md5
        if refused.is_file():
            raise _unreadable(file_id)
        with _making:
            if not target.is_file():  # another thread may have made it meanwhile
                try:
                    with self.files.open(file_id, found[0]) as source:
                        thumbnail = _shrink(source)
                except Exception as error:  # Pillow raises many kinds on bad data
                    log.info("no thumbnail for file %s: %s: %s", file_id.hex,
                             type(error).__name__, error)
                    self.root.mkdir(parents=True, exist_ok=True)
                    refused.touch()
                    raise _unreadable(file_id) from None
                _write_atomically(thumbnail, target)
        return target, md5


def _unreadable(file_id: uuid.UUID) -> NoThumbnail:
    return NoThumbnail(422, "unreadable_image",
                       f"file {file_id.hex} is not an image this server can read (corrupt, "
                       f"of an unknown format, or larger than {MAX_DECODED_PIXELS} pixels)")


def _shrink(source: BinaryIO) -> Image.Image:
    with Image.open(source) as image:
        # A JPEG decodes directly at 1/2, 1/4 or 1/8 scale: far less memory and time.
        image.draft("RGB", (SIZE, SIZE))
        width, height = image.size
        if width * height > MAX_DECODED_PIXELS:
            raise ValueError(f"{width}x{height} pixels is more than {MAX_DECODED_PIXELS}")
        image = ImageOps.exif_transpose(image)
        image.thumbnail((SIZE, SIZE))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGB", image.size, (0, 0, 0))
            background.paste(image, mask=image.getchannel("A"))
            return background
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            image = ImageOps.autocontrast(image.convert("I").point(lambda value: value / 256)
                                          .convert("L"))
        return image.convert("RGB")


def _write_atomically(image: Image.Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, "JPEG", quality=QUALITY, optimize=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
