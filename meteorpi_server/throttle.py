"""Throttling failed authentications, so that guessing passwords cannot keep the workers
busy hashing.

Each wrong password costs a full scrypt hash (tens of milliseconds of a core, by
design), so a client sending wrong passwords as fast as it can would otherwise take every
worker's time. Failures are counted in a moving window per client address and per user
name (the name tried, whether or not such a user exists, so a 429 says nothing about
which names exist); once either has had too many, further attempts that would need a
hash are refused with 429 and Retry-After, decided before any hash is computed.

Credentials already in the verification cache (a cheap HMAC, no hash) are never
refused: an exporter that knows its password keeps working while an attacker's guesses
at its name are throttled. An attempt that would need a hash is refused while its
address or its name is throttled, so an exporter behind the same NAT address as a
guesser, or whose cache entry expires while its name is throttled, is refused until the
window has passed (its exporter backs off and retries).

The counts are kept in memory, in each worker process (the ``limits`` library's
moving-window memory storage): nothing is written per failed attempt, and a restart
forgets them. Each of W workers counts on its own, so an address or a name gets up to W
times the configured number of failures per window before all workers refuse it.
IPv6 addresses are counted per /64 network, the block one subscriber usually holds.
"""
from __future__ import annotations

import ipaddress
import math
import time

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class Throttled(Exception):
    """An authentication attempt refused without checking the password: too many recent
    failures from its address (``what`` is ``"address"``) or for its name (``"user"``)."""

    def __init__(self, what: str, retry_after: int, limit: int, window_seconds: int):
        self.what, self.retry_after = what, retry_after
        self.limit, self.window_seconds = limit, window_seconds
        subject = "from this address" if what == "address" else "for this user name"
        super().__init__(f"too many failed authentications {subject} (more than {limit} in "
                         f"{window_seconds} s); try again in {retry_after} s")


def address_key(address: str | None) -> str | None:
    """The address failures are counted under: an IPv4 address as it is, an IPv6 address
    as its /64 network (an IPv4-mapped one as the IPv4 address)."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{parsed}/64", strict=False))
    return str(parsed)


class AuthThrottle:
    """Failed authentications per address and per user name, in a moving window.

    ``per_address`` or ``per_user`` of 0 turns that half off.
    """

    def __init__(self, per_address: int, per_user: int, window_seconds: int):
        self.window_seconds = window_seconds
        self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._limits = {
            "address": RateLimitItemPerSecond(per_address, window_seconds) if per_address else None,
            "user": RateLimitItemPerSecond(per_user, window_seconds) if per_user else None,
        }

    @property
    def enabled(self) -> bool:
        return any(self._limits.values())

    def _subjects(self, address: str | None, name: str):
        key = address_key(address)
        if key is not None and self._limits["address"] is not None:
            yield "address", self._limits["address"], key
        if self._limits["user"] is not None:
            yield "user", self._limits["user"], name

    def check(self, address: str | None, name: str) -> None:
        """Raise Throttled if ``address`` or ``name`` has had too many failures lately."""
        for what, limit, key in self._subjects(address, name):
            if not self._limiter.test(limit, what, key):
                reset = self._limiter.get_window_stats(limit, what, key).reset_time
                raise Throttled(what, max(1, math.ceil(reset - time.time())), limit.amount,
                                self.window_seconds)

    def failed(self, address: str | None, name: str) -> None:
        """Count one failed authentication from ``address`` for ``name``."""
        for what, limit, key in self._subjects(address, name):
            self._limiter.hit(limit, what, key)
