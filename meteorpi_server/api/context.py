"""The one way a view reaches the app's services."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from ..services import Services

#: Where create_app keeps the Services in ``app.extensions``.
EXTENSION = "meteorpi"


def services(app: Flask | None = None) -> Services:
    """The :class:`~meteorpi_server.services.Services` of ``app`` (default: the app
    handling the current request)."""
    return (app or current_app).extensions[EXTENSION]
