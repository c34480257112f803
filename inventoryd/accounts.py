"""Accounts and credentials: registration, login, refresh-token rotation, logout, API tokens.

Three kinds of bearer token reach `authenticate`, which runs on every request and so never touches
the database or hashes a password:
- an access token: a JWT (HS256, short-lived, `exp` and `iat` checked), verified once and then
  cached until it expires;
- an API token `ivd_<id>_<secret>` (services, admins) made by `inventoryd token create`, checked
  against the SHA-256 of its secret (constant-time) from a table the service reloads every
  limits.API_TOKENS_RELOAD_S, so a revocation takes effect within that;
- the bootstrap admin token from INVENTORYD_ADMIN_TOKEN (constant-time comparison).
Passwords are hashed with argon2id in worker threads, at most limits.PASSWORD_HASHES_WAITING_MAX waiting:
a login flood gets 503s, never a stalled event loop. Registrations and logins have shares of their
own (limits.PASSWORD_HASHES_REGISTERING_MAX, _LOGGING_IN_MAX) and a free thread takes a waiting login
first: a registration flood cannot keep existing users from logging in. A failed login costs the
same whether or not the email exists, and says the same. Registration does say that an email is
taken (409): see `register`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import asyncpg
import jwt
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError, VerifyMismatchError

from inventoryd import limits
from inventoryd.errors import Conflict, Unauthenticated, Unavailable
from inventoryd.principal import ACCOUNT_ROLES, Principal
from inventoryd.tasks import TaskSupervisor
from persistence import accounts as store
from persistence import outbox as outbox_store
from persistence.connection import Connection
from persistence.errors import DATABASE_AWAY

log = structlog.get_logger("inventoryd.accounts")

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "inventoryd"
API_TOKEN_PREFIX = "ivd_"  # noqa: S105 - a token's public prefix, not a secret
REFRESH_TOKEN_PREFIX = "ivr_"  # noqa: S105 - a token's public prefix, not a secret

Result = TypeVar("Result")
# Who a password hash is for: an existing user logging in, or a new account.
HashLane = Literal["login", "registration"]
_LANES_FIRST_TO_LAST: tuple[HashLane, ...] = ("login", "registration")


def _random_token(bytes_count: int = 32) -> str:
    return base64.urlsafe_b64encode(os.urandom(bytes_count)).decode().rstrip("=")


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class UnknownApiToken(Exception):
    """An API token id not in memory: perhaps made since the last reload."""


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class _ApiToken:
    token_id: str
    name: str
    role: str
    token_hash: bytes


class Accounts:
    def __init__(self, pool: asyncpg.Pool, *, admin_token: str | None, jwt_secret: str | None) -> None:
        self._pool = pool
        self._admin_token = admin_token.encode() if admin_token else None
        self._configured_secret = jwt_secret
        self._jwt_key = b""
        self._api_tokens: dict[str, _ApiToken] = {}
        # Whole tokens already checked against their hash, cleared on every reload (so a
        # revocation still takes effect within limits.API_TOKENS_RELOAD_S); at most one per live token.
        self._api_token_principals: dict[str, Principal] = {}
        self._access_cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._revoked_sessions: OrderedDict[str, float] = OrderedDict()
        self._hasher = PasswordHasher()  # argon2id, RFC 9106's second recommended parameters
        self._hashing = _HashQueue(ThreadPoolExecutor(limits.PASSWORD_HASH_THREADS, thread_name_prefix="password-hash"))
        self._dummy_hash = ""
        self._tasks = TaskSupervisor("accounts")
        self._miss_reload: asyncio.Task[None] | None = None
        self._miss_reloaded_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._pool.acquire() as connection:
            if self._configured_secret:
                self._jwt_key = self._configured_secret.encode()
            else:
                # No secret configured: one made once and kept in the database, so that tokens
                # survive restarts and every node of the service agrees.
                self._jwt_key = await store.service_secret(connection, "jwt_signing_key", os.urandom(32))
            await self._reload_api_tokens(connection)
        self._dummy_hash = await self._hash_password(_random_token(), "login")
        self._tasks.spawn(self._reload_forever(), name="api-token-reloader")

    async def stop(self) -> None:
        await self._tasks.close()
        self._hashing.executor.shutdown(wait=False, cancel_futures=True)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(limits.API_TOKENS_RELOAD_S)
            try:
                async with self._pool.acquire() as connection:
                    await self._reload_api_tokens(connection)
            except DATABASE_AWAY as error:
                log.warning("api_token_reload_failed", error=repr(error))

    async def _reload_api_tokens(self, connection: Connection) -> None:
        """API tokens and ended sessions, as every node has written them."""
        self._api_tokens = {
            row.token_id: _ApiToken(row.token_id, row.name, row.role, bytes(row.token_hash))
            for row in await store.api_tokens(connection)
            if row.revoked_at is None
        }
        self._api_token_principals = {}
        since = _now() - timedelta(seconds=limits.REVOKED_SESSIONS_LOOKBACK_S)
        for session_id, revoked_at in await store.sessions_revoked_since(connection, since):
            if session_id not in self._revoked_sessions:
                self._revoke_session_locally(session_id, revoked_at.timestamp())
        self._forget_old_revocations()

    # -- every request --------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal an Authorization header names, None without one; 401 if it is not valid."""
        try:
            return self.authenticate_nowait(authorization)
        except UnknownApiToken:
            await self._reload_after_miss()
            return self.authenticate_nowait(authorization, reloaded=True)

    async def _reload_after_miss(self) -> None:
        if self._miss_reload is None or self._miss_reload.done():
            if time.monotonic() - self._miss_reloaded_at < limits.API_TOKENS_MISS_RELOAD_S:
                return
            self._miss_reloaded_at = time.monotonic()

            async def reload() -> None:
                async with self._pool.acquire() as connection:
                    await self._reload_api_tokens(connection)

            self._miss_reload = self._tasks.spawn(reload(), name="api-token-reload-on-miss", expected=DATABASE_AWAY)
        try:
            await asyncio.shield(self._miss_reload)
        except DATABASE_AWAY as error:
            log.warning("api_token_reload_failed", error=repr(error))

    def authenticate_nowait(self, authorization: str | None, *, reloaded: bool = False) -> Principal | None:
        """`authenticate` from memory alone: raises UnknownApiToken when a reload might help."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("send Authorization: Bearer <token>")
        token = token.strip()
        # Service tokens first: they carry the on-sale traffic.
        if token.startswith(API_TOKEN_PREFIX):
            return self._api_token_principal(token, reloaded)
        if self._admin_token is not None and hmac.compare_digest(token.encode(), self._admin_token):
            return Principal(id="admin:bootstrap", role="admin")
        return self._access_token_principal(token)

    def _api_token_principal(self, token: str, reloaded: bool) -> Principal:
        checked = self._api_token_principals.get(token)
        if checked is not None:
            return checked
        token_id, _, secret = token.removeprefix(API_TOKEN_PREFIX).partition("_")
        known = self._api_tokens.get(token_id)
        if known is None and not reloaded:
            raise UnknownApiToken
        if known is None or not secret or not hmac.compare_digest(_sha256(secret), known.token_hash):
            raise Unauthenticated("the API token is not valid, or was revoked")
        principal = Principal(id=f"token:{known.name}", role=known.role)  # type: ignore[arg-type]
        self._api_token_principals[token] = principal
        return principal

    def _access_token_principal(self, token: str) -> Principal:
        now = time.time()
        cached = self._access_cache.get(token)
        if cached is not None:
            principal, expires_at = cached
            if now < expires_at and principal.session_id not in self._revoked_sessions:
                return principal
            del self._access_cache[token]
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=[JWT_ALGORITHM],
                issuer=JWT_ISSUER,
                options={"require": ["exp", "iat", "sub", "role", "sid"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired; refresh it") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("the access token is not valid") from None
        if claims["iat"] > now + 60:
            raise Unauthenticated("the access token was issued in the future")
        if claims["role"] not in ACCOUNT_ROLES:
            raise Unauthenticated("the access token is not valid")
        if claims["sid"] in self._revoked_sessions:
            raise Unauthenticated("the session has ended; log in again")
        principal = Principal(
            id=f"user:{claims['sub']}", role=claims["role"], user_id=claims["sub"], session_id=claims["sid"]
        )
        self._access_cache[token] = (principal, float(claims["exp"]))
        while len(self._access_cache) > limits.ACCESS_TOKEN_CACHE_ENTRIES_MAX:
            self._access_cache.popitem(last=False)
        return principal

    # -- accounts -------------------------------------------------------------------------------

    async def register(self, email: str, password: str, name: str, role: str) -> store.UserRow:
        """A new account; 409 if the email has one. That tells anyone whether an email is
        registered, a choice: the service sends no email, so it cannot answer "check your inbox" to
        both and tell the owner apart; the /v1/auth limits per address and for all registrations
        together bound how fast emails can be probed. Login tells nothing (see `login`). Since the
        answer says it anyway, a taken email is refused before its password is hashed."""
        async with self._pool.acquire() as connection:
            taken = await store.user_by_email(connection, email) is not None
        if taken:
            raise Conflict(_EMAIL_TAKEN, field="$.email")
        password_hash = await self._hash_password(password, "registration")
        user_id = "usr_" + base64.b32encode(os.urandom(10)).decode().lower()
        async with self._pool.acquire() as connection:
            try:
                user = await store.insert_user(connection, user_id, email, password_hash, name, role)
            except store.EmailTaken:
                raise Conflict(_EMAIL_TAKEN, field="$.email") from None
        log.info("user_registered", user_id=user.user_id, role=role)
        return user

    async def login(self, email: str, password: str) -> TokenPair:
        async with self._pool.acquire() as connection:
            user = await store.user_by_email(connection, email)
        # Verify against a dummy hash when there is no such user: the same time, the same answer.
        stored = user.password_hash if user is not None else self._dummy_hash
        valid = await self._verify_password(stored, password)
        if user is None or not valid:
            raise Unauthenticated("wrong email or password")
        if self._hasher.check_needs_rehash(user.password_hash):
            new_hash = await self._hash_password(password, "login")
            async with self._pool.acquire() as connection:
                await store.update_password_hash(connection, user.user_id, new_hash)
        session_id = "ses_" + _random_token(12)
        refresh_token = REFRESH_TOKEN_PREFIX + _random_token()
        async with self._pool.acquire() as connection:
            await store.insert_refresh_token(
                connection, _sha256(refresh_token), session_id, user.user_id, _now() + timedelta(seconds=limits.REFRESH_TOKEN_TTL_S)
            )
        return TokenPair(self._access_token(user.user_id, user.role, session_id), refresh_token, limits.ACCESS_TOKEN_TTL_S)

    async def refresh(self, refresh_token: str) -> TokenPair:
        new_refresh = REFRESH_TOKEN_PREFIX + _random_token()
        now = _now()
        async with self._pool.acquire() as connection:
            outcome = await store.rotate_refresh_token(
                connection, _sha256(refresh_token), _sha256(new_refresh), now, now + timedelta(seconds=limits.REFRESH_TOKEN_TTL_S)
            )
            user = await store.user_by_id(connection, outcome.user_id) if outcome.user_id else None
        if outcome.problem == "reused" and outcome.session_id is not None:
            self._revoke_session_locally(outcome.session_id)
            log.warning("refresh_token_reused", session_id=outcome.session_id, user_id=outcome.user_id)
        if outcome.problem is not None or outcome.session_id is None or user is None:
            raise Unauthenticated("the refresh token is not valid")
        return TokenPair(self._access_token(user.user_id, user.role, outcome.session_id), new_refresh, limits.ACCESS_TOKEN_TTL_S)

    async def logout(self, session_id: str) -> None:
        async with self._pool.acquire() as connection:
            await store.revoke_session(connection, session_id, _now())
        self._revoke_session_locally(session_id)

    async def erase(self, user_id: str) -> list[str]:
        """Erase the person's personal data (persistence.outbox.erase_person) and end every session
        of theirs, here at once and on the other nodes at their next read of revocations. Returns
        the sessions ended."""
        async with self._pool.acquire() as connection:
            sessions = await outbox_store.erase_person(connection, user_id)
        for session_id in sessions:
            self._revoke_session_locally(session_id)
        log.info("personal_data_erased", user_id=user_id, sessions_ended=len(sessions))
        return sessions

    async def user(self, user_id: str) -> store.UserRow | None:
        async with self._pool.acquire() as connection:
            return await store.user_by_id(connection, user_id)

    def _revoke_session_locally(self, session_id: str, revoked_at: float | None = None) -> None:
        self._revoked_sessions[session_id] = time.time() if revoked_at is None else revoked_at
        while len(self._revoked_sessions) > limits.REVOKED_SESSIONS_MAX:
            self._revoked_sessions.popitem(last=False)

    def _forget_old_revocations(self) -> None:
        """Sessions ended so long ago that every access token they issued has expired."""
        # Oldest first (they are added as they end, give or take the clocks of other nodes): only
        # the stale ones at the front are looked at.
        cutoff = time.time() - limits.REVOKED_SESSIONS_LOOKBACK_S
        revoked = self._revoked_sessions
        while revoked and next(iter(revoked.values())) < cutoff:
            revoked.popitem(last=False)

    def _access_token(self, user_id: str, role: str, session_id: str) -> str:
        issued = int(time.time())
        claims = {
            "iss": JWT_ISSUER,
            "sub": user_id,
            "role": role,
            "sid": session_id,
            "iat": issued,
            "exp": issued + limits.ACCESS_TOKEN_TTL_S,
        }
        return jwt.encode(claims, self._jwt_key, algorithm=JWT_ALGORITHM)

    # -- password hashing, off the event loop ---------------------------------------------------

    async def _hash_password(self, password: str, lane: HashLane) -> str:
        return await self._hashing.run(lane, self._hasher.hash, password)

    async def _verify_password(self, password_hash: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return bool(self._hasher.verify(password_hash, password))
            except (VerifyMismatchError, VerificationError):
                return False

        return await self._hashing.run("login", verify)


_EMAIL_TAKEN = "an account with this email exists"


class _HashQueue:
    """Password hashes in PASSWORD_HASH_THREADS threads, admitted per lane (registrations at most
    PASSWORD_HASHES_REGISTERING_MAX, logins at most PASSWORD_HASHES_LOGGING_IN_MAX, running or
    waiting; beyond, 503 at once). The executor's own queue, first come first served, is never used:
    a hash is handed to it only when a thread is free, and a free thread goes to the login waiting
    longest, else to the registration waiting longest. A hash still waiting after
    PASSWORD_HASH_QUEUE_WAIT_S is refused 503."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self._running = 0
        self._admitted: dict[HashLane, int] = {"login": 0, "registration": 0}
        # Futures of hashes waiting for a thread, per lane; each is resolved when it is its turn.
        self._waiting: dict[HashLane, deque[asyncio.Future[None]]] = {"login": deque(), "registration": deque()}

    async def run(self, lane: HashLane, function: Callable[..., Result], *arguments: object) -> Result:
        if lane == "login":
            admitted_max, what = limits.PASSWORD_HASHES_LOGGING_IN_MAX, "logins"
        else:
            admitted_max, what = limits.PASSWORD_HASHES_REGISTERING_MAX, "registrations"
        if self._admitted[lane] >= admitted_max:
            raise Unavailable(f"too many {what} at once; retry shortly", code="overloaded")
        self._admitted[lane] += 1
        try:
            await self._turn(lane)
            try:
                hashed = asyncio.get_running_loop().run_in_executor(self.executor, function, *arguments)
            except BaseException:  # the executor is shut down: the thread was never taken
                self._release()
                raise
            # The thread is free once the hash is done, not when its caller stops waiting for it.
            hashed.add_done_callback(self._release)
            return await asyncio.shield(hashed)
        finally:
            self._admitted[lane] -= 1

    async def _turn(self, lane: HashLane) -> None:
        """Return holding a thread. (A thread that frees goes to a waiting hash at once: while
        one is free, nothing waits.)"""
        if self._running < limits.PASSWORD_HASH_THREADS:
            self._running += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(turn)
        try:
            async with asyncio.timeout(limits.PASSWORD_HASH_QUEUE_WAIT_S):
                await turn
        except BaseException as error:
            if turn.done() and not turn.cancelled():
                self._release()  # the thread was handed over as this waiter gave up: pass it on
            elif turn in self._waiting[lane]:  # (a turn given up may have been skipped already)
                self._waiting[lane].remove(turn)
            if isinstance(error, TimeoutError):
                raise Unavailable("password hashing is busy; retry shortly", code="overloaded") from None
            raise

    def _release(self, _: object = None) -> None:
        """A thread is free: to the next waiting login, else registration (it stays counted)."""
        for lane in _LANES_FIRST_TO_LAST:
            waiting = self._waiting[lane]
            while waiting:
                turn = waiting.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._running -= 1


def _now() -> datetime:
    return datetime.now(UTC)


def new_api_token() -> tuple[str, str, bytes]:
    """(token id, the whole token to show once, the hash to store)."""
    token_id = os.urandom(4).hex()
    secret = _random_token()
    return token_id, f"{API_TOKEN_PREFIX}{token_id}_{secret}", _sha256(secret)
