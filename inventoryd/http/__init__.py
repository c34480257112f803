"""The HTTP API (aiohttp, msgspec bodies, RFC 9457 problems)."""
