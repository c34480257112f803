"""Configuration: environment variables, overridden by command-line flags. The README's table lists
every setting; this is the one place they are read."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, get_args

from inventoryd import limits
from persistence.embedded import default_data_dir

LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
Switch = Literal["on", "off"]
SWITCH: tuple[Switch, ...] = get_args(Switch)
Choice = TypeVar("Choice", bound=str)


Number = TypeVar("Number", int, float)


def _env_number(name: str, default: Number) -> Number:
    """The variable parsed as the default's type (int or float), or the default when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return type(default)(raw)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise SystemExit(f"{name} must be {kind}, not {raw!r}") from None


def _env_choice(name: str, choices: tuple[Choice, ...], default: Choice) -> Choice:
    """The variable, which must be one of `choices`, or the default when unset."""
    raw = os.environ.get(name) or default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return choices[choices.index(raw)]


@dataclass(frozen=True, slots=True)
class Settings:
    # Unset: start the embedded PostgreSQL in `data_dir`.
    database_url: str | None = field(default_factory=lambda: os.environ.get("DATABASE_URL") or None)
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("INVENTORYD_DATA_DIR") or default_data_dir()))
    host: str = field(default_factory=lambda: os.environ.get("INVENTORYD_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _env_number("INVENTORYD_PORT", 8080))
    log_level: str = field(default_factory=lambda: os.environ.get("INVENTORYD_LOG_LEVEL", "info"))
    log_format: LogFormat = field(default_factory=lambda: _env_choice("INVENTORYD_LOG_FORMAT", LOG_FORMATS, "auto"))
    db_pool_size: int = field(default_factory=lambda: _env_number("INVENTORYD_DB_POOL_SIZE", 10))
    # After SIGTERM, how long /readyz says 503 while still serving, before the listener closes.
    drain_grace_s: float = field(default_factory=lambda: _env_number("INVENTORYD_DRAIN_GRACE_S", 1.0))
    access_log: bool = field(default_factory=lambda: os.environ.get("INVENTORYD_ACCESS_LOG", "1") not in ("0", "false"))
    # Authentication; "off" makes every caller an admin and is refused unless serving on loopback.
    auth: Switch = field(default_factory=lambda: _env_choice("INVENTORYD_AUTH", SWITCH, "on"))
    admin_token: str | None = field(default_factory=lambda: os.environ.get("INVENTORYD_ADMIN_TOKEN") or None)
    jwt_secret: str | None = field(default_factory=lambda: os.environ.get("INVENTORYD_JWT_SECRET") or None)
    # Token buckets: per attendee or organizer, per service token, per client address on /v1/auth.
    rate_user_per_s: float = field(default_factory=lambda: _env_number("INVENTORYD_RATE_USER_PER_S", 10.0))
    rate_user_burst: int = field(default_factory=lambda: _env_number("INVENTORYD_RATE_USER_BURST", 30))
    rate_service_per_s: float = field(default_factory=lambda: _env_number("INVENTORYD_RATE_SERVICE_PER_S", 50_000.0))
    rate_service_burst: int = field(default_factory=lambda: _env_number("INVENTORYD_RATE_SERVICE_BURST", 100_000))
    rate_auth_per_s: float = field(default_factory=lambda: _env_number("INVENTORYD_RATE_AUTH_PER_S", 0.5))
    rate_auth_burst: int = field(default_factory=lambda: _env_number("INVENTORYD_RATE_AUTH_BURST", 10))
    # Registrations from every address together (beside each address's own /v1/auth limit): a flood
    # from many addresses stays bounded, at the cost of refusing real sign-ups meanwhile (429).
    rate_register_per_s: float = field(default_factory=lambda: _env_number("INVENTORYD_RATE_REGISTER_PER_S", 20.0))
    rate_register_burst: int = field(default_factory=lambda: _env_number("INVENTORYD_RATE_REGISTER_BURST", 50))
    # Joins of waiting rooms per client address, for users joining themselves (a service joins for
    # its buyers from one address, under its own token's limit): against a script taking many places.
    rate_join_per_s: float = field(default_factory=lambda: _env_number("INVENTORYD_RATE_JOIN_PER_S", 1.0))
    rate_join_burst: int = field(default_factory=lambda: _env_number("INVENTORYD_RATE_JOIN_BURST", 5))
    rate_limits: bool = field(default_factory=lambda: os.environ.get("INVENTORYD_RATE_LIMITS", "on") != "off")
    # Origins allowed to call from a browser (comma-separated); none by default: CORS off.
    cors_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            origin.strip() for origin in os.environ.get("INVENTORYD_CORS_ORIGINS", "").split(",") if origin.strip()
        )
    )
    # When set, /metrics answers only `Authorization: Bearer <this>` or an admin token (else 401).
    metrics_token: str | None = field(default_factory=lambda: os.environ.get("INVENTORYD_METRICS_TOKEN") or None)
    # The cluster: the URL other nodes reach this one at (unset: http://HOST:PORT, with this
    # machine's name when listening on every address), and which `server` line of haproxy.cfg this
    # node is (its `id` and `weight`; unset: the node takes shards without regard to HAProxy).
    advertise_url: str | None = field(default_factory=lambda: os.environ.get("INVENTORYD_ADVERTISE_URL") or None)
    lb_server_id: int | None = field(default_factory=lambda: _env_number("INVENTORYD_LB_SERVER_ID", 0) or None)
    lb_weight: int = field(default_factory=lambda: _env_number("INVENTORYD_LB_WEIGHT", 16))
    # The outbox. Webhook URLs that resolve to loopback, private or link-local addresses are refused
    # (and never connected to) unless this is set: a webhook must not reach into the service's network.
    webhooks_allow_private: bool = field(
        default_factory=lambda: os.environ.get("INVENTORYD_WEBHOOKS_ALLOW_PRIVATE", "0") in ("1", "true", "on")
    )
    webhook_retry_base_s: float = field(default_factory=lambda: _env_number("INVENTORYD_WEBHOOK_RETRY_BASE_S", 5.0))
    webhook_attempts_max: int = field(default_factory=lambda: _env_number("INVENTORYD_WEBHOOK_ATTEMPTS_MAX", 20))
    webhook_timeout_s: float = field(default_factory=lambda: _env_number("INVENTORYD_WEBHOOK_TIMEOUT_S", 10.0))
    # Confirmation emails: smtp://[user:password@]host[:port] (STARTTLS when the server offers it) or
    # smtps://… (TLS from the start); unset: no emails. From whom, and the template (a file).
    smtp_url: str | None = field(default_factory=lambda: os.environ.get("INVENTORYD_SMTP_URL") or None)
    smtp_from: str = field(default_factory=lambda: os.environ.get("INVENTORYD_SMTP_FROM", "tickets@inventoryd.invalid"))
    email_template: Path | None = field(
        default_factory=lambda: Path(template) if (template := os.environ.get("INVENTORYD_EMAIL_TEMPLATE")) else None
    )
    # Personal data (the addresses services gave for buyers) of events that started more than this
    # many days ago is erased, once an hour; 0: kept until erased by hand.
    retention_days: int = field(default_factory=lambda: _env_number("INVENTORYD_RETENTION_DAYS", 0))

    @property
    def node_url(self) -> str:
        """Where the other nodes of the cluster reach this one."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        every_address = self.host in ("0.0.0.0", "::", "")  # noqa: S104 - compared with, not bound to
        host = socket.gethostname() if every_address else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise SystemExit(f"INVENTORYD_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if not 1 <= self.port <= 65535:
            raise SystemExit(f"port must be 1..65535, not {self.port}")
        if not 2 <= self.db_pool_size <= 100:
            raise SystemExit(f"INVENTORYD_DB_POOL_SIZE must be 2..100, not {self.db_pool_size}")
        if not 0 <= self.drain_grace_s <= 30:
            raise SystemExit("INVENTORYD_DRAIN_GRACE_S must be between 0 and 30")
        if self.auth not in SWITCH:
            raise SystemExit(f"INVENTORYD_AUTH must be on or off, not {self.auth!r}")
        if self.admin_token is not None and len(self.admin_token) < 24:
            raise SystemExit("INVENTORYD_ADMIN_TOKEN must be at least 24 characters")
        if self.jwt_secret is not None and len(self.jwt_secret) < 32:
            raise SystemExit("INVENTORYD_JWT_SECRET must be at least 32 characters")
        if self.metrics_token is not None and len(self.metrics_token) < 24:
            raise SystemExit("INVENTORYD_METRICS_TOKEN must be at least 24 characters")
        if self.advertise_url is not None and not re.fullmatch(r"https?://[^/\s]+/?", self.advertise_url):
            raise SystemExit(f"INVENTORYD_ADVERTISE_URL must be http(s)://host:port, not {self.advertise_url!r}")
        if self.lb_server_id is not None and not 1 <= self.lb_server_id <= 2**31 - 1:
            raise SystemExit(f"INVENTORYD_LB_SERVER_ID must be 1..2147483647, not {self.lb_server_id}")
        if not 1 <= self.lb_weight <= 256:
            raise SystemExit(f"INVENTORYD_LB_WEIGHT must be 1..256, not {self.lb_weight}")
        if not 0.001 <= self.webhook_retry_base_s <= 3600:
            raise SystemExit(f"INVENTORYD_WEBHOOK_RETRY_BASE_S must be 0.001..3600, not {self.webhook_retry_base_s}")
        if not 1 <= self.webhook_attempts_max <= limits.WEBHOOK_ATTEMPTS_MAX_LIMIT:
            raise SystemExit(
                f"INVENTORYD_WEBHOOK_ATTEMPTS_MAX must be 1..{limits.WEBHOOK_ATTEMPTS_MAX_LIMIT}, not {self.webhook_attempts_max}"
            )
        if not 0.1 <= self.webhook_timeout_s <= limits.WEBHOOK_TIMEOUT_S:
            raise SystemExit(f"INVENTORYD_WEBHOOK_TIMEOUT_S must be 0.1..{limits.WEBHOOK_TIMEOUT_S:g}, not {self.webhook_timeout_s}")
        if self.smtp_url is not None and not re.fullmatch(r"smtps?://([^@/\s]+@)?[^/@\s]+/?", self.smtp_url):
            raise SystemExit("INVENTORYD_SMTP_URL must be smtp://[user:password@]host[:port] or smtps://…")
        if not 0 <= self.retention_days <= 36500:
            raise SystemExit(f"INVENTORYD_RETENTION_DAYS must be 0..36500, not {self.retention_days}")
        for name in ("rate_user_per_s", "rate_service_per_s", "rate_auth_per_s", "rate_register_per_s", "rate_join_per_s"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"{name} must be positive")
