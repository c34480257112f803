"""Configuration: environment variables, overridden by command-line flags. The README's table lists
every setting; this is the one place they are read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from persistence.embedded import default_data_dir

LogFormat = Literal["auto", "json", "console"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    # Unset: start the embedded PostgreSQL in `data_dir`.
    database_url: str | None = field(default_factory=lambda: os.environ.get("DATABASE_URL") or None)
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("INVENTORYD_DATA_DIR") or default_data_dir()))
    host: str = field(default_factory=lambda: os.environ.get("INVENTORYD_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _env_int("INVENTORYD_PORT", 8080))
    log_level: str = field(default_factory=lambda: os.environ.get("INVENTORYD_LOG_LEVEL", "info"))
    log_format: LogFormat = field(default_factory=lambda: os.environ.get("INVENTORYD_LOG_FORMAT", "auto"))  # type: ignore[assignment]
    db_pool_size: int = field(default_factory=lambda: _env_int("INVENTORYD_DB_POOL_SIZE", 10))
    access_log: bool = field(default_factory=lambda: os.environ.get("INVENTORYD_ACCESS_LOG", "1") not in ("0", "false"))

    def __post_init__(self) -> None:
        if self.log_format not in ("auto", "json", "console"):
            raise SystemExit(f"INVENTORYD_LOG_FORMAT must be auto, json or console, not {self.log_format!r}")
        if not 1 <= self.port <= 65535:
            raise SystemExit(f"port must be 1..65535, not {self.port}")
        if not 2 <= self.db_pool_size <= 100:
            raise SystemExit(f"INVENTORYD_DB_POOL_SIZE must be 2..100, not {self.db_pool_size}")
