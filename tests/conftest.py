"""Shared fixtures: a real PostgreSQL for the whole session, a fresh database for every test.

The server is the embedded launcher's (`persistence.embedded`, the same one `inventoryd serve` uses
without DATABASE_URL) in a throwaway directory, unless INVENTORYD_TEST_DATABASE_URL names a server
to use instead (its user must be allowed to create databases). Each test gets its own database,
copied from a migrated template, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web

from inventoryd.config import Settings
from inventoryd.http import keys
from inventoryd.http.app import create_app
from persistence.embedded import EmbeddedPostgres
from persistence.journal import connect
from persistence.migrate import migrate
from tests.helpers import ADMIN, ADMIN_TOKEN, FaultyJournal

TEMPLATE_DATABASE = "inventoryd_test_template"


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class DatabaseServer:
    admin_url: str
    embedded: EmbeddedPostgres | None

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)


@pytest.fixture(scope="session")
def database_server() -> Iterator[DatabaseServer]:
    given = os.environ.get("INVENTORYD_TEST_DATABASE_URL")
    if given:
        server = DatabaseServer(given, None)
        asyncio.run(_create_template(server))
        yield server
        return
    # Not under pytest's own temporary root: that is private to us, and when we are root the
    # server runs as an unprivileged user who must be able to reach its data directory.
    directory = Path(tempfile.mkdtemp(prefix="inventoryd-test-pg-"))
    directory.chmod(0o755)
    embedded = EmbeddedPostgres(directory / "data")
    try:
        embedded.start()
        server = DatabaseServer(embedded.dsn("postgres"), embedded)
        asyncio.run(_create_template(server))
        yield server
    finally:
        embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _create_template(server: DatabaseServer) -> None:
    admin = await asyncpg.connect(server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DATABASE}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE_DATABASE}"')
    finally:
        await admin.close()
    connection = await connect(server.url(TEMPLATE_DATABASE))
    try:
        await migrate(connection)
    finally:
        await connection.close()


@pytest.fixture
async def database_url(database_server: DatabaseServer) -> AsyncIterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(database_server.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DATABASE}"')
    finally:
        await admin.close()
    yield database_server.url(name)
    admin = await asyncpg.connect(database_server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for looking at what was written."""
    connection = await connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
def make_app(database_url: str) -> Callable[..., web.Application]:
    def make(**options: Any) -> web.Application:
        settings = Settings(
            database_url=database_url,
            access_log=options.pop("access_log", False),
            admin_token=ADMIN_TOKEN,
            **options.pop("settings", {}),
        )
        return create_app(settings, database_url=database_url, **options)

    return make


@pytest.fixture
def start(aiohttp_client: Any, make_app: Callable[..., web.Application]) -> Callable[..., Any]:
    """Start the app (with `make_app` options) and wait until it is ready and (unless `warm=False`)
    every actor is rebuilt, so that tests may look at the actors directly; `ready=False` waits for
    neither."""

    async def start_app(
        *, headers: dict[str, str] | None = ADMIN, ready: bool = True, warm: bool = True, **options: Any
    ) -> Any:
        """`headers` go with every request of the client: the bootstrap admin's token by default."""
        client = await aiohttp_client(make_app(**options), headers=headers)
        if not ready:
            return client
        for _ in range(1000):
            if (await client.get("/readyz")).status == 200:
                if warm:
                    await asyncio.wait_for(client.app[keys.REGISTRY].recovered.wait(), 10)
                return client
            await asyncio.sleep(0.01)
        raise AssertionError("the app did not become ready")

    return start_app


@pytest.fixture
async def client(start: Callable[..., Any]) -> Any:
    return await start()


@pytest.fixture
async def faulty(start: Callable[..., Any]) -> tuple[Any, FaultyJournal]:
    """The app with its journal wrapped by FaultyJournal (faults and gates on demand), and the journal."""
    client = await start(journal_factory=FaultyJournal)
    return client, client.app[keys.JOURNAL]
