-- The cluster: every `inventoryd serve` on this database is a node. Events hash into a fixed number
-- of shards; each shard is leased to one node at a time, with an epoch that every change of owner
-- increments. Every journal transaction checks, inside itself, that each shard it writes is still
-- at the epoch its writer took it at (the fence, in persistence/journal.py): a node that lost a
-- shard, however paused or cut off, can commit nothing for it after the next owner's epoch commits.

-- One row: the shard count, fixed here for the life of the database (persistence.limits
-- CLUSTER_SHARDS says the same, and a node refuses to start if they differ: event -> shard must
-- never change while the log exists).
CREATE TABLE cluster_config (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    shard_count integer     NOT NULL CHECK (shard_count BETWEEN 1 AND 65536),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO cluster_config (shard_count) VALUES (256);

-- One row per process (`nod_` + random): a restarted process is a new node, so a paused old one and
-- its successor never share an identity.
CREATE TABLE nodes (
    node_id      text        PRIMARY KEY CHECK (node_id ~ '^nod_[a-z2-7]{16}$'),
    url          text        NOT NULL CHECK (url ~ '^https?://[^/]+$'),
    -- The `id` of this node's `server` line in haproxy.cfg (NULL: the load balancer is not aligned).
    lb_server_id integer     CHECK (lb_server_id BETWEEN 1 AND 2147483647),
    lb_weight    integer     NOT NULL DEFAULT 16 CHECK (lb_weight BETWEEN 1 AND 256),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining     boolean     NOT NULL DEFAULT false
);
CREATE INDEX nodes_by_heartbeat ON nodes (heartbeat_at);

CREATE TABLE shards (
    shard_id         integer     PRIMARY KEY CHECK (shard_id >= 0),
    owner_node       text        REFERENCES nodes (node_id) ON DELETE SET NULL,
    epoch            bigint      NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    -- By the database's clock; a free shard's is over for good (-infinity), so that a takeover needs
    -- only `lease_expires_at < now()`.
    lease_expires_at timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at      timestamptz,
    released_at      timestamptz
);
-- Not for lookups (the primary key is unique already): a unique index on (shard_id, epoch) makes
-- `epoch` a key column, so every UPDATE that changes it takes the FOR UPDATE row lock, which waits
-- for the fence's FOR KEY SHARE (and the fence for it); a renewal, which changes only the lease,
-- takes FOR NO KEY UPDATE and never waits for a write.
CREATE UNIQUE INDEX shards_epoch_is_key ON shards (shard_id, epoch);
CREATE INDEX shards_by_owner ON shards (owner_node);

-- The epoch alone is the fencing token: an owner never changes without a new epoch.
CREATE FUNCTION shards_owner_needs_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'shard % changed owner without a new epoch', NEW.shard_id USING ERRCODE = 'IV001';
END $$;
CREATE TRIGGER shards_owner_needs_epoch BEFORE UPDATE OF owner_node ON shards
    FOR EACH ROW WHEN (OLD.owner_node IS DISTINCT FROM NEW.owner_node AND NEW.epoch <= OLD.epoch AND NEW.owner_node IS NOT NULL)
    EXECUTE FUNCTION shards_owner_needs_epoch();
INSERT INTO shards (shard_id) SELECT generate_series(0, shard_count - 1) FROM cluster_config;

-- A change of owner tells the other nodes at once (their shard maps, and a released shard taken
-- without waiting for a tick). Payload: "<shard_id> <epoch> <node or ->".
CREATE FUNCTION shards_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inventoryd_shards', NEW.shard_id || ' ' || NEW.epoch || ' ' || COALESCE(NEW.owner_node, '-'));
    RETURN NULL;
END $$;
CREATE TRIGGER shards_owner_changed AFTER UPDATE OF owner_node, epoch ON shards
    FOR EACH ROW WHEN (OLD.owner_node IS DISTINCT FROM NEW.owner_node OR OLD.epoch <> NEW.epoch)
    EXECUTE FUNCTION shards_notify();

-- A node joining, draining or leaving changes every node's share: tell them at once.
CREATE FUNCTION nodes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inventoryd_nodes', COALESCE(NEW.node_id, OLD.node_id));
    RETURN NULL;
END $$;
CREATE TRIGGER nodes_changed AFTER INSERT OR DELETE OR UPDATE OF draining ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_notify();
