"""Which shard an event is in, and which node should own each shard.

An event's shard is `crc32(event key) mod shard count`: stable for the life of the database, and
what HAProxy computes from the path too (`deploy/haproxy.cfg`: `field`, `crc32`, `mod`), so that
reservation and ticket ids, which carry their event's key, map to the same shard without a lookup.

Which node should own a shard: where HAProxy sends it, when every live node says which `server`
line of haproxy.cfg it is (its id and weight): then the node that owns a shard is the one HAProxy
sends the shard's requests to, and they need no forwarding hop. This is HAProxy 2.6's consistent
ring (`balance hash var(txn.shard)` with `hash-type consistent sdbm avalanche`, src/lb_chash.c),
computed the same way here: each server puts weight × 16 points on a 32-bit ring, keyed by
full_hash(id × 4096 + j); a shard (an integer sample: 8 bytes big-endian) hashes to
full_hash(sdbm(bytes)) and goes to the nearest point (the one before it on a tie). The ring
differs between HAProxy versions (3.0 changed how points are keyed): tests/test_haproxy.py checks
this copy against the haproxy binary itself. Without load-balancer ids, rendezvous hashing on (node,
shard) spreads the shards evenly and moves few of them when a node comes or goes.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from inventoryd.domain import event_key

_M: Final = 0xFFFFFFFF
# HAProxy's BE_WEIGHT_SCALE (backend-t.h), and SRV_UWGHT_RANGE × BE_WEIGHT_SCALE (server-t.h).
_WEIGHT_SCALE: Final = 16
_POINTS_PER_ID: Final = 256 * _WEIGHT_SCALE


def shard_of(event_id: str, shard_count: int) -> int:
    """The shard of an event (its id, or any id that carries its key: see `domain.event_id_of`)."""
    return zlib.crc32(event_key(event_id).encode()) % shard_count


def _full_hash(a: int) -> int:
    """HAProxy's __full_hash (include/haproxy/intops.h): Bob Jenkins' avalanche, times 3221225473."""
    a &= _M
    a = (a + 0x7ED55D16 + (a << 12)) & _M
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & _M
    a = (a + 0x165667B1 + (a << 5)) & _M
    a = ((a + 0xD3A2646C) ^ (a << 9)) & _M
    a = (a + 0xFD7046C5 + (a << 3)) & _M
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & _M
    return (a * 3221225473) & _M


def _sdbm(data: bytes) -> int:
    """HAProxy's hash_sdbm (src/hash.c)."""
    h = 0
    for byte in data:
        h = (byte + (h << 6) + (h << 16) - h) & _M
    return h


def _shard_hash(shard: int) -> int:
    return _full_hash(_sdbm(struct.pack(">q", shard)))


@dataclass(frozen=True, slots=True)
class RingNode:
    node_id: str
    # The load balancer's server id and weight (None: this node is not in the load balancer's ring).
    lb_server_id: int | None
    lb_weight: int


class RingCollision(ValueError):
    """Two servers' points fall on one spot of the ring (two nodes given one id, most likely)."""


class HaproxyRing:
    """HAProxy's consistent ring over the servers that are up."""

    __slots__ = ("_keys", "_owners")

    def __init__(self, nodes: Sequence[RingNode]) -> None:
        points = sorted(
            (_full_hash((node.lb_server_id * _POINTS_PER_ID + j) & _M), node.node_id)
            for node in nodes
            if node.lb_server_id is not None
            for j in range(node.lb_weight * _WEIGHT_SCALE)
        )
        self._keys = [key for key, _ in points]
        self._owners = [owner for _, owner in points]
        if len(set(self._keys)) != len(self._keys):
            raise RingCollision("two servers' points collide on the ring: give one another id")

    def node_for(self, shard: int) -> str:
        """chash_get_server_hash: the nearest point, the one before it on a tie."""
        h = _shard_hash(shard)
        keys = self._keys
        index = bisect.bisect_left(keys, h)
        following = index if index < len(keys) else 0
        before = following - 1  # -1 wraps to the last point
        if (h - keys[before]) & _M <= (keys[following] - h) & _M:
            return self._owners[before]
        return self._owners[following]


def unaligned(nodes: Sequence[RingNode]) -> str | None:
    """Why the shards cannot be placed where HAProxy sends them, when some node says it is behind
    HAProxy (None: they can be, or no node uses HAProxy's ring)."""
    if not any(node.lb_server_id is not None for node in nodes):
        return None
    without = sorted(node.node_id for node in nodes if node.lb_server_id is None)
    if without:
        return f"nodes without a load-balancer id: {', '.join(without)}"
    try:
        HaproxyRing(nodes)
    except RingCollision:
        ids = [node.lb_server_id for node in nodes]
        repeated = sorted({str(server_id) for server_id in ids if ids.count(server_id) > 1})
        return f"load-balancer ids given to two nodes: {', '.join(repeated)}" if repeated else "the nodes' ring points collide"
    return None


def targets(shard_count: int, nodes: Sequence[RingNode]) -> list[str]:
    """Which node should own each shard, given the live nodes (at least one): HAProxy's ring when
    every node is on it, else rendezvous. A ring HAProxy cannot have (ids that collide) falls back
    to rendezvous too: a placement that is not HAProxy's costs forwarding hops, never ownership,
    and every node computes the same one from the same nodes table."""
    if not nodes:
        raise ValueError("no live node to own the shards")
    if all(node.lb_server_id is not None for node in nodes):
        try:
            ring = HaproxyRing(nodes)
        except RingCollision:
            pass
        else:
            return [ring.node_for(shard) for shard in range(shard_count)]
    return [max(nodes, key=lambda node: _rendezvous(node.node_id, shard)).node_id for shard in range(shard_count)]


def _rendezvous(node_id: str, shard: int) -> bytes:
    return hashlib.blake2b(f"{node_id}/{shard}".encode(), digest_size=8).digest()
