"""The waiting room: fair (a uniform shuffle of the pre-queue, then first come first served), at its
rate, never past max_active, durable (a replay and a snapshot give the same line), and its gate.

Method: the state machine driven directly with a moved clock (decide, then apply, as the actor
does; the timer's message at the times the state says are next due), and the service over HTTP.
The shuffle's uniformity: QUEUE_SHUFFLES shuffles of 6 entries (720 orders), a chi-square test of
each entry's final place against the uniform, at the 0.001 significance level (the critical value
for 25 degrees of freedom is 52.62), and every order reached; a fixed seed for the draws, so the
test is the same every run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from inventoryd import domain, limits
from inventoryd.domain import EventDefinition, Inventory, TicketTypeDefinition
from inventoryd.domain.queue import QueueConfig, shuffled
from inventoryd.http import keys
from persistence.journal import connect
from tests.helpers import (
    ADMIN,
    FakeClock,
    cluster_of,
    create_event,
    event_body,
    free_port,
    make_api_token,
    metric,
    running_server,
    wait_node_ready,
    wait_ready,
    wait_settled,
    wait_until,
)

QUEUE_SHUFFLES = int(os.environ.get("QUEUE_SHUFFLES", "20000"))
CHI_SQUARE_25_DF_0001 = 52.62
SALE = datetime(2027, 5, 1, 10, 0, tzinfo=UTC)


def _event(**queue: Any) -> Inventory:
    config = QueueConfig(
        opens_at=SALE - timedelta(minutes=30),
        admit_per_minute=queue.pop("admit_per_minute", 60),
        admission_seconds=queue.pop("admission_seconds", 600),
        **queue,
    )
    inventory = Inventory("evt_room")
    definition = EventDefinition(
        id="evt_room",
        name="Room",
        starts_at=SALE + timedelta(days=30),
        currency="EUR",
        ticket_types=(TicketTypeDefinition("GA", "GA", 100, 10_000),),
        created_at=SALE - timedelta(days=1),
        sale_starts_at=SALE,
        queue=config,
    )
    LOGS.pop(id(inventory), None)  # the records of an inventory gone before, whose id this one has
    _run(inventory, domain.CreateEvent(definition), SALE - timedelta(days=1))
    return inventory


# Every record applied by `_run`, by inventory: the log, for the replay test.
LOGS: dict[int, list[tuple[int, domain.Record]]] = {}


def _run(inventory: Inventory, command: domain.Command, now: datetime) -> domain.Decision:
    decision = inventory.decide(command, now)
    for record in decision.records:
        seq = inventory.last_seq + 1
        inventory.apply(seq, record)
        LOGS.setdefault(id(inventory), []).append((seq, record))
    return decision


def _join(inventory: Inventory, user: str, now: datetime, seed: int = 0) -> str:
    reply = _run(inventory, domain.JoinQueue(user, seed), now).reply
    assert isinstance(reply, domain.Accepted) and reply.queue_entry_id is not None, reply
    return reply.queue_entry_id


def _tick_until(inventory: Inventory, until: datetime, seed: int = 1) -> list[tuple[datetime, tuple[str, ...]]]:
    """Send the timer's message at each time the state says is next due, up to `until`: the waves."""
    waves = []
    log_before = inventory.last_seq
    while True:
        config = inventory.require_definition().queue
        assert config is not None
        due = domain.queue.next_due(config, inventory.queue, SALE)
        if due is None or due > until:
            break
        before = inventory.last_seq
        decision = _run(inventory, domain.ExpireDue(seed), due)
        waves += [(due, record.entry_ids) for record in decision.records if isinstance(record, domain.QueueAdmitted)]
        assert inventory.last_seq > before or due >= until, "a due time that moves nothing"
    assert inventory.last_seq >= log_before
    return waves


def test_the_pre_queue_is_shuffled_uniformly() -> None:
    entries = [f"e{index}" for index in range(6)]
    rng = random.Random(20261201)
    places = [[0] * 6 for _ in entries]
    orders = set()
    for _ in range(QUEUE_SHUFFLES):
        order = shuffled(entries, rng.getrandbits(64))
        orders.add(tuple(order))
        for place, entry in enumerate(order):
            places[int(entry[1:])][place] += 1
    expected = QUEUE_SHUFFLES / 6
    chi_square = sum((count - expected) ** 2 / expected for row in places for count in row)
    assert chi_square < CHI_SQUARE_25_DF_0001, chi_square
    assert len(orders) == 720  # every order can come out
    assert shuffled(entries, 7) == shuffled(entries, 7)  # the seed alone decides (replay)


def test_arrival_before_the_start_does_not_count_and_after_it_is_first_come_first_served() -> None:
    inventory = _event(admit_per_minute=600)
    early = [_join(inventory, f"early{index}", SALE - timedelta(minutes=20) + timedelta(seconds=index)) for index in range(50)]
    entry = inventory.queue.entries[early[0]]
    assert entry.status == "waiting" and inventory.queue.waiting_ahead(early[0]) is None  # no place before the start
    late = [_join(inventory, f"late{index}", SALE + timedelta(seconds=1 + index), seed=99) for index in range(20)]
    line = inventory.queue.line
    assert set(line[:50]) == set(early) and line[:50] != early  # shuffled at the start...
    assert line[50:] == late  # ...and the later ones behind, in the order they came
    assert [inventory.queue.waiting_ahead(entry_id) for entry_id in line] == list(range(1, 71))
    # Joining again gives the same place.
    assert _join(inventory, "late3", SALE + timedelta(minutes=1)) == late[3]


def test_admissions_follow_the_rate_and_never_exceed_max_active() -> None:
    inventory = _event(admit_per_minute=120, max_active=30, admission_seconds=20)
    for index in range(2000):
        _join(inventory, f"u{index}", SALE - timedelta(minutes=10))
    waves = _tick_until(inventory, SALE + timedelta(minutes=5))
    admitted_at = [at for at, entry_ids in waves for _ in entry_ids]
    assert max(inventory.queue.active for _ in [0]) <= 30
    # 120 a minute is one every 0.5 s, but at most 30 within any 20 s window (each admission lasts 20 s):
    # the window binds, so the rate over the run is 30 per 20 s = 90 a minute.
    for start in range(len(admitted_at)):
        window = [at for at in admitted_at[start:] if at < admitted_at[start] + timedelta(seconds=20)]
        assert len(window) <= 30
    per_minute = len(admitted_at) / 5
    assert 85 <= per_minute <= 95, per_minute
    # Without max_active the rate alone: 120 a minute, within one admission.
    free = _event(admit_per_minute=120)
    for index in range(2000):
        _join(free, f"u{index}", SALE - timedelta(minutes=10))
    waves = _tick_until(free, SALE + timedelta(minutes=5))
    count = sum(len(entry_ids) for _, entry_ids in waves)
    assert abs(count - (120 * 5 + 1)) <= 1, count
    gaps = {round((b - a).total_seconds(), 3) for (a, _), (b, _) in itertools.pairwise(waves)}
    assert gaps == {0.5}, gaps  # evenly, not in bursts


def test_a_finished_purchase_frees_the_slot_and_leaving_frees_the_place() -> None:
    inventory = _event(admit_per_minute=60, max_active=1, admission_seconds=600)
    first, second, third = (_join(inventory, user, SALE - timedelta(minutes=5)) for user in ("a", "b", "c"))
    _tick_until(inventory, SALE + timedelta(seconds=5))
    admitted = [entry_id for entry_id in (first, second, third) if inventory.queue.entries[entry_id].status == "admitted"]
    assert len(admitted) == 1
    user = inventory.queue.entries[admitted[0]].user_id
    reply = _run(inventory, domain.Reserve(user, "GA", 1), SALE + timedelta(seconds=6)).reply
    assert isinstance(reply, domain.Accepted) and reply.reservation_id is not None
    _run(inventory, domain.Confirm(reply.reservation_id), SALE + timedelta(seconds=7))
    assert inventory.queue.active == 0 and inventory.queue.entries[admitted[0]].finished
    waiting = [entry_id for entry_id in (first, second, third) if inventory.queue.entries[entry_id].status == "waiting"]
    _run(inventory, domain.LeaveQueue(waiting[0]), SALE + timedelta(seconds=8))
    assert inventory.queue.waiting_ahead(waiting[1]) == 1
    _tick_until(inventory, SALE + timedelta(seconds=10))
    assert inventory.queue.entries[waiting[1]].status == "admitted"
    inventory.check_invariants()


def test_the_line_survives_replay_and_snapshots_exactly() -> None:
    inventory = _event(admit_per_minute=30, max_active=5, admission_seconds=30)
    for index in range(40):
        _join(inventory, f"u{index}", SALE - timedelta(minutes=3) + timedelta(seconds=index), seed=12345)
    _tick_until(inventory, SALE + timedelta(seconds=45))
    _run(inventory, domain.LeaveQueue(inventory.queue.next_waiting(3)[2]), SALE + timedelta(seconds=46))
    for index in range(5):
        _join(inventory, f"late{index}", SALE + timedelta(seconds=50 + index))
    replayed = Inventory.replay("evt_room", LOGS.pop(id(inventory)))
    restored = Inventory.restore("evt_room", inventory.snapshot())
    for other in (replayed, restored):
        assert other.queue.line == inventory.queue.line and other.queue.head == inventory.queue.head
        assert other.queue.entries == inventory.queue.entries and other.queue.active == inventory.queue.active
        assert [other.queue.waiting_ahead(e) for e in other.queue.line] == [inventory.queue.waiting_ahead(e) for e in inventory.queue.line]
        other.check_invariants()
    assert restored.snapshot() == inventory.snapshot()


def test_bad_joins_are_refused_and_change_nothing() -> None:
    inventory = _event()
    too_early = _run(inventory, domain.JoinQueue("u", 0), SALE - timedelta(hours=1)).reply
    assert isinstance(too_early, domain.Rejected) and too_early.code == "queue_not_open"
    plain = Inventory("evt_plain")
    definition = EventDefinition("evt_plain", "Plain", SALE, "EUR", (TicketTypeDefinition("GA", "GA", 1, 1),), SALE)
    _run(plain, domain.CreateEvent(definition), SALE)
    no_room = _run(plain, domain.JoinQueue("u", 0), SALE).reply
    assert isinstance(no_room, domain.Rejected) and no_room.code == "no_waiting_room"
    unknown = _run(inventory, domain.LeaveQueue("que_room_999"), SALE).reply
    assert isinstance(unknown, domain.Rejected) and unknown.code == "not_found"
    assert inventory.queue.joined == 0 and limits.QUEUE_ENTRIES_MAX > 0


# -- over HTTP ---------------------------------------------------------------------------------------


def _room_event(**queue: Any) -> dict[str, Any]:
    return event_body(
        sale_starts_at=_z(SALE),
        queue={"opens_at": _z(SALE - timedelta(minutes=30)), "admit_per_minute": 60, "admission_seconds": 120, **queue},
    )


def _z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _entry(client: Any, entry_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get(f"/v1/queue/{entry_id}", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()  # type: ignore[no-any-return]


async def _reserve(client: Any, event_id: str, user: str, headers: dict[str, str], token: str | None = None) -> Any:
    extra = {"Admission-Token": token} if token is not None else {}
    return await client.post(
        f"/v1/events/{event_id}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": user}, headers={**headers, **extra}
    )


async def test_the_gate_admits_only_with_a_valid_token_for_its_buyer_and_event(start: Any, database_url: str) -> None:
    clock = FakeClock(SALE - timedelta(minutes=10))
    client = await start(clock=clock)
    service = {"Authorization": f"Bearer {await make_api_token(database_url, 'service', 'shop')}"}
    created = await client.post("/v1/events", json=_room_event(exempt_user_ids=["guest"]))
    assert created.status == 201, await created.text()
    event = await created.json()
    assert event["queue"]["admit_per_minute"] == 60
    joined = {}
    for user in ("u1", "u2", "u3"):
        response = await client.post(f"/v1/events/{event['id']}/queue", json={"user_id": user}, headers=service)
        assert response.status == 201, await response.text()
        entry = await response.json()
        assert entry["status"] == "waiting" and entry["position"] is None and int(response.headers["Retry-After"]) >= 1
        joined[user] = entry["id"]
    again = await client.post(f"/v1/events/{event['id']}/queue", json={"user_id": "u1"}, headers=service)
    assert again.status == 200 and (await again.json())["id"] == joined["u1"]
    # The sale starts: the line is shuffled, and one buyer a second is let in.
    actor = client.app[keys.REGISTRY].get(event["id"])
    for now in (SALE + timedelta(milliseconds=500), SALE + timedelta(milliseconds=500), SALE + timedelta(seconds=1, milliseconds=500)):
        clock.now = now
        actor.wake_expiry()
        await wait_until(lambda: actor.idle)
    entries = {user: await _entry(client, entry_id, service) for user, entry_id in joined.items()}
    admitted = [user for user, entry in entries.items() if entry["status"] == "admitted"]
    waiting = sorted(entry["position"] for entry in entries.values() if entry["status"] == "waiting")
    assert len(admitted) == 2 and waiting == [1], entries  # at the start, and a second later
    first = admitted[0]
    token = entries[first]["admission_token"]
    other = next(user for user in joined if user not in admitted)
    for user, sent, code in (
        (other, None, "admission_required"),  # none
        (other, token, "admission_required"),  # another buyer's
        (first, token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "admission_required"),  # tampered
        (first, "v1.x.y.z", "admission_required"),  # not one of ours
    ):
        refused = await _reserve(client, event["id"], user, service, sent)
        assert refused.status == 403 and (await refused.json())["code"] == code, (user, sent)
    assert (await _reserve(client, event["id"], first, service, token)).status == 201
    assert (await _reserve(client, event["id"], "guest", service)).status == 201  # exempt
    assert (await _reserve(client, event["id"], "walk-in", ADMIN)).status == 201  # admins bypass
    # Another event's room: this token is not for it.
    second = await (await client.post("/v1/events", json=_room_event())).json()
    refused = await _reserve(client, second["id"], first, service, token)
    assert refused.status == 403 and (await refused.json())["code"] == "admission_required"
    # The window passes: the same token is expired, and says so.
    clock.advance(121)
    expired = await _reserve(client, event["id"], first, service, token)
    assert expired.status == 403 and (await expired.json())["code"] == "admission_expired"
    left = await client.delete(f"/v1/queue/{joined[other]}", headers=service)
    assert left.status == 204 and (await _entry(client, joined[other], service))["status"] == "left"
    line = await (await client.get(f"/v1/events/{event['id']}/queue")).json()
    assert line["joined"] == 3 and line["shuffled"] is True
    report = await (await client.get(f"/v1/events/{event['id']}/report")).json()
    assert report["queue"] == line and report["queue"]["admitted"] == 2
    scraped = await (await client.get("/metrics")).text()
    assert 'inventoryd_queue_wait_seconds_count 2.0' in scraped and "inventoryd_queue_joined_total 3.0" in scraped


async def test_places_and_admissions_survive_a_restart(start: Any, database_url: str) -> None:
    clock = FakeClock(SALE - timedelta(minutes=10))
    client = await start(clock=clock)
    service = {"Authorization": f"Bearer {await make_api_token(database_url, 'service', 'shop')}"}
    event = await (await client.post("/v1/events", json=_room_event(admit_per_minute=120))).json()
    ids = []
    for index in range(30):
        response = await client.post(f"/v1/events/{event['id']}/queue", json={"user_id": f"u{index}"}, headers=service)
        ids.append((await response.json())["id"])
    actor = client.app[keys.REGISTRY].get(event["id"])
    for step in range(5):  # the shuffle, then a wave every half second
        clock.now = SALE + timedelta(seconds=0.5 * step)
        actor.wake_expiry()
        await wait_until(lambda: actor.idle)
    before = [await _entry(client, entry_id, service) for entry_id in ids]
    assert sum(entry["status"] == "admitted" for entry in before) >= 2
    await client.close()
    restarted = await start(clock=clock)
    after = [await _entry(restarted, entry_id, service) for entry_id in ids]
    assert after == before  # every place, every admission, every token (the key is in the database)
    admitted = next(entry for entry in after if entry["status"] == "admitted")
    reserved = await _reserve(restarted, event["id"], admitted["user_id"], service, admitted["admission_token"])
    assert reserved.status == 201, await reserved.text()


async def test_bad_waiting_room_requests_are_refused_and_change_nothing(client: Any) -> None:
    no_start = await client.post("/v1/events", json={**_room_event(), "sale_starts_at": None})
    assert no_start.status == 422 and (await no_start.json())["field"] == "$.sale_starts_at"
    late_open = await client.post("/v1/events", json=_room_event(opens_at=_z(SALE + timedelta(hours=1))))
    assert late_open.status == 422 and (await late_open.json())["field"] == "$.queue.opens_at"
    nonsense = await client.post("/v1/events", json=_room_event(admit_per_minute=0))
    assert nonsense.status == 422 and "admit_per_minute" in (await nonsense.json())["field"]
    plain = await create_event(client)
    refused = await client.post(f"/v1/events/{plain['id']}/queue", json={"user_id": "u"})
    assert refused.status == 409 and (await refused.json())["code"] == "no_waiting_room"
    event = await (await client.post("/v1/events", json=_room_event())).json()
    patched = await client.patch(
        f"/v1/events/{event['id']}", json={"queue": {"opens_at": _z(SALE), "admit_per_minute": -5, "admission_seconds": 60}}
    )
    assert patched.status == 422
    unknown = await client.get("/v1/queue/que_nosuch_1")
    assert unknown.status == 404
    assert (await (await client.get(f"/v1/events/{event['id']}")).json())["queue"]["admit_per_minute"] == 60


def test_a_rolled_back_batch_takes_its_joins_waves_and_leaves_back() -> None:
    inventory = _event(admit_per_minute=60, max_active=3)
    for index in range(10):
        _join(inventory, f"u{index}", SALE - timedelta(minutes=5))
    _tick_until(inventory, SALE + timedelta(seconds=2))
    before = inventory.snapshot(), list(inventory.queue.gone), dict(inventory.queue.index), inventory.queue.active
    inventory.begin()
    waiting = inventory.queue.next_waiting(3)
    _run(inventory, domain.LeaveQueue(waiting[1]), SALE + timedelta(seconds=3))
    _run(inventory, domain.LeaveQueue(waiting[0]), SALE + timedelta(seconds=3))
    _join(inventory, "newcomer", SALE + timedelta(seconds=3))
    _run(inventory, domain.ExpireDue(5), SALE + timedelta(seconds=4))
    assert inventory.queue.gone  # the leaves were there
    inventory.rollback()
    assert (inventory.snapshot(), list(inventory.queue.gone), dict(inventory.queue.index), inventory.queue.active) == before
    inventory.check_invariants()


async def test_users_joins_are_limited_per_client_address(start: Any, database_url: str) -> None:
    clock = FakeClock(SALE - timedelta(minutes=10))
    client = await start(clock=clock, settings={"rate_join_per_s": 0.01, "rate_join_burst": 2})
    event = await (await client.post("/v1/events", json=_room_event())).json()
    users = []
    for index in range(3):
        email = f"fan{index}@example.org"
        registered = await client.post("/v1/auth/register", json={"email": email, "password": "long enough 123", "name": "Fan"})
        assert registered.status == 201, await registered.text()
        tokens = await (await client.post("/v1/auth/login", json={"email": email, "password": "long enough 123"})).json()
        users.append({"Authorization": f"Bearer {tokens['access_token']}"})
    statuses = [(await client.post(f"/v1/events/{event['id']}/queue", headers=headers)).status for headers in users]
    assert statuses == [201, 201, 429]  # three accounts, one address
    service = {"Authorization": f"Bearer {await make_api_token(database_url, 'service', 'shop')}"}
    for index in range(3):  # a storefront joins for its buyers from one address: its token's bucket, not the address's
        response = await client.post(f"/v1/events/{event['id']}/queue", json={"user_id": f"s{index}"}, headers=service)
        assert response.status == 201


async def test_a_place_in_line_is_answered_by_any_node(database_url: str, tmp_path: Path) -> None:
    """Queue ids carry their event's key: any node forwards a join, a look or a leave to the owner."""
    now = datetime.now(UTC)
    room = event_body(
        sale_starts_at=_z(now + timedelta(hours=1)),
        queue={"opens_at": _z(now - timedelta(hours=1)), "admit_per_minute": 60, "admission_seconds": 60},
    )
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            first, second = cluster.start("first"), cluster.start("second")
            await wait_node_ready(session, first)
            await wait_node_ready(session, second)
            await wait_settled(session, first, owners=2, balanced=True)
            events = []
            for _ in range(6):  # some of them owned by each node
                async with session.post(f"{first.base}/v1/events", json=room) as response:
                    assert response.status == 201, await response.text()
                    events.append((await response.json())["id"])
            for index, event_id in enumerate(events):
                here, there = (first, second) if index % 2 else (second, first)
                async with session.post(f"{here.base}/v1/events/{event_id}/queue", json={"user_id": f"u{index}"}) as response:
                    assert response.status == 201, await response.text()
                    entry = await response.json()
                async with session.get(f"{there.base}/v1/queue/{entry['id']}") as response:
                    assert response.status == 200 and (await response.json())["user_id"] == f"u{index}"
                async with session.delete(f"{here.base}/v1/queue/{entry['id']}") as response:
                    assert response.status == 204
            assert (
                await metric(session, first, "inventoryd_forwarded_requests_total")
                + await metric(session, second, "inventoryd_forwarded_requests_total")
                > 0
            )


async def test_a_waiting_room_may_ask_for_a_proof_of_work(start: Any, database_url: str) -> None:
    import hashlib

    from inventoryd.http.admission import leading_zero_bits

    clock = FakeClock(SALE - timedelta(minutes=10))
    client = await start(clock=clock)
    service = {"Authorization": f"Bearer {await make_api_token(database_url, 'service', 'shop')}"}
    event = await (await client.post("/v1/events", json=_room_event(pow_bits=8))).json()
    path = f"/v1/events/{event['id']}/queue"
    missing = await client.post(path, json={"user_id": "u1"}, headers=service)
    assert missing.status == 403 and (await missing.json())["code"] == "pow_required"
    challenge = await (await client.get(f"{path}/challenge", headers=service)).json()
    assert challenge["bits"] == 8

    def solve(user: str) -> str:
        for counter in itertools.count():
            digest = hashlib.sha256(f"{challenge['nonce']}:{user}:{counter}".encode()).digest()
            if leading_zero_bits(digest) >= 8:
                return str(counter)
        raise AssertionError("unreachable")

    solution = solve("u1")
    other = await client.post(path, json={"user_id": "u2", "pow": {"nonce": challenge["nonce"], "solution": solution}}, headers=service)
    assert other.status == 403 and (await other.json())["field"] == "$.pow"  # another user's work
    forged = await client.post(path, json={"user_id": "u1", "pow": {"nonce": "1999999999.AAAA", "solution": solution}}, headers=service)
    assert forged.status == 403
    joined = await client.post(path, json={"user_id": "u1", "pow": {"nonce": challenge["nonce"], "solution": solution}}, headers=service)
    assert joined.status == 201, await joined.text()
    clock.advance(limits.QUEUE_POW_NONCE_S + 1)
    stale = await client.post(path, json={"user_id": "u3", "pow": {"nonce": challenge["nonce"], "solution": solve("u3")}}, headers=service)
    assert stale.status == 403 and "expired" in (await stale.json())["detail"]
    line = await (await client.get(path)).json()
    assert line["joined"] == 1  # nothing refused was written


async def test_a_kill_during_an_on_sale_keeps_every_place_and_admission(database_url: str) -> None:
    """SIGKILL of the real server while buyers join and waves let them in: after the restart every
    acknowledged join is there with its id, every acknowledged admission is still admitted with the
    same token, nobody is admitted twice, and the line is as the log says (its invariants hold)."""
    now = datetime.now(UTC)
    room = event_body(
        sale_starts_at=_z(now - timedelta(seconds=1)),
        queue={"opens_at": _z(now - timedelta(hours=1)), "admit_per_minute": 1200, "admission_seconds": 600},
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service = {"Authorization": f"Bearer {await make_api_token(database_url, 'service', 'shop')}"}
    acknowledged: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        with running_server(database_url, port) as process:
            await wait_ready(session, base, process)
            async with session.post(f"{base}/v1/events", json=room, headers=ADMIN) as response:
                event_id = (await response.json())["id"]

            async def joiner(worker: int) -> None:
                for index in itertools.count():
                    try:
                        async with session.post(
                            f"{base}/v1/events/{event_id}/queue", json={"user_id": f"w{worker}-{index}"}, headers=service
                        ) as response:
                            if response.status == 201:
                                entry = await response.json()
                                acknowledged[entry["id"]] = entry
                    except aiohttp.ClientError:
                        return

            joiners = [asyncio.create_task(joiner(worker)) for worker in range(16)]
            await asyncio.sleep(1.5)  # joins, and waves of admissions (20 a second)
            for entry_id in list(acknowledged)[:200]:
                async with session.get(f"{base}/v1/queue/{entry_id}", headers=service) as response:
                    acknowledged[entry_id] = await response.json()
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            await asyncio.gather(*joiners, return_exceptions=True)
        admitted = {entry_id: entry for entry_id, entry in acknowledged.items() if entry["status"] == "admitted"}
        assert len(acknowledged) > 50 and admitted, (len(acknowledged), len(admitted))
        with running_server(database_url, port) as process:
            await wait_ready(session, base, process)
            for entry_id, before in acknowledged.items():
                async with session.get(f"{base}/v1/queue/{entry_id}", headers=service) as response:
                    assert response.status == 200, (entry_id, await response.text())
                    after = await response.json()
                assert after["user_id"] == before["user_id"] and after["joined_at"] == before["joined_at"]
                if entry_id in admitted:
                    assert after["status"] == "admitted" and after["admission_token"] == before["admission_token"]
            async with session.get(f"{base}/v1/events/{event_id}/queue", headers=ADMIN) as response:
                line = await response.json()
            assert line["joined"] >= len(acknowledged) and line["admitted"] >= len(admitted)
    connection = await connect(database_url)
    try:
        rows = await connection.fetch("SELECT seq, body FROM journal WHERE event_id = $1 ORDER BY seq", event_id)
    finally:
        await connection.close()
    replayed = Inventory.replay(event_id, [(row["seq"], domain.RECORD_DECODER.decode(row["body"])) for row in rows])
    replayed.check_invariants()  # nobody admitted twice (apply refuses it), every count as the entries say
    order = replayed.queue.admitted_order
    assert len(order) == len(set(order))


def test_an_entry_stays_within_its_memory_bound() -> None:
    import tracemalloc

    inventory = _event()
    long_user = "u" * (limits.USER_ID_CHARS_MAX - 8)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(5000):
            _join(inventory, f"{long_user}{index:08d}", SALE + timedelta(seconds=1), seed=3)  # after the shuffle: in line
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    LOGS.pop(id(inventory), None)  # the test's own record of the log is not the entries' memory
    per_entry = (after - before) / 5000
    assert per_entry <= limits.QUEUE_ENTRY_BYTES_MAX, per_entry  # with the test's own record of the log


def test_every_rate_admits_when_its_next_admission_is_due() -> None:
    """At every rate the time `next_due` gives is one at which an admission is due: a rate whose
    interval the clock cannot hold exactly (11 a minute is 5.4545… s) must not leave the timer firing
    at a moment that moves nothing (with a stopped clock: for ever)."""
    for rate in (7, 11, 14, 18, 26, 45, 97, 1234):
        inventory = _event(admit_per_minute=rate)
        for index in range(5):
            _join(inventory, f"u{index}", SALE - timedelta(minutes=1))
        waves = _tick_until(inventory, SALE + timedelta(seconds=60 * 4 / rate + 0.5))
        assert sum(len(entry_ids) for _, entry_ids in waves) == 5, (rate, waves)
