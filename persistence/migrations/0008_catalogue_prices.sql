-- The catalogue in memory (inventoryd/catalogue.py) is built from this table at start and kept
-- current from its changes: every node's listings filter on price, so the table carries each
-- event's ticket prices, and the log position of the change that wrote the row, so that a node
-- applying changes from two sources (its own commits, other nodes' notifications) never takes an
-- older row over a newer one.
ALTER TABLE events
    ADD COLUMN prices        bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN catalogue_seq bigint   NOT NULL DEFAULT 0;

-- The rows written before: their prices from the log. A ticket type's price is the one its latest
-- record gives (created with the event or added later, then changed); `event_updated` is left out,
-- as it repeats the ticket types the event was created with.
UPDATE events AS e
SET prices = coalesce(
        (SELECT array_agg(DISTINCT current.price ORDER BY current.price)
         FROM (SELECT DISTINCT ON (given.code) given.price
               FROM (SELECT j.seq, tt ->> 'code' AS code, (tt ->> 'price')::bigint AS price
                     FROM journal j, json_array_elements(j.body -> 'event' -> 'ticket_types') AS tt
                     WHERE j.event_id = e.event_id AND j.kind = 'event_created'
                     UNION ALL
                     SELECT j.seq, j.body -> 'ticket_type' ->> 'code', (j.body -> 'ticket_type' ->> 'price')::bigint
                     FROM journal j
                     WHERE j.event_id = e.event_id AND j.kind = 'ticket_type_added'
                     UNION ALL
                     SELECT j.seq, j.body ->> 'code', (j.body ->> 'price')::bigint
                     FROM journal j
                     WHERE j.event_id = e.event_id AND j.kind = 'ticket_type_changed') AS given
               ORDER BY given.code, given.seq DESC) AS current),
        '{}'),
    catalogue_seq = coalesce((SELECT max(j.seq) FROM journal j WHERE j.event_id = e.event_id), 0);
