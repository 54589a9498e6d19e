"""Server configuration: one table of settings, read from YAML and the environment.

Every setting is declared once in :data:`SETTINGS` with its default and help text.
A configuration file may set any of them; ``METEORPI_<NAME>`` environment variables
override the file; no file at all gives the embedded default (SQLite and a file
store under ``./var``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import yaml

CONFIG_ENV = "METEORPI_CONFIG"
ENV_PREFIX = "METEORPI_"


class ConfigError(ValueError):
    """A configuration file or value is unusable; the message says which and why."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any]


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, str):
        value = value.strip()
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number") from None


def _port(value: Any) -> int:
    number = _int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return number


def _non_negative_int(value: Any) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError("must be a whole number, 0 or more")
    return number


def _positive_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a number of seconds greater than 0")
    return number


def _optional_path(value: Any) -> str:
    return "" if value is None else _str(value)


def _str(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("must be a string")
    return str(value)


def _non_empty_str(value: Any) -> str:
    text = _str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _file_store(value: Any) -> str:
    text = _non_empty_str(value)
    if text.startswith("s3:"):
        from .storage.s3 import parse_s3_url

        parse_s3_url(text)  # ValueError says what a bucket URL looks like
    return text


_URL_EXAMPLES = "such as sqlite:///var/meteorpi.db or postgresql+psycopg://user@host/dbname"


def _database_url(value: Any) -> str:
    """A URL SQLAlchemy can parse and has a dialect for; checked here so that a typo is
    a clear configuration error rather than a traceback from the first query."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    text = _str(value).strip()
    if not text:
        raise _Unechoed(f"is empty; give an SQLAlchemy database URL {_URL_EXAMPLES}")
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise _Unechoed(f"is not an SQLAlchemy database URL; give one {_URL_EXAMPLES}") from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise _Unechoed(f"names a kind of database SQLAlchemy does not know "
                        f"({url.drivername!r}); give a URL {_URL_EXAMPLES}") from None
    return text


class _Unechoed(ValueError):
    """A bad value whose text is not repeated in the message: it may hold a password."""


def _receiver(value: Any) -> str:
    text = _str(value)
    if text.count(":") != 1 or not all(text.split(":")):
        raise ValueError("must be 'module:ClassName', for example mypkg.receivers:MyReceiver")
    return text


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value)
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", "sqlite:///var/meteorpi.db",
            "SQLAlchemy URL of the database. SQLite for a single host, PostgreSQL "
            "(postgresql+psycopg://user@host/db) in production.", _database_url),
    Setting("file_store", "var/files",
            "Where file contents are kept, named by file id: a directory, or an S3-compatible "
            "bucket as s3://BUCKET/PREFIX (credentials from AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role).", _file_store),
    Setting("s3_endpoint_url", "",
            "URL of the S3 server when file_store is a bucket elsewhere than AWS (Ceph RGW, "
            "SeaweedFS, Garage, MinIO), e.g. http://127.0.0.1:8333; empty for AWS.", _str),
    Setting("s3_staging_dir", "var/uploads",
            "With a bucket file store: this host's directory for its lock files (on SQLite) "
            "and, where libcrypto cannot carry md5 states between hosts, for resumable "
            "uploads growing until they are whole.", _non_empty_str),
    Setting("s3_presigned_downloads_seconds", 0,
            "With a bucket file store: 0 streams downloads through the server; N answers "
            "GET /files/content with a redirect to a presigned URL valid N seconds (the "
            "bucket must then be reachable by clients).", _non_negative_int),
    Setting("receiver", "meteorpi_server.receiver:DatabaseImportReceiver",
            "Import receiver class, as module:Class. Subclass BaseImportReceiver.", _receiver),
    Setting("import_cache_size", 1024,
            "Entities kept per worker for the protocol's cached_entity requests.", _positive_int),
    Setting("max_json_bytes", 4 * 1024 * 1024,
            "Largest JSON request body accepted, in bytes.", _positive_int),
    Setting("max_upload_bytes", 8 * 1024 ** 3,
            "Largest file upload accepted, in bytes.", _positive_int),
    Setting("orphan_data_seconds", 24 * 3600,
            "How long uploaded bytes wait for their file record before they are removed.",
            _positive_int),
    Setting("max_chunk_bytes", 64 * 1024 ** 2,
            "Largest chunk of a resumable upload accepted in one request, in bytes.",
            _positive_int),
    Setting("upload_expiry_seconds", 24 * 3600,
            "Unfinished resumable uploads with no activity for this long are removed.",
            _positive_int),
    Setting("upload_read_timeout_seconds", 60.0,
            "An upload whose sender goes silent this long is ended, so a dead link does not "
            "hold the upload locked against the sender's resumption.", _positive_seconds),
    Setting("header_timeout_seconds", 10.0,
            "`meteorpi serve` answers 408 and closes a connection whose request head has not "
            "all arrived this long after it began (or after the connection opened).",
            _positive_seconds),
    Setting("body_read_timeout_seconds", 30.0,
            "`meteorpi serve` ends a request whose sender goes silent this long in the middle "
            "of its body (uploads use upload_read_timeout_seconds).", _positive_seconds),
    Setting("batch_protocol", True,
            "Offer batched replication (protocol v2) beside the legacy protocol.", _bool),
    Setting("batch_max_entities", 500,
            "Most entities (or statuses) one batch request may carry.", _positive_int),
    Setting("batch_max_bundle_bytes", 16 * 1024 ** 2,
            "Largest file bundle (many small files' bytes in one batch request), in bytes.",
            _positive_int),
    Setting("upload_attempts", 3,
            "Uploads of one file that may fail the md5 check before the import answers "
            "'failed' rather than asking for the bytes again.", _positive_int),
    Setting("upload_attempts_window_seconds", 3600,
            "Failed uploads older than this no longer count towards upload_attempts.",
            _positive_int),
    Setting("auth_cache_size", 1024,
            "Recent successful password checks remembered per worker (0 disables the cache).",
            _non_negative_int),
    Setting("auth_cache_seconds", 300,
            "How long a remembered password check stays valid.", _positive_int),
    Setting("auth_failures_per_address", 10,
            "Failed authentications (HTTP Basic or the status page's login) one client address "
            "(an IPv6 /64) may make per auth_failure_window_seconds in each worker; more are "
            "refused with 429 before any password is hashed (0: no limit).", _non_negative_int),
    Setting("auth_failures_per_user", 20,
            "Failed authentications for one user name (existing or not) per "
            "auth_failure_window_seconds in each worker; more are refused with 429 unless "
            "the credentials were verified recently or come from an address that user logged "
            "in from within a day (0: no limit).", _non_negative_int),
    Setting("auth_failure_window_seconds", 300,
            "The moving window in which failed authentications are counted.", _positive_int),
    Setting("trusted_proxies", 0,
            "Reverse proxies in front of the server that set X-Forwarded-For (1 behind the "
            "nginx site): the client address is then the one they report, else the "
            "connection's (a client's own X-Forwarded-For is ignored).", _non_negative_int),
    Setting("min_password_length", 12,
            "Shortest password `meteorpi users add` and `users passwd` accept (existing "
            "passwords keep working).", _positive_int),
    Setting("export_interval_seconds", 60.0,
            "How often `meteorpi export run` looks for new records to export.",
            _positive_seconds),
    Setting("export_max_failures", 4,
            "Failures in a row after which an export configuration is disabled, if the "
            "last needs a person (401, 403, a wrong URL, an untrusted certificate; failures "
            "that heal by themselves never disable it), and refusals after which one entity "
            "is given up on (0: never).", _non_negative_int),
    Setting("export_backoff_seconds", 1800.0,
            "Wait after a target's first failure; it doubles with each failure in a row.",
            _positive_seconds),
    Setting("export_backoff_max_seconds", 6 * 3600.0,
            "Longest wait between attempts on a failing target.", _positive_seconds),
    Setting("export_connect_timeout_seconds", 10.0,
            "How long the exporter waits to connect to a target.", _positive_seconds),
    Setting("export_timeout_seconds", 300.0,
            "How long the exporter waits for a target's reply (or any read) before giving up.",
            _positive_seconds),
    Setting("export_concurrency", 4,
            "Uploads (bundles of small files, or large files) the exporter sends at once to "
            "a target that speaks protocol v2.", _positive_int),
    Setting("export_chunk_bytes", 8 * 1024 ** 2,
            "Chunk size of the exporter's resumable uploads (the target's own limit, if "
            "smaller, wins); a cut connection costs at most one chunk.", _positive_int),
    Setting("export_upload_retry_seconds", 1.0,
            "Pause before the exporter retries an upload request that failed (a cut "
            "connection, a 5xx, no progress); it doubles with each failure in a row (1, 2, "
            "4, 8 s by default) until the upload is given up for this run.",
            _positive_seconds),
    Setting("export_ca_bundle", "",
            "CA certificates (a PEM file or directory) that export targets' TLS certificates "
            "are checked against; empty: the system's.", _optional_path),
    Setting("read_access", "user",
            "Who may read events, files, cameras and the change feed: 'user' (users with the "
            "user role) or 'public' (anyone, without credentials).", _choice("user", "public")),
    Setting("metrics_access", "public",
            "Who may scrape GET /metrics: 'public' (anyone who can reach it; keep the port "
            "private or let the proxy restrict it) or a role (user, import or camera_admin) "
            "whose users may, with HTTP Basic credentials.",
            _choice("public", "user", "import", "camera_admin")),
    Setting("min_free_bytes", 1024 ** 3,
            "Free space the file store's disk must keep: below it GET /health/ready fails "
            "(503), so a load balancer or monitor notices before the disk is full.",
            _non_negative_int),
    Setting("cache_dir", "var/cache",
            "Directory for things the server can make again, such as the status page's "
            "thumbnails.", _non_empty_str),
    Setting("camera_connected_seconds", 3600,
            "A camera counts as connected while a record about it arrived within this many "
            "seconds.", _positive_int),
    Setting("feed_max_wait_seconds", 60,
            "Longest wait a GET /changes long poll may ask for (longer timeouts are cut "
            "to this).", _positive_int),
    Setting("feed_heartbeat_seconds", 15,
            "Quiet seconds after which GET /changes/stream sends a heartbeat comment.",
            _positive_int),
    Setting("feed_stream_seconds", 900,
            "How long one GET /changes/stream connection lasts before the server ends it "
            "(clients reconnect with Last-Event-ID).", _positive_int),
    Setting("host", "127.0.0.1", "Address `meteorpi serve` listens on.", _str),
    Setting("port", 8000, "Port `meteorpi serve` listens on.", _port),
    Setting("workers", 2, "Worker processes for `meteorpi serve`.", _positive_int),
    Setting("threads", 4, "Threads per worker process (connections are kept alive).",
            _positive_int),
    Setting("log_level", "info", "Logging level: debug, info, warning or error.",
            _choice("debug", "info", "warning", "error")),
    Setting("log_format", "text",
            "How `meteorpi serve` writes its line per request (method, path, status, user, "
            "duration_ms) to standard output: 'text' (key=value pairs) or 'json' (one object "
            "per line).", _choice("text", "json")),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def default(name: str) -> Any:
    """The default of setting ``name``, parsed as a Config holds it, for code that needs
    one outside a Config (such as a class's default argument). KeyError if unknown."""
    setting = _BY_NAME[name]
    return setting.parse(setting.default)


@dataclass(frozen=True)
class Config:
    """Validated settings. Build one with :func:`load_config` or :meth:`Config.from_mapping`."""

    database_url: str
    file_store: str
    s3_endpoint_url: str
    s3_staging_dir: str
    s3_presigned_downloads_seconds: int
    receiver: str
    import_cache_size: int
    max_json_bytes: int
    max_upload_bytes: int
    orphan_data_seconds: int
    max_chunk_bytes: int
    upload_expiry_seconds: int
    upload_read_timeout_seconds: float
    header_timeout_seconds: float
    body_read_timeout_seconds: float
    batch_protocol: bool
    batch_max_entities: int
    batch_max_bundle_bytes: int
    upload_attempts: int
    upload_attempts_window_seconds: int
    auth_cache_size: int
    auth_cache_seconds: int
    auth_failures_per_address: int
    auth_failures_per_user: int
    auth_failure_window_seconds: int
    trusted_proxies: int
    min_password_length: int
    export_interval_seconds: float
    export_max_failures: int
    export_backoff_seconds: float
    export_backoff_max_seconds: float
    export_connect_timeout_seconds: float
    export_timeout_seconds: float
    export_concurrency: int
    export_chunk_bytes: int
    export_upload_retry_seconds: float
    export_ca_bundle: str
    read_access: str
    metrics_access: str
    min_free_bytes: int
    cache_dir: str
    camera_connected_seconds: int
    feed_max_wait_seconds: int
    feed_heartbeat_seconds: int
    feed_stream_seconds: int
    host: str
    port: int
    workers: int
    threads: int
    log_level: str
    log_format: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, source: str = "configuration",
                     sources: Mapping[str, str] | None = None) -> Config:
        """Defaults overlaid with ``values``; unknown names and bad values raise ConfigError.

        A bad value's message starts with ``sources[name]`` (where that value came from,
        such as an environment variable), else ``source``.
        """
        values = dict(values or {})
        unknown = sorted(set(values) - set(_BY_NAME))
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"known settings are {', '.join(_BY_NAME)}")
        parsed = {}
        for setting in SETTINGS:
            raw = values.get(setting.name, setting.default)
            try:
                parsed[setting.name] = setting.parse(raw)
            except ValueError as error:
                origin = (sources or {}).get(setting.name, source)
                got = "" if isinstance(error, _Unechoed) else f" (got {_short_repr(raw)})"
                raise ConfigError(f"{origin}: {setting.name} {error}{got}") from None
        return cls(**parsed)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated like the rest)."""
        return Config.from_mapping({**dataclasses.asdict(self), **changes})


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def load_config(path: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read settings from ``path`` (or ``$METEORPI_CONFIG``), then apply environment overrides.

    With neither a file nor overrides, this is the embedded default.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as stream:
                loaded = yaml.safe_load(stream)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of setting names to values")
        values.update(loaded or {})
    for setting in SETTINGS:
        env_name = ENV_PREFIX + setting.name.upper()
        if env_name in environ:
            values[setting.name] = environ[env_name]
            sources[setting.name] = f"environment variable {env_name}"
    return Config.from_mapping(values, source=source, sources=sources)
