"""API tokens of the HPO service: one study each (or every study, for an admin), stored hashed.

A token is ``hpo_<id>_<secret>``: ``id`` (12 hex digits) names the token in ``hpo-mlops token
list`` and in error messages, and makes the lookup one indexed sqlite read; ``secret`` is 256
random bits. The store keeps the SHA-256 of the whole token, never the token: a leaked
``tokens.db`` lets nobody in. SHA-256 and not a password hash (bcrypt, argon2) because those
exist to slow down guessing a low-entropy password; nobody guesses 256 random bits, so a slow
hash would only make every request slower (the service checks a token on each one).

Tokens travel in the ``Authorization: Bearer`` header, not in the URL path as Hopaas puts
them: paths and query strings end up in access logs, proxy logs and browser history. The one
exception, the web pages' ``?token=`` login (as Jupyter's), is redacted from uvicorn's access
log by :class:`RedactTokens` and answered by a redirect to the URL without it.

Nothing is cached: a token created or revoked by ``hpo-mlops token`` in another process counts
from the service's next request. The sqlite file is in WAL mode (readers never wait for the
CLI writing) with a busy timeout, and one connection is shared by the service's threads under
a lock (a lookup takes microseconds; measured in the report of issue 15).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from hpo_mlops.errors import ConfigError, HPOError

__all__ = ["Forbidden", "RedactTokens", "TokenInfo", "TokenStore", "Unauthorized",
           "default_path", "require"]

ADMIN = "*"
MIN_DAYS, MAX_DAYS = 1, 365
_TOKEN = re.compile(r"hpo_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
#: a token anywhere in a text (log lines), and a ``token=`` query parameter
_TOKEN_IN_TEXT = re.compile(r"hpo_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")
_TOKEN_PARAM = re.compile(r"(?<=[?&]token=)[^&\s\"']+")
_HOW = "create one with `hpo-mlops token create STUDY` (or `--admin` for every study)"


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token, never the token itself. ``study == "*"``: an admin token
    (every study, the web pages and the token page)."""

    id: str
    study: str
    created: float
    expires: float
    revoked: float | None

    @property
    def admin(self) -> bool:
        return self.study == ADMIN

    def state(self, now: float | None = None) -> str:
        """``"revoked"``, ``"expired"`` or ``"active"``."""
        if self.revoked is not None:
            return "revoked"
        return "expired" if (time.time() if now is None else now) >= self.expires else "active"


class Unauthorized(HPOError):
    """No usable token: missing, malformed, unknown, expired or revoked (HTTP 401)."""


class Forbidden(HPOError):
    """A valid token of another study, or a study token where an admin one is needed (403)."""


def default_path() -> Path:
    """``$HPO_MLOPS_TOKENS``, else ``./.hpo-mlops/tokens.db`` (beside the default mlflow.db)."""
    env = os.environ.get("HPO_MLOPS_TOKENS")
    return Path(env).expanduser() if env else Path.cwd() / ".hpo-mlops" / "tokens.db"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


class TokenStore:
    """The tokens in one sqlite file; safe to share between threads and processes."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS tokens (
            id TEXT PRIMARY KEY, study TEXT NOT NULL, hash TEXT NOT NULL,
            created REAL NOT NULL, expires REAL NOT NULL, revoked REAL);
        CREATE INDEX IF NOT EXISTS tokens_study ON tokens (study);
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False,
                                       isolation_level=None)
            if new:  # only hashes inside, but nobody else needs to read them
                with contextlib.suppress(OSError):
                    os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(self._SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"tokens: cannot open the token store {self.path}: {exc}") from None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                yield cur
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- admin ---------------------------------------------------------------------------
    def create(self, study: str, days: float = 30, admin: bool = False) -> tuple[str, TokenInfo]:
        """A new token for ``study`` (``admin=True`` or ``study="*"``: every study), valid
        ``days`` (1 to 365) from now. The token is returned here once and never again."""
        if admin or study == ADMIN:
            if study not in (ADMIN, "", None):
                raise ConfigError(f"study: an admin token is for every study; give no study "
                                  f"with admin, got {study!r}")
            study = ADMIN
        elif not isinstance(study, str) or not study.strip():
            raise ConfigError(f"study: must be a study name, got {study!r}")
        if (isinstance(days, bool) or not isinstance(days, int | float)
                or not MIN_DAYS <= days <= MAX_DAYS):
            got = f"{days:g}" if isinstance(days, int | float) else repr(days)
            raise ConfigError(f"days: must be between {MIN_DAYS} and {MAX_DAYS}, got {got}")
        now = time.time()
        with self._cursor() as cur:
            while True:  # 48-bit ids: a clash is all but impossible, but never reuse one
                token_id = secrets.token_hex(6)
                token = f"hpo_{token_id}_{secrets.token_urlsafe(32)}"
                info = TokenInfo(token_id, study, now, now + days * 86400.0, None)
                try:
                    cur.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                                (token_id, study, _hash(token), info.created, info.expires))
                    return token, info
                except sqlite3.IntegrityError:
                    continue

    def list(self, study: str | None = None) -> list[TokenInfo]:
        """Every token (of ``study``, if given; ``"*"``: the admin tokens), oldest first."""
        sql = "SELECT id, study, created, expires, revoked FROM tokens"
        args: tuple[Any, ...] = ()
        if study is not None:
            sql, args = sql + " WHERE study = ?", (study,)
        with self._cursor() as cur:
            rows = cur.execute(sql + " ORDER BY created, id", args).fetchall()
        return [TokenInfo(*row) for row in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token by its id (a whole token is accepted too); from the next request
        on it gets 401. Revoking twice keeps the first time."""
        m = _TOKEN.fullmatch(token_id or "")
        key = m.group(1) if m else token_id
        with self._cursor() as cur:
            cur.execute("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL",
                        (time.time(), key))
            row = cur.execute("SELECT id, study, created, expires, revoked FROM tokens "
                              "WHERE id = ?", (key,)).fetchone()
        if row is None:
            shown = f"hpo_{key}_..." if m else repr(token_id)
            raise ConfigError(f"token id: no token {shown} in {self.path} "
                              f"(`hpo-mlops token list` shows the ids)")
        return TokenInfo(*row)

    # -- every request ---------------------------------------------------------------------
    def verify(self, secret: str | None, study: str | None) -> TokenInfo:
        """The token's info if it may act on ``study`` (``None``: needs an admin token).

        Raises :class:`Unauthorized` (missing, malformed, unknown, expired, revoked) or
        :class:`Forbidden` (valid, but for another study). Messages name the token's id at
        most, never the token."""
        if not secret:
            raise Unauthorized(f"missing token: send the header `Authorization: Bearer "
                               f"<token>`; {_HOW}")
        m = _TOKEN.fullmatch(secret)
        if m is None:
            raise Unauthorized(f"malformed token: expected hpo_<id>_<secret> as `hpo-mlops "
                               f"token create` prints it; {_HOW}")
        token_id = m.group(1)
        with self._cursor() as cur:
            row = cur.execute("SELECT id, study, created, expires, revoked, hash FROM tokens "
                              "WHERE id = ?", (token_id,)).fetchone()
        stored = row[5] if row else "0" * 64  # compare anyway: the same time either way
        if not hmac.compare_digest(_hash(secret), stored) or row is None:
            raise Unauthorized(f"unknown token hpo_{token_id}_...: not in this service's "
                               f"token store; {_HOW}")
        info = TokenInfo(*row[:5])
        if info.revoked is not None:
            raise Unauthorized(f"token {info.id} was revoked on {_when(info.revoked)}; {_HOW}")
        if time.time() >= info.expires:
            raise Unauthorized(f"token {info.id} expired on {_when(info.expires)}; {_HOW}")
        if info.admin or (study is not None and info.study == study):
            return info
        if study is None:
            raise Forbidden(f"token {info.id} is for study {info.study!r}; this needs an admin "
                            f"token (`hpo-mlops token create --admin`)")
        raise Forbidden(f"token {info.id} is for study {info.study!r}, not {study!r}")


# -- FastAPI ------------------------------------------------------------------------------------
def require(store: TokenStore) -> Callable[..., Any]:
    """A FastAPI dependency: the :class:`TokenInfo` of the request's ``Authorization: Bearer``
    token for the route's ``{study}`` path parameter (a route without one needs an admin
    token); else ``HTTPException`` 401 (with ``WWW-Authenticate: Bearer``) or 403, whose JSON
    ``detail`` says why. Use as ``Depends(require(store))`` or in ``dependencies=[...]``.

    Async on purpose: one indexed sqlite read on the event loop costs less than a hop to the
    thread pool, and WAL readers do not wait for writers."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    install_log_redaction()
    bearer = HTTPBearer(auto_error=False, description="a token from `hpo-mlops token create`")

    async def token(request: Request, credentials: HTTPAuthorizationCredentials | None
                    ) -> TokenInfo:
        study = request.path_params.get("study")
        try:
            return store.verify(credentials.credentials if credentials else None, study)
        except Unauthorized as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        except Forbidden as exc:
            raise HTTPException(403, str(exc)) from None

    # the names above are local (fastapi loads only when serving): FastAPI cannot resolve
    # them from this module's globals as postponed (string) annotations, so give the objects
    token.__annotations__ = {
        "request": Request, "return": TokenInfo,
        "credentials": Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]}
    return token


# -- logs ---------------------------------------------------------------------------------------
def redact(text: str) -> str:
    """``text`` with every token and every ``token=`` query value replaced by ``[redacted]``."""
    return _TOKEN_PARAM.sub("[redacted]", _TOKEN_IN_TEXT.sub("[redacted]", text))


class RedactTokens(logging.Filter):
    """Removes tokens from log records (uvicorn's access log prints each request's path and
    query string, so a ``?token=`` login would otherwise land in it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


_FILTER = RedactTokens()


def install_log_redaction(*names: str) -> None:
    """Put :class:`RedactTokens` on uvicorn's loggers (and ``names``); idempotent. Called by
    :func:`require` and the web router, so a service built on them cannot forget it."""
    for name in ("uvicorn.access", "uvicorn.error", *names):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
