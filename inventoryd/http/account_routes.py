"""Accounts: register, log in, refresh (rotating), log out, who am I."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from inventoryd import limits
from inventoryd.http import keys
from inventoryd.http.common import json_response, read_json, refuse_body
from inventoryd.http.problems import ProblemError
from inventoryd.http.schemas import STORABLE_TEXT, Email
from inventoryd.principal import AccountRole, account_role

Password = Annotated[str, Meta(min_length=limits.PASSWORD_CHARS_MIN, max_length=256, pattern=STORABLE_TEXT)]


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=STORABLE_TEXT)]
    role: AccountRole = "attendee"


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Annotated[str, Meta(min_length=1, max_length=256, pattern=STORABLE_TEXT)]


class RefreshIn(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=512)]


class UserOut(msgspec.Struct):
    id: str
    email: str
    name: str
    role: AccountRole
    created_at: datetime


class TokensOut(msgspec.Struct):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int
    refresh_token: str


_REGISTER = msgspec.json.Decoder(RegisterIn)
_LOGIN = msgspec.json.Decoder(LoginIn)
_REFRESH = msgspec.json.Decoder(RefreshIn)
# Answers that carry credentials are never cached.
_NO_STORE = {"Cache-Control": "no-store"}


async def register(request: web.Request) -> web.Response:
    body: RegisterIn = await read_json(request, _REGISTER)
    user = await request.app[keys.ACCOUNTS].register(body.email, body.password, body.name, body.role)
    return json_response(UserOut(user.user_id, user.email, user.name, account_role(user.role), user.created_at), status=201)


async def login(request: web.Request) -> web.Response:
    body: LoginIn = await read_json(request, _LOGIN)
    pair = await request.app[keys.ACCOUNTS].login(body.email, body.password)
    return json_response(TokensOut(pair.access_token, "bearer", pair.expires_in, pair.refresh_token), headers=_NO_STORE)


async def refresh(request: web.Request) -> web.Response:
    body: RefreshIn = await read_json(request, _REFRESH)
    pair = await request.app[keys.ACCOUNTS].refresh(body.refresh_token)
    return json_response(TokensOut(pair.access_token, "bearer", pair.expires_in, pair.refresh_token), headers=_NO_STORE)


async def logout(request: web.Request) -> web.Response:
    await refuse_body(request, "logout")
    session_id = request[keys.PRINCIPAL].session_id
    if session_id is None:
        # A well-formed request this caller may not make (as /v1/users/me for such a token).
        raise ProblemError(403, "forbidden", "an API token has no session to end; revoke it instead")
    await request.app[keys.ACCOUNTS].logout(session_id)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    principal = request[keys.PRINCIPAL]
    if principal.user_id is None:
        raise ProblemError(403, "forbidden", "this token belongs to no user account")
    user = await request.app[keys.ACCOUNTS].user(principal.user_id)
    if user is None:
        raise ProblemError(404, "not_found", "the account no longer exists")
    return json_response(UserOut(user.user_id, user.email, user.name, account_role(user.role), user.created_at))
