-- Snapshots of an event's state at a log position, so recovery replays only the tail after it.
-- They are an optimisation: the log alone is the truth, and the audit checks snapshots against it.
CREATE TABLE snapshots (
    event_id   text        NOT NULL,
    seq        bigint      NOT NULL,
    state      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, seq)
);
