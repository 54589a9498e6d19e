"""The per-app services, built once by create_app and kept in ``app.extensions``."""
from __future__ import annotations

import importlib
import logging
import uuid
from dataclasses import dataclass

from . import protocol
from .auth import Users, VerificationCache
from .config import Config, ConfigError
from .imports.activity import ImportActivity
from .imports.batch import BatchImporter
from .imports.handshake import EntityCache, Importer
from .imports.receivers import BaseImportReceiver, ReceiverContext
from .imports.resumable import CHECKSUM_ALGORITHMS, ResumableUploads
from .storage import store
from .storage.db import Database
from .storage.file_stores import AnyFileStore, open_file_store
from .storage.maintenance import PeriodicSweep
from .storage.node_activity import NodeActivityLog
from .throttle import AuthThrottle

log = logging.getLogger("meteorpi.server")

#: How often each worker writes its per-node import figures (GET /imports/nodes).
NODE_ACTIVITY_FLUSH_SECONDS = 1.0


def load_receiver_class(spec: str) -> type[BaseImportReceiver]:
    """Import ``module:Class`` and check that it is a BaseImportReceiver."""
    module_name, _, class_name = spec.partition(":")
    try:
        receiver_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"receiver {spec} cannot be loaded: {error}") from None
    if not (isinstance(receiver_class, type) and issubclass(receiver_class, BaseImportReceiver)):
        raise ConfigError(f"receiver {spec} is not a subclass of "
                          "meteorpi_server.receiver.BaseImportReceiver")
    return receiver_class


def _resumable_uploads(config: Config, database: Database, files, receiver, activity):
    """Uploads any host can continue when the file store is a bucket and the receiver
    stores through it (and md5 states can be carried between hosts); otherwise they grow
    on this host, in the store's ``.uploads/`` or the bucket's ``s3_staging_dir``."""
    from .storage import md5_state

    limits = (config.max_chunk_bytes, config.max_upload_bytes, activity)
    if files.kind == "s3" and hasattr(receiver, "receive_complete_pending"):
        if md5_state.available():
            from .imports.shared_uploads import SharedUploads

            return SharedUploads(database, files, receiver, *limits)
        log.warning("libcrypto has no MD5_Update: resumable uploads stay on the host that "
                    "takes them (give the balancer sticky sessions)")
    return ResumableUploads(files, receiver, *limits)


@dataclass
class Services:
    config: Config
    database: Database
    files: AnyFileStore
    users: Users
    receiver: BaseImportReceiver
    importer: Importer
    uploads: ResumableUploads
    sweep: PeriodicSweep
    batch: BatchImporter | None
    activity: ImportActivity

    _server_id: uuid.UUID | None = None

    @property
    def server_id(self) -> uuid.UUID:
        """This server's identity, read once (it never changes)."""
        if self._server_id is None:
            with self.database.read() as session:
                self._server_id = store.server_id(session)
        return self._server_id

    def capabilities(self) -> dict:
        """The discovery document served at GET /import."""
        return {
            "server": "meteorpi",
            "server_id": self.server_id.hex,
            "protocols": [protocol.PROTOCOL_LEGACY] + ([protocol.PROTOCOL_BATCH] if self.batch else []),
            "limits": {"max_json_bytes": self.config.max_json_bytes,
                       "max_upload_bytes": self.config.max_upload_bytes},
            **({"batch": {"version": 2, "max_entities": self.config.batch_max_entities,
                          "max_bundle_bytes": self.config.batch_max_bundle_bytes}}
               if self.batch else {}),
            "uploads": {"resumable": {
                "version": 1,
                "max_chunk_bytes": self.config.max_chunk_bytes,
                "max_file_bytes": self.config.max_upload_bytes,
                "checksums": sorted(CHECKSUM_ALGORITHMS),
            }},
        }

    @classmethod
    def build(cls, config: Config) -> Services:
        database = Database(config.database_url)
        files = open_file_store(config)
        users = Users(database, VerificationCache(config.auth_cache_size, config.auth_cache_seconds),
                      config.min_password_length,
                      AuthThrottle(config.auth_failures_per_address, config.auth_failures_per_user,
                                   config.auth_failure_window_seconds))
        receiver = load_receiver_class(config.receiver)(ReceiverContext(config, database, files))
        activity = ImportActivity(NodeActivityLog(database, flush_seconds=NODE_ACTIVITY_FLUSH_SECONDS))
        importer = Importer(receiver, EntityCache(config.import_cache_size), activity)
        uploads = _resumable_uploads(config, database, files, receiver, activity)
        sweep = PeriodicSweep(database, files, config,
                              on_swept=lambda swept: activity.uploads_expired(swept.partial_files))
        batch = None
        if config.batch_protocol and receiver.batch_protocol:
            batch = BatchImporter(receiver, uploads, config.batch_max_entities,
                                  config.max_upload_bytes, activity)
        elif config.batch_protocol:
            log.warning("receiver %s does not take batches (batch_protocol = False): "
                        "exporters will use the legacy protocol, one record at a time",
                        config.receiver)
        return cls(config, database, files, users, receiver, importer, uploads, sweep, batch,
                   activity)
