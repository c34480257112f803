"""`inventoryd token create` with a name a live token already has: one plain sentence and exit 1.

Method: the real CLI function makes a token, then is asked for a second one with the same name,
against the test's PostgreSQL; its standard error is read as an operator would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io

from inventoryd import cli


async def run_token(database_url: str, *words: str) -> tuple[int, str, str]:
    """`inventoryd token ...` as the CLI runs it (in a thread: it runs its own event loop)."""
    arguments = cli._parser().parse_args(["token", *words, "--database-url", database_url])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(cli.token, cli._settings(arguments), arguments)
    return code, out.getvalue(), err.getvalue()


async def test_a_taken_name_is_explained_not_a_database_error(database_url: str) -> None:
    code, secret, _ = await run_token(database_url, "create", "--role", "service", "--name", "locust")
    assert code == 0 and secret.startswith("ivd_")
    code, out, err = await run_token(database_url, "create", "--role", "admin", "--name", "locust")
    assert code == 1 and out == ""
    assert err.strip() == (
        "a token named 'locust' exists; revoke it (inventoryd token revoke locust) or choose another name"
    ), err
    # Once revoked, the name is free again.
    assert (await run_token(database_url, "revoke", "locust"))[0] == 0
    code, secret, _ = await run_token(database_url, "create", "--role", "service", "--name", "locust")
    assert code == 0 and secret.startswith("ivd_")
