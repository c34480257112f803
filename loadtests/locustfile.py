"""The on-sale scenario: many buyers on a few hot events, and browsers around them.

    # a service token for the buyers, an admin token to set the events up:
    export INVENTORYD_SERVICE_TOKEN=$(inventoryd token create --role service --name locust)
    export INVENTORYD_ADMIN_TOKEN=...   # the one the server was started with, or `token create --role admin`
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 200 -r 50 -t 60s \
        --csv loadtests/results/onsale --html loadtests/results/onsale.html

Buyers reserve (some two seats), confirm most holds, cancel some, poll availability, and join the
waiting list when a type is sold out. Sold out (409) is a correct answer, not a failure. At the end
the scenario checks every event's counters (nothing oversold) and sets Locust's exit code from the
thresholds: failure ratio above LOCUST_MAX_FAIL_RATIO or p95 above LOCUST_MAX_P95_MS fails the run.

Settings (environment): LOCUST_EVENTS (hot events to create, default 3), LOCUST_CAPACITY (seats per
event, default 2000), LOCUST_EVENT_IDS (use these events instead of creating any).
"""

from __future__ import annotations

import json
import logging
import os
import random
import urllib.request
import uuid
from typing import Any

from locust import FastHttpUser, between, events, task

# Buyers use the service token; without one, the admin token (which may also act for any user).
SERVICE_TOKEN = os.environ.get("INVENTORYD_SERVICE_TOKEN") or os.environ.get("INVENTORYD_ADMIN_TOKEN", "")
ADMIN_TOKEN = os.environ.get("INVENTORYD_ADMIN_TOKEN", "")
EVENT_COUNT = int(os.environ.get("LOCUST_EVENTS", "3"))
CAPACITY = int(os.environ.get("LOCUST_CAPACITY", "2000"))
MAX_FAIL_RATIO = float(os.environ.get("LOCUST_MAX_FAIL_RATIO", "0.01"))
MAX_P95_MS = float(os.environ.get("LOCUST_MAX_P95_MS", "500"))
# Answers that are the service doing its job during an on-sale, not failures.
EXPECTED_REFUSALS = {"sold_out", "insufficient_tickets", "limit_exceeded", "hold_expired"}

log = logging.getLogger("onsale")
event_ids: list[str] = [event_id for event_id in os.environ.get("LOCUST_EVENT_IDS", "").split(",") if event_id]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@events.test_start.add_listener
def create_events(environment: Any, **_: Any) -> None:
    if event_ids:
        return
    if not ADMIN_TOKEN:
        raise SystemExit("set INVENTORYD_ADMIN_TOKEN (to create the events) or LOCUST_EVENT_IDS")
    for index in range(EVENT_COUNT):
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
        }
        request = urllib.request.Request(
            f"{environment.host}/v1/events",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **_auth(ADMIN_TOKEN)},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            event_ids.append(json.loads(response.read())["id"])
    log.info("created events %s", event_ids)


class Buyer(FastHttpUser):
    """Someone in the on-sale: reserve, mostly confirm, sometimes cancel or wait in line."""

    weight = 4
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.user_id = f"buyer-{uuid.uuid4().hex[:12]}"
        self.headers = {"Content-Type": "application/json", **_auth(SERVICE_TOKEN)}

    def _reserve(self, event_id: str, ticket_type: str, quantity: int, waitlist: bool) -> dict[str, Any] | None:
        body = {"ticket_type": ticket_type, "quantity": quantity, "user_id": self.user_id, "waitlist": waitlist}
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
                return response.json()
            if response.status_code == 409 and response.json().get("code") in EXPECTED_REFUSALS:
                response.success()
                return None
            response.failure(f"{response.status_code}: {response.text[:200]}")
            return None

    @task(10)
    def buy(self) -> None:
        event_id = random.choice(event_ids)
        ticket_type = "VIP" if random.random() < 0.1 else "GA"
        quantity = 2 if random.random() < 0.3 else 1
        reservation = self._reserve(event_id, ticket_type, quantity, waitlist=random.random() < 0.1)
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
            if response.status_code == 200 or (
                response.status_code == 409 and response.json().get("code") in EXPECTED_REFUSALS
            ):
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(5)
    def poll_availability(self) -> None:
        self.client.get(f"/v1/events/{random.choice(event_ids)}/availability", name="/v1/events/[id]/availability")


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


@events.quitting.add_listener
def verdict(environment: Any, **_: Any) -> None:
    """Nothing oversold, and the thresholds: the exit code says whether the run passed."""
    failed = []
    for event_id in event_ids:
        request = urllib.request.Request(f"{environment.host}/v1/events/{event_id}/report", headers=_auth(ADMIN_TOKEN))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                report = json.loads(response.read())
        except OSError as error:
            log.warning("could not read the report of %s: %s", event_id, error)
            continue
        for line in report["ticket_types"]:
            if line["held"] + line["sold"] > line["capacity"]:
                failed.append(f"{event_id}/{line['code']} oversold: {line}")
        log.info("%s: %s", event_id, report["total"])
    total = environment.stats.total
    if total.fail_ratio > MAX_FAIL_RATIO:
        failed.append(f"failure ratio {total.fail_ratio:.2%} > {MAX_FAIL_RATIO:.2%}")
    p95 = total.get_response_time_percentile(0.95)
    if p95 and p95 > MAX_P95_MS:
        failed.append(f"p95 {p95:.0f} ms > {MAX_P95_MS:.0f} ms")
    for reason in failed:
        log.error("run failed: %s", reason)
    environment.process_exit_code = 1 if failed else 0
