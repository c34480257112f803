-- The outbox: what the log's committed changes are delivered to (webhook endpoints, the buyers'
-- confirmation emails), and how far each has been. Nothing here is written by the reserve path:
-- delivery reads the journal after it committed, and keeps its own cursors.

-- A subscriber's endpoint. `organizer_id` is the organizer who made it (NULL: an admin's, for every
-- event unless `event_id` narrows it); an organizer's endpoint hears only of that organizer's events.
-- The secret signs every delivery; it is shown once, when the endpoint is made.
CREATE TABLE webhooks (
    webhook_id   text        PRIMARY KEY CHECK (webhook_id ~ '^whk_[a-z2-7]{16}$'),
    url          text        NOT NULL,
    types        text[]      NOT NULL,
    event_id     text,
    organizer_id text,
    secret       text        NOT NULL,
    -- 'active', or 'failed' once a delivery ran out of attempts (nothing more is sent to it until
    -- a delivery is retried by hand: the order per event is kept, nothing is skipped).
    status       text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'failed')),
    failed_at    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    -- The Idempotency-Key it was made with (per caller), and the request's fingerprint: a retry
    -- gets the same endpoint (and its secret) again, another request with the key a 409.
    idempotency_scope text,
    idempotency_key   text,
    fingerprint       bytea
);
CREATE INDEX webhooks_live ON webhooks (webhook_id) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX webhooks_by_idempotency_key ON webhooks (idempotency_scope, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- How far each sink (a webhook's id, or 'email') has delivered each event's log: every change at
-- or before `delivered_seq` was delivered (or is not one the sink wants). Written after delivery,
-- so a crash delivers again from here, never skips.
CREATE TABLE outbox_cursors (
    sink          text   NOT NULL,
    event_id      text   NOT NULL,
    delivered_seq bigint NOT NULL CHECK (delivered_seq >= 0),
    PRIMARY KEY (sink, event_id)
);

-- The delivery log of webhooks: one row per change sent (or being sent) to an endpoint, with the
-- last attempt's outcome. The payload is not kept (it is the log's record, made again on a retry).
CREATE TABLE webhook_deliveries (
    delivery_id     text        PRIMARY KEY,
    webhook_id      text        NOT NULL,
    event_id        text        NOT NULL,
    seq             bigint      NOT NULL,
    type            text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL,
    last_status     integer,
    last_error      text,
    last_response   text,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at DESC, delivery_id DESC);
CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (updated_at);

-- An endpoint made, deleted or set going again: every node reads the endpoints again at once.
CREATE FUNCTION webhooks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('inventoryd_webhooks', COALESCE(NEW.webhook_id, OLD.webhook_id));
    RETURN NULL;
END $$;
CREATE TRIGGER webhooks_changed AFTER INSERT OR UPDATE OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION webhooks_notify();

-- Personal data lives here and in `users`, never in the journal (which keeps opaque user ids):
-- the address a service gave for a buyer's confirmation emails, per event. Erasable.
CREATE TABLE buyer_contacts (
    event_id   text        NOT NULL,
    user_id    text        NOT NULL,
    email      text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, user_id)
);
CREATE INDEX buyer_contacts_by_user ON buyer_contacts (user_id);

-- Confirmation emails, one row per confirmation (the log position of its record): claimed before
-- it is sent, so that no confirmation is mailed twice once it is marked sent. No address here.
CREATE TABLE confirmation_emails (
    event_id       text        NOT NULL,
    seq            bigint      NOT NULL,
    reservation_id text        NOT NULL,
    user_id        text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('sending', 'sent', 'no_address', 'skipped', 'failed')),
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text,
    sent_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, seq)
);

-- An erased account keeps its id (the log refers to it) and role; its email, name and password
-- hash are gone.
ALTER TABLE users ADD COLUMN erased_at timestamptz;
