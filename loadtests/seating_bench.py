"""Reserved seating's costs: best available beside general admission, the pick in instructions,
the memory and snapshots of big seat maps, and the recovery of a sold-out stadium.

    python -m loadtests.seating_bench [--duration 5] [--repeat 3] [--connections 64] [--events 100]
                                      [--parts throughput,recovery,memory,picks] [--skip-callgrind]

1. Throughput, in one run on one `inventoryd serve` as shipped (a service token, rate limits on):
   wrk reserves 1–4 tickets (each at random) for a new buyer at a time, `--duration` seconds each,
   at a general-admission event and best available at a 50,000-seat stadium (20 sections of 50
   rows of 50 seats), `--repeat` rounds, each on fresh events, the two in alternating order.
   Reported: accepted reservations per second (201s), p50/p99, WAL syncs per accepted
   reservation (pg_stat_wal), and how much of the stadium was sold by the end (the picks get
   harder as it fills); then the ratio seated / general admission per round, and its median.
2. The pick: instructions per best-available pick (callgrind, the difference of two runs of a loop
   of picks) on the stadium empty, half sold and 95% sold (sold by best available, 1–4 seats at a
   time), for 2 and for 4 seats: the same pick again (nothing changed), and a pick after its row
   changed (each pick's seats held and released before the next; less the hold and release).
3. Memory: RSS of `--events` events with the stadium's map, in a fresh process, empty and then
   sold out (every seat in a confirmed reservation of two), and one event's snapshot, empty and
   sold out.
4. Recovery of one sold-out stadium (in process, on PostgreSQL): its log read and replayed from
   the start, and its snapshot restored.
Everything runs on loopback and on its own embedded PostgreSQL; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import uvloop

from inventoryd import domain
from inventoryd.domain import Inventory, LayoutBlock, SeatLayout, SeatMap, SeatState
from inventoryd.domain.state import InventoryState
from loadtests import bench
from loadtests.catalogue_bench import Serve, _ready
from loadtests.core import local_core
from persistence import store
from persistence.journal import connect
from persistence.migrate import migrate

HERE = Path(__file__).resolve().parent
STADIUM = SeatLayout(blocks=tuple(LayoutBlock(section=f"S{n}", rows=50, seats_per_row=50, ticket_type="STD") for n in range(1, 21)))
STADIUM_SEATS = 50_000
MOST_PER_BUYER = 4
PICKS = (100, 300)
NOW = datetime(2027, 3, 1, tzinfo=UTC)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- 1. throughput ---------------------------------------------------------------------------------


async def _events(base: str) -> tuple[str, str]:
    """A general-admission event and the stadium (its map put)."""
    layout = msgspec.to_builtins(STADIUM)
    starts = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    admin = {"Authorization": f"Bearer {bench.ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=admin) as session:
        await _ready(session, base)
        ids = []
        for ticket_type in (
            {"code": "GA", "name": "GA", "price": 1000, "capacity": bench.HUGE_CAPACITY},
            {"code": "STD", "name": "Seat", "price": 1000, "capacity": 0, "seated": True},
        ):
            body = {"name": "seating bench", "starts_at": starts, "currency": "EUR", "ticket_types": [ticket_type]}
            async with session.post(f"{base}/v1/events", json=body) as response:
                assert response.status == 201, await response.text()
                ids.append((await response.json())["id"])
        async with session.put(f"{base}/v1/events/{ids[1]}/seatmap", json=layout) as response:
            assert response.status == 200, await response.text()
    return ids[0], ids[1]


async def _sold(base: str, event_id: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/v1/events/{event_id}/seats") as response:
        seats = await response.json()
    return int(seats["held"] + seats["sold"])


async def throughput(args: argparse.Namespace, admin_url: str) -> None:
    """`--repeat` rounds, each on a fresh general-admission event and a fresh stadium, the two in
    alternating order; the ratio is each round's, and the median of them is the verdict."""
    database_url = await bench.create_database(admin_url, "seating_bench")
    server = Serve(HERE.parent, bench.free_port(), database_url)
    try:
        token = bench.make_service_token(database_url)
        print("| round | reserves of 1–4 | accepted per second | p50 ms | p99 ms | WAL syncs per accepted | sold at the end |")
        print("|---|---|---:|---:|---:|---:|---:|")
        ratios = []
        for round_ in range(1, args.repeat + 1):
            general, stadium = await _events(server.base)
            targets = [("general admission", general, "GA"), ("best available, 50,000 seats", stadium, "STD")]
            rates = {}
            for name, event_id, code in targets if round_ % 2 else targets[::-1]:
                before = await bench.counters(database_url)
                stats = bench.wrk(
                    "wrk_seated.lua", server.base, args.duration, args.connections, event_id, code, str(MOST_PER_BUYER), token
                )
                after = await bench.counters(database_url)
                accepted = stats["requests"] - stats["non_2xx"]
                syncs, _ = bench.wal_sync_change(before[1], after[1])
                rates[code] = accepted / args.duration
                sold = f"{await _sold(server.base, stadium) / STADIUM_SEATS:.0%}" if code == "STD" else "–"
                print(
                    f"| {round_} | {name} | {rates[code]:,.0f} | {stats['p50_ms']:.2f} | {stats['p99_ms']:.2f} |"
                    f" {syncs / max(accepted, 1):.3f} | {sold} |",
                    flush=True,
                )
            ratios.append(rates["STD"] / rates["GA"])
        listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"best available / general admission: median {statistics.median(ratios):.2f} ({listed})")
    finally:
        server.stop()


# -- 2. the pick in instructions -------------------------------------------------------------------


def sold_state(share: float, rng: random.Random) -> SeatState:
    """The stadium sold to `share` by best available, 1–4 seats at a time (apart once no block fits)."""
    seats = SeatState(SeatMap(STADIUM))
    writes = InventoryState("bench")  # outside a batch: no undo log
    taken = 0
    number = 0
    while taken < share * STADIUM_SEATS:
        quantity = rng.randint(1, MOST_PER_BUYER)
        picked = seats.pick("STD", quantity, adjacent=False)
        if picked is None:
            break
        number += 1
        seats.take(writes, picked, f"r{number}")
        taken += quantity
    return seats


# A loop of picks on a saved state: `cached`, the same pick again and again (nothing changed: the
# cached block answers); `changed`, each pick's seats held and released again before the next
# (its row changed: the pick finds it again), and `holds`, the hold and release alone.
_PICK_LOOP = """
import pickle, sys
from inventoryd.domain.state import InventoryState
with open(sys.argv[1], "rb") as saved:
    seats = pickle.load(saved)
quantity, picks, mode = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
writes = InventoryState("bench")
picked = seats.pick("STD", quantity, adjacent=True)
for _ in range(picks):
    if mode != "holds":
        picked = seats.pick("STD", quantity, adjacent=True)
    if mode != "cached" and picked is not None:
        seats.take(writes, picked, "probe")
        seats.release(writes, picked, "probe")
"""


def pick_instructions(state_file: Path, quantity: int, mode: str, scratch: Path) -> float:
    counts = []
    for picks in PICKS:
        out = scratch / f"pick.{state_file.stem}.{quantity}.{mode}.{picks}.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", _PICK_LOOP,
             str(state_file), str(quantity), str(picks), mode],
            cwd=HERE.parent, check=True, capture_output=True, timeout=3600,
        )  # fmt: skip
        counts.append(bench.callgrind_totals(out))
    return (counts[1] - counts[0]) / (PICKS[1] - PICKS[0])


def picks(scratch: Path) -> None:
    rng = random.Random(1)
    print("| the stadium | free seats | seats | a pick, nothing changed | a pick after its row changed | µs (native) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, share in (("empty", 0.0), ("half sold", 0.5), ("95% sold", 0.95)):
        seats = sold_state(share, rng)
        state_file = scratch / f"{name.split()[0].rstrip('%')}.pickle"
        state_file.write_bytes(pickle.dumps(seats))
        free = sum(1 for seat in range(STADIUM_SEATS) if seats.is_free(seat))
        writes = InventoryState("bench")
        for quantity in (2, 4):
            started = time.perf_counter()
            for _ in range(200):
                picked = seats.pick("STD", quantity, adjacent=True)
                if picked is not None:
                    seats.take(writes, picked, "probe")
                    seats.release(writes, picked, "probe")
            native_us = (time.perf_counter() - started) / 200 * 1e6
            cached = pick_instructions(state_file, quantity, "cached", scratch)
            holds = pick_instructions(state_file, quantity, "holds", scratch)
            changed = pick_instructions(state_file, quantity, "changed", scratch) - holds
            print(f"| {name} | {free:,} | {quantity} | {cached:,.0f} | {changed:,.0f} | {native_us:,.0f} (with the hold) |", flush=True)


# -- 3. memory and snapshots -----------------------------------------------------------------------


_MEMORY = """
import gc, sys
from loadtests.seating_bench import memory_child
memory_child(int(sys.argv[1]))
"""


def _stadium_inventory(event_id: str) -> Inventory:
    inventory = Inventory(event_id)
    types = (domain.TicketTypeDefinition("STD", "Seat", 1000, 0, seated=True),)
    definition = domain.EventDefinition(event_id, "stadium", NOW + timedelta(days=30), "EUR", types, NOW)
    for command in (domain.CreateEvent(definition), domain.SetSeatMap(STADIUM)):
        for record in inventory.decide(command, NOW).records:
            inventory.apply(inventory.last_seq + 1, record)
    return inventory


def sell_out(inventory: Inventory) -> None:
    """Every seat in a confirmed reservation of two (records applied as recovery applies them)."""
    seats = inventory.seats
    assert seats is not None
    ids = seats.map.ids
    expires = NOW + timedelta(minutes=10)
    for index in range(0, len(ids), 2):
        reservation_id = domain.reservation_id_for(inventory.event_id, index // 2 + 1)
        pair = (ids[index], ids[index + 1])
        held = domain.ReservationHeld(reservation_id, f"u{index}", "STD", 2, 2000, NOW, expires, pair)
        inventory.apply(inventory.last_seq + 1, held)
        inventory.apply(inventory.last_seq + 1, domain.ReservationConfirmed(reservation_id, NOW))


def memory_child(events: int) -> None:
    gc.collect()
    base = rss_mib()
    inventories = [_stadium_inventory(f"evt_stadium{n:04d}") for n in range(events)]
    gc.collect()
    empty = rss_mib()
    empty_snapshot = len(inventories[0].snapshot())
    for inventory in inventories:
        sell_out(inventory)
    gc.collect()
    full = rss_mib()
    full_snapshot = len(inventories[0].snapshot())
    inventories[0].check_invariants()
    print(f"| {events} events of 50,000 seats, maps put, nothing sold | {empty - base:,.0f} MiB | {(empty - base) / events:,.1f} MiB |"
          f" {empty_snapshot / 1024:,.1f} KiB |")  # fmt: skip
    print(f"| the same, sold out (25,000 confirmed reservations each) | {full - base:,.0f} MiB | {(full - base) / events:,.1f} MiB |"
          f" {full_snapshot / 1024:,.0f} KiB |", flush=True)  # fmt: skip


def memory(events: int) -> None:
    print("| memory | RSS | per event | one event's snapshot |")
    print("|---|---:|---:|---:|")
    subprocess.run([sys.executable, "-c", _MEMORY, str(events)], cwd=HERE.parent, check=True, timeout=3600)


# -- 4. recovery of a sold-out stadium -------------------------------------------------------------


async def recovery(admin_url: str) -> None:
    database_url = await bench.create_database(admin_url, "seating_recovery")
    connection = await connect(database_url)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    async with local_core(database_url) as core:
        await core.registry.recovered.wait()
        inventory = _stadium_inventory("evt_probe")
        definition = inventory.require_definition()
        event_id = core.registry.new_event_id(None)
        definition = msgspec.structs.replace(definition, id=event_id)
        await core.registry.create_event(definition)
        actor = core.registry.get(event_id)
        assert actor is not None
        await actor.set_seat_map(STADIUM)
        started = time.perf_counter()

        # Sell it out through the actor: best available, two at a time (apart once no pair is left
        # side by side), each hold then confirmed.
        async def sell(users: range) -> None:
            outcomes = await asyncio.gather(*(actor.reserve(f"u{index}", "STD", 2, adjacent=False) for index in users))
            held = [outcome.result for outcome in outcomes]
            assert all(isinstance(reservation, domain.Reservation) for reservation in held), held[:3]
            await asyncio.gather(*(actor.confirm(reservation.id) for reservation in held if isinstance(reservation, domain.Reservation)))

        for start in range(0, STADIUM_SEATS // 2, 512):
            await sell(range(start, min(start + 512, STADIUM_SEATS // 2)))
        sell_s = time.perf_counter() - started
        view = actor.view()
        assert view is not None and view.ticket_types[0].sold == STADIUM_SEATS, view
        snapshot = actor.inventory.snapshot()
    async with local_core(database_url, start=False) as core, core.pool.acquire() as pooled:
        started = time.perf_counter()
        rows = await store.read_event_log(pooled, event_id)
        records = [(seq, domain.RECORD_DECODER.decode(body)) for seq, body in rows]
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        replayed = Inventory.replay(event_id, records)
        replay_s = time.perf_counter() - started
        started = time.perf_counter()
        restored = Inventory.restore(event_id, snapshot)
        restore_s = time.perf_counter() - started
        assert restored.seats is not None and replayed.seats is not None and restored.seats.holder == replayed.seats.holder
    print("| recovery of one sold-out 50,000-seat event | seconds |")
    print("|---|---:|")
    print(f"| (selling it out through the actor: {len(records):,} records) | {sell_s:.1f} |")
    print(f"| its log read from PostgreSQL and decoded | {read_s:.2f} |")
    print(f"| replayed from the start (with the full check at the end) | {replay_s:.2f} |")
    print(f"| its snapshot ({len(snapshot) / 1024 / 1024:.1f} MiB) restored (with its checks) | {restore_s:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="throughput,recovery,memory,picks", help="which of the four to run")
    parser.add_argument("--skip-callgrind", action="store_true", help="the same as leaving picks out of --parts")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    assert 1 <= args.duration <= 120 and 2 <= args.connections <= 1024 and 1 <= args.events <= 1000 and 1 <= args.repeat <= 9
    parts = set(args.parts.split(",")) - ({"picks"} if args.skip_callgrind else set())
    assert parts <= {"throughput", "recovery", "memory", "picks"}, parts
    started = time.perf_counter()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, wrk -c{args.connections} {args.duration} s each")
    if parts & {"throughput", "recovery"}:
        with bench.scratch_postgres("inventoryd-seating-bench-") as (server, _scratch):
            if "throughput" in parts:
                uvloop.run(throughput(args, server.dsn("postgres")))
            if "recovery" in parts:
                uvloop.run(recovery(server.dsn("postgres")))
    if "memory" in parts:
        memory(args.events)
    if "picks" in parts:
        with tempfile.TemporaryDirectory() as scratch_dir:
            picks(Path(scratch_dir))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
