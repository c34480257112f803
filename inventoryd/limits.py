"""Every bound inventoryd enforces, named once.

Names end with their unit (`_MAX` for counts, `_S` for seconds, `_BYTES` for sizes). Relationships
between bounds are asserted at import, so an edit that breaks one fails at once, not under load.
Operators override the ones that are configuration (see `inventoryd.config`); the rest are design.
The durable log's own bounds are in `persistence.limits`; the actor asserts how the two relate.
"""

from typing import Final

# An actor's mailbox: messages waiting beyond this are refused at once with 503 + Retry-After.
MAILBOX_MESSAGES_MAX: Final = 4096
# Messages an actor decides per journal append. Larger batches mean fewer fsyncs per change, but a
# longer wait for the first message of the batch.
BATCH_MESSAGES_MAX: Final = 512
# Group commit under load: when at least BATCH_LINGER_FROM_MESSAGES buyers were active around the
# last batch, the actor waits up to BATCH_LINGER_S for as many messages before it takes the next
# (the buyers it just answered come back). Below that, a batch is taken as soon as one message
# waits. Measured: 64 buyers on one event, 33 reservations per transaction without the wait, 65
# with it (loadtests/bench.py); 5 ms is a few HTTP round trips' worth of this server's CPU.
BATCH_LINGER_FROM_MESSAGES: Final = 8
BATCH_LINGER_S: Final = 0.005
# After a wait that ran out (the buyers think between requests: nobody to wait for), this many
# batches are taken without waiting before the actor tries again.
BATCH_LINGER_BACKOFF_BATCHES: Final = 16
# How long a request may wait for its actor before it is answered 503 (if not yet decided).
REQUEST_TIMEOUT_S: Final = 10.0
# Request bodies larger than this are refused with 413 before they are read.
REQUEST_BODY_BYTES_MAX: Final = 64 * 1024
# Seats a single reservation may ask for.
RESERVATION_QUANTITY_MAX: Final = 100
# Reserved seating. A seat map holds at most SEATMAP_SEATS_MAX seats (a 100,000-seat stadium),
# a row at most SEATMAP_ROW_SEATS_MAX (a pick reads one row: this bounds its work); a section, row
# or seat id is 1..SEAT_ID_PART_CHARS_MAX letters and digits (a seat's id joins the three with
# "-"). A block or unblock names at most SEATS_PER_REQUEST_MAX seats. Best available looks at
# most at SEAT_PICK_ROWS_MAX rows past the first that fits (each further row must be able to beat
# the best block found so far; this bounds the search when many rows almost tie).
SEATMAP_SEATS_MAX: Final = 100_000
SEATMAP_ROW_SEATS_MAX: Final = 1_000
SEAT_ID_PART_CHARS_MAX: Final = 12
SEATS_PER_REQUEST_MAX: Final = 1_000
SEAT_PICK_ROWS_MAX: Final = 64
# Best available keeps, per ticket type and quantity up to SEAT_PICK_CACHED_QUANTITY_MAX (and per
# rule: no single seat left, or not), a heap of each row's best block, so that a pick reads only
# the rows changed since the last; a heap is remade once it holds SEAT_PICK_HEAP_ROWS_RATIO × the
# type's rows (entries made stale by changes pile up until they come to the top).
SEAT_PICK_CACHED_QUANTITY_MAX: Final = 10
SEAT_PICK_HEAP_ROWS_RATIO: Final = 4
# A live availability stream carries the seats changed by the last SEAT_CHANGES_KEPT_MAX commits;
# a listener further behind gets every seat's status again.
SEAT_CHANGES_KEPT_MAX: Final = 64
# Waiting buyers of seated types promoted per decision (each a best-available pick); when a
# decision promotes that many, the actor decides again at once for the rest.
SEAT_PROMOTIONS_PER_DECISION_MAX: Final = 8
# Ticket types per event, and capacity per ticket type.
TICKET_TYPES_PER_EVENT_MAX: Final = 100
TICKET_TYPE_CAPACITY_MAX: Final = 10_000_000
# Hold duration bounds; the default applies when an event does not name one.
HOLD_SECONDS_MIN: Final = 10
HOLD_SECONDS_MAX: Final = 24 * 3600
HOLD_SECONDS_DEFAULT: Final = 600
# Holds one expiry message may expire; more due holds are expired by the next timer message.
EXPIRIES_PER_MESSAGE_MAX: Final = 1024
# Completed idempotent responses kept in memory (an LRU in front of PostgreSQL).
IDEMPOTENCY_CACHE_ENTRIES_MAX: Final = 100_000
# Key fingerprints remembered in memory to skip the database on a new key; past this many, every
# keyed request asks PostgreSQL instead (still correct, a little slower).
IDEMPOTENCY_KNOWN_KEYS_MAX: Final = 5_000_000
IDEMPOTENCY_RETENTION_S: Final = 48 * 3600
# The known keys are kept in generations this long; one is forgotten once every answer it can
# hold is past the retention period, allowing for this much difference between this process's
# clock and PostgreSQL's.
IDEMPOTENCY_KNOWN_GENERATION_S: Final = 6 * 3600
IDEMPOTENCY_CLOCK_SKEW_S: Final = 3600
IDEMPOTENCY_KEY_BYTES_MAX: Final = 255
# Supervision: an actor that crashes more than this many times within the window stays down.
ACTOR_RESTARTS_MAX: Final = 5
ACTOR_RESTART_WINDOW_S: Final = 60.0
ACTOR_RESTART_BACKOFF_MAX_S: Final = 1.0
# An actor snapshots its state once the records since its last snapshot reach SNAPSHOT_TAIL_RATIO
# of its reservations, and at least SNAPSHOT_EVERY_RECORDS: a snapshot costs O(state), so this
# amortises to a small constant per record, and recovery replays at most about that tail.
SNAPSHOT_EVERY_RECORDS: Final = 256
SNAPSHOT_TAIL_RATIO: Final = 1.0
# Start-up: the service is ready once it knows which events exist; their actors are rebuilt after,
# in the background, and at once for an event a request asks for. The background reads events in
# batches sized to about RECOVERY_BATCH_BYTES of snapshots and records each (the next batch's count
# scales with what the last one read per event, between RECOVERY_BATCH_EVENTS_MIN and _MAX: many
# small events share a read, a few large ones bound its memory), and lets requests in between two
# events once it has held the loop for RECOVERY_SLICE_S. A request waits at most COLD_ACTOR_WAIT_S
# for its event's actor (then 503, Retry-After).
RECOVERY_BATCH_BYTES: Final = 16 * 1024 * 1024
RECOVERY_BATCH_EVENTS_MIN: Final = 16
RECOVERY_BATCH_EVENTS_MAX: Final = 4096
RECOVERY_SLICE_S: Final = 0.002
COLD_ACTOR_WAIT_S: Final = 5.0
# The cluster. Each node leases shards for SHARD_LEASE_S (by the database's clock) and renews all its
# leases in one statement every SHARD_RENEW_INTERVAL_S (each attempt bounded by SHARD_RENEW_TIMEOUT_S).
# A node stops answering for a shard from memory before its lease could have run out anywhere else:
# at send time + SHARD_LEASE_S / (1 + CLOCK_DRIFT_MAX) - LEASE_SAFETY_MARGIN_S of its own monotonic
# clock, where the send time is when the renewal that kept the shard was sent (the database stamped
# the lease no earlier), CLOCK_DRIFT_MAX bounds how much faster the database's clock may run, and the
# margin covers the loop's lag between that check and the answer leaving. A dead node's shards are
# taken within SHARD_LEASE_S + SHARD_RENEW_INTERVAL_S (+ a rebuild): failover in under 5 s.
SHARD_LEASE_S: Final = 3.0
SHARD_RENEW_INTERVAL_S: Final = 0.5
SHARD_RENEW_TIMEOUT_S: Final = 1.0
CLOCK_DRIFT_MAX: Final = 0.01
LEASE_SAFETY_MARGIN_S: Final = 0.2
# Shards taken per statement, and handed over at once (the owner stops the shard's actors, waits
# up to SHARD_HANDOFF_DRAIN_S for their batches to commit, then releases it); a request for a shard
# whose owner is changing waits up to SHARD_OWNER_WAIT_S for the new one (then 503, Retry-After).
SHARD_ACQUIRE_BATCH_MAX: Final = 64
SHARD_HANDOFFS_IN_FLIGHT_MAX: Final = 4
SHARD_HANDOFF_DRAIN_S: Final = 2.0
SHARD_OWNER_WAIT_S: Final = 1.0
# A new event's id is drawn until its shard is one this node serves (a node serving s of 256
# shards needs 256/s draws on average; it gives up after this many, and forwards the request).
NEW_EVENT_ID_TRIES_MAX: Final = 256
# A SIGTERM hands every shard over within DRAIN_SHARDS_S (else the leases lapse on their own).
DRAIN_SHARDS_S: Final = 10.0
# A node silent this long, holding no live lease, is forgotten.
NODE_FORGET_S: Final = 60.0
# Forwarding to an event's owner: pooled keep-alive connections (in all, and per node), requests in
# flight (beyond: 503), and how long a connection to a node may take to open.
FORWARD_CONNECTIONS_MAX: Final = 256
FORWARD_CONNECTIONS_PER_NODE_MAX: Final = 64
FORWARD_IN_FLIGHT_MAX: Final = 1024
FORWARD_CONNECT_TIMEOUT_S: Final = 0.5
# The forwarding client's own pool (http/peers.py): connections to each node, and how long one may
# sit idle before it is not used again (shorter than the node's HTTP_KEEPALIVE_TIMEOUT_S).
PEER_CONNECTIONS_PER_NODE_MAX: Final = 64
PEER_IDLE_S: Final = 30.0
# A node id is "nod_" and 16 base32 letters; the forwarding tokens of this many node ids are kept
# (a node's own, and those of the nodes that forward to it: a few; forged ids only evict).
NODE_ID_CHARS_MAX: Final = 20
FORWARD_TOKENS_CACHED: Final = 64
# How long a shutdown waits for the actors to finish what they hold.
DRAIN_ACTORS_S: Final = 10.0
# Hold timers run on the loop's clock; every CLOCK_JUMP_CHECK_S the registry compares it with the
# wall clock, and a leap of more than CLOCK_JUMP_TOLERANCE_S makes every actor look for due holds.
CLOCK_JUMP_CHECK_S: Final = 1.0
CLOCK_JUMP_TOLERANCE_S: Final = 0.5
# Pages of list endpoints.
PAGE_ITEMS_MAX: Final = 200
PAGE_ITEMS_DEFAULT: Final = 50
# Text fields of events.
NAME_CHARS_MAX: Final = 200
# Money in minor units: a price at most this, so that price × capacity stays well inside 64 bits.
PRICE_MAX: Final = 100_000_000_000
DESCRIPTION_CHARS_MAX: Final = 10_000
# Every time a request gives (an event's dates, the catalogue's `from` and `to`) is written in a
# year from MOMENT_YEAR_MIN to MOMENT_YEAR_MAX, as written (before its offset is applied): a bound a
# client can check on the text and the OpenAPI document can state as a pattern. Taken to UTC, as
# asyncpg does before PostgreSQL stores it, any offset (under a day) keeps it within a day of those
# years, which Python's datetime (years 1 to 9999) and PostgreSQL's timestamptz both hold: 9999 is
# out because 9999-12-31 at a negative offset is year 10000 in UTC (and 0001-01-01 at a positive
# one year 0), and an event before 2000 is a typo, not an on-sale.
MOMENT_YEAR_MIN: Final = 2000
MOMENT_YEAR_MAX: Final = 9998
# The cyclic garbage collector's young generation: collections start after this many new container
# objects (CPython's default is 700). An on-sale keeps thousands of request objects in flight, which
# every young collection walks again; a larger threshold walks them far less often.
GC_YOUNG_OBJECTS_THRESHOLD: Final = 20_000
# Accounts: access tokens (JWT) live ACCESS_TOKEN_TTL_S, refresh tokens REFRESH_TOKEN_TTL_S. API
# tokens are reloaded from the database every API_TOKENS_RELOAD_S (a revocation takes effect within
# that), and at once for an unknown token id, at most every API_TOKENS_MISS_RELOAD_S.
ACCESS_TOKEN_TTL_S: Final = 15 * 60
REFRESH_TOKEN_TTL_S: Final = 30 * 24 * 3600
API_TOKENS_RELOAD_S: Final = 5.0
API_TOKENS_MISS_RELOAD_S: Final = 1.0
# Verified access tokens kept in memory (each until its own expiry).
ACCESS_TOKEN_CACHE_ENTRIES_MAX: Final = 100_000
# Sessions ended recently (logout, a reused refresh token): their access tokens stop working at
# once, not at expiry, on every node and after a restart. They are read from the database at start
# and with every API token reload; an access token outlives its session's end by at most its TTL, so
# sessions ended more than REVOKED_SESSIONS_LOOKBACK_S ago are forgotten (5 minutes more than the TTL
# allow for nodes' clocks that differ). At most REVOKED_SESSIONS_MAX are held (the oldest go first).
REVOKED_SESSIONS_LOOKBACK_S: Final = ACCESS_TOKEN_TTL_S + 5 * 60
REVOKED_SESSIONS_MAX: Final = 100_000
# Password hashing (argon2id) runs in PASSWORD_HASH_THREADS worker threads, with at most
# PASSWORD_HASHES_WAITING_MAX hashes waiting (beyond: 503).
PASSWORD_HASH_THREADS: Final = 2
PASSWORD_HASHES_WAITING_MAX: Final = 32
PASSWORD_CHARS_MIN: Final = 10
# Rows of the catalogue looked at per listing when `available=true` filters most of them out, of
# an event's reservations and of a user's history when a status filter skips most of them.
CATALOGUE_SCAN_ROWS_MAX: Final = 2000
# The waiting room: at most QUEUE_ENTRIES_MAX joins per event (409 queue_full beyond); admissions
# are let in as waves at most every QUEUE_WAVE_INTERVAL_S, at most QUEUE_WAVE_ENTRIES_MAX (or
# expired) per wave, so a wave's record fits one journal transaction with the rest of its batch.
QUEUE_ENTRIES_MAX: Final = 1_000_000
# A buyer's id as a service names it (ASCII: a byte a character).
USER_ID_CHARS_MAX: Final = 128
# What one waiting-room entry holds at most: its record (id, user id, times: ~250 bytes besides the
# user id) and its slots in the entries, users and line maps (~350 bytes). QUEUE_ENTRIES_MAX of them
# bound an event's room at about 1 GiB; measured (BENCHMARKS.md), an entry takes ~360 bytes.
QUEUE_ENTRY_BYTES_MAX: Final = 1024
QUEUE_WAVE_INTERVAL_S: Final = 0.25
QUEUE_WAVE_ENTRIES_MAX: Final = 1000
QUEUE_ADMIT_PER_MINUTE_MAX: Final = 1_000_000
QUEUE_ADMISSION_SECONDS_MIN: Final = 10
QUEUE_ADMISSION_SECONDS_MAX: Final = 86_400
QUEUE_EXEMPT_USERS_MAX: Final = 1000
# Proof of work on join: at most QUEUE_POW_BITS_MAX bits asked (2^24 hashes on average: seconds for
# a browser); a challenge's nonce is good for QUEUE_POW_NONCE_S; a solution is at most 64 characters.
QUEUE_POW_BITS_MAX: Final = 24
QUEUE_POW_NONCE_S: Final = 300
QUEUE_POW_SOLUTION_CHARS_MAX: Final = 64
# What a waiting buyer's Retry-After says: between these, a quarter of the wait it has left.
QUEUE_POLL_S_MIN: Final = 1
QUEUE_POLL_S_MAX: Final = 30
# Events whose answer (EventOut) is kept encoded for listings and event pages, the latest view each.
ENCODED_EVENTS_MAX: Final = 20_000
# Listings (by query string) kept as answered while nothing they show changed.
LISTING_ANSWERS_MAX: Final = 1024
# How long a browser or a CDN may serve a public read (listings, an event, its availability) before
# it asks again (with If-None-Match: a 304 while nothing changed).
PUBLIC_READ_MAX_AGE_S: Final = 1
# The catalogue in memory (inventoryd/catalogue.py). `q` finds an event by the words of its name and
# venue and the first of its description's words, at most CATALOGUE_WORDS_PER_EVENT_MAX distinct
# words in all, each by its first CATALOGUE_WORD_CHARS_MAX characters (a query's words too); a query
# has at most CATALOGUE_QUERY_WORDS_MAX words. So an entry holds at most
# CATALOGUE_ENTRY_BYTES_MAX (its strings, its words and their places in the index; measured RSS per
# entry in BENCHMARKS.md is far below). Filtered listings are kept in order for reuse until the
# catalogue changes: at most CATALOGUE_CACHED_LISTINGS_MAX of them, CATALOGUE_CACHED_KEYS_MAX events
# in all.
CATALOGUE_WORDS_PER_EVENT_MAX: Final = 256
CATALOGUE_WORD_CHARS_MAX: Final = 40
CATALOGUE_QUERY_WORDS_MAX: Final = 8
CATALOGUE_ENTRY_BYTES_MAX: Final = 96 * 1024
CATALOGUE_CACHED_LISTINGS_MAX: Final = 256
CATALOGUE_CACHED_KEYS_MAX: Final = 1_000_000
# Another node's change is listed here within CATALOGUE_FRESH_S (a notification, then a read of the
# changed rows). The notification connection is checked every CATALOGUE_CHECK_S (a query within
# DB_TIMEOUT_S); a lost one is replaced, waiting CATALOGUE_RECONNECT_S between tries, and the
# whole catalogue read again.
CATALOGUE_FRESH_S: Final = 0.25
CATALOGUE_CHECK_S: Final = 5.0
CATALOGUE_RECONNECT_S: Final = 0.5
RESERVATION_SCAN_MAX: Final = 10_000
HISTORY_SCAN_ROWS_MAX: Final = 2000
# Live availability: at most STREAM_SUBSCRIBERS_MAX streams open; updates per event are coalesced to
# one per STREAM_UPDATE_INTERVAL_S; a quiet stream carries a comment every STREAM_HEARTBEAT_S (so
# proxies keep it open) and is closed after STREAM_DURATION_MAX_S (clients reconnect).
STREAM_SUBSCRIBERS_MAX: Final = 1000
STREAM_UPDATE_INTERVAL_S: Final = 0.25
STREAM_HEARTBEAT_S: Final = 15.0
STREAM_DURATION_MAX_S: Final = 3600.0
# Token buckets kept in memory per limiter (least recently used go first).
RATE_BUCKETS_MAX: Final = 100_000
# Maintenance: stored idempotency answers past their retention are deleted this often.
IDEMPOTENCY_SWEEP_INTERVAL_S: Final = 3600.0
# A request's own X-Request-ID is used if it is printable and at most this long.
REQUEST_ID_CHARS_MAX: Final = 128
# /readyz waits at most this long for the database.
READINESS_DB_TIMEOUT_S: Final = 1.0
# Seconds a client is told to wait after 503 overload.
RETRY_AFTER_S: Final = 1
# Slow clients (slowloris): a request's headers must arrive within HTTP_HEADERS_READ_TIMEOUT_S of
# the connection's start or of their first byte, and its body within HTTP_BODY_READ_TIMEOUT_S of
# its headers (at least REQUEST_BODY_BYTES_MAX / this per second); else 408 and the connection is
# closed. An idle keep-alive connection is closed after HTTP_KEEPALIVE_TIMEOUT_S (longer than the
# 60 s idle timeout of the usual load balancers, which must close first).
HTTP_HEADERS_READ_TIMEOUT_S: Final = 10.0
HTTP_BODY_READ_TIMEOUT_S: Final = 10.0
HTTP_KEEPALIVE_TIMEOUT_S: Final = 75.0
# What a malformed request's log line quotes of the parser's reason (it may quote the request).
LOG_REASON_CHARS_MAX: Final = 200

# -- abuse bounds (security review, findings 7 and 8) ----------------------------------------------
# Live availability per client: one address holds at most STREAMS_PER_ADDRESS_MAX streams (a
# household or office behind one NAT, a few tabs each; beyond it 429: the client's own doing), one

# event at most STREAMS_PER_EVENT_MAX (half of STREAM_SUBSCRIBERS_MAX: an on-sale's crowd may take
# half the streams, the other half stays for every other event; beyond it 503). An IPv6 client is
# counted by its /64 (one host usually holds a whole /64), see inventoryd.ratelimit.address_key.
STREAMS_PER_ADDRESS_MAX: Final = 20
STREAMS_PER_EVENT_MAX: Final = 500
# Every STREAM_DISCONNECT_CHECK_S one sweep looks for streams whose client has gone, and ends them:
# their slots are free within that (aiohttp does not cancel a handler when its client goes).
STREAM_DISCONNECT_CHECK_S: Final = 0.25
# A write to a stream's client that does not read (its buffers full) is given up after this.
STREAM_WRITE_TIMEOUT_S: Final = 10.0
# Seconds a client refused a stream is told to wait: a slot frees when some stream ends, which
# nothing predicts; longer than RETRY_AFTER_S so that refused clients do not retry in lockstep.
STREAM_RETRY_AFTER_S: Final = 5
# Password hashing admits at most PASSWORD_HASHES_REGISTERING_MAX registrations (running or
# waiting) and at most PASSWORD_HASHES_LOGGING_IN_MAX logins (their verification, or a rehash), the
# two together PASSWORD_HASHES_WAITING_MAX: a registration flood cannot take the logins' share. A
# free hash thread takes a waiting login before a waiting registration. A hash not started within
# PASSWORD_HASH_QUEUE_WAIT_S is refused 503 (never a hang, even when logins keep every thread busy).
PASSWORD_HASHES_REGISTERING_MAX: Final = 8
PASSWORD_HASHES_LOGGING_IN_MAX: Final = 24
PASSWORD_HASH_QUEUE_WAIT_S: Final = 5.0

# -- the outbox: change feed, webhooks, confirmation emails (issue 22) -------------------------------
# A page of the change feed; and the log records a delivery stream reads from the database at once.
CHANGES_PAGE_MAX: Final = 1000
CHANGES_PAGE_DEFAULT: Final = 100
OUTBOX_READ_RECORDS_MAX: Final = 200
# Webhook endpoints alive at once (every node keeps them all), types one names, its URL's length.
WEBHOOKS_MAX: Final = 1000
WEBHOOK_URL_CHARS_MAX: Final = 2048
# One delivery: the connection and the whole answer within WEBHOOK_TIMEOUT_S (settable lower), of
# which at most WEBHOOK_RESPONSE_BYTES_MAX is read (and WEBHOOK_RESPONSE_KEPT_CHARS kept in the log).
WEBHOOK_TIMEOUT_S: Final = 10.0
WEBHOOK_RESPONSE_BYTES_MAX: Final = 64 * 1024
WEBHOOK_RESPONSE_KEPT_CHARS: Final = 1024
WEBHOOK_ERROR_KEPT_CHARS: Final = 500
# A failed delivery is tried again after base·2^(n-1) seconds (times a random 0.5..1), at most
# WEBHOOK_RETRY_CAP_S apart: with the defaults (INVENTORYD_WEBHOOK_RETRY_BASE_S 5, 20 attempts)
# the last attempt comes about 2.8 days after the first. Then the endpoint is marked failed.
WEBHOOK_RETRY_CAP_S: Final = 6 * 3600.0
WEBHOOK_ATTEMPTS_MAX_LIMIT: Final = 100
# Events one endpoint is delivered at once (each in its log order), and connections to one endpoint.
WEBHOOK_STREAMS_IN_FLIGHT_MAX: Final = 8
WEBHOOK_CONNECTIONS_PER_ENDPOINT_MAX: Final = 8
# Resolving an endpoint's host name when it is made.
WEBHOOK_RESOLVE_TIMEOUT_S: Final = 5.0
# How often the outbox writes the delivery log and the cursors that moved (a crash delivers again at
# most this much, never skips), and reads every endpoint again (beside the notifications).
OUTBOX_SAVE_INTERVAL_S: Final = 0.2
OUTBOX_RELOAD_INTERVAL_S: Final = 5.0
# The delivery log keeps a delivered or failed delivery this long (GitHub keeps three days).
WEBHOOK_DELIVERIES_KEPT_S: Final = 3 * 24 * 3600
OUTBOX_SWEEP_INTERVAL_S: Final = 3600.0
# A page of the delivery log.
DELIVERIES_PAGE_MAX: Final = 200
# The reserve path first: while this node's event loop runs late (its lag, probed every
# OUTBOX_LAG_PROBE_S and smoothed, above OUTBOX_BUSY_LAG_S: an on-sale is on), the outbox starts at
# most OUTBOX_BUSY_DELIVERIES_PER_S deliveries a second, all sinks together (in turn); the rest wait
# and go out when the peak passes. A delivery waiting for its endpoint's answer costs nothing meanwhile.
OUTBOX_LAG_PROBE_S: Final = 0.02
OUTBOX_BUSY_LAG_S: Final = 0.004
OUTBOX_BUSY_DELIVERIES_PER_S: Final = 150.0
# Sending one email (connect, hand over), and its retries' back-off (like a webhook's).
EMAIL_TIMEOUT_S: Final = 30.0
EMAIL_TEMPLATE_BYTES_MAX: Final = 64 * 1024
EMAIL_ADDRESS_CHARS_MAX: Final = 254
# The report streams this many rows fetched at a time; at most REPORTS_RUNNING_MAX are made at once
# per process (each holds a database connection while it streams; beyond it 503).
REPORT_PAGE_ROWS: Final = 1000
REPORTS_RUNNING_MAX: Final = 2


def _must(holds: bool, rule: str) -> None:
    """A relationship between bounds, checked at import (not `assert`: `python -O` keeps it)."""
    if not holds:
        raise ImportError(f"inventoryd.limits: {rule}")


_must(BATCH_MESSAGES_MAX <= MAILBOX_MESSAGES_MAX, "a batch fits the mailbox")
_must(1 < BATCH_LINGER_FROM_MESSAGES <= BATCH_MESSAGES_MAX, "the batch linger starts between 2 and a full batch")
_must(BATCH_LINGER_S < REQUEST_TIMEOUT_S, "the batch linger is shorter than a request's wait")
_must(BATCH_LINGER_BACKOFF_BATCHES >= 1, "the linger backs off for at least one batch")
_must(1 <= RECOVERY_BATCH_EVENTS_MIN <= RECOVERY_BATCH_EVENTS_MAX, "recovery batches have 1..max events")
_must(RECOVERY_BATCH_BYTES > 0 and RECOVERY_SLICE_S > 0, "recovery reads and slices are positive")
_must(COLD_ACTOR_WAIT_S < REQUEST_TIMEOUT_S, "a request waits for a cold actor less than its whole wait")
_must(HOLD_SECONDS_MIN <= HOLD_SECONDS_DEFAULT <= HOLD_SECONDS_MAX, "the default hold is within its bounds")
_must(PAGE_ITEMS_DEFAULT <= PAGE_ITEMS_MAX, "the default page fits the largest")
_must(RESERVATION_QUANTITY_MAX <= SEATMAP_ROW_SEATS_MAX <= SEATMAP_SEATS_MAX, "a row can seat a reservation; a map holds a row")
_must(SEATS_PER_REQUEST_MAX >= RESERVATION_QUANTITY_MAX and SEAT_PICK_ROWS_MAX >= 1, "seat requests and picks are bounded")
# An entry: its name, venue, city and category (NAME_CHARS_MAX each, 4 bytes a character at most, and
# again folded), 2 KiB of fixed fields and sort keys, and per word its text and ~100 bytes of index.
_must(
    2 * 4 * 4 * NAME_CHARS_MAX + 2048 + CATALOGUE_WORDS_PER_EVENT_MAX * (4 * CATALOGUE_WORD_CHARS_MAX + 100) <= CATALOGUE_ENTRY_BYTES_MAX,
    "a catalogue entry fits its bound",
)
_must(250 + USER_ID_CHARS_MAX + 350 <= QUEUE_ENTRY_BYTES_MAX, "a waiting-room entry fits its bound")
_must(1 < MOMENT_YEAR_MIN <= MOMENT_YEAR_MAX < 9999, "every accepted time is a UTC datetime, a day from the edges")
_must(IDEMPOTENCY_RETENTION_S >= 24 * 3600, "idempotency keys are kept at least 24 hours (API.md)")
_must(0 < IDEMPOTENCY_KNOWN_GENERATION_S <= IDEMPOTENCY_RETENTION_S, "a generation of known keys fits the retention")
_must(IDEMPOTENCY_CLOCK_SKEW_S >= 0, "the allowed clock skew is not negative")
_must(0 < CLOCK_JUMP_TOLERANCE_S < CLOCK_JUMP_CHECK_S, "a clock leap is judged within one check interval")
_must(PASSWORD_HASH_THREADS >= 1 and PASSWORD_HASHES_WAITING_MAX >= PASSWORD_HASH_THREADS, "hashes can run")
_must(0 < PEER_IDLE_S < HTTP_KEEPALIVE_TIMEOUT_S, "a pooled connection is dropped before the node would close it")
_must(0 < HTTP_HEADERS_READ_TIMEOUT_S < HTTP_KEEPALIVE_TIMEOUT_S, "a request's headers are awaited less than an idle connection")
_must(HTTP_BODY_READ_TIMEOUT_S > 0, "a body is awaited for a positive time")
_must(
    SHARD_RENEW_INTERVAL_S + SHARD_RENEW_TIMEOUT_S < SHARD_LEASE_S / (1 + CLOCK_DRIFT_MAX) - LEASE_SAFETY_MARGIN_S,
    "a renewal that timed out leaves time for the next before the local deadline",
)
_must(SHARD_LEASE_S + SHARD_RENEW_INTERVAL_S < 5.0, "failover within 5 s (issue 16)")
_must(
    1 <= STREAMS_PER_ADDRESS_MAX <= STREAMS_PER_EVENT_MAX <= STREAM_SUBSCRIBERS_MAX,
    "one address holds fewer streams than one event, one event fewer than all",
)
_must(0 < STREAM_DISCONNECT_CHECK_S < STREAM_HEARTBEAT_S, "a gone client is noticed before the next heartbeat")
_must(STREAM_WRITE_TIMEOUT_S > 0 and STREAM_RETRY_AFTER_S >= RETRY_AFTER_S, "stream writes and retries are bounded")
_must(
    PASSWORD_HASHES_REGISTERING_MAX + PASSWORD_HASHES_LOGGING_IN_MAX == PASSWORD_HASHES_WAITING_MAX
    and PASSWORD_HASHES_REGISTERING_MAX >= 1
    and PASSWORD_HASHES_LOGGING_IN_MAX >= PASSWORD_HASH_THREADS,
    "registrations and logins share the hashing, and logins can fill every thread",
)
_must(0 < PASSWORD_HASH_QUEUE_WAIT_S < REQUEST_TIMEOUT_S, "a hash waits for a thread less than a request's whole wait")
_must(CHANGES_PAGE_DEFAULT <= CHANGES_PAGE_MAX and OUTBOX_READ_RECORDS_MAX >= 1, "feed pages and outbox reads are bounded")
_must(0 < OUTBOX_SAVE_INTERVAL_S < OUTBOX_RELOAD_INTERVAL_S, "progress is saved more often than endpoints are reread")
_must(WEBHOOK_RESPONSE_KEPT_CHARS <= WEBHOOK_RESPONSE_BYTES_MAX, "what is kept of an answer was read")
