"""The durable log of inventoryd: migrations, the batched journal, recovery, embedded PostgreSQL.

It knows nothing of HTTP or actors: it stores and returns opaque records in order.
"""
