"""The live status page: ``GET /status``, for people in a browser (see :mod:`.views`)."""
from .views import blueprint

__all__ = ["blueprint"]
