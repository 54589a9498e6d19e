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
at its name are throttled. Nor does a name's throttle apply to an address that logged in
as that name within the last day (remembered per worker, up to KNOWN_ADDRESSES pairs):
when the exporter's cache entry expires (``auth_cache_seconds``) while guesses from
elsewhere keep its name throttled, its next check is still made. An attempt that would
need a hash is refused while its address is throttled, so an exporter behind the same
NAT address as a guesser is refused with it until the window has passed (its exporter
backs off and retries); so is one whose name is throttled in a worker it has not logged
in through since that worker started.

The counts are kept in memory, in each worker process (the ``limits`` library's
moving-window memory storage): nothing is written per failed attempt, and a restart
forgets them. Each of W workers counts on its own, so an address or a name gets up to W
times the configured number of failures per window before all workers refuse it.
IPv6 addresses are counted per /64 network, the block one subscriber usually holds.
"""
from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


#: (address, name) pairs that logged in, remembered per worker for KNOWN_ADDRESS_SECONDS.
KNOWN_ADDRESSES = 4096
KNOWN_ADDRESS_SECONDS = 24 * 3600


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
        self._known: OrderedDict[tuple[str | None, str], float] = OrderedDict()
        self._known_lock = threading.Lock()

    def _subjects(self, address: str | None, name: str, checking: bool = False):
        key = address_key(address)
        if key is not None and self._limits["address"] is not None:
            yield "address", self._limits["address"], key
        if self._limits["user"] is not None and not (checking and self._is_known(key, name)):
            yield "user", self._limits["user"], name

    def _is_known(self, key: str | None, name: str) -> bool:
        if key is None:
            return False
        with self._known_lock:
            since = self._known.get((key, name))
            if since is None:
                return False
            if since < time.time() - KNOWN_ADDRESS_SECONDS:
                del self._known[(key, name)]
                return False
            return True

    def succeeded(self, address: str | None, name: str) -> None:
        """Note that ``name`` logged in from ``address`` (its password was checked): the
        name's throttle does not apply there for a day."""
        key = address_key(address)
        if key is None or self._limits["user"] is None:
            return
        with self._known_lock:
            self._known[(key, name)] = time.time()
            self._known.move_to_end((key, name))
            while len(self._known) > KNOWN_ADDRESSES:
                self._known.popitem(last=False)

    def check(self, address: str | None, name: str) -> None:
        """Raise Throttled if ``address`` or ``name`` has had too many failures lately
        (the name's count does not apply to an address it logged in from lately)."""
        for what, limit, key in self._subjects(address, name, checking=True):
            if not self._limiter.test(limit, what, key):
                reset = self._limiter.get_window_stats(limit, what, key).reset_time
                raise Throttled(what, max(1, math.ceil(reset - time.time())), limit.amount,
                                self.window_seconds)

    def failed(self, address: str | None, name: str) -> None:
        """Count one failed authentication from ``address`` for ``name``."""
        for what, limit, key in self._subjects(address, name):
            self._limiter.hit(limit, what, key)
