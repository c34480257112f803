-- The durable log and what is written beside it in the same transactions.

-- One row per record an event's actor decided, in the actor's order. The actor is the only writer
-- of its event's rows; (event_id, seq) refuses a second writer of the same position, and `epoch`
-- carries the owner's lease epoch for the multi-node future (a stale owner's append is refused).
CREATE TABLE journal (
    event_id    text        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    epoch       bigint      NOT NULL DEFAULT 0,
    kind        text        NOT NULL,
    body        jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, seq)
);

-- The catalogue: one row per event, written with the event's first record. The journal stays the
-- source of truth for inventory; this table answers "which events exist" and catalogue queries.
CREATE TABLE events (
    event_id     text        PRIMARY KEY,
    name         text        NOT NULL,
    description  text,
    venue        text,
    city         text,
    category     text,
    starts_at    timestamptz NOT NULL,
    organizer_id text,
    status       text        NOT NULL,
    owner_epoch  bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_by_start ON events (starts_at, event_id);
CREATE INDEX events_by_name ON events (name, event_id);

-- Answers to requests that carried an Idempotency-Key and changed state, written in the same
-- transaction as the records they produced: a key is remembered if and only if its change is.
CREATE TABLE idempotency_keys (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea       NOT NULL,
    response    bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
