-- A user's reservations across events, read from the log itself: the records that create a
-- reservation carry its user, and this partial index finds them newest first. No projection table,
-- so the hot path writes nothing more than the log row.
CREATE INDEX journal_reservations_by_user
    ON journal ((body ->> 'user_id'), recorded_at DESC, event_id DESC, seq DESC)
    WHERE kind IN ('reservation_held', 'reservation_waitlisted');

-- Catalogue filters.
CREATE INDEX events_by_city ON events (city, starts_at);
CREATE INDEX events_by_category ON events (category, starts_at);
