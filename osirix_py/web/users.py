"""Users of the web server: salted scrypt password hashes, API tokens, two roles.

Kept in the ``users`` table of the archive's database (schema 2), managed with
``osirix-py users add/list/remove/passwd/token`` and read by
:mod:`osirix_py.web.auth`.  Nothing here imports Starlette, so the CLI can use
it without the web stack.

* **Passwords** are stored only as ``scrypt$N$r$p$<salt>$<hash>`` (base64):
  :func:`hashlib.scrypt` from the standard library, memory-hard, 16 random
  bytes of salt per user, the parameters kept in the hash so that they can be
  raised later (a login with an older cost re-hashes the password).  scrypt
  rather than PBKDF2 because it is memory-hard (GPU/ASIC guessing is costly);
  rather than Argon2 because it needs no compiled dependency and is on
  OWASP's list too.
* **API tokens** (``Authorization: Bearer oxp_...``) are 256-bit random
  strings shown once; only their SHA-256 is stored (a fast hash is enough for
  a secret of that entropy).
* **Roles**: ``admin`` may do everything; ``readonly`` may only read (no
  DELETE, no STOW-RS, no other unsafe method).

Every comparison of secrets uses :func:`hmac.compare_digest`; a login for an
unknown user still costs one scrypt (no user enumeration by timing).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..db.schema import users as users_table

ROLES = ("admin", "readonly")
#: scrypt cost: N = 2**15, r = 8, p = 1 (32 MiB, ~0.1 s): raise N here and old
#: hashes are upgraded at their next login.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_MAXMEM = 1 << 28
MIN_PASSWORD = 8
TOKEN_PREFIX = "oxp_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


class UserError(ValueError):
    """A user cannot be added / changed (bad name, weak password, unknown user ...)."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    password_hash: str = ""
    token_hash: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def has_token(self) -> bool:
        return bool(self.token_hash)

    def __repr__(self) -> str:  # never show the hashes
        return f"User({self.name!r}, {self.role})"


# --------------------------------------------------------------------------- hashing
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def hash_password(password: str, *, n: int | None = None, r: int | None = None,
                  p: int | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` of *password* (the module's cost unless given)."""
    n, r, p = n or SCRYPT_N, r or SCRYPT_R, p or SCRYPT_P
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM,
                        dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    try:
        algo, n, r, p, salt, dk = stored.split("$")
        if algo != "scrypt":
            return None
        return int(n), int(r), int(p), base64.b64decode(salt), base64.b64decode(dk)
    except (ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so that both cost the same."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str) -> bool:
    """Whether *password* matches the stored hash (constant-time compare)."""
    parsed = _parse(stored)
    if parsed is None:
        parsed = _parse(_dummy_hash())
        ok_format = False
    else:
        ok_format = True
    n, r, p, salt, dk = parsed  # type: ignore[misc]
    try:
        got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                             maxmem=SCRYPT_MAXMEM, dklen=len(dk))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, dk) and ok_format


def needs_rehash(stored: str) -> bool:
    parsed = _parse(stored)
    return parsed is None or parsed[:3] != (SCRYPT_N, SCRYPT_R, SCRYPT_P)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"invalid user name {name[:70]!r}: 1 to 64 of A-Z a-z 0-9 . _ @ + - "
                        "(starting with a letter or digit)")
    return name


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("the password is too long (at most 1024 characters)")
    if "\x00" in password:
        raise UserError("the password may not contain NUL characters")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


# --------------------------------------------------------------------------- store
def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _user(row) -> User:
    return User(id=row.id, name=row.name, role=row.role, password_hash=row.password_hash,
                token_hash=row.token_hash)


class UserStore:
    """The users table of one database (thread-safe: a connection per call)."""

    def __init__(self, db):
        self.db = db

    # -- reading ---------------------------------------------------------------
    def list(self) -> list[User]:
        with self.db.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(users_table).order_by(users_table.c.name))]

    def get(self, name: str) -> User | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(users_table).where(users_table.c.name == name)).first()
        return _user(row) if row is not None else None

    def count(self) -> int:
        return len(self.list())

    def by_token(self, token: str) -> User | None:
        """The user whose API token this is (None if none)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_digest(token)
        with self.db.engine.connect() as conn:
            row = conn.execute(select(users_table).where(users_table.c.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash or "", digest):
            return None
        return _user(row)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if *password* is theirs, else None (same cost either way)."""
        user = self.get(name) if isinstance(name, str) and _NAME_RE.match(name or "") else None
        ok = verify_password(password, user.password_hash if user else _dummy_hash())
        if user is None or not ok:
            return None
        if needs_rehash(user.password_hash):
            self._set_hash(user.name, hash_password(password))
            user = self.get(user.name) or user
        return user

    # -- writing ---------------------------------------------------------------
    def add(self, name: str, password: str, role: str = "readonly") -> User:
        check_name(name)
        check_password(password)
        check_role(role)
        try:
            with self.db.engine.begin() as conn:
                conn.execute(users_table.insert().values(
                    name=name, password_hash=hash_password(password), role=role, created_at=_now()))
        except IntegrityError:
            raise UserError(f"user {name!r} exists already") from None
        return self.get(name)  # type: ignore[return-value]

    def _set_hash(self, name: str, stored: str) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(update(users_table).where(users_table.c.name == name)
                         .values(password_hash=stored, updated_at=_now()))

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        self._require(name)
        self._set_hash(name, hash_password(password))

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        self._require(name)
        with self.db.engine.begin() as conn:
            conn.execute(update(users_table).where(users_table.c.name == name)
                         .values(role=role, updated_at=_now()))

    def new_token(self, name: str) -> str:
        """A new API token for *name* (replaces any previous one); shown once, stored hashed."""
        self._require(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.engine.begin() as conn:
            conn.execute(update(users_table).where(users_table.c.name == name)
                         .values(token_hash=token_digest(token), updated_at=_now()))
        return token

    def revoke_token(self, name: str) -> None:
        self._require(name)
        with self.db.engine.begin() as conn:
            conn.execute(update(users_table).where(users_table.c.name == name)
                         .values(token_hash=None, updated_at=_now()))

    def remove(self, name: str) -> None:
        self._require(name)
        with self.db.engine.begin() as conn:
            conn.execute(delete(users_table).where(users_table.c.name == name))

    def _require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name!r}")
        return user
