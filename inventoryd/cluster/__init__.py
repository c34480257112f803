"""The cluster: which shard an event is in and which node should own it (`ring.py`), and this node's
leases on its shards (`membership.py`)."""

from inventoryd.cluster.membership import ClusterMisconfigured, Lease, Membership, ShardOwner, new_node_id
from inventoryd.cluster.ring import shard_of, targets

__all__ = ["ClusterMisconfigured", "Lease", "Membership", "ShardOwner", "new_node_id", "shard_of", "targets"]
