"""The abuse bounds of the security review's findings 7, 8 and 10, beside the end-to-end tests in
tests/test_hardening_api.py: the stream budget and the password-hashing queue on their own, and
over HTTP with the bounds made small.

Method: the bounds are lowered with monkeypatch (they are read when used), the aiohttp test client
stands in for one client address (127.0.0.1), and blocking functions stand in for argon2 so the
order in which the hashing threads take work can be watched.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from inventoryd import limits
from inventoryd.accounts import _HashQueue
from inventoryd.errors import Unavailable
from inventoryd.http import keys
from inventoryd.ratelimit import address_key
from inventoryd.streams import StreamBudget, StreamRefused
from tests.helpers import ADMIN, Stream, create_event, free_port, one_type, running_server, wait_ready, wait_until

PASSWORD = "correct horse battery staple"


# -- finding 7: streams per address, per event, and freed when their client goes -----------------


async def test_the_stream_budget_counts_per_address_and_event_and_forgets_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "STREAMS_PER_ADDRESS_MAX", 2)
    monkeypatch.setattr(limits, "STREAMS_PER_EVENT_MAX", 3)
    monkeypatch.setattr(limits, "STREAM_SUBSCRIBERS_MAX", 4)
    budget = StreamBudget()
    here = lambda: False  # noqa: E731 - a client that stays
    first = budget.open("evt_a", "address:a", here)
    budget.open("evt_a", "address:a", here)
    with pytest.raises(StreamRefused) as refused:
        budget.open("evt_b", "address:a", here)
    assert refused.value.scope == "address"
    budget.open("evt_a", "address:b", here)
    with pytest.raises(StreamRefused) as refused:
        budget.open("evt_a", "address:c", here)
    assert refused.value.scope == "event"
    budget.open("evt_b", "address:c", here)
    with pytest.raises(StreamRefused) as refused:
        budget.open("evt_c", "address:d", here)
    assert refused.value.scope == "total"
    # The client's own bound is named first, even when the service is full too.
    with pytest.raises(StreamRefused) as refused:
        budget.open("evt_c", "address:a", here)
    assert refused.value.scope == "address"
    budget.close(first)
    budget.close(first)  # twice: nothing more
    assert (budget.streams_of(), budget.streams_of(address="address:a"), budget.streams_of(event_id="evt_a")) == (3, 1, 2)
    assert first.gone.done()
    for lease in list(budget._leases):
        budget.close(lease)
    assert budget.streams_of() == 0 and budget._by_address == {} and budget._by_event == {}
    assert budget._sweep is None


async def test_the_stream_budget_notices_a_gone_client_within_the_check_interval() -> None:
    budget = StreamBudget()
    connected = True
    lease = budget.open("evt_a", "address:a", lambda: not connected)
    await asyncio.sleep(limits.STREAM_DISCONNECT_CHECK_S * 2)
    assert not lease.gone.done()
    connected = False
    await asyncio.wait_for(lease.gone, limits.STREAM_DISCONNECT_CHECK_S * 2)
    budget.close(lease)


async def open_stream(client: Any, event_id: str) -> Any:
    response = await client.get(f"/v1/events/{event_id}/availability/stream")
    if response.status == 200:
        await asyncio.wait_for(response.content.readline(), 5)
    return response


async def test_streams_over_http_429_per_address_503_per_event_and_free_on_disconnect(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "STREAMS_PER_ADDRESS_MAX", 3)
    monkeypatch.setattr(limits, "STREAMS_PER_EVENT_MAX", 2)
    one, two = await create_event(client), await create_event(client)
    budget = client.app[keys.STREAMS]
    streams = [await open_stream(client, one["id"]), await open_stream(client, one["id"])]
    assert [stream.status for stream in streams] == [200, 200]
    full_event = await open_stream(client, one["id"])
    assert full_event.status == 503 and full_event.content_type == "application/problem+json"
    assert full_event.headers["Retry-After"] == str(limits.STREAM_RETRY_AFTER_S)
    assert (await full_event.json())["code"] == "overloaded"
    streams.append(await open_stream(client, two["id"]))
    assert streams[-1].status == 200
    own_doing = await open_stream(client, two["id"])
    assert own_doing.status == 429 and own_doing.headers["Retry-After"] == str(limits.STREAM_RETRY_AFTER_S)
    assert (await own_doing.json())["code"] == "rate_limited"
    # The client goes away: its slot frees within the check interval, not at the next heartbeat.
    streams.pop(0).close()
    await wait_until(lambda: budget.streams_of() == 2, 1.0)
    again = await open_stream(client, one["id"])
    assert again.status == 200
    streams.append(again)
    for stream in streams:
        stream.close()
    await wait_until(lambda: budget.streams_of() == 0, 1.0)
    assert budget._by_address == {} and budget._by_event == {}


async def test_an_open_stream_does_not_hold_up_a_shutdown(database_url: str) -> None:
    """Same fault as finding 7's slow-to-free slot: a stream ended only at a failed write, so one
    anonymous stream held a SIGTERM's drain for the whole shutdown timeout, and the service exited
    1 (`shutdown_timed_out`) after 20 s. It must end its streams as it drains, and exit 0 promptly."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
        with running_server(database_url, port) as process:
            await wait_ready(session, base, process)
            body = {"name": "Quiet", "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR", "ticket_types": one_type(10)}
            async with session.post(f"{base}/v1/events", json=body) as response:
                event_id = (await response.json())["id"]
            stream = await Stream.open(port, event_id, "127.0.0.2")
            assert stream.status == 200
            process.send_signal(signal.SIGTERM)
            # The stream ends (EOF) soon after the drain starts; the process exits cleanly.
            async with asyncio.timeout(5):
                while await stream.reader.read(4096):
                    pass
            await wait_until(lambda: process.poll() is not None, 10)
            stream.close()
            assert process.returncode == 0


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("203.0.113.7", "address:203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "address:2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::99", "address:2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "address:203.0.113.7"),
        (None, "address:unknown"),
    ],
)
def test_per_address_bounds_count_an_ipv6_client_by_its_64(remote: str | None, key: str) -> None:
    """One IPv6 host usually holds a whole /64: counted per address it could take a new bucket (or
    a new stream allowance) per request."""
    assert address_key(remote) == key


# -- finding 8: logins keep their share of the password hashing ----------------------------------


class Blocker:
    """A stand-in for argon2 that runs until released, and records the order things ran in."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran
        self.release = threading.Event()

    def job(self, name: str) -> Any:
        def run() -> str:
            self.ran.append(name)
            self.release.wait(10)
            return name

        return run


@pytest.fixture
def one_hash_thread(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(limits, "PASSWORD_HASH_THREADS", 1)
    executor = ThreadPoolExecutor(1)
    yield _HashQueue(executor)
    executor.shutdown(wait=True)


async def test_a_free_hash_thread_takes_a_waiting_login_before_registrations(one_hash_thread: _HashQueue) -> None:
    ran: list[str] = []
    busy, after = Blocker(ran), Blocker(ran)
    after.release.set()
    running = asyncio.ensure_future(one_hash_thread.run("registration", busy.job("r1")))
    await wait_until(lambda: ran == ["r1"])
    waiting = [asyncio.ensure_future(one_hash_thread.run("registration", after.job("r2")))]
    await asyncio.sleep(0.01)
    waiting.append(asyncio.ensure_future(one_hash_thread.run("login", after.job("l1"))))
    await asyncio.sleep(0.01)
    busy.release.set()
    assert await asyncio.gather(running, *waiting) == ["r1", "r2", "l1"]
    assert ran == ["r1", "l1", "r2"]


async def test_registrations_cannot_take_the_logins_share(one_hash_thread: _HashQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PASSWORD_HASHES_REGISTERING_MAX", 2)
    ran: list[str] = []
    busy = Blocker(ran)
    registrations = [asyncio.ensure_future(one_hash_thread.run("registration", busy.job(f"r{n}"))) for n in range(2)]
    await wait_until(lambda: len(ran) == 1)
    with pytest.raises(Unavailable):
        await one_hash_thread.run("registration", busy.job("r-refused"))
    login = asyncio.ensure_future(one_hash_thread.run("login", busy.job("l1")))
    await asyncio.sleep(0.01)
    assert not login.done()  # admitted, waiting: not refused
    busy.release.set()
    assert await login == "l1"
    await asyncio.gather(*registrations)
    assert ran == ["r0", "l1", "r1"]


async def test_a_hash_that_waits_too_long_is_refused_and_the_queue_goes_on(
    one_hash_thread: _HashQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "PASSWORD_HASH_QUEUE_WAIT_S", 0.05)
    ran: list[str] = []
    busy = Blocker(ran)
    running = asyncio.ensure_future(one_hash_thread.run("login", busy.job("l1")))
    await wait_until(lambda: ran == ["l1"])
    with pytest.raises(Unavailable):
        await one_hash_thread.run("login", busy.job("l-late"))
    busy.release.set()
    await running
    assert await one_hash_thread.run("registration", busy.job("r1")) == "r1"
    assert ran == ["l1", "r1"] and one_hash_thread._running == 0


async def register(client: Any, email: str) -> Any:
    return await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "Someone"})


async def test_registrations_from_everywhere_share_one_rate(start: Any) -> None:
    """Each address within its own limit (here one address with a large one), all registrations
    together still within INVENTORYD_RATE_REGISTER_*: 429 with Retry-After beyond; logins are not
    counted against it."""
    client = await start(
        headers=None,
        settings={"rate_auth_per_s": 100.0, "rate_auth_burst": 100, "rate_register_per_s": 0.01, "rate_register_burst": 3},
    )
    statuses = [(await register(client, f"user{n}@example.org")).status for n in range(3)]
    assert statuses == [201, 201, 201]
    refused = await register(client, "user3@example.org")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["code"] == "rate_limited"
    login = await client.post("/v1/auth/login", json={"email": "user0@example.org", "password": PASSWORD})
    assert login.status == 200


# -- finding 10: registration says whether an email is taken, and that is bounded ----------------


async def test_registration_tells_a_taken_email_without_hashing_and_within_the_rate(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision pinned: a taken email is answered 409 `conflict` at `$.email` (any case), before
    its password is hashed (no hashing is left here, and the 409 comes all the same), and such
    probes take tokens of the registration rate like any registration."""
    client = await start(
        headers=None,
        settings={"rate_auth_per_s": 100.0, "rate_auth_burst": 100, "rate_register_per_s": 0.01, "rate_register_burst": 3},
    )
    assert (await register(client, "owner@example.org")).status == 201
    monkeypatch.setattr(limits, "PASSWORD_HASHES_REGISTERING_MAX", 0)
    assert (await register(client, "someone.new@example.org")).status == 503  # indeed no hashing left
    taken = await register(client, "OWNER@example.org")
    problem = await taken.json()
    assert taken.status == 409 and (problem["code"], problem["field"]) == ("conflict", "$.email")
    assert (await register(client, "owner@example.org")).status == 429
    # Logging in tells nothing of the kind (tests/test_auth.py has the whole case).
    unknown = await client.post("/v1/auth/login", json={"email": "nobody@example.org", "password": PASSWORD})
    wrong = await client.post("/v1/auth/login", json={"email": "owner@example.org", "password": "wrong-wrong-wrong"})
    assert unknown.status == wrong.status == 401 and (await unknown.json())["detail"] == (await wrong.json())["detail"]
