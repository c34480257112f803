"""Token buckets in memory: per principal on the API, per client address on the auth routes, and
one for every registration at all.

A bucket holds up to `burst` tokens and refills at `rate_per_s`; a request takes one. RateLimit-*
headers are sent once a bucket is below half full and with every 429. The number of
buckets is bounded (least recently used go first: a bucket not used lately is full anyway, so
forgetting it changes nothing for its owner).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from inventoryd import limits


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    # Seconds until a token is back (when refused) / until the bucket is full (when allowed).
    reset_s: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_s))
        return headers


class TokenBuckets:
    __slots__ = ("_buckets", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs a positive rate and a burst of 1 or more, not {rate_per_s}/{burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, now: float) -> Verdict | None:
        """Take a token. None means allowed with at least half the bucket left: nothing worth
        telling the client (RateLimit-* headers go out as a client nears its limit, and on 429)."""
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > limits.RATE_BUCKETS_MAX:
            self._buckets.popitem(last=False)
        if allowed and tokens * 2 >= self.burst:
            return None
        reset_s = math.ceil((self.burst - tokens) / self.rate_per_s) if allowed else math.ceil((1.0 - tokens) / self.rate_per_s)
        return Verdict(allowed, self.burst, int(tokens), reset_s)


@dataclass(slots=True)
class RateLimits:
    """The service's limiters: per attendee or organizer, per service token, per client address on
    the auth routes (against credential stuffing), registrations from every address together
    (REGISTRATIONS_KEY: a flood from many addresses, each within its own limit, stays bounded), and
    users' joins of waiting rooms per client address (one script, many accounts, many places)."""

    users: TokenBuckets
    services: TokenBuckets
    auth_by_address: TokenBuckets
    registrations: TokenBuckets
    joins_by_address: TokenBuckets


REGISTRATIONS_KEY = "registrations"


def address_key(remote: str | None) -> str:
    """Whom a per-address bound counts: the peer's IPv4 address, or the /64 of an IPv6 one (a host
    is usually given a whole /64, and could otherwise take a new address per request); an
    IPv4-mapped IPv6 address counts as its IPv4 address. Behind a proxy this is the proxy's
    address: inventoryd does not trust X-Forwarded-For."""
    if not remote:
        return "address:unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return f"address:{remote}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"address:{address.ipv4_mapped}"
        return f"address:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"address:{address}"
