"""Running the app under gunicorn, each worker building its own app (and engine)."""
from __future__ import annotations

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

        return create_app(self.meteorpi_config)


def gunicorn_options(config: Config) -> dict:
    options = {
        "bind": f"{config.host}:{config.port}",
        "workers": config.workers,
        # gthread keeps connections alive between an exporter's requests; sync closes them.
        "worker_class": "gthread",
        "threads": config.threads,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": config.log_level,
        "graceful_timeout": 30,
        "keepalive": 5,
    }
    # gunicorn 27+ opens a control socket at one fixed path per user, which two servers on
    # one machine (a demo, the tests) would fight over; we have no use for it.
    if "control_socket_disable" in KNOWN_SETTING_NAMES:
        options["control_socket_disable"] = True
    return options


def run_gunicorn(config: Config) -> None:
    GunicornServer(config, gunicorn_options(config)).run()
