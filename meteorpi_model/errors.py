"""The single exception raised when untrusted input fails validation."""

from __future__ import annotations


class ValidationError(ValueError):
    """Input did not match the wire format or broke one of its limits.

    ``path`` names the offending field the way a reader would write it
    (``event.files[0].md5``), or is ``""`` when the value as a whole is wrong;
    ``message`` says what is wrong with it. Messages never quote the offending
    value, so they are safe to return to a client and to log.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def prefixed(self, prefix: str) -> ValidationError:
        """Return the same error as seen from a container at ``prefix``.

        ``ValidationError("md5", "...").prefixed("files[0]")`` has the path
        ``files[0].md5``; an empty prefix returns the error unchanged.
        """
        if not prefix:
            return self
        return ValidationError(join_path(prefix, self.path), self.message)


def join_path(prefix: str, sub: str) -> str:
    """Join two field paths: ``a`` + ``b`` -> ``a.b``, ``a`` + ``[0]`` -> ``a[0]``."""
    if not prefix:
        return sub
    if not sub:
        return prefix
    if sub.startswith("["):
        return prefix + sub
    return f"{prefix}.{sub}"
