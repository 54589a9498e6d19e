"""Which file store a configuration names: a local directory, or ``s3://BUCKET/PREFIX``."""
from __future__ import annotations

from typing import Union

from .files import FileStore
from .s3 import S3FileStore, is_s3_url

AnyFileStore = Union[FileStore, S3FileStore]


def open_file_store(config, check: bool = False) -> AnyFileStore:
    """The store of ``config.file_store``. ``check=True`` (at start-up) raises
    ``s3.S3Unavailable``, one line saying what to do, if a bucket cannot be used."""
    if is_s3_url(config.file_store):
        files = S3FileStore(config.file_store, config.s3_endpoint_url,
                            staging_dir=config.s3_staging_dir)
    else:
        files = FileStore(config.file_store)
    if check:
        files.check()
    return files
