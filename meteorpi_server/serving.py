"""Running the app under gunicorn, each worker building its own app (and engine).

The listening socket is bound here, before gunicorn starts, and handed to it as
``fd://N``: a port in use or an address this machine lacks is then one clear error,
where gunicorn would log five raw attempts a second apart and exit.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import Callable

from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS

from .config import Config

KNOWN_SETTING_NAMES = {setting.name for setting in KNOWN_SETTINGS}


class GunicornServer(BaseApplication):
    def __init__(self, config: Config, options: dict):
        self.meteorpi_config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self):
        from . import create_app

        _log_requests_to_stdout()
        return create_app(self.meteorpi_config)


def _log_requests_to_stdout() -> None:
    """Request lines go to standard output, unprefixed, whatever ``log_level`` says (it
    governs the other logs, on standard error): they are the server's access log."""
    import logging
    import sys

    from .api.request_log import LOGGER_NAME

    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class ListenError(OSError):
    """The server cannot listen where it was asked to; the message says why and what to do."""


def _why(error: OSError, host: str, port: int) -> str:
    if isinstance(error, socket.gaierror):
        return f"{host!r} is not an address or a host name this machine can resolve"
    if error.errno == errno.EADDRINUSE:
        return (f"port {port} is in use by another program (`ss -ltnp` shows which); "
                "stop it, or choose another port with --port or the port setting")
    if error.errno == errno.EACCES:
        return ("permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                "use a higher port (behind a proxy such as nginx)")
    if error.errno == errno.EADDRNOTAVAIL:
        return (f"no network interface of this machine has the address {host}; use one of "
                "its addresses with --host or the host setting (0.0.0.0 for all of them)")
    return error.strerror or str(error)


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket listening on ``host``:``port``, or ListenError in one line."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise ListenError(f"cannot listen on {where}: {_why(error, host, port)}") from None
    try:
        # As gunicorn does: a restart need not wait out the old connections' TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(backlog)
    except OSError as error:
        listener.close()
        raise ListenError(f"cannot listen on {where}: {_why(error, host, port)}") from None
    return listener


def gunicorn_options(config: Config, listener: socket.socket | None = None,
                     when_ready: Callable[[], None] | None = None) -> dict:
    """gunicorn's settings for ``config``. With ``listener``, gunicorn takes that socket
    over (and closes it when it stops) rather than binding its own; ``when_ready`` is
    called once the server listens."""
    options = {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        # gthread keeps connections alive between an exporter's requests (sync closes them);
        # ours reads request heads in its event loop, so slow clients hold no thread.
        "worker_class": "meteorpi_server.worker.Worker",
        "threads": config.threads,
        # Our own line per request replaces gunicorn's access log (api/request_log.py).
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.log_level,
        "graceful_timeout": 30,
        "keepalive": 5,
    }
    # gunicorn 27+ opens a control socket at one fixed path per user, which two servers on
    # one machine (a demo, the tests) would fight over; we have no use for it.
    if "control_socket_disable" in KNOWN_SETTING_NAMES:
        options["control_socket_disable"] = True
    if listener is not None:
        options["bind"] = f"fd://{listener.detach()}"
    if when_ready is not None:
        options["when_ready"] = lambda _arbiter: when_ready()
    return options


def run_gunicorn(config: Config, listener: socket.socket | None = None,
                 when_ready: Callable[[], None] | None = None) -> None:
    """Serve until stopped (SIGTERM, Ctrl-C), on ``listener`` if given (see :func:`listen`).

    The workers count their metrics in one directory (:mod:`.observe.multiprocess`), made
    empty before they start and removed when the server stops.
    """
    from .observe import multiprocess

    metrics_directory, made = multiprocess.enable()
    options = gunicorn_options(config, listener, when_ready)
    options["child_exit"] = lambda _arbiter, worker: multiprocess.worker_exited(worker.pid)
    arbiter = os.getpid()
    try:
        GunicornServer(config, options).run()
    finally:
        # A worker leaves gunicorn's run() by SystemExit too, through this very frame (it
        # was forked inside it): only the arbiter may clear the directory.
        if os.getpid() == arbiter:
            multiprocess.disable(metrics_directory, made)
