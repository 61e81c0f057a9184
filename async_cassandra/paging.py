"""Resumable paging for web APIs, with paging tokens a client cannot forge.

One page per request: ``await session.execute(stmt, params, fetch_size=50,
paging_state=state)`` returns a result with ``paging_state`` (None on the last page)
and ``has_more_pages``. Handing the raw paging state to a web client is unsafe: it is
server-side cursor state that a client can edit to read other partitions. A
:class:`PagingTokenSigner` turns it into a URL-safe token signed with an application
key (HMAC-SHA256) and bound to a *scope* (say, the endpoint and its parameters), and
turns a token back into the paging state only if it is untampered, made with the same
key, and for the same scope::

    signer = PagingTokenSigner(key=settings.paging_key)        # 32+ random bytes
    scope = f"users-by-team:{team_id}"
    state = signer.loads(request.query_params["page"], scope=scope) if "page" in ... else None
    result = await session.execute(stmt, [team_id], fetch_size=50, paging_state=state)
    next_token = signer.dumps(result.paging_state, scope=scope)  # None on the last page
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from .exceptions import ConfigurationError, QueryError, bad_argument

__all__ = ["InvalidPagingToken", "PagingTokenSigner"]

_VERSION = b"\x01"
_MAC_SIZE = 32
_MIN_KEY_SIZE = 16


class InvalidPagingToken(QueryError, ValueError):
    """A paging token was tampered with, signed with another key, made for another
    scope, expired, or is not a token at all. Answer the client with 400."""


class PagingTokenSigner:
    """Signs paging states into URL-safe tokens and verifies them back.

    ``key``: the application's secret (bytes or str, at least 16 bytes; keep it out of
    the code). ``max_age``: seconds a token stays valid (None: forever).
    """

    def __init__(self, key: bytes | str, *, max_age: float | None = None) -> None:
        key_bytes = key.encode() if isinstance(key, str) else bytes(key)
        if len(key_bytes) < _MIN_KEY_SIZE:
            raise bad_argument(
                f"the signing key must be at least {_MIN_KEY_SIZE} bytes (32 random bytes, "
                f"kept out of the code, are a good choice), not {len(key_bytes)}",
                category=ConfigurationError,
            )
        self._key = key_bytes
        self._max_age = max_age

    def dumps(self, paging_state: bytes | None, *, scope: str = "") -> str | None:
        """The token for ``paging_state`` (None passes through: no next page)."""
        if paging_state is None:
            return None
        issued = int(time.time()).to_bytes(8, "big")
        body = _VERSION + issued + paging_state
        mac = self._mac(body, scope)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")

    def loads(self, token: str, *, scope: str = "") -> bytes:
        """The paging state in ``token``; raises :class:`InvalidPagingToken` if it was
        not made by this key for this scope, or has expired."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError, TypeError):
            raise InvalidPagingToken("the paging token is not valid base64url") from None
        if len(raw) <= 1 + 8 + _MAC_SIZE or raw[:1] != _VERSION:
            raise InvalidPagingToken("the paging token is malformed")
        body, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(body, scope)):
            raise InvalidPagingToken(
                "the paging token was altered, or made by another key or for another "
                "query; start again from the first page"
            )
        if self._max_age is not None:
            issued = int.from_bytes(body[1:9], "big")
            if time.time() - issued > self._max_age:
                raise InvalidPagingToken("the paging token has expired; start again")
        return body[9:]

    def _mac(self, body: bytes, scope: str) -> bytes:
        # The scope is length-prefixed so (scope, body) pairs cannot be re-split.
        scope_bytes = scope.encode()
        message = len(scope_bytes).to_bytes(4, "big") + scope_bytes + body
        return hmac.new(self._key, message, hashlib.sha256).digest()
