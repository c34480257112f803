"""structlog set-up: JSON lines when output is not a terminal, a readable console when it is."""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog

from inventoryd.config import LogFormat


# Anything msgspec cannot encode natively (exceptions, paths) is logged as its repr.
_LOG_ENCODER = msgspec.json.Encoder(enc_hook=repr)


def _dumps(event: object, **_: object) -> bytes:
    return _LOG_ENCODER.encode(event)


def configure(level: str = "info", log_format: LogFormat = "auto") -> None:
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise SystemExit(f"unknown log level {level!r}")
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        structlog.configure(
            processors=[*shared, structlog.processors.format_exc_info, structlog.processors.JSONRenderer(_dumps)],
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            cache_logger_on_first_use=True,
        )
    # Libraries that log through the standard library (asyncpg, aiohttp) follow the same level.
    logging.basicConfig(level=max(numeric_level, logging.WARNING), stream=sys.stderr)
