"""The import receiver contract, at the path users import and configure.

``receiver: meteorpi_server.receiver:DatabaseImportReceiver`` is the default setting, and
custom receivers subclass the classes below; they live in :mod:`meteorpi_server.imports`,
and this module is their stable public name.
"""
from .imports.handshake import ImportRequest, Reply
from .imports.receivers import (
           BaseImportReceiver,
           DatabaseImportReceiver,
           ReceiverContext,
)

__all__ = ["BaseImportReceiver", "DatabaseImportReceiver", "ImportRequest", "ReceiverContext",
           "Reply"]
