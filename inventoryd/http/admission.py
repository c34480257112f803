"""Admission tokens: what a waiting room's admitted buyer shows at the gate (`Admission-Token`);
and the proof of work a join may have to carry.

A token is `v1.<event key>.<user id, base64url>.<expiry, unix seconds>.<HMAC-SHA256, base64url>`,
signed with a key every node reads from the database (`service_secret`), so any node verifies any
node's token with one HMAC and no lookup. It names the event, the user and when it ends; it cannot
be revoked before then (its window is the admission's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

from multidict import istr

from inventoryd import limits
from inventoryd.domain import event_key

ADMISSION_TOKEN = istr("Admission-Token")
_VERSION = "v1"
# A token longer than this is refused before anything is decoded.
ADMISSION_TOKEN_CHARS_MAX = 512


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# The keyed HMAC state, made once per key (a process has one or two): each token copies it, which
# costs a fraction of setting the key up again.
_KEYED: dict[bytes, hmac.HMAC] = {}


def _mac(key: bytes, payload: str) -> str:
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) >= 4:  # a test's keys, never more than a few: no growth without bound
            _KEYED.clear()
        keyed = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(payload.encode())
    return _b64(mac.digest())


def sign(key: bytes, event_id: str, user_id: str, expires_at: datetime) -> str:
    payload = f"{_VERSION}.{event_key(event_id)}.{_b64(user_id.encode())}.{int(expires_at.timestamp())}"
    return f"{payload}.{_mac(key, payload)}"


def check(key: bytes, token: str | None, event_id: str, user_id: str, now: datetime) -> str | None:
    """None if `token` admits `user_id` to `event_id` at `now`; otherwise the problem code:
    `admission_required` (none, not ours, tampered, another user's or event's) or
    `admission_expired` (ours, for this user and event, but its window passed)."""
    if not token or len(token) > ADMISSION_TOKEN_CHARS_MAX:
        return "admission_required"
    payload, _, mac = token.rpartition(".")
    if not hmac.compare_digest(_mac(key, payload), mac):
        return "admission_required"
    parts = payload.split(".")
    if len(parts) != 4:
        return "admission_required"
    version, key_of_event, user, expiry = parts
    if version != _VERSION or key_of_event != event_key(event_id) or user != _b64(user_id.encode()):
        return "admission_required"
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 12):
        return "admission_required"
    if datetime.fromtimestamp(int(expiry), UTC) <= now:
        return "admission_expired"
    return None


# -- proof of work on join ---------------------------------------------------------------------------
#
# A challenge is `<expiry, unix seconds>.<HMAC of "pow", the event key and the expiry>`: stateless,
# good for QUEUE_POW_NONCE_S, for one event. A solution is any string such that SHA-256 of
# `<nonce>:<user id>:<solution>` begins with `bits` zero bits: bound to the user, so one solution
# cannot be handed round; checking it is one HMAC and one hash.


def challenge(key: bytes, event_id: str, now: datetime) -> tuple[str, datetime]:
    expires_at = datetime.fromtimestamp(int(now.timestamp()) + limits.QUEUE_POW_NONCE_S, UTC)
    expiry = str(int(expires_at.timestamp()))
    return f"{expiry}.{_mac(key, f'pow.{event_key(event_id)}.{expiry}')}", expires_at


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def check_work(key: bytes, event_id: str, user_id: str, nonce: str, solution: str, bits: int, now: datetime) -> str | None:
    """None if the work is done; otherwise why not (for the problem's detail)."""
    expiry, _, mac = nonce.partition(".")
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 12) or not hmac.compare_digest(
        _mac(key, f"pow.{event_key(event_id)}.{expiry}"), mac
    ):
        return "the nonce is not one this event's challenge gave"
    if datetime.fromtimestamp(int(expiry), UTC) <= now:
        return "the challenge has expired: ask for a new one"
    digest = hashlib.sha256(f"{nonce}:{user_id}:{solution}".encode()).digest()
    if leading_zero_bits(digest) < bits:
        return f"the solution's hash does not begin with {bits} zero bits"
    return None
