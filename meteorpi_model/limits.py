"""Bounds enforced when validating entities, searches and export settings.

They exist so that a hostile or broken peer cannot make the server allocate,
store or compare unbounded data, and so that every accepted value fits the
database columns the server maps it to.
"""

#: Free-text strings (lens, descriptions, meta string values, URLs, passwords).
MAX_STRING_LENGTH = 1024
#: Identifier-like strings: camera ids, names, each half of a namespaced string.
MAX_ID_STRING_LENGTH = 255
#: Meta entries attached to one event or file.
MAX_META_ENTRIES = 256
#: Files carried inside one event.
MAX_FILES_PER_EVENT = 256
#: Regions in one camera status.
MAX_REGIONS = 64
#: Points in one region.
MAX_POINTS_PER_REGION = 1024
#: Largest integer a JSON number can carry exactly as an IEEE double; integers
#: beyond it would silently change when stored or read by other JSON parsers.
MAX_SAFE_INTEGER = 2**53 - 1
#: Times are milliseconds since the epoch, in ``0..MAX_TIME_MS``.
MAX_TIME_MS = MAX_SAFE_INTEGER
#: Largest file size accepted, in bytes (one pebibyte).
MAX_FILE_SIZE = 2**50
#: Software versions must fit a signed 32-bit database column.
MAX_SOFTWARE_VERSION = 2**31 - 1
#: Largest ``limit`` a search may ask for; ``limit`` is ``1..MAX_SEARCH_LIMIT``.
MAX_SEARCH_LIMIT = 10000
#: Camera ids, and separately meta constraints, in one search.
MAX_SEARCH_TERMS = 256
#: Seconds in a day: time-of-night offsets are ``0..SECONDS_PER_DAY``.
SECONDS_PER_DAY = 86400
