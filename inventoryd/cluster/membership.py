"""This node's place in the cluster: its leases on shards, and who owns the others.

Every `inventoryd serve` on one database is a node. `Membership` registers it, takes the shards the
ring gives it (free ones, or those whose lease ran out: their owner died), renews every lease it
holds in one statement per SHARD_RENEW_INTERVAL_S, hands over the shards the ring now gives another
live node, and gives everything up when the node drains. PostgreSQL is the arbiter: a takeover
increments the shard's epoch, and the journal's fence refuses any write at an older one, so that a
node that was paused or cut off past its lease can commit nothing for a shard it lost.

The local deadline is the other half: a node answers for a shard from memory (reads, refusals, no-ops:
what writes nothing, so no fence sees it) only until its lease could have run out elsewhere, by its
own monotonic clock (see limits.SHARD_LEASE_S). After that the shard is "not serving" here: requests
are forwarded, or answered 503 until an owner is known.

What an owner does with its shards is a `ShardOwner`'s business (the registry's): rebuild a shard's
actors once it is taken, drop them once it is lost, drain them before it is released.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import asyncpg
import structlog

from inventoryd import limits
from inventoryd.cluster.ring import RingNode, shard_of, targets, unaligned
from inventoryd.tasks import TaskSupervisor
from persistence import cluster as store
from persistence import limits as persistence_limits
from persistence.errors import DATABASE_AWAY
from persistence.journal import connect

log = structlog.get_logger("inventoryd.cluster")
T = TypeVar("T")

# How long this node may answer for a shard after sending the renewal that kept it.
LOCAL_LEASE_S = limits.SHARD_LEASE_S / (1 + limits.CLOCK_DRIFT_MAX) - limits.LEASE_SAFETY_MARGIN_S


class ClusterMisconfigured(RuntimeError):
    """The database's shard count is not this version's (an event's shard would change)."""


class ShardOwner(Protocol):
    async def shards_acquired(self, acquired: list[tuple[int, int]]) -> None:
        """These (shard, epoch) are now this node's: be ready to serve their events."""

    def shard_lost(self, shard: int) -> None:
        """The shard is another node's now (or nobody's): drop its actors at once."""

    async def shard_releasing(self, shard: int) -> None:
        """The shard is about to be handed over: stop taking requests for it, finish what is in flight."""


@dataclass(frozen=True, slots=True)
class Lease:
    epoch: int
    # The loop's clock (monotonic) until which this node may answer for the shard from memory.
    deadline: float


@dataclass(slots=True)
class ClusterStats:
    acquired: int = 0
    released: int = 0
    lost: int = 0
    fenced: int = 0
    renewals: int = 0
    renewal_failures: int = 0
    # The last renewal's round trip (seconds).
    renewal_seconds: float = 0.0


def new_node_id() -> str:
    return "nod_" + base64.b32encode(os.urandom(10)).decode().lower()


@dataclass(eq=False)
class Membership:
    dsn: str
    # The URL other nodes reach this one at (its advertise URL).
    url: str
    lb_server_id: int | None = None
    lb_weight: int = 16
    node_id: str = field(default_factory=new_node_id)
    stats: ClusterStats = field(default_factory=ClusterStats)
    shard_count: int = 0
    draining: bool = False
    _owner: ShardOwner | None = None
    _held: dict[int, Lease] = field(default_factory=dict)
    # Taken (at this epoch) and being made ready, or being handed over: not serving meanwhile.
    _acquiring: dict[int, int] = field(default_factory=dict)
    _releasing: set[int] = field(default_factory=set)
    # Who owns each shard, as last read: (node id or None, epoch); and each lease's seconds left by
    # the database's clock at that read (None: free), with when that was (the loop's clock).
    _owners: list[tuple[str | None, int]] = field(default_factory=list)
    _lease_left: list[float | None] = field(default_factory=list)
    _map_read_at: float = 0.0
    _nodes: dict[str, store.NodeRow] = field(default_factory=dict)
    _targets: list[str] = field(default_factory=list)
    # The live nodes `_targets` was computed for.
    _ring: tuple[RingNode, ...] | None = None
    _connection: asyncpg.Connection | None = None
    # One statement at a time on the lease connection (the keeper and the handoffs share it).
    _statements: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Shards lost (to a renewal) while they were being made ready: not to be served after all.
    _lost_while_acquiring: set[int] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Resolved (and replaced) whenever the shard map changes: requests wait on it for a new owner.
    _map_changed: asyncio.Future[None] | None = None
    _tasks: TaskSupervisor = field(default_factory=lambda: TaskSupervisor("cluster"))

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, owner: ShardOwner) -> None:
        """Join: register, take this node's share of the free shards (and make them ready), then
        keep the leases in the background."""
        self._owner = owner
        self.shard_count, _ = await self._call(store.shard_count)
        if self.shard_count != persistence_limits.CLUSTER_SHARDS:
            raise ClusterMisconfigured(
                f"the database has {self.shard_count} shards, this version {persistence_limits.CLUSTER_SHARDS}"
            )
        await self._call(store.register_node, self.node_id, self.url, self.lb_server_id, self.lb_weight)
        self._owners = [(None, 0)] * self.shard_count
        log.info("node_joined", node_id=self.node_id, url=self.url, lb_server_id=self.lb_server_id)
        while await self._round():  # a batch of shards per round, until this node has its share
            pass
        self._tasks.spawn(self._keep(), name="cluster-leases")

    async def listening(self) -> None:
        """This node now listens at its URL: a node that was there before (this process's
        predecessor, killed) cannot be serving its shards, which may be taken at once."""
        try:
            expired, _ = await self._call(store.expire_leases_of, self.url, self.node_id)
        except DATABASE_AWAY as error:
            log.warning("predecessor_leases_kept", error=repr(error))
            return
        if expired:
            log.info("predecessor_leases_expired", shards=expired, url=self.url)
            self._wake.set()

    async def drain(self) -> None:
        """Hand every shard over (SIGTERM): no new shards, each held one released once its actors
        finished, within DRAIN_SHARDS_S (else the leases lapse on their own)."""
        self.draining = True
        try:
            async with asyncio.timeout(limits.DRAIN_SHARDS_S):
                await self._renew()  # says "draining": the others' targets leave this node out
                while self._held:
                    batch = [shard for shard in self._held if shard not in self._releasing][: limits.SHARD_HANDOFFS_IN_FLIGHT_MAX]
                    if batch:
                        await asyncio.gather(*(self._release(shard) for shard in batch))
                    else:  # the keeper's handoffs are under way
                        await asyncio.sleep(0.01)
        except TimeoutError:
            log.warning("drain_shards_timed_out", held=len(self._held))
        except DATABASE_AWAY as error:
            log.warning("drain_shards_failed", error=repr(error), held=len(self._held))

    async def stop(self) -> None:
        """Leave: the leases are given up (if `drain` did not already), the node forgotten."""
        if self._held:
            await self.drain()
        await self._tasks.close()
        try:
            await self._call(store.forget_node, self.node_id)
        except DATABASE_AWAY as error:
            log.warning("node_leave_failed", error=repr(error))
        self._drop_connection()
        log.info("node_left", node_id=self.node_id)

    # -- what requests ask ----------------------------------------------------------------------

    def shard_of(self, event_id: str) -> int:
        return shard_of(event_id, self.shard_count)

    def serving(self, shard: int) -> bool:
        """May this node answer for the shard now (it holds it, and its local deadline has not passed)?"""
        lease = self._held.get(shard)
        return lease is not None and shard not in self._releasing and asyncio.get_running_loop().time() < lease.deadline

    def epoch(self, shard: int) -> int:
        lease = self._held.get(shard)
        if lease is None:
            raise KeyError(f"shard {shard} is not held here")
        return lease.epoch

    def held(self) -> list[int]:
        return sorted(self._held)

    def owner_url(self, shard: int) -> str | None:
        """Where the shard's owner is, as last read (None: nobody, or this node)."""
        owner, _ = self._owners[shard]
        if owner is None or owner == self.node_id:
            return None
        node = self._nodes.get(owner)
        return node.url if node is not None else None

    def some_owner_url(self) -> str | None:
        """A node that owns some shard (where to send what this node, owning none, cannot do)."""
        for owner, _ in self._owners:
            if owner is not None and owner != self.node_id and owner in self._nodes:
                return self._nodes[owner].url
        return None

    async def wait_map_changed(self, timeout_s: float) -> bool:
        """Until the shard map next changes (True), or `timeout_s` (False)."""
        if self._map_changed is None or self._map_changed.done():
            self._map_changed = asyncio.get_running_loop().create_future()
        self._wake.set()  # read the map now rather than at the next tick
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._map_changed)
        except TimeoutError:
            return False
        return True

    def fenced(self, lost: set[tuple[int, int]]) -> None:
        """The journal's fence refused writes at these (shard, epoch): another node holds them now."""
        for shard, epoch in lost:
            lease = self._held.get(shard)
            if lease is not None and lease.epoch == epoch:
                self.stats.fenced += 1
                self._lose(shard, "fenced")

    def view(self) -> dict[str, object]:
        """What GET /v1/cluster shows."""
        now = asyncio.get_running_loop().time()
        return {
            "node_id": self.node_id,
            "url": self.url,
            "shard_count": self.shard_count,
            "draining": self.draining,
            "nodes": [
                {
                    "node_id": node.node_id,
                    "url": node.url,
                    "lb_server_id": node.lb_server_id,
                    "heartbeat_age_s": round(node.heartbeat_age_s, 3),
                    "draining": node.draining,
                    "live": self._live(node),
                    "shards": sum(1 for owner, _ in self._owners if owner == node.node_id),
                    "target_shards": sum(1 for target in self._targets if target == node.node_id),
                }
                for node in self._nodes.values()
            ],
            "shards": [
                {
                    "shard": shard,
                    "owner": owner,
                    "epoch": epoch,
                    "lease_left_s": self._lease_left_now(shard, now),
                    "local_lease_left_s": round(self._held[shard].deadline - now, 3) if shard in self._held else None,
                }
                for shard, (owner, epoch) in enumerate(self._owners)
            ],
            "map_age_s": round(now - self._map_read_at, 3),
        }

    def _lease_left_now(self, shard: int, now: float) -> float | None:
        left = self._lease_left[shard] if shard < len(self._lease_left) else None
        return None if left is None else round(left - (now - self._map_read_at), 3)

    # -- the lease keeper -----------------------------------------------------------------------

    async def _keep(self) -> None:
        while True:
            self._wake.clear()
            try:
                async with asyncio.timeout(limits.SHARD_RENEW_INTERVAL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            try:
                if await self._round():
                    self._wake.set()  # more may be free: the next round at once
            except DATABASE_AWAY as error:
                # The deadlines run out on their own: nothing more to do than try again.
                self.stats.renewal_failures += 1
                log.warning("lease_renewal_failed", error=repr(error))
            except Exception as error:  # noqa: BLE001 - a bug: said loudly, and the keeper keeps going
                log.error("cluster_round_failed", error=repr(error))
                await asyncio.sleep(limits.SHARD_RENEW_INTERVAL_S)

    async def _round(self) -> int:
        """One tick: renew, read the map, take what the ring gives this node, hand over the rest;
        returns how many shards it took."""
        await self._renew()
        await self._read_map()
        if self.draining:
            return 0
        mine = [
            shard
            for shard, target in enumerate(self._targets)
            if target == self.node_id and shard not in self._held and shard not in self._acquiring and self._takeable(shard)
        ]
        taken = await self._take(mine[: limits.SHARD_ACQUIRE_BATCH_MAX]) if mine else 0
        handoffs = [
            shard
            for shard in self._held
            if self._targets[shard] != self.node_id and shard not in self._releasing
        ]
        for shard in handoffs[: max(0, limits.SHARD_HANDOFFS_IN_FLIGHT_MAX - len(self._releasing))]:
            self._releasing.add(shard)
            self._tasks.spawn(self._release(shard), name=f"handoff:{shard}", expected=DATABASE_AWAY)
        return taken

    async def _renew(self) -> None:
        held = [(shard, lease.epoch) for shard, lease in self._held.items()] + list(self._acquiring.items())
        kept, sent = await self._call(store.renew, self.node_id, held, limits.SHARD_LEASE_S, draining=self.draining)
        self.stats.renewals += 1
        self.stats.renewal_seconds = asyncio.get_running_loop().time() - sent
        deadline = sent + LOCAL_LEASE_S
        for shard, epoch in held:
            lease = self._held.get(shard)
            if shard in kept:
                if lease is not None and lease.epoch == epoch:
                    self._held[shard] = Lease(epoch, deadline)
            elif lease is not None and lease.epoch == epoch:
                self._lose(shard, "renewal")
            elif self._acquiring.get(shard) == epoch:
                self._lost_while_acquiring.add(shard)

    async def _read_map(self) -> None:
        nodes, _ = await self._call(store.nodes)
        shards, _ = await self._call(store.shards)
        self._nodes = {node.node_id: node for node in nodes}
        self._lease_left = [row.lease_left_s for row in shards]
        self._map_read_at = asyncio.get_running_loop().time()
        owners = [(row.owner_node if (row.lease_left_s or -1) > 0 else None, row.epoch) for row in shards]
        changed = owners != self._owners
        self._owners = owners
        live = [RingNode(node.node_id, node.lb_server_id, node.lb_weight) for node in nodes if self._live(node)]
        if not any(node.node_id == self.node_id for node in live) and not self.draining:
            live.append(RingNode(self.node_id, self.lb_server_id, self.lb_weight))
        ring = tuple(sorted(live, key=lambda node: node.node_id))
        if ring != self._ring:  # placing 256 shards costs milliseconds: only when the nodes change
            self._ring = ring
            self._targets = targets(self.shard_count, ring) if ring else [self.node_id] * self.shard_count
            reason = unaligned(ring)
            if reason is not None:
                log.warning("lb_ring_unaligned", reason=reason, detail="shards placed by rendezvous: requests via HAProxy are forwarded")
        if changed and self._map_changed is not None and not self._map_changed.done():
            self._map_changed.set_result(None)

    def _live(self, node: store.NodeRow) -> bool:
        """A node that beat within a lease and is not draining; not one that was at this node's own
        URL before it (a predecessor, killed: it cannot be listening there any more)."""
        predecessor = node.url == self.url and node.node_id != self.node_id
        return node.heartbeat_age_s < limits.SHARD_LEASE_S and not node.draining and not predecessor

    def _takeable(self, shard: int) -> bool:
        owner, _ = self._owners[shard]
        return owner is None

    async def _take(self, shards: Sequence[int]) -> int:
        taken, sent = await self._call(store.take, self.node_id, list(shards), limits.SHARD_LEASE_S)
        if not taken:
            return 0
        for shard, epoch in taken:
            self._acquiring[shard] = epoch
        started = time.perf_counter()
        try:
            if self._owner is not None:
                await self._owner.shards_acquired(taken)
        finally:
            for shard, _ in taken:
                self._acquiring.pop(shard, None)
        for shard, epoch in taken:
            if shard in self._lost_while_acquiring:
                self._lost_while_acquiring.discard(shard)
                if self._owner is not None:
                    self._owner.shard_lost(shard)
                continue
            self._held[shard] = Lease(epoch, sent + LOCAL_LEASE_S)
            self._owners[shard] = (self.node_id, epoch)
        self.stats.acquired += len(taken)
        log.info(
            "shard_acquired",
            shards=[shard for shard, _ in taken],
            epochs=[epoch for _, epoch in taken],
            ready_s=round(time.perf_counter() - started, 3),
        )
        if self._map_changed is not None and not self._map_changed.done():
            self._map_changed.set_result(None)
        return len(taken)

    async def _release(self, shard: int) -> None:
        """Hand one shard over: its actors finish, then the lease is given up at a new epoch (the
        next owner, told by the notification, takes it at once)."""
        self._releasing.add(shard)
        try:
            lease = self._held.get(shard)
            if lease is None:
                return
            if self._owner is not None:
                await self._owner.shard_releasing(shard)
            self._held.pop(shard, None)
            released, _ = await self._call(store.release, self.node_id, [(shard, lease.epoch)])
            self._owners[shard] = (None, released[0][1] if released else lease.epoch + 1)
            self.stats.released += 1
            log.info("shard_released", shard=shard, epoch=lease.epoch, to=self._targets[shard] if self._targets else None)
            if self._owner is not None:
                self._owner.shard_lost(shard)
        finally:
            self._releasing.discard(shard)

    def _lose(self, shard: int, reason: str) -> None:
        lease = self._held.pop(shard, None)
        if lease is None:
            return
        self.stats.lost += 1
        log.warning("shard_lost", shard=shard, epoch=lease.epoch, reason=reason)
        if self._owner is not None:
            self._owner.shard_lost(shard)

    # -- the lease connection (LISTEN too) ------------------------------------------------------

    async def _call(self, operation: Callable[..., Awaitable[T]], *arguments: object, **options: object) -> tuple[T, float]:
        """One statement on the lease connection, bounded by SHARD_RENEW_TIMEOUT_S; returns its result
        and when it was sent (the loop's clock). A failure drops the connection (the next reconnects)."""
        async with self._statements:
            try:
                connection = await self._connect()
                sent = asyncio.get_running_loop().time()
                async with asyncio.timeout(limits.SHARD_RENEW_TIMEOUT_S):
                    return await operation(connection, *arguments, **options), sent
            except BaseException:
                self._drop_connection()
                raise

    async def _connect(self) -> asyncpg.Connection:
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        connection = await connect(self.dsn)
        await connection.add_listener(store.SHARDS_CHANNEL, self._notified)
        await connection.add_listener(store.NODES_CHANNEL, self._notified)
        self._connection = connection
        return connection

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None
