"""The ``meteorpi`` command: database, users, file store and the server."""
from __future__ import annotations

import logging
import secrets
import sys
from typing import TYPE_CHECKING

import click

from meteorpi_model import ROLES

from .config import Config, ConfigError, load_config
from .storage.db import Database, NoDatabase, SchemaError
from .storage.file_stores import open_file_store
from .storage.files import FileStoreError

if TYPE_CHECKING:
    from .auth import Users

FIRST_USER = "admin"


class Context:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def database(self, check_schema: bool = True, create: bool | None = None) -> Database:
        """The configured database. Only commands that build the schema themselves
        (``check_schema=False``: db upgrade, restore) may create an SQLite file; any other
        finding none fails, so that running from the wrong directory makes no second,
        empty database."""
        if create is None:
            create = not check_schema
        try:
            database = Database(self.config.database_url, create=create)
        except NoDatabase as error:
            raise ConfigError(f"no database at {error.path} (database_url from "
                              f"{self._settings_source()}). Point at yours with --config FILE "
                              "or METEORPI_CONFIG; to create a new one there, run "
                              "'meteorpi db upgrade' (with the same --config)") from None
        except ImportError as error:  # the URL's driver (DBAPI module) is not installed
            raise ConfigError(f"database_url needs a driver that is not installed "
                              f"({error.name or error}); install it, or for PostgreSQL "
                              "use postgresql+psycopg:// (pip install 'meteorpi[postgres]')"
                              ) from None
        except OSError as error:  # SQLite: the database file's folder cannot be made
            raise ConfigError(f"database_url: cannot create the folder for "
                              f"{error.filename}: {error.strerror}") from None
        if check_schema:
            database.check_schema()
        return database

    def files(self, local_only: str | None = None):
        """The configured file store, checked: a bucket that cannot be used is one line
        saying why (``s3.S3Unavailable``). ``local_only`` names a command that works only
        on a local directory, and makes a bucket an error saying so."""
        files = open_file_store(self.config, check=True)
        if local_only and files.kind != "local":
            raise click.ClickException(
                f"{local_only} works on a local file store, and file_store is the bucket "
                f"{files.describe()}: keep a bucket's files safe with the bucket's own "
                "versioning or replication")
        return files

    def _settings_source(self) -> str:
        import os

        if "METEORPI_DATABASE_URL" in os.environ:
            return "METEORPI_DATABASE_URL"
        if self.config_path:
            return self.config_path
        return "the embedded default: neither --config nor METEORPI_CONFIG was given"

    def users(self) -> Users:
        from .auth import Users, VerificationCache

        return Users(self.database(), VerificationCache(0, 0), self.config.min_password_length)


pass_context = click.make_pass_decorator(Context)


def _read_password(password_stdin: bool, confirm: bool = True) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to ask for a password: pipe it in with --password-stdin")
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


class _Group(click.Group):
    """Turns the project's own errors into one clear line and exit status 1."""

    def invoke(self, ctx):
        from sqlalchemy.exc import InterfaceError, OperationalError

        try:
            return super().invoke(ctx)
        except (ConfigError, SchemaError, FileStoreError) as error:
            raise click.ClickException(str(error)) from None
        except ValueError as error:
            # auth is imported only by the commands that manage users (so that others
            # start without its libraries): if it is not loaded, this is no UserError.
            auth = sys.modules.get("meteorpi_server.auth")
            if auth is not None and isinstance(error, auth.UserError):
                raise click.ClickException(str(error)) from None
            raise
        except (OperationalError, InterfaceError) as error:
            raise click.ClickException(_unreachable(ctx.find_object(Context), error)) from None


def _unreachable(context: Context | None, error: Exception) -> str:
    """One line: which database failed (never its password), why, and what to check."""
    from sqlalchemy.engine import make_url

    url = None
    if context is not None and context._config is not None:
        url = make_url(context.config.database_url)
    where = f"the database {url.render_as_string(hide_password=True)}" if url else "the database"
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    reason = reason[0][:300] if reason else type(error).__name__
    if getattr(error, "statement", None):  # connected, then a statement failed
        return f"{where} failed: {reason}"
    if url is not None and url.get_backend_name() == "sqlite":
        check = "that its file's folder exists and is writable"
    elif "does not exist" in reason:  # PostgreSQL: a database that was never created
        return (f"could not reach {where}: {reason}. Point at yours with --config FILE or "
                "METEORPI_CONFIG (or METEORPI_DATABASE_URL); to start a new one, create it "
                "(createdb) and run 'meteorpi db upgrade'.")
    else:
        check = "that the database server is running and reachable from here, the user and password"
    return (f"could not reach {where}: {reason}. Check {check}, and the database_url "
            "setting (--config FILE, METEORPI_CONFIG or METEORPI_DATABASE_URL).")


@click.group(cls=_Group)
@click.option("--config", "config_path", metavar="FILE", envvar="METEORPI_CONFIG",
              help="YAML configuration file (default: $METEORPI_CONFIG, else the embedded "
                   "default: SQLite and files under ./var).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Meteor Pi replication server."""
    ctx.obj = Context(config_path)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_context
def db_upgrade(context: Context) -> None:
    """Create the schema, or bring it up to date."""
    database = context.database(check_schema=False)
    before = database.current_revision()
    database.upgrade()
    after = database.current_revision()
    click.echo(f"database at revision {after}" + ("" if before == after else f" (was {before})"))


@main.group()
def users() -> None:
    """User accounts and their roles."""


_role_option = click.option("--role", "roles", multiple=True, type=click.Choice(ROLES),
                            help="A role to grant; repeat for several.")
_no_roles_option = click.option("--no-roles", is_flag=True,
                                help="Grant no role at all (instead of --role).")


def _chosen_roles(roles: tuple[str, ...], no_roles: bool) -> tuple[str, ...]:
    """The roles asked for; a user without roles can do nothing, so that must be said
    with --no-roles rather than follow from a forgotten --role."""
    if roles and no_roles:
        raise click.UsageError("--no-roles and --role exclude each other")
    if not roles and not no_roles:
        raise click.UsageError(f"give the user's roles with --role (one of {', '.join(ROLES)}; "
                               "repeat for several), or --no-roles for none")
    return roles


@users.command("add")
@click.argument("name")
@_role_option
@_no_roles_option
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def users_add(context: Context, name: str, roles: tuple[str, ...], no_roles: bool,
              password_stdin: bool) -> None:
    """Add a user with the roles given (--role, or --no-roles)."""
    roles = _chosen_roles(roles, no_roles)
    user_directory = context.users()
    user = user_directory.add(name, _read_password(password_stdin), roles)
    click.echo(f"added user {user.name} with roles: {', '.join(sorted(user.roles)) or 'none'}")


@users.command("list")
@pass_context
def users_list(context: Context) -> None:
    """List users and their roles."""
    for user in context.users().list():
        click.echo(f"{user.name}\t{','.join(sorted(user.roles))}")


@users.command("remove")
@click.argument("name")
@pass_context
def users_remove(context: Context, name: str) -> None:
    """Remove a user."""
    context.users().remove(name)
    click.echo(f"removed user {name}")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def users_passwd(context: Context, name: str, password_stdin: bool) -> None:
    """Change a user's password."""
    context.users().set_password(name, _read_password(password_stdin))
    click.echo(f"changed the password of {name}")


@users.command("roles")
@click.argument("name")
@_role_option
@_no_roles_option
@pass_context
def users_roles(context: Context, name: str, roles: tuple[str, ...], no_roles: bool) -> None:
    """Replace a user's roles with those given (--role, or --no-roles to remove them all)."""
    roles = _chosen_roles(roles, no_roles)
    context.users().set_roles(name, roles)
    click.echo(f"{name} now has roles: {', '.join(sorted(roles)) or 'none'}")


# For cron, which mails whatever a job prints: nothing when all is well.
_quiet_option = click.option(
    "--quiet", "-q", is_flag=True,
    help="Print nothing when all is well (for cron); warnings and errors still go to "
         "standard error, and the exit status says whether it worked.")


@main.group()
def files() -> None:
    """The file store."""


@files.command("gc")
@_quiet_option
@pass_context
def files_gc(context: Context, quiet: bool) -> None:
    """Remove file data that waited too long for its record, and leftovers of crashes."""
    from .storage.maintenance import sweep_orphan_data

    config = context.config
    result = sweep_orphan_data(context.database(), context.files(),
                               config.orphan_data_seconds, config.upload_expiry_seconds,
                               scan_disk=True)
    if not quiet:
        click.echo(f"removed {result.orphaned_files} orphaned, {result.unindexed_files} unindexed "
                   f"and {result.partial_files} partial files")


@files.command("migrate")
@click.option("--to", "target_url", required=True, metavar="s3://BUCKET/PREFIX",
              help="The bucket (and prefix) to copy the files into; s3_endpoint_url applies.")
@click.option("--from", "source_dir", metavar="DIR",
              help="The directory file store to copy from (default: file_store), for the "
                   "run after file_store was switched to the bucket.")
@click.option("--jobs", "-j", type=click.IntRange(1, 12), default=4, show_default=True,
              help="Files uploaded at a time.")
@_quiet_option
@pass_context
def files_migrate(context: Context, target_url: str, source_dir: str | None, jobs: int,
                  quiet: bool) -> None:
    """Copy a directory file store into a bucket while the server runs, verifying every
    file's md5; run it again to copy only what is missing. Exit status 1 if a file could
    not be copied."""
    from .storage.backup import Progress
    from .storage.migrate import migrate, open_source
    from .storage.s3 import S3FileStore, is_s3_url, parse_s3_url

    config = context.config
    try:
        parse_s3_url(target_url)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--to") from None
    if source_dir is None:
        if is_s3_url(config.file_store):
            raise click.ClickException(
                f"file_store is already the bucket {config.file_store}: give the directory "
                "the server used before with --from DIR")
        source_dir = config.file_store
    source = open_source(source_dir)
    target = S3FileStore(target_url, config.s3_endpoint_url, staging_dir=config.s3_staging_dir)
    target.check()
    result = migrate(context.database(), source, target, jobs,
                     Progress() if quiet else _backup_progress())
    if not quiet or result.failed or result.interrupted:
        click.echo(result.summary(), err=quiet)
    for problem in result.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if result.interrupted:
        sys.exit(130)
    if result.failed:
        sys.exit(1)


def ensure_first_user(user_directory: Users) -> str | None:
    """On a server with no users, create ``admin`` with every role; return its password."""
    from .auth import UserError

    if user_directory.count():
        return None
    password = secrets.token_urlsafe(18)
    try:
        user_directory.add(FIRST_USER, password, ROLES)
    except UserError:  # another server process created it first
        return None
    return password


@main.command()
@click.option("--host", help="Address to listen on (setting: host).")
@click.option("--port", type=int, help="Port to listen on (setting: port).")
@click.option("--workers", type=int, help="Worker processes (setting: workers).")
@pass_context
def serve(context: Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the HTTP API with gunicorn.

    It says "serving on" once it listens; if it cannot (port in use, no such address,
    permission denied), it says why in one line and exits with status 1.
    """
    from .auth import Users, VerificationCache
    from .serving import ListenError, listen, run_gunicorn

    if port is not None and not 1 <= port <= 65535:
        raise click.ClickException(f"--port {port} is not a TCP port: give one from 1 to 65535")
    changes = {name: value for name, value in
               (("host", host), ("port", port), ("workers", workers)) if value is not None}
    config = context.config.replace(**changes)
    database = context.database()
    context.files()  # a bucket that cannot be used stops the start, in one line
    # Bound before the first user is made, so a server that cannot start shows no password.
    try:
        listener = listen(config.host, config.port)
    except ListenError as error:
        database.dispose()
        raise click.ClickException(str(error)) from None
    password = ensure_first_user(Users(database, VerificationCache(0, 0)))
    database.dispose()
    url = f"http://{config.host}:{config.port}"
    if password:
        click.secho("\n" + "=" * 72, fg="yellow")
        click.secho(f" First start: created user '{FIRST_USER}' with roles "
                    f"{', '.join(ROLES)}.", fg="yellow", bold=True)
        click.secho(f" Password: {password}", fg="yellow", bold=True)
        click.echo(" It is shown only this once. Log in with HTTP Basic, for example:")
        click.echo(f"   curl -u {FIRST_USER}:{password} {url}/cameras")
        click.echo(f" Change it with: meteorpi users passwd {FIRST_USER}")
        click.secho("=" * 72 + "\n", fg="yellow")
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_gunicorn(config, listener, when_ready=lambda: click.echo(
        f"serving on {url} with {config.workers} worker(s); Ctrl-C stops"))


# Exporting -------------------------------------------------------------------------------

class _TimeParam(click.ParamType):
    """A time as ms since the epoch, or ISO 8601 (2026-11-20, 2026-11-20T22:00:00Z; UTC if
    no zone is given)."""

    name = "TIME"

    def convert(self, value, param, ctx):
        import datetime

        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        try:
            moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither ms since 1970 nor an ISO 8601 time such as "
                      "2026-11-20T22:00:00Z", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return int(moment.timestamp() * 1000)


def _export_errors():
    """Turn the exporter's own errors into one clear line and exit status 1."""
    import contextlib

    from meteorpi_model import ValidationError

    from .exporter.configs import ExportConfigError
    from .node.recording import RecordingError

    @contextlib.contextmanager
    def converting():
        try:
            yield
        except (ExportConfigError, ValidationError, RecordingError) as error:
            raise click.ClickException(str(error)) from None

    return converting()


@main.group()
def export() -> None:
    """Export configurations, and the exporter that sends records to other servers."""


_SEARCH_OPTIONS = [
    click.option("--camera", "camera_ids", multiple=True, metavar="ID",
                 help="Only this camera; repeat for several."),
    click.option("--after", type=_TimeParam(), help="Only records made after this time."),
    click.option("--before", type=_TimeParam(), help="Only records made before this time."),
    click.option("--after-offset", type=float, metavar="SECONDS",
                 help="Only records made later in the night than this (seconds since midday UTC)."),
    click.option("--before-offset", type=float, metavar="SECONDS",
                 help="Only records made earlier in the night than this (seconds since midday UTC)."),
    click.option("--lat-min", type=float), click.option("--lat-max", type=float),
    click.option("--long-min", type=float), click.option("--long-max", type=float),
    click.option("--event-type", metavar="NS:TYPE", help="Only events of this type (--events)."),
    click.option("--mime-type", help="Only files of this MIME type (--files)."),
    click.option("--semantic-type", metavar="NS:TYPE",
                 help="Only files of this semantic type (--files)."),
    click.option("--search", "search_json", metavar="JSON",
                 help="A whole search as JSON (as GET /events/<json> takes it); the options above override "
                      "its fields."),
]


def _search_options(command):
    for option in reversed(_SEARCH_OPTIONS):
        command = option(command)
    return command


def _build_search(events: bool, search_json: str | None, options: dict,
                  base: dict | None = None, kind: str | None = None):
    """The search the options describe: ``--search``'s JSON (else ``base``, a stored
    search's document) with the other options' fields over it. ``kind`` names what made
    it an event or a file search, for the message when an option belongs to the other."""
    import json

    from meteorpi_model import EventSearch, FileSearch

    kind = kind or ("--events" if events else "--files")
    for name in (["mime_type", "semantic_type"] if events else ["event_type"]):
        if options.get(name) is not None:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} selects {'files' if events else 'events'}; "
                                   f"it cannot be used with {kind}")
    document = dict(base or {})
    if search_json:
        try:
            document = json.loads(search_json)
        except ValueError as error:
            raise click.UsageError(f"--search is not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise click.UsageError("--search must be a JSON object")
    for name, value in options.items():
        if value not in (None, ()):
            document[name] = list(value) if name == "camera_ids" else value
    search_class = EventSearch if events else FileSearch
    return search_class.from_dict(document, "search")


# Shared by export add (where target and user are required) and export edit.
def _target_option(required: bool):
    return click.option("--target", "target_url", required=required, metavar="URL",
                        help="The target's import endpoint, such as "
                             "https://central.example.org/import.")


def _user_option(required: bool):
    return click.option("--user", "user_id", required=required,
                        help="The user (with the import role) on the target.")


def _note_import_url(target_url: str) -> None:
    if not target_url.rstrip("/").endswith("/import"):
        click.echo("note: a Meteor Pi server's import endpoint ends in /import; check the URL",
                   err=True)


@export.command("add")
@click.argument("name")
@_target_option(required=True)
@_user_option(required=True)
@click.option("--password-stdin", is_flag=True,
              help="Read that user's password from standard input (else it is asked for).")
@click.option("--events", "events", is_flag=True,
              help="Export events (with their files); or --files.")
@click.option("--files", "files", is_flag=True,
              help="Export stand-alone files (those of no event); or --events.")
@click.option("--description", default="", help="What this export is for.")
@click.option("--disabled", is_flag=True, help="Add it disabled (enable it later).")
@_search_options
@pass_context
def export_add(context: Context, name: str, target_url: str, user_id: str, password_stdin: bool,
               events: bool, files: bool, description: str, disabled: bool,
               search_json: str | None, **search_options) -> None:
    """Add an export configuration NAME: send every matching record to a target."""
    import uuid

    from meteorpi_model import ExportConfiguration

    from .exporter import configs

    # Two flags rather than click's --events/--files, where the last one would silently win.
    if events and files:
        raise click.UsageError("--events and --files exclude each other: one configuration "
                               "exports events or stand-alone files; add one of each")
    if not events and not files:
        raise click.UsageError("say what to export: --events or --files")
    with _export_errors():
        search = _build_search(events, search_json, search_options)
        configs.check_name(name)
        configuration = ExportConfiguration(
            config_id=uuid.uuid4(), name=name, target_url=target_url, user_id=user_id,
            password=_read_password(password_stdin), search=search, enabled=not disabled,
            description=description)
        with context.database().write() as session:
            configs.add(session, configuration)
    what = "events" if events else "stand-alone files"
    click.echo(f"added export {name}: {what} to {target_url} as {user_id} "
               f"({'disabled' if disabled else 'enabled'})")
    _note_import_url(target_url)


@export.command("edit")
@click.argument("name")
@_target_option(required=False)
@_user_option(required=False)
@click.option("--password-stdin", is_flag=True,
              help="Read a new password for the target's user from standard input.")
@_search_options
@pass_context
def export_edit(context: Context, name: str, target_url: str | None, user_id: str | None,
                password_stdin: bool, search_json: str | None, **search_options) -> None:
    """Change export configuration NAME in place: its target, user, password or search.

    Search options change only the fields they name (--search replaces the whole search
    first). Tasks of records the new search no longer matches are dropped; new matches
    are marked on the next run. A changed target or credentials are tried at once.
    """
    from .exporter import configs, marking

    changes = {field: value for field, value in
               (("target_url", target_url), ("user_id", user_id)) if value is not None}
    search_given = search_json is not None or any(
        value not in (None, ()) for value in search_options.values())
    if not changes and not password_stdin and not search_given:
        raise click.UsageError("say what to change: --target, --user, --password-stdin or "
                               "search options (see --help)")
    if password_stdin:
        changes["password"] = _read_password(password_stdin)
    with _export_errors(), context.database().write() as session:  # one transaction
        row = configs.get_row(session, name, for_update=True)
        search = None
        if search_given:
            events = row.export_type == "event"
            kind = f"export {name}, which exports {'events' if events else 'stand-alone files'}"
            search = _build_search(events, search_json, search_options, base=row.search,
                                   kind=kind)
        configs.update(session, name, changes, search=search)
        if search is not None:
            marking.unmark(session, row)
    changed = [label for label, given in (("target", target_url is not None),
                                          ("user", user_id is not None),
                                          ("password", password_stdin), ("search", search_given))
               if given]
    click.echo(f"changed export {name}: {', '.join(changed)}")
    if target_url is not None:
        _note_import_url(target_url)


@export.command("list")
@pass_context
def export_list(context: Context) -> None:
    """List export configurations: name, state, what, target and search."""
    from .exporter import report

    with context.database().read() as session:
        click.echo(report.format_list(report.gather(session)))


@export.command("show")
@click.argument("name")
@pass_context
def export_show(context: Context, name: str) -> None:
    """Show one export configuration (never its password)."""
    from .exporter import report

    with _export_errors(), context.database().read() as session:
        click.echo(report.format_show(report.gather(session, name)[0]))


@export.command("enable")
@click.argument("name")
@pass_context
def export_enable(context: Context, name: str) -> None:
    """Enable an export configuration; its failures are forgotten and it is tried at once."""
    from .exporter import configs

    with _export_errors(), context.database().write() as session:
        configs.enable(session, name)
    click.echo(f"enabled export {name}")


@export.command("disable")
@click.argument("name")
@pass_context
def export_disable(context: Context, name: str) -> None:
    """Disable an export configuration; its tasks wait until it is enabled again."""
    from .exporter import configs

    with _export_errors(), context.database().write() as session:
        configs.disable(session, name)
    click.echo(f"disabled export {name}")


@export.command("remove")
@click.argument("name")
@pass_context
def export_remove(context: Context, name: str) -> None:
    """Remove an export configuration and its tasks (records stay)."""
    from .exporter import configs

    with _export_errors(), context.database().write() as session:
        configs.remove(session, name)
    click.echo(f"removed export {name}")


@export.command("retry")
@click.argument("name")
@pass_context
def export_retry(context: Context, name: str) -> None:
    """Send again the entities the target refused too often, and stop waiting out failures."""
    from .exporter import configs, tasks

    with _export_errors(), context.database().write() as session:
        row = configs.get_row(session, name, for_update=True)
        count = tasks.retry_failed(session, row.config_id)
        row.next_attempt_at = 0
    click.echo(f"export {name}: {count} failed task(s) back in the queue")


@export.command("status")
@pass_context
def export_status(context: Context) -> None:
    """Each configuration's backlog, last success, last error and state."""
    from .exporter import report

    with context.database().read() as session:
        click.echo(report.format_status(report.gather(session)))


@export.command("run")
@click.option("--once", is_flag=True,
              help="Send everything due, print a summary and exit (status 1 if anything failed, "
                   "or a configuration is backing off after failures or was disabled by them).")
@_quiet_option
@pass_context
def export_run(context: Context, once: bool, quiet: bool) -> None:
    """Send records to every enabled configuration's target.

    Without --once it keeps running, marking and sending every export_interval_seconds,
    until SIGTERM or Ctrl-C (it finishes the entities in flight first; a second signal
    stops at once, and the next run resumes where this one stopped).
    """
    import contextlib
    import signal
    import threading

    from .exporter import report
    from .exporter.progress import BarReporter, Reporter, reporter_for
    from .exporter.runner import Exporter, ExporterSettings
    from .exporter.target_errors import quiet_connection_retries

    config = context.config
    settings = ExporterSettings.from_config(config)
    database = context.database()
    level = logging.getLevelName(config.log_level.upper())
    if quiet:  # progress lines are INFO; a target's failures are warnings and still show
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_connection_retries()
    reporter = Reporter() if quiet else reporter_for(sys.stderr)
    exporter = Exporter(database, context.files(), settings, reporter)
    stop = threading.Event()

    def request_stop(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        logging.getLogger("meteorpi.exporter").info(
            "stopping after the entities in flight (signal %d; send another to stop at once)", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    redirect = contextlib.nullcontext()
    if isinstance(reporter, BarReporter):
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    try:
        with redirect:
            summary = exporter.run_once(stop) if once else exporter.run_forever(stop)
    finally:
        reporter.close()
    with database.read() as session:
        statuses = report.gather(session)
    # Waiting out failures, or disabled by them, is something cron should mail about too.
    trouble = bool(summary.failures or report.attention(statuses))
    if not quiet:
        click.echo(report.format_summary(summary, statuses))
    elif trouble:
        click.echo(report.format_summary(summary, statuses), err=True)
    if once and trouble:
        sys.exit(1)


def _camera_night_progress(total: int):
    """A bar on a terminal; in a log or a pipe, a line every tenth of the way instead of
    a bar's redraws."""
    import contextlib

    @contextlib.contextmanager
    def progress():
        if sys.stderr.isatty():
            with click.progressbar(length=total, label="camera nights", file=sys.stderr) as bar:
                yield lambda _result: bar.update(1)
            return
        done = 0
        step = max(1, total // 10)

        def report(so_far) -> None:
            nonlocal done
            done += 1
            if done % step == 0 or done == total:
                click.echo(f"{done}/{total} camera nights: {so_far.events} events, "
                           f"{so_far.standalone_files} stand-alone files", err=True)

        yield report

    return progress()


@main.command("demo-data")
@click.option("--cameras", type=click.IntRange(1), default=2, show_default=True)
@click.option("--nights", type=click.IntRange(1), default=1, show_default=True,
              help="Nights of data, ending last night.")
@click.option("--events-per-night", type=click.IntRange(0), default=10, show_default=True,
              help="Events per camera and night.")
@click.option("--files-per-event", type=click.IntRange(0, 256), default=2, show_default=True)
@click.option("--standalone-files", type=click.IntRange(0), default=2, show_default=True,
              help="Stand-alone files (time-lapse frames) per camera and night.")
@click.option("--file-size", default="64KiB", show_default=True, metavar="SIZE",
              help="Bytes per file: 2048, 64KiB, 1.5MiB, 1GiB.")
@click.option("--first-night", type=click.DateTime(["%Y-%m-%d"]),
              help="Date of the first night (default: NIGHTS nights ago).")
@pass_context
def demo_data(context: Context, cameras: int, nights: int, events_per_night: int,
              files_per_event: int, standalone_files: int, file_size: str,
              first_night) -> None:
    """Record synthetic camera data, as a camera node would, for demos and benchmarks."""
    from .exporter.progress import format_bytes
    from .node.demo import DemoPlan, generate, parse_size
    from .node.recording import Recorder

    try:
        size = parse_size(file_size)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--file-size") from None
    plan = DemoPlan(cameras=cameras, nights=nights, events_per_night=events_per_night,
                    files_per_event=files_per_event, standalone_files=standalone_files,
                    file_size=size, first_night=first_night.date() if first_night else None)
    recorder = Recorder(context.database(), context.files())
    with _export_errors(), _camera_night_progress(cameras * nights) as on_progress:
        result = generate(recorder, plan, on_progress=on_progress)
    click.echo(f"recorded {result.statuses} statuses, {result.events} events with "
               f"{result.event_files} files, {result.standalone_files} stand-alone files "
               f"({format_bytes(result.bytes)}) in {result.seconds:.1f} s")


# Backups -----------------------------------------------------------------------------------

def _backup_errors():
    """Turn a backup's or restore's own errors into one clear line and exit status 1."""
    import contextlib

    from .storage.backup import BackupError

    @contextlib.contextmanager
    def translate():
        try:
            yield
        except BackupError as error:
            raise click.ClickException(str(error)) from None

    return translate()


def _backup_progress():
    """A bar on a terminal; log lines (to standard error) otherwise."""
    from .storage.backup import progress_for

    if not sys.stderr.isatty():
        # Its own lines only (not every library's INFO lines, as basicConfig would).
        log = logging.getLogger("meteorpi.backup")
        if not log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.INFO)
    return progress_for(sys.stderr)


@main.command("backup")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--copy", "always_copy", is_flag=True,
              help="Copy file bytes even where hard links would do (DIRECTORY on the file "
                   "store's file system).")
@pass_context
def backup_command(context: Context, directory: str, always_copy: bool) -> None:
    """Back up the database and the file store into DIRECTORY (new or empty), while the
    server runs. Exit status 1 if bytes a record relies on are missing or damaged."""
    from .storage.backup import backup

    with _backup_errors():
        result = backup(context.database(), context.files(local_only="meteorpi backup"), directory,
                        _backup_progress(), link=not always_copy)
    click.echo(result.summary())
    for problem in result.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if result.problems:
        sys.exit(1)


@main.command("restore")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@pass_context
def restore_command(context: Context, directory: str) -> None:
    """Restore the backup in DIRECTORY into the configured database and file store, which
    must both be empty (for PostgreSQL, a new database). Every file's md5 is verified."""
    from .storage.backup import restore

    with _backup_errors():
        result = restore(context.database(check_schema=False),
                         context.files(local_only="meteorpi restore"), directory, _backup_progress())
    click.echo(result.summary())
    for problem in result.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if result.problems:
        sys.exit(1)
