"""The Meteor Pi domain model: entities, searches and export settings with their wire format.

Pure Python and standard library only, so camera nodes and the server share
it. Everything public is importable from this package directly.
"""

from . import limits
from .errors import ValidationError
from .export import ExportConfiguration
from .hashing import MD5Stream, md5_bytes, md5_chunks, md5_file
from .model import (
    DEFAULT_NAMESPACE,
    META_TYPES,
    ROLES,
    CameraStatus,
    Event,
    FileRecord,
    Location,
    Meta,
    NSString,
    Orientation,
    Point,
    Role,
    files_of,
    format_id,
    parse_id,
    parse_md5,
)
from .search import CONSTRAINT_TYPES, DEFAULT_SEARCH_LIMIT, EventSearch, FileSearch, MetaConstraint

__all__ = [
    "CONSTRAINT_TYPES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SEARCH_LIMIT",
    "META_TYPES",
    "ROLES",
    "CameraStatus",
    "Event",
    "EventSearch",
    "ExportConfiguration",
    "FileRecord",
    "FileSearch",
    "Location",
    "MD5Stream",
    "Meta",
    "MetaConstraint",
    "NSString",
    "Orientation",
    "Point",
    "Role",
    "ValidationError",
    "files_of",
    "format_id",
    "limits",
    "md5_bytes",
    "md5_chunks",
    "md5_file",
    "parse_id",
    "parse_md5",
]
