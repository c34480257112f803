"""The bounds of the durable log, named once (units last)."""

from typing import Final

from persistence.checks import invariant

# Records the journal writes in one transaction, summed over every append it coalesces.
JOURNAL_COMMIT_RECORDS_MAX: Final = 8192
# Appends waiting for the journal writer; beyond this an append fails at once (retryable).
JOURNAL_PENDING_APPENDS_MAX: Final = 4096
# Group commit across events: when at least JOURNAL_LINGER_FROM_APPENDS appends were active around
# the last commit, the writer waits for as many before the next one: up to JOURNAL_LINGER_S until
# half of them came (JOURNAL_LINGER_MAX_S if fewer than half came by then), then while more keep
# coming (a pause of JOURNAL_LINGER_QUIET_S ends the wait). See Journal._linger.
JOURNAL_LINGER_FROM_APPENDS: Final = 8
JOURNAL_LINGER_S: Final = 0.010
JOURNAL_LINGER_MAX_S: Final = 0.030
JOURNAL_LINGER_QUIET_S: Final = 0.001
# Any group-commit wait (the journal's, and an actor's for its buyers) pays only while this process
# is busy receiving the requests it waits for (see persistence.linger): once a wait has lasted
# LINGER_CHECK_S, it ends as soon as the process has used less than LINGER_BUSY_SHARE_MIN of a CPU
# since the wait began (checked every LINGER_CHECK_S). A process that idles while it waits is
# waiting for buyers who are not coming back at once: open-loop arrivals, at their own pace.
LINGER_CHECK_S: Final = 0.001
LINGER_BUSY_SHARE_MIN: Final = 0.9
# Shards of the cluster: fixed when the database is first migrated (migrations/0007_cluster.sql
# stores it; a node refuses to start if they differ): an event's shard must never change.
CLUSTER_SHARDS: Final = 256
# How long one database round trip (connect, commit, query) may take.
DB_TIMEOUT_S: Final = 5.0
# Rows fetched per round trip while replaying the log.
RECOVERY_FETCH_ROWS: Final = 10_000
# The embedded server's binaries asked for their version (can the server user run them?).
EMBEDDED_PROBE_TIMEOUT_S: Final = 10.0

invariant(JOURNAL_PENDING_APPENDS_MAX >= 1, "the journal takes at least one append")
invariant(JOURNAL_COMMIT_RECORDS_MAX >= 1, "a journal transaction holds at least one record")
invariant(1 < JOURNAL_LINGER_FROM_APPENDS <= JOURNAL_PENDING_APPENDS_MAX, "the journal lingers from 2 appends up")
invariant(0 < JOURNAL_LINGER_QUIET_S < JOURNAL_LINGER_S, "a quiet pause ends the linger before its first deadline")
invariant(JOURNAL_LINGER_S <= JOURNAL_LINGER_MAX_S < DB_TIMEOUT_S, "the linger ends well before a database timeout")
invariant(0 < LINGER_CHECK_S <= JOURNAL_LINGER_S, "a linger looks at the process at least once before its deadline")
invariant(0 < LINGER_BUSY_SHARE_MIN <= 1, "a busy share is a share of one CPU")
