"""Credentials to principals: static API keys (compared in constant time, held only as SHA-256
digests) and JWT bearer tokens (``tokens``), with their scopes and AE bindings. The same for
REST (``Authorization`` header, ``X-API-Key``, WebSocket tickets) and DIMSE (User Identity)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from gateway.config import Auth
from gateway.security.principal import ALL_SCOPES, Principal
from gateway.security.tokens import TokenRejected, TokenVerifier


class BadCredential(Exception):
    """A credential was given and is not accepted; the message says why."""


@dataclass(frozen=True)
class _Key:
    digest: bytes
    principal: Principal
    name: str | None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    def __init__(self, config: Auth):
        self.config = config
        self.enabled = config.enabled
        self.realm = config.realm
        self.tokens = TokenVerifier(config.jwt)
        self._keys = [
            _Key(_digest(k.key), Principal(
                f"apikey:{k.name or f'#{i}'}", frozenset(k.scopes), frozenset(k.ae_titles),
                "apikey"), k.name)
            for i, k in enumerate(config.api_keys)]

    def api_key(self, secret: str, username: str | None = None) -> Principal:
        """The principal of an API key; ``username`` (DIMSE User Identity), when the key has a
        name, must be that name. Every key is compared, so the time taken says nothing."""
        digest = _digest(secret)
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        if found is None:
            raise BadCredential("the API key is not valid")
        if username is not None and found.name is not None and username != found.name:
            raise BadCredential("the API key does not belong to this user")
        return found.principal

    def bearer(self, claims: dict[str, Any]) -> Principal:
        """The principal of a verified token's claims."""
        cfg = self.config.jwt
        raw = claims.get(cfg.scope_claim, [])
        scopes = raw.split() if isinstance(raw, str) else raw
        if not isinstance(scopes, list):
            raise BadCredential(f"the token's {cfg.scope_claim!r} claim is not a list")
        aes = claims.get(cfg.ae_claim, [])
        if isinstance(aes, str):
            aes = aes.split()
        if not isinstance(aes, list):
            raise BadCredential(f"the token's {cfg.ae_claim!r} claim is not a list")
        subject = str(claims.get("sub") or claims.get("client_id") or "?")
        return Principal(f"jwt:{subject}", frozenset(s for s in scopes if s in ALL_SCOPES),
                         frozenset(str(a) for a in aes), "jwt")

    async def token(self, token: str) -> Principal:
        try:
            return self.bearer(await self.tokens.verify_async(token))
        except TokenRejected as exc:
            raise BadCredential(str(exc)) from None

    def token_now(self, token: str) -> Principal:
        """As ``token``, with the keys at hand (the DIMSE negotiation cannot wait)."""
        try:
            return self.bearer(self.tokens.verify(token))
        except TokenRejected as exc:
            raise BadCredential(str(exc)) from None
