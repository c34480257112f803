"""`inventoryd serve` for the cluster tests, with faults a test asks for by environment variable:

- INVENTORYD_TEST_WRITE_DELAY_S: the journal holds each transaction this long before it sends it
  (a slow disk), so that a node paused at any moment has appends in flight;
- INVENTORYD_TEST_NO_EPOCH_FENCE=1: the mutant that the zombie test must catch: the fence no longer
  compares epochs (only that the shard has an owner).

    python -m tests.cluster_node serve --port … --database-url …
"""

from __future__ import annotations

import asyncio
import os
import sys

from inventoryd import cli
from persistence import journal

_delay_s = float(os.environ.get("INVENTORYD_TEST_WRITE_DELAY_S", "0") or 0)
if _delay_s > 0:
    _write = journal.Journal._write

    async def _slow_write(self: journal.Journal, batches: list[journal.Append]) -> None:
        await asyncio.sleep(_delay_s)
        await _write(self, batches)

    journal.Journal._write = _slow_write  # type: ignore[method-assign]

if os.environ.get("INVENTORYD_TEST_NO_EPOCH_FENCE") == "1":
    fenced = " AND s.epoch = f.epoch"
    if fenced not in journal._WRITE:
        raise SystemExit("the mutant no longer applies: the fence's epoch check has moved")
    journal._WRITE = journal._WRITE.replace(fenced, "").replace(
        "SELECT s.shard_id, s.epoch\n", "SELECT s.shard_id, f.epoch\n"
    )

if __name__ == "__main__":
    cli.main(sys.argv[1:])
