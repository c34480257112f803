"""The bounds of the durable log, named once (units last)."""

from typing import Final

# Records the journal writes in one transaction, summed over every append it coalesces.
JOURNAL_COMMIT_RECORDS_MAX: Final = 8192
# Appends waiting for the journal writer; beyond this an append fails at once (retryable).
JOURNAL_PENDING_APPENDS_MAX: Final = 4096
# How long one database round trip (connect, commit, query) may take.
DB_TIMEOUT_S: Final = 5.0
# Rows fetched per round trip while replaying the log.
RECOVERY_FETCH_ROWS: Final = 10_000

assert JOURNAL_PENDING_APPENDS_MAX >= 1 and JOURNAL_COMMIT_RECORDS_MAX >= 1
