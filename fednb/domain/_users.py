"""Users and their tokens: shown once, stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select

from fednb.domain._store import Store, UserRow
from fednb.errors import AuthenticationError, Conflict, InvalidInput, NotFound
from fednb.protocol import NAME_PATTERN, Role, UserInfo

__all__ = ["authenticate", "hash_token", "new_token", "user_info"]

_ROLES = ("owner", "scientist")


def new_token() -> str:
    """A fresh bearer token (256 bits of entropy)."""
    return "fednb_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the store keeps: SHA-256 of the token (tokens are random, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def user_info(row: UserRow) -> UserInfo:
    return UserInfo(name=row.name, role=row.role, created=row.created,
                    revoked=row.revoked)


def check_new_user(name: str, role: str) -> Role:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(f"user name {name[:80]!r} must match {NAME_PATTERN}")
    if role not in _ROLES:
        raise InvalidInput(f"role {role!r} is not one of {_ROLES}")
    return role  # type: ignore[return-value]


def authenticate(store: Store, token: str | None) -> UserRow:
    """The active user holding ``token``; AuthenticationError otherwise."""
    if not token:
        raise AuthenticationError("no token: send 'Authorization: Bearer <token>'")
    digest = hash_token(token)
    with store.session() as s:
        row = s.execute(select(UserRow).where(UserRow.token_hash == digest)).scalar()
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked:
        raise AuthenticationError("unknown or revoked token: ask the domain's owner for a new one")
    return row


def get_user(store: Store, name: str) -> UserRow:
    with store.session() as s:
        row = s.get(UserRow, name)
    if row is None:
        raise NotFound(f"no user called {name!r}")
    return row


def ensure_absent(store: Store, name: str) -> None:
    with store.session() as s:
        if s.get(UserRow, name) is not None:
            raise Conflict(f"a user called {name!r} exists: rotate its token or pick another name")
