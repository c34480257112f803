"""Liveness, readiness and metrics."""

from __future__ import annotations

import hmac

from aiohttp import hdrs, web

from inventoryd.http import keys, schemas
from inventoryd.http.common import json_response
from inventoryd.http.problems import problem_response, unauthorized
from inventoryd.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

READINESS_DB_TIMEOUT_S = 1.0


async def healthz(request: web.Request) -> web.Response:
    return json_response(schemas.Health("ok"))


async def readyz(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    if registry.recovery_error is not None:
        return problem_response(503, "not_ready", f"recovery failed: {registry.recovery_error}")
    if registry.draining:
        return problem_response(503, "not_ready", "the service is shutting down")
    if not registry.ready:
        return problem_response(503, "not_ready", "recovery has not finished")
    feed = request.app[keys.CATALOGUE]
    if not feed.loaded:
        return problem_response(503, "not_ready", "the catalogue has not been read yet")
    try:
        async with request.app[keys.POOL].acquire(timeout=READINESS_DB_TIMEOUT_S) as connection:
            await connection.fetchval("SELECT 1", timeout=READINESS_DB_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - any failure to reach the database means "not ready"
        return problem_response(503, "not_ready", f"the database does not answer: {type(error).__name__}")
    # A catalogue that lost its notifications still answers listings (as of its lag) while it reads
    # them again: the node stays in service, and says so here and in its metrics.
    catalogue = schemas.CatalogueHealth(feed.current, round(feed.lag_s(), 3), len(feed.catalogue))
    detail = None if feed.current else "the catalogue is catching up with other nodes' changes"
    return json_response(schemas.Health("ready", detail, catalogue))


def presents_metrics_token(request: web.Request) -> bool:
    """The request's bearer token is INVENTORYD_METRICS_TOKEN (never when that is unset)."""
    expected = request.app[keys.SETTINGS].metrics_token
    if expected is None:
        return False
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


async def metrics(request: web.Request) -> web.Response:
    """Public, unless INVENTORYD_METRICS_TOKEN is set: then that token or an admin's (else 401)."""
    if request.app[keys.SETTINGS].metrics_token is not None and not presents_metrics_token(request):
        principal = request.get(keys.PRINCIPAL)
        if principal is None or principal.role != "admin":
            raise unauthorized("/metrics needs the metrics token (INVENTORYD_METRICS_TOKEN) or an admin token")
    response = web.Response(body=request.app[keys.METRICS].render())
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response
