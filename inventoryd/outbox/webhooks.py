"""Webhook endpoints: which URLs may be one (never the service's own network, unless allowed), the
resolver that keeps a delivery from being pointed there later (DNS rebinding), and the signature
every delivery carries (`Inventoryd-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import time
import urllib.parse

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from inventoryd import limits
from inventoryd.errors import InvalidRequest

SIGNATURE_HEADER = "Inventoryd-Signature"
DELIVERY_HEADER = "Inventoryd-Delivery"
WEBHOOK_PREFIX = "whk_"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of secrets made here, not one


def new_webhook_id() -> str:
    return WEBHOOK_PREFIX + base64.b32encode(os.urandom(10)).decode().lower()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def delivery_id_for(sink: str, event_id: str, seq: int) -> str:
    """The same for every attempt at one change to one endpoint (also after a crash, on any node):
    what a receiver deduplicates by."""
    digest = hashlib.sha256(f"{sink}\0{event_id}\0{seq}".encode()).digest()
    return "dlv_" + base64.b32encode(digest[:15]).decode().lower()


def signature(secret: str, body: bytes, at: int | None = None) -> str:
    """The signature header's value for `body`, signed now (or at `at`, unix seconds)."""
    stamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver does: the signature matches, and was made within `tolerance_s` (a replayed
    old delivery is refused)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        stamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance_s:
        return False
    expected = signature(secret, body, stamp).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def url_problem(url: str) -> str | None:
    """Why `url` cannot be an endpoint, by its form alone (None: it may be)."""
    if len(url) > limits.WEBHOOK_URL_CHARS_MAX:
        return f"longer than {limits.WEBHOOK_URL_CHARS_MAX} characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"not a URL ({error})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "credentials in the URL are not accepted (the signature authenticates the service)"
    if parts.fragment:
        return "a URL with a #fragment"
    if port == 0:
        return "port 0"
    return None


async def check_reachable(url: str, *, allow_private: bool) -> None:
    """422 unless `url` has the right form and its host resolves to addresses a webhook may reach."""
    problem = url_problem(url)
    if problem is not None:
        raise InvalidRequest(f"url: {problem}", field="$.url")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        async with asyncio.timeout(limits.WEBHOOK_RESOLVE_TIMEOUT_S):
            found = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError) as error:
        raise InvalidRequest(f"url: the host {host!r} does not resolve ({error.__class__.__name__})", field="$.url") from None
    addresses = sorted({str(entry[4][0]) for entry in found})
    if not allow_private and any(_private(address) for address in addresses):
        raise InvalidRequest(
            f"url: {host!r} resolves to a loopback, private or link-local address ({', '.join(addresses)}); "
            "webhooks reach public addresses only (INVENTORYD_WEBHOOKS_ALLOW_PRIVATE=1 allows them)",
            field="$.url",
        )


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, answering only public addresses (unless allowed): a host that resolved
    to a public address when the endpoint was made and to a private one now is not connected to."""

    def __init__(self, *, allow_private: bool) -> None:
        self._resolver = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if self._allow_private:
            return found
        public = [entry for entry in found if not _private(entry["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._resolver.close()

