"""The meteorpi replication server: a Flask app built by :func:`create_app`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .config import Config, load_config

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app", "Config", "load_config"]


def create_app(config: Config | Mapping[str, Any] | None = None) -> Flask:
    """Build the WSGI app. ``config`` is a Config, a mapping of settings, or None for
    the configuration file and environment (see :func:`load_config`)."""
    # Imported here, not above: CLI commands that build no app (export run, the
    # exporter's cron job) start without loading Flask.
    from flask import Flask

    from . import web
    from .api import batch, cameras, downloads, errors, exports, feed, health, importer, search
    from .api import metrics, openapi, replication
    from .api.context import EXTENSION
    from .api.request_log import RequestLog, note_route
    from .api.unread_body import UnreadBody
    from .observe.metrics import observe_request
    from .services import Services

    if config is None:
        config = load_config()
    elif not isinstance(config, Config):
        config = Config.from_mapping(config)
    # No /static: nothing is served there (the status page has its own, /status/static).
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = None  # limits are ours, per route
    app.json.sort_keys = False
    app.extensions[EXTENSION] = Services.build(config)
    errors.register_error_handlers(app)
    app.register_blueprint(importer.blueprint)
    app.register_blueprint(downloads.blueprint)
    app.register_blueprint(batch.blueprint)
    app.register_blueprint(search.blueprint)
    app.register_blueprint(cameras.blueprint)
    app.register_blueprint(feed.blueprint)
    app.register_blueprint(exports.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(replication.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(web.blueprint)
    app.before_request(note_route)
    app.wsgi_app = RequestLog(app.wsgi_app, config.log_format, observers=[observe_request])
    # Outermost: a reply that leaves a large body unread says Connection: close.
    app.wsgi_app = UnreadBody(app.wsgi_app)
    if config.trusted_proxies:
        # The client address (for the authentication throttle and its log) is the one the
        # nearest trusted_proxies proxies report in X-Forwarded-For; without the setting
        # that header is ignored, as any client can send it.
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies)

    return app
