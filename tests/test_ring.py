"""Shard placement (inventoryd/cluster/ring.py) when the load balancer's ids are misconfigured.

A ring HAProxy could not have (two nodes given one `--lb-server-id`) used to raise in every node's
shard round, so that no shard was taken or handed over again. Method: the placement of such nodes
is compared with rendezvous placement of the same nodes, which it must fall back to, and the
reason `unaligned` gives (logged as `lb_ring_unaligned`) is checked to name the fault.
"""

from __future__ import annotations

from collections import Counter

from inventoryd.cluster.ring import RingNode, targets, unaligned

SHARDS = 256


def nodes(*server_ids: int | None) -> list[RingNode]:
    return [RingNode(f"nod_{chr(ord('a') + index) * 16}", server_id, 16) for index, server_id in enumerate(server_ids)]


def without_ids(ring: list[RingNode]) -> list[RingNode]:
    return [RingNode(node.node_id, None, node.lb_weight) for node in ring]


def test_two_nodes_with_one_id_fall_back_to_rendezvous() -> None:
    ring = nodes(1, 2, 2)
    placed = targets(SHARDS, ring)
    assert placed == targets(SHARDS, without_ids(ring))
    assert set(Counter(placed)) == {node.node_id for node in ring}
    reason = unaligned(ring)
    assert reason is not None and "2" in reason


def test_a_node_without_an_id_is_named() -> None:
    ring = nodes(1, None, 3)
    assert targets(SHARDS, ring) == targets(SHARDS, without_ids(ring))
    reason = unaligned(ring)
    assert reason is not None and ring[1].node_id in reason


def test_aligned_nodes_follow_the_haproxy_ring() -> None:
    ring = nodes(1, 2, 3)
    assert unaligned(ring) is None
    assert unaligned(nodes(None, None)) is None
    assert targets(SHARDS, ring) != targets(SHARDS, without_ids(ring))
    # The placement depends on the nodes, not on the order they are listed in.
    assert targets(SHARDS, ring) == targets(SHARDS, ring[::-1])
