"""`inventoryd serve | migrate | token | audit`: the operator's entry points."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import shlex
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from inventoryd import logs
from inventoryd.config import Settings
from inventoryd.limits import GC_YOUNG_OBJECTS_THRESHOLD, HTTP_KEEPALIVE_TIMEOUT_S, SHARD_LEASE_S

if TYPE_CHECKING:
    from inventoryd.registry import Registry

log = structlog.get_logger("inventoryd.cli")

# HTTP parsing bounds handed to aiohttp's server.
HEADER_FIELD_BYTES_MAX = 8190
REQUEST_LINE_BYTES_MAX = 8190
HEADERS_MAX = 64
# A SIGTERM's drain must end within this (in-flight requests, batches, closing the database).
SHUTDOWN_TIMEOUT_S = 20.0
LISTEN_BACKLOG = 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inventoryd", description="Ticket inventory for on-sales.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_database_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL, else embedded)")
        command.add_argument("--data-dir", type=Path, help="the embedded PostgreSQL's data directory")
        command.add_argument("--log-level", help="debug, info, warning, error")
        command.add_argument("--log-format", choices=["auto", "json", "console"])

    serve = commands.add_parser("serve", help="serve the HTTP API")
    add_database_options(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--advertise-url", help="the URL other nodes reach this one at (default http://HOST:PORT)")
    serve.add_argument("--lb-server-id", type=int, help="this node's `server ... id N` in haproxy.cfg (aligns shards with it)")
    serve.add_argument("--lb-weight", type=int, help="this node's `weight` in haproxy.cfg (default 16)")
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    add_database_options(migrate)

    token = commands.add_parser("token", help="API tokens for services and admins")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="make a token; it is shown once")
    create.add_argument("--role", choices=["service", "admin"], required=True)
    create.add_argument("--name", required=True, help="who or what uses it (unique among live tokens)")
    add_database_options(create)
    revoke = token_commands.add_parser("revoke", help="revoke a token by name or id")
    revoke.add_argument("name")
    add_database_options(revoke)
    listing = token_commands.add_parser("list", help="list tokens (never their secrets)")
    add_database_options(listing)

    user = commands.add_parser("user", help="accounts and buyers' personal data")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    erase = user_commands.add_parser(
        "erase", help="erase a person's personal data (email, name, password, addresses given for them) and end their sessions"
    )
    erase.add_argument("user_id", help="the account's id, or the id a service reserves for the buyer under")
    add_database_options(erase)

    audit = commands.add_parser("audit", help="replay the log and check every invariant; non-zero exit on a violation")
    audit.add_argument("--event", help="only this event")
    add_database_options(audit)
    return parser


def _settings(arguments: argparse.Namespace) -> Settings:
    settings = Settings()
    overrides = {
        "database_url": arguments.database_url,
        "data_dir": arguments.data_dir,
        "log_level": arguments.log_level,
        "log_format": arguments.log_format,
        "host": getattr(arguments, "host", None),
        "port": getattr(arguments, "port", None),
        "advertise_url": getattr(arguments, "advertise_url", None),
        "lb_server_id": getattr(arguments, "lb_server_id", None),
        "lb_weight": getattr(arguments, "lb_weight", None),
    }
    return replace(settings, **{name: value for name, value in overrides.items() if value is not None})


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL to use: the configured one, or an embedded server's for as long as needed."""
    if settings.database_url:
        yield settings.database_url
        return
    from persistence.embedded import EmbeddedPostgres, EmbeddedPostgresError  # noqa: PLC0415

    try:
        server = EmbeddedPostgres(settings.data_dir)
        url = server.start()
    except EmbeddedPostgresError as error:
        # The reason and its fix, in one line: a traceback would only hide it.
        raise SystemExit(f"inventoryd: the embedded PostgreSQL cannot start: {error}") from None
    try:
        yield url
    finally:
        # Two `serve` on one machine share the embedded server: the last node to leave stops it.
        if not _other_nodes_live(url):
            server.stop(also_if_reused=True)


def _other_nodes_live(url: str) -> bool:
    """Whether nodes of a cluster still use this database (their heartbeat is fresh)."""
    from persistence.errors import DATABASE_AWAY  # noqa: PLC0415
    from persistence.journal import connect  # noqa: PLC0415

    async def count() -> int:
        connection = await connect(url)
        try:
            if await connection.fetchval("SELECT to_regclass('nodes')") is None:
                return 0
            return int(
                await connection.fetchval(
                    "SELECT count(*) FROM nodes WHERE heartbeat_at > now() - make_interval(secs => $1)", SHARD_LEASE_S
                )
            )
        finally:
            await connection.close()

    try:
        return asyncio.run(count()) > 0
    except DATABASE_AWAY:
        return False


def serve(settings: Settings) -> None:
    if settings.auth == "off" and settings.host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("INVENTORYD_AUTH=off is allowed only when serving on loopback (127.0.0.1)")
    with database(settings) as url:
        loop = _new_event_loop()
        try:
            loop.run_until_complete(_serve(settings, url))
        finally:
            loop.close()
        log.info("stopped")


async def _serve(settings: Settings, database_url: str) -> None:
    """Serve until SIGTERM or SIGINT, then drain: /readyz turns 503 at once, the node hands its shards
    over to the others (each once its actors finished their batches; requests for them are
    forwarded meanwhile), the listener closes after DRAIN_GRACE_S (load balancers notice), requests
    in flight get their answers, the database is closed; all within SHUTDOWN_TIMEOUT_S."""
    from aiohttp import web  # noqa: PLC0415

    from inventoryd.http import keys  # noqa: PLC0415
    from inventoryd.http.app import create_app  # noqa: PLC0415
    from inventoryd.http.server import GuardedAppRunner  # noqa: PLC0415

    app = create_app(settings, database_url=database_url)
    # Malformed requests answered with problem documents, slow clients cut off: inventoryd.http.server.
    runner = GuardedAppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        max_field_size=HEADER_FIELD_BYTES_MAX,
        max_line_size=REQUEST_LINE_BYTES_MAX,
        max_headers=HEADERS_MAX,
        keepalive_timeout=HTTP_KEEPALIVE_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
    await site.start()
    log.info("serving", host=settings.host, port=settings.port, embedded_database=not settings.database_url)
    # This process has the node's URL now: a predecessor there (killed) holds nothing any more.
    await app[keys.CLUSTER].listening()
    gc_tuning = asyncio.create_task(_tune_gc(app[keys.REGISTRY]), name="gc-tuning")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()
    started = loop.time()
    log.info("draining", grace_s=settings.drain_grace_s, timeout_s=SHUTDOWN_TIMEOUT_S)
    app[keys.REGISTRY].draining = True
    handoff = asyncio.create_task(app[keys.CLUSTER].drain(), name="cluster-drain")
    await asyncio.sleep(settings.drain_grace_s)
    await handoff
    try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
            await runner.cleanup()
    except TimeoutError:
        log.error("shutdown_timed_out", timeout_s=SHUTDOWN_TIMEOUT_S)
        raise SystemExit(1) from None
    gc_tuning.cancel()
    logs.flush()
    log.info("drained", seconds=round(loop.time() - started, 3))


def set_gc_threshold() -> None:
    """Collect the young generation every GC_YOUNG_OBJECTS_THRESHOLD new objects, not 700."""
    gc.set_threshold(GC_YOUNG_OBJECTS_THRESHOLD, *gc.get_threshold()[1:])


async def _tune_gc(registry: Registry) -> None:
    """Once recovery is done, move everything alive (modules, the app, the recovered state) out of
    the collector's sight, and collect the young generation less often: a full collection then walks
    only what the on-sale itself created. The domain's values are not tracked at all (`gc=False`).
    Recovery itself keeps the default threshold: with 100,000 events its short-lived cycles would
    otherwise wait longer for a full collection, and RSS, which Python rarely returns, would grow."""
    await registry.recovered.wait()
    freeze_after_recovery()
    set_gc_threshold()


def freeze_after_recovery() -> None:
    """Free recovery's garbage, then move what is alive out of the collector's sight."""
    gc.collect()
    gc.freeze()
    log.info("gc_frozen", objects=gc.get_freeze_count())


def migrate(settings: Settings) -> None:
    from persistence.journal import connect  # noqa: PLC0415
    from persistence.migrate import migrate as apply_migrations  # noqa: PLC0415

    async def run(url: str) -> None:
        connection = await connect(url)
        try:
            applied = await apply_migrations(connection)
        finally:
            await connection.close()
        print(f"applied {len(applied)} migration(s): {[m.name for m in applied]}" if applied else "up to date")

    with database(settings) as url:
        asyncio.run(run(url))


def token(settings: Settings, arguments: argparse.Namespace) -> int:
    from inventoryd.accounts import new_api_token  # noqa: PLC0415
    from persistence import accounts as store  # noqa: PLC0415
    from persistence.journal import connect  # noqa: PLC0415
    from persistence.migrate import migrate as apply_migrations  # noqa: PLC0415

    async def run(url: str) -> int:
        connection = await connect(url)
        try:
            await apply_migrations(connection)
            match arguments.token_command:
                case "create":
                    token_id, secret, token_hash = new_api_token()
                    try:
                        await store.insert_api_token(connection, token_id, arguments.name, arguments.role, token_hash)
                    except store.TokenNameTaken:
                        print(
                            f"a token named {arguments.name!r} exists; revoke it "
                            f"(inventoryd token revoke {shlex.quote(arguments.name)}) or choose another name",
                            file=sys.stderr,
                        )
                        return 1
                    print(secret)
                    print(f"# {arguments.role} token {arguments.name!r} (id {token_id}); shown only now", file=sys.stderr)
                case "revoke":
                    revoked = await store.revoke_api_token(connection, arguments.name)
                    print(f"revoked {revoked} token(s)")
                    return 0 if revoked else 1
                case "list":
                    for row in await store.api_tokens(connection):
                        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "live"
                        print(f"{row.token_id}  {row.role:8} {row.name:30} created {row.created_at:%Y-%m-%d %H:%M}  {state}")
            return 0
        finally:
            await connection.close()

    with database(settings) as url:
        return asyncio.run(run(url))


def erase_user(settings: Settings, user_id: str) -> int:
    """The operator's erasure: what DELETE /v1/users/me does, for anyone (a request by email, a
    buyer a service reserved for). Running nodes refuse the person's tokens within seconds (they
    read ended sessions back every few seconds)."""
    from persistence import outbox as store  # noqa: PLC0415
    from persistence.journal import connect  # noqa: PLC0415
    from persistence.migrate import migrate as apply_migrations  # noqa: PLC0415

    async def run(url: str) -> int:
        connection = await connect(url)
        try:
            await apply_migrations(connection)
            known = await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM users WHERE user_id = $1) OR EXISTS (SELECT 1 FROM buyer_contacts WHERE user_id = $1)",
                user_id,
            )
            sessions = await store.erase_person(connection, user_id)
        finally:
            await connection.close()
        print(f"erased the personal data of {user_id!r}; {len(sessions)} session(s) ended" if known else f"nothing held for {user_id!r}")
        return 0

    with database(settings) as url:
        return asyncio.run(run(url))


def audit(settings: Settings, event_id: str | None) -> int:
    from inventoryd.audit import audit as run_audit  # noqa: PLC0415
    from persistence.journal import connect  # noqa: PLC0415

    async def run(url: str) -> int:
        connection = await connect(url)
        try:
            if await connection.fetchval("SELECT to_regclass('journal')") is None:
                # A database the service never used: most likely not the server's data directory.
                print(
                    "this database has no inventoryd log: give audit the server's --data-dir or DATABASE_URL",
                    file=sys.stderr,
                )
                return 2
            results = await run_audit(connection, event_id)
        finally:
            await connection.close()
        for result in results:
            print(result.line())
        violations = sum(1 for result in results if result.problems)
        records = sum(result.records for result in results)
        print(f"audited {len(results)} event(s), {records} records: {violations} with violations")
        if event_id is not None and not results:
            print(f"no event {event_id!r}", file=sys.stderr)
            return 2
        return 1 if violations else 0

    with database(settings) as url:
        return asyncio.run(run(url))


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    settings = _settings(arguments)
    logs.configure(settings.log_level, settings.log_format)
    match arguments.command:
        case "serve":
            serve(settings)
        case "migrate":
            migrate(settings)
        case "token":
            raise SystemExit(token(settings, arguments))
        case "user":
            raise SystemExit(erase_user(settings, arguments.user_id))
        case "audit":
            raise SystemExit(audit(settings, arguments.event))
        case _:
            raise SystemExit(f"unknown command {arguments.command}")


if __name__ == "__main__":
    main(sys.argv[1:])
