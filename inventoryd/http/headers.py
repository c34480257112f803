"""Headers every response carries: its request id, security headers, rate-limit state, CORS."""

from __future__ import annotations

from aiohttp import hdrs, web
from multidict import istr

from inventoryd.config import Settings
from inventoryd.http import keys

# Names as `istr` (as in aiohttp.hdrs): the case-insensitive headers take them without folding
# their case again on every response.
X_REQUEST_ID = istr("X-Request-ID")
IDEMPOTENCY_KEY = istr("Idempotency-Key")
IDEMPOTENT_REPLAYED = istr("Idempotent-Replayed")
_SECURITY_HEADERS = {
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
    hdrs.X_FRAME_OPTIONS: "DENY",
    istr("Referrer-Policy"): "no-referrer",
    hdrs.CONTENT_SECURITY_POLICY: "default-src 'none'; frame-ancestors 'none'",
    istr("Cross-Origin-Resource-Policy"): "same-origin",
    # Instead of aiohttp's default, which names the Python and aiohttp versions to every scanner.
    hdrs.SERVER: "inventoryd",
}
_CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID, Admission-Token"
_CORS_EXPOSED_HEADERS = (
    "Location, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Request-ID, Idempotent-Replayed"
)
_CORS_MAX_AGE_S = 600


def cors_origin(request: web.Request, settings: Settings | None = None) -> str | None:
    allowed = (settings if settings is not None else request.app[keys.SETTINGS]).cors_origins
    if not allowed:  # CORS is off by default: no header to look up
        return None
    origin = request.headers.get("Origin")
    return origin if origin in allowed else None


def add_response_headers(request: web.Request, response: web.StreamResponse, settings: Settings | None = None) -> None:
    """Every response gets these: the middleware adds them to what handlers return, and a handler
    that streams calls this before it prepares its response. `settings`: the app's, if the caller
    has them at hand."""
    headers = response.headers
    headers[X_REQUEST_ID] = request.get(keys.REQUEST_ID, "")
    for name, value in _SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    # Nothing is kept by a cache unless its handler says so (the public reads: common.cacheable_json).
    headers.setdefault(hdrs.CACHE_CONTROL, "no-store")
    verdict = request.get(keys.RATE_VERDICT)
    if verdict is not None:
        for name, value in verdict.headers().items():
            headers.setdefault(name, value)
    origin = cors_origin(request, settings)
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
        headers["Access-Control-Expose-Headers"] = _CORS_EXPOSED_HEADERS
        if request.method == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            headers["Access-Control-Allow-Headers"] = _CORS_ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = str(_CORS_MAX_AGE_S)
