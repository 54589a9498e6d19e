"""The exporter's exceptions, under one root, as requests has RequestException.

::

    ExportError
    ├── TargetError           the target cannot be reached or does not answer usefully
    ├── UploadFailed          a resumable upload cannot go on now
    │   └── UploadRefused     the target refuses this file: trying again will not help
    └── ExportConfigError     an export configuration cannot be added or changed
        ├── ConfigNotFound
        └── ConfigExists

A caller that only wants "anything the exporter reports" catches :class:`ExportError`;
the subclasses say what to do about it. The classes are also importable from the modules
that raise them (``handshake``, ``resumable``, ``configs``), where they used to live.
"""
from __future__ import annotations


class ExportError(Exception):
    """Anything the exporter reports as going wrong; the message says what."""


class TargetError(ExportError):
    """The target could not be reached or did not answer usefully.

    ``status_code`` is the HTTP status of the target's answer, if it answered; it tells a
    failure that heals (5xx, no answer) from one a person must fix (401, 403, 404, 405;
    see :func:`~meteorpi_server.exporter.target_errors.needs_a_person`).
    """

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class UploadFailed(ExportError):
    """The upload cannot go on now: the target could not be reached or kept failing.

    ``status_code``: as :class:`TargetError`'s, when the target's answer ended the upload.
    """

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class UploadRefused(UploadFailed):
    """The target refuses this file (too large, say): trying again will not help."""


class ExportConfigError(ExportError, ValueError):
    """An export configuration cannot be added or changed; the message says why.

    Also a ValueError, as it was before ExportError existed, so callers that catch
    ValueError keep working.
    """


class ConfigNotFound(ExportConfigError):
    """No export configuration has this name."""

    def __init__(self, name: str):
        super().__init__(f"there is no export configuration named {name!r} "
                         "('meteorpi export list' shows them)")
        self.name = name


class ConfigExists(ExportConfigError):
    """An export configuration with this name (or this config_id) already exists."""

    def __init__(self, name: str, config_id: str | None = None):
        if config_id is None:
            message = (f"an export configuration named {name!r} already exists; choose "
                       "another name or remove it first")
        else:
            message = (f"an export configuration with config_id {config_id} already exists "
                       f"(named {name!r}); leave config_id out to have a new one made")
        super().__init__(message)
        self.name = name
