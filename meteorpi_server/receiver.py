"""The import receiver contract, at the path users import and configure.

``receiver: meteorpi_server.receiver:DatabaseImportReceiver`` is the default setting, and
custom receivers subclass the classes below; they live in :mod:`meteorpi_server.imports`,
and this module is their stable public name.
"""
from .imports.database_receiver import DatabaseImportReceiver
from .imports.handshake import ImportRequest, Reply
from .imports.receivers import BaseImportReceiver, BatchPlan, BundleWriter, ReceiverContext

__all__ = ["BaseImportReceiver", "BatchPlan", "BundleWriter", "DatabaseImportReceiver",
           "ImportRequest", "ReceiverContext", "Reply"]
