"""The cluster's tables: nodes, and shards leased to them with an epoch. Each operation is one
statement, judged by the database's clock (see migrations/0007_cluster.sql for why the locks work).

- `take`: free or expired shards become this node's, each at a new epoch;
- `renew`: one statement per interval extends every lease this node still holds (and its heartbeat);
  what it does not return was lost (taken over);
- `release`: this node's shards become free, at a new epoch (so even its own late writes are fenced).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from persistence.connection import Connection

# The notification channels the triggers of 0007_cluster.sql send on.
SHARDS_CHANNEL = "inventoryd_shards"
NODES_CHANNEL = "inventoryd_nodes"


@dataclass(frozen=True, slots=True)
class NodeRow:
    node_id: str
    url: str
    lb_server_id: int | None
    lb_weight: int
    draining: bool
    # Seconds since its last heartbeat, by the database's clock.
    heartbeat_age_s: float
    started_at: datetime


@dataclass(frozen=True, slots=True)
class ShardRow:
    shard_id: int
    owner_node: str | None
    epoch: int
    # Seconds left on the lease, by the database's clock (negative: expired; None: free, or made
    # takeable at once).
    lease_left_s: float | None


async def shard_count(connection: Connection) -> int:
    value = await connection.fetchval("SELECT shard_count FROM cluster_config")
    return int(value)


async def register_node(
    connection: Connection, node_id: str, url: str, lb_server_id: int | None, lb_weight: int
) -> None:
    # Again after a failed start is the same node: its row is written anew.
    await connection.execute(
        """INSERT INTO nodes (node_id, url, lb_server_id, lb_weight) VALUES ($1, $2, $3, $4)
           ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, lb_server_id = EXCLUDED.lb_server_id,
               lb_weight = EXCLUDED.lb_weight, heartbeat_at = now(), draining = false""",
        node_id,
        url,
        lb_server_id,
        lb_weight,
    )


async def take(connection: Connection, node_id: str, shards: list[int], lease_s: float) -> list[tuple[int, int]]:
    """Of `shards`, those free or expired become this node's: (shard, its new epoch) for each."""
    rows = await connection.fetch(
        """
        WITH candidates AS (
            SELECT shard_id FROM shards
            WHERE shard_id = ANY($2::int[]) AND lease_expires_at < now()
            ORDER BY shard_id
            FOR UPDATE
        )
        UPDATE shards s SET owner_node = $1, epoch = s.epoch + 1,
                            lease_expires_at = now() + make_interval(secs => $3), acquired_at = now()
        FROM candidates c WHERE s.shard_id = c.shard_id
        RETURNING s.shard_id, s.epoch""",
        node_id,
        shards,
        lease_s,
    )
    return [(row[0], row[1]) for row in rows]


async def renew(
    connection: Connection, node_id: str, held: list[tuple[int, int]], lease_s: float, *, draining: bool
) -> set[int]:
    """The node's heartbeat, and every lease it holds extended, in one statement: the shards it
    still holds at their epochs (the others were taken over), as one array (a row per shard
    cost more to decode than the statement, twice a second)."""
    kept = await connection.fetchval(
        """
        WITH beat AS (UPDATE nodes SET heartbeat_at = now(), draining = $5 WHERE node_id = $1 RETURNING 1),
        renewed AS (
            UPDATE shards s SET lease_expires_at = now() + make_interval(secs => $2)
            FROM unnest($3::int[], $4::bigint[]) AS h (shard_id, epoch)
            WHERE s.shard_id = h.shard_id AND s.epoch = h.epoch AND s.owner_node = $1
            RETURNING s.shard_id
        )
        SELECT coalesce(array_agg(shard_id), '{}') FROM renewed""",
        node_id,
        lease_s,
        [shard for shard, _ in held],
        [epoch for _, epoch in held],
        draining,
    )
    return set(kept)


async def release(connection: Connection, node_id: str, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """These shards, if still this node's at their epochs, become free at a new epoch."""
    rows = await connection.fetch(
        """
        WITH mine AS (
            SELECT s.shard_id FROM shards s
            JOIN unnest($2::int[], $3::bigint[]) AS h (shard_id, epoch) ON s.shard_id = h.shard_id AND s.epoch = h.epoch
            WHERE s.owner_node = $1
            ORDER BY s.shard_id
            FOR UPDATE OF s
        )
        UPDATE shards s SET owner_node = NULL, epoch = s.epoch + 1, lease_expires_at = '-infinity', released_at = now()
        FROM mine WHERE s.shard_id = mine.shard_id
        RETURNING s.shard_id, s.epoch""",
        node_id,
        [shard for shard, _ in held],
        [epoch for _, epoch in held],
    )
    return [(row[0], row[1]) for row in rows]


async def nodes(connection: Connection) -> list[NodeRow]:
    rows = await connection.fetch(
        """SELECT node_id, url, lb_server_id, lb_weight, draining,
                  extract(epoch FROM clock_timestamp() - heartbeat_at)::float8, started_at
           FROM nodes ORDER BY node_id"""
    )
    return [NodeRow(*row) for row in rows]


async def shards(connection: Connection) -> list[ShardRow]:
    """Every shard, in order, read as four arrays in one row (cheaper to decode than 256 rows)."""
    row = await connection.fetchrow(
        """SELECT array_agg(shard_id ORDER BY shard_id), array_agg(owner_node ORDER BY shard_id),
                  array_agg(epoch ORDER BY shard_id),
                  array_agg(CASE WHEN owner_node IS NULL OR NOT isfinite(lease_expires_at) THEN NULL
                                 ELSE extract(epoch FROM lease_expires_at - clock_timestamp())::float8 END
                            ORDER BY shard_id)
           FROM shards"""
    )
    if row is None or row[0] is None:
        return []
    return [ShardRow(*columns) for columns in zip(row[0], row[1], row[2], row[3], strict=True)]


async def expire_leases_of(connection: Connection, url: str, node_id: str) -> int:
    """The leases of other nodes that were at `url`: this node listens there now, so they cannot be
    serving it any more, and their shards may be taken at once (at a new epoch, which fences
    whatever they might still try to write)."""
    result = await connection.execute(
        """UPDATE shards SET lease_expires_at = '-infinity'
           WHERE owner_node IN (SELECT n.node_id FROM nodes n WHERE n.url = $1 AND n.node_id <> $2)""",
        url,
        node_id,
    )
    return int(result.split()[-1])


async def forget_node(connection: Connection, node_id: str) -> None:
    """A node leaves (it holds nothing any more)."""
    await connection.execute("DELETE FROM nodes WHERE node_id = $1", node_id)


async def forget_dead_nodes(connection: Connection, silent_s: float) -> int:
    """Nodes silent for `silent_s` that hold no shard (others took them over): gone for good."""
    result = await connection.execute(
        """DELETE FROM nodes n
           WHERE heartbeat_at < clock_timestamp() - make_interval(secs => $1)
             AND NOT EXISTS (SELECT 1 FROM shards s WHERE s.owner_node = n.node_id AND s.lease_expires_at > now())""",
        silent_s,
    )
    return int(result.split()[-1])
