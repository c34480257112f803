"""The on-sale scenario: a crowd of buyers on a few hot events until they sell out, and browsers.

    # a service token for the buyers, an admin token to set the events up:
    export INVENTORYD_SERVICE_TOKEN=$(inventoryd token create --role service --name locust)
    export INVENTORYD_ADMIN_TOKEN=...   # the one the server was started with, or `token create --role admin`
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 200 -r 50 -t 60s \
        --csv loadtests/results/onsale --html loadtests/results/onsale.html

Each buyer task is one buyer's journey, with a user id of its own: reserve (some two seats, some
joining the waiting list), then mostly confirm, sometimes cancel or let the hold expire; then the
next buyer arrives. The events are sized to sell out within a 60 s run of 200 users; sold out (409)
and the other refusals of EXPECTED_REFUSALS are correct answers, not failures.

At the end the scenario reads every event's counters (`GET /v1/events/{id}`, public) and checks
that nothing is oversold; a run whose check cannot run (no event, an event that cannot be read)
fails. It prints one line, `VERDICT ok: ...` or `VERDICT FAIL (reasons): ...`, and sets Locust's
exit code: non-zero also when the failure ratio passes LOCUST_MAX_FAIL_RATIO or p95 passes
LOCUST_MAX_P95_MS.

Settings (environment): LOCUST_EVENTS (hot events to create, default 3), LOCUST_CAPACITY (GA seats
per event, default 1000; VIP gets a twentieth), LOCUST_EVENT_IDS (use these events instead of
creating any).

The waiting-room phase (LOCUST_ROOM=1): one more event, with a waiting room whose sale starts
LOCUST_ROOM_START_S (default 5) seconds into the run and admits LOCUST_ROOM_ADMIT_PER_MINUTE (600)
buyers a minute. `Queuer` users join it before and after the start, look again when the server's
`Retry-After` says, and reserve with their admission token once admitted. The end-of-run check
adds: a reserve without a token is refused (403), every reservation of that event is a buyer's who
was admitted, and there are no more of them than admissions; nothing oversold, as for the others.
"""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import gevent
from locust import FastHttpUser, between, events, task
from locust.runners import WorkerRunner

# Buyers use the service token; without one, the admin token (which may also act for any user).
SERVICE_TOKEN = os.environ.get("INVENTORYD_SERVICE_TOKEN") or os.environ.get("INVENTORYD_ADMIN_TOKEN", "")
ADMIN_TOKEN = os.environ.get("INVENTORYD_ADMIN_TOKEN", "")
EVENT_COUNT = int(os.environ.get("LOCUST_EVENTS", "3"))
CAPACITY = int(os.environ.get("LOCUST_CAPACITY", "1000"))
MAX_FAIL_RATIO = float(os.environ.get("LOCUST_MAX_FAIL_RATIO", "0.01"))
MAX_P95_MS = float(os.environ.get("LOCUST_MAX_P95_MS", "500"))
ROOM = os.environ.get("LOCUST_ROOM", "0") == "1"
ROOM_START_S = float(os.environ.get("LOCUST_ROOM_START_S", "5"))
ROOM_ADMIT_PER_MINUTE = int(os.environ.get("LOCUST_ROOM_ADMIT_PER_MINUTE", "600"))
# A queuer polls at most this often, whatever Retry-After says (a short test run).
ROOM_POLL_S_MAX = float(os.environ.get("LOCUST_ROOM_POLL_S_MAX", "2"))
# How long one set-up or check request may take.
CHECK_TIMEOUT_S = 30
# Answers that are the service doing its job during an on-sale, not failures.
EXPECTED_REFUSALS = {"sold_out", "insufficient_tickets", "limit_exceeded", "hold_expired"}

log = logging.getLogger("onsale")
event_ids: list[str] = [event_id for event_id in os.environ.get("LOCUST_EVENT_IDS", "").split(",") if event_id]
# What the buyers were told during the run.
sold_out_seen: set[tuple[str, str]] = set()
# The waiting-room event, and the buyers the server admitted to it (as their entries said).
room_event: list[str] = []
admitted_buyers: set[str] = set()
outcomes: Counter[str] = Counter()
setup_problems: list[str] = []


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _read_event(host: str, event_id: str) -> dict[str, Any]:
    """The event with its counters; public, so the check needs no token."""
    request = urllib.request.Request(f"{host}/v1/events/{urllib.parse.quote(event_id, safe='')}")
    with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as response:
        event: dict[str, Any] = json.loads(response.read())
    return event


def _why(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"{error.code} {error.reason}"
    return str(error)


def _create_event(host: str, index: int, **extra: Any) -> str:
    body = {
        "name": f"On-sale {index} {uuid.uuid4().hex[:6]}",
        "starts_at": "2027-06-01T19:00:00Z",
        "currency": "EUR",
        "per_user_limit": 4,
        "hold_seconds": 120,
        "ticket_types": [
            {"code": "GA", "name": "General admission", "price": 4500, "capacity": CAPACITY},
            {"code": "VIP", "name": "VIP", "price": 15000, "capacity": max(1, CAPACITY // 20)},
        ],
        **extra,
    }
    request = urllib.request.Request(
        f"{host}/v1/events",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **_auth(ADMIN_TOKEN)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as response:
        return str(json.loads(response.read())["id"])


def _create_room(host: str) -> str:
    now = datetime.now(UTC)
    starts = now + timedelta(seconds=ROOM_START_S)
    return _create_event(
        host,
        EVENT_COUNT,
        sale_starts_at=starts.isoformat(),
        queue={"opens_at": (now - timedelta(minutes=1)).isoformat(), "admit_per_minute": ROOM_ADMIT_PER_MINUTE, "admission_seconds": 60},
    )


@events.test_start.add_listener
def set_up_events(environment: Any, **_: Any) -> None:
    """Create the events (or find the given ones); a run that cannot is stopped at once."""
    if isinstance(environment.runner, WorkerRunner):
        return
    try:
        if not event_ids:
            if not ADMIN_TOKEN:
                raise ValueError("set INVENTORYD_ADMIN_TOKEN (to create the events) or LOCUST_EVENT_IDS")
            event_ids.extend(_create_event(environment.host, index) for index in range(EVENT_COUNT))
            log.info("created events %s", event_ids)
        if ROOM:
            room_event.append(_create_room(environment.host))
            log.info("created the waiting-room event %s", room_event[0])
        for event_id in event_ids:
            try:
                _read_event(environment.host, event_id)
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot read event {event_id}: {_why(error)}") from None
    except (OSError, ValueError, KeyError) as error:
        setup_problems.append(f"set-up failed: {_why(error) if isinstance(error, OSError) else error}")
        log.error("%s", setup_problems[-1])
        gevent.spawn_later(0, environment.runner.quit)


class Buyer(FastHttpUser):
    """The crowd: each task is a new buyer who reserves, mostly confirms, sometimes cancels or waits
    in line, and leaves."""

    weight = 4
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.headers = {"Content-Type": "application/json", **_auth(SERVICE_TOKEN)}

    def _reserve(self, user_id: str, event_id: str, ticket_type: str, quantity: int, waitlist: bool) -> dict[str, Any] | None:
        body = {"ticket_type": ticket_type, "quantity": quantity, "user_id": user_id, "waitlist": waitlist}
        headers = dict(self.headers, **{"Idempotency-Key": uuid.uuid4().hex})
        with self.client.post(
            f"/v1/events/{event_id}/reservations",
            json=body,
            headers=headers,
            name="/v1/events/[id]/reservations",
            catch_response=True,
        ) as response:
            if response.status_code in (201, 202):
                response.success()
                reservation: dict[str, Any] = response.json()
                outcomes[reservation["status"]] += 1
                return reservation
            code = response.json().get("code") if response.status_code == 409 else None
            if code in EXPECTED_REFUSALS:
                response.success()
                outcomes[code] += 1
                if code == "sold_out":
                    sold_out_seen.add((event_id, ticket_type))
                return None
            response.failure(f"{response.status_code}: {response.text[:200]}")
            return None

    @task(10)
    def buy(self) -> None:
        user_id = f"buyer-{uuid.uuid4().hex[:12]}"  # a new buyer in the crowd
        event_id = random.choice(event_ids)
        ticket_type = "VIP" if random.random() < 0.1 else "GA"
        quantity = 2 if random.random() < 0.3 else 1
        reservation = self._reserve(user_id, event_id, ticket_type, quantity, waitlist=random.random() < 0.1)
        if reservation is None or reservation["status"] != "held":
            return
        roll = random.random()
        if roll < 0.8:
            self._settle(reservation["id"], "confirm")
        elif roll < 0.9:
            self._settle(reservation["id"], "cancel")
        # else: let the hold expire

    def _settle(self, reservation_id: str, verb: str) -> None:
        with self.client.post(
            f"/v1/reservations/{reservation_id}/{verb}",
            headers=self.headers,
            name=f"/v1/reservations/[id]/{verb}",
            catch_response=True,
        ) as response:
            if response.status_code == 200 or (response.status_code == 409 and response.json().get("code") in EXPECTED_REFUSALS):
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(5)
    def poll_availability(self) -> None:
        self.client.get(f"/v1/events/{random.choice(event_ids)}/availability", name="/v1/events/[id]/availability")


class Queuer(FastHttpUser):
    """A buyer of the waiting-room event: joins, waits its turn as the server says, reserves with
    its admission token, confirms."""

    abstract = not ROOM  # spawned only in the waiting-room phase
    weight = 2
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.headers = {"Content-Type": "application/json", **_auth(SERVICE_TOKEN)}

    @task
    def queue_and_buy(self) -> None:
        if not room_event:
            return
        event_id, user_id = room_event[0], f"queuer-{uuid.uuid4().hex[:12]}"
        with self.client.post(
            f"/v1/events/{event_id}/queue",
            json={"user_id": user_id},
            headers=self.headers,
            name="/v1/events/[id]/queue",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 201):
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            entry: dict[str, Any] = response.json()
            wait_s = float(response.headers.get("Retry-After", "1"))
        while entry["status"] == "waiting":
            gevent.sleep(min(wait_s, ROOM_POLL_S_MAX))
            with self.client.get(f"/v1/queue/{entry['id']}", headers=self.headers, name="/v1/queue/[id]", catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
                    return
                entry = response.json()
                wait_s = float(response.headers.get("Retry-After", "1"))
        if entry["status"] != "admitted":
            return
        admitted_buyers.add(user_id)
        headers = dict(self.headers, **{"Admission-Token": entry["admission_token"], "Idempotency-Key": uuid.uuid4().hex})
        with self.client.post(
            f"/v1/events/{event_id}/reservations",
            json={"ticket_type": "GA", "quantity": 1, "user_id": user_id},
            headers=headers,
            name="/v1/events/[room]/reservations",
            catch_response=True,
        ) as response:
            if response.status_code == 201:
                response.success()
                outcomes["held"] += 1
                reservation = response.json()
            elif response.status_code == 409 and response.json().get("code") in EXPECTED_REFUSALS:
                response.success()
                outcomes[response.json()["code"]] += 1
                return
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
        with self.client.post(f"/v1/reservations/{reservation['id']}/confirm", headers=self.headers, name="/v1/reservations/[id]/confirm"):
            pass


class Browser(FastHttpUser):
    """Someone looking around: the catalogue, an event page, its availability."""

    weight = 1
    wait_time = between(0.5, 2)

    @task(2)
    def catalogue(self) -> None:
        self.client.get("/v1/events?available=true&limit=20", name="/v1/events")

    @task(3)
    def event_page(self) -> None:
        event_id = random.choice(event_ids)
        self.client.get(f"/v1/events/{event_id}", name="/v1/events/[id]")
        self.client.get(f"/v1/events/{event_id}/availability", name="/v1/events/[id]/availability")


def _admin_get(host: str, path: str) -> Any:
    request = urllib.request.Request(f"{host}{path}", headers=_auth(ADMIN_TOKEN))
    with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as response:
        return json.loads(response.read())


def _check_room(host: str, event_id: str) -> list[str]:
    """The waiting room held: no reserve without an admission, none by a buyer never admitted, no
    more reservations than admissions, nothing oversold (checked with the other events)."""
    problems = []
    if SERVICE_TOKEN == ADMIN_TOKEN:
        return ["the waiting room's gate cannot be checked with the admin token (admins pass it): set INVENTORYD_SERVICE_TOKEN"]
    probe = urllib.request.Request(
        f"{host}/v1/events/{event_id}/reservations",
        data=json.dumps({"ticket_type": "GA", "quantity": 1, "user_id": "no-token"}).encode(),
        headers={"Content-Type": "application/json", **_auth(SERVICE_TOKEN)},
        method="POST",
    )
    try:
        urllib.request.urlopen(probe, timeout=CHECK_TIMEOUT_S).close()
        problems.append("a reserve without an admission token was accepted")
    except urllib.error.HTTPError as error:
        if error.code != 403:
            problems.append(f"a reserve without an admission token answered {error.code}, not 403")
    try:
        line = _admin_get(host, f"/v1/events/{event_id}/queue")
        buyers: list[str] = []
        cursor = None
        while True:
            page = _admin_get(host, f"/v1/events/{event_id}/reservations?limit=200" + (f"&cursor={cursor}" if cursor else ""))
            buyers += [reservation["user_id"] for reservation in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    except (OSError, ValueError) as error:
        return [*problems, f"cannot check the waiting room: {_why(error)}"]
    strangers = [buyer for buyer in buyers if buyer not in admitted_buyers]
    if strangers:
        problems.append(f"{len(strangers)} reservations by buyers never admitted, e.g. {strangers[:3]}")
    if len(buyers) > line["admitted"]:
        problems.append(f"{len(buyers)} reservations for {line['admitted']} admissions")
    try:
        event = _read_event(host, event_id)
    except (OSError, ValueError) as error:
        return [*problems, f"cannot check event {event_id}: {_why(error)}"]
    problems += [f"{event_id}/{t['code']} oversold: {t}" for t in event["ticket_types"] if t["held"] + t["sold"] > t["capacity"]]
    log.info("waiting room %s: %s, %d reservations", event_id, line, len(buyers))
    return problems


@events.quitting.add_listener
def verdict(environment: Any, **_: Any) -> None:
    """Nothing oversold, and the thresholds: one line, and the exit code says whether the run passed."""
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the whole run
    failed = list(setup_problems)
    seats = taken = oversold = 0
    sold_out_events = 0
    if not event_ids and not failed:
        failed.append("no events to check")
    if room_event:
        failed += _check_room(environment.host, room_event[0])
    for event_id in event_ids:
        try:
            event = _read_event(environment.host, event_id)
        except (OSError, ValueError) as error:
            failed.append(f"cannot check event {event_id}: {_why(error)}")
            continue
        for line in event["ticket_types"]:
            seats += line["capacity"]
            taken += line["held"] + line["sold"]
            excess = line["held"] + line["sold"] - line["capacity"]
            if excess > 0 or line["available"] < 0:
                oversold += max(excess, 0)
                failed.append(f"{event_id}/{line['code']} oversold: {line}")
        # Sold out: every type's last seat taken, as the final read shows, or a buyer told so. A
        # type can sell its last seat late in a short run with no buyer left to be refused.
        if all(
            (event_id, line["code"]) in sold_out_seen or line["available"] == 0 for line in event["ticket_types"]
        ):
            sold_out_events += 1
        log.info("%s: %s", event_id, event["ticket_types"])
    total = environment.stats.total
    if total.fail_ratio > MAX_FAIL_RATIO:
        failed.append(f"failure ratio {total.fail_ratio:.2%} > {MAX_FAIL_RATIO:.2%}")
    p95 = total.get_response_time_percentile(0.95) or 0
    if p95 > MAX_P95_MS:
        failed.append(f"p95 {p95:.0f} ms > {MAX_P95_MS:.0f} ms")
    held = outcomes["held"]
    refused = sum(outcomes[code] for code in EXPECTED_REFUSALS)
    summary = (
        f"{len(event_ids)} events, {seats} seats, {taken} sold+held, {oversold} oversold, "
        f"{sold_out_events}/{len(event_ids)} sold out; {held} holds, {outcomes['waitlisted']} waitlisted, "
        f"{refused} refused; {total.num_requests} requests, failure ratio {total.fail_ratio:.1%}, p95 {p95:.0f} ms"
    )
    line = f"VERDICT FAIL ({'; '.join(failed)}): {summary}" if failed else f"VERDICT ok: {summary}"
    print(line, flush=True)
    environment.process_exit_code = 1 if failed else 0
