-- Log bodies as `json`, not `jsonb`: kept byte for byte as the service wrote them, so the record's
-- type tag stays first and decoding is fast, and an append does not pay for jsonb's parse. The
-- `->>` queries and the partial index on the buyer work the same.
DROP INDEX journal_reservations_by_user;
ALTER TABLE journal ALTER COLUMN body TYPE json USING body::json;
CREATE INDEX journal_reservations_by_user
    ON journal ((body ->> 'user_id'), recorded_at DESC, event_id DESC, seq DESC)
    WHERE kind IN ('reservation_held', 'reservation_waitlisted');
