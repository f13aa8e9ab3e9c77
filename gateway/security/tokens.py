"""OAuth2 bearer tokens (JWT, RFC 7519) verified against the configured public keys: a JWKS file
or URL, or one PEM public key. Only asymmetric signatures are accepted (``auth.jwt.algorithms``,
RS256/ES256 by default); ``none`` and HMAC never are, whatever the token's header says. ``exp``
and ``nbf`` are checked with ``leeway_seconds`` (``exp`` is required), ``iss`` and ``aud`` when
configured."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key

from gateway.config import Jwt

log = logging.getLogger("gateway.security")

JWKS_REFRESH_SECONDS = 300.0  # a JWKS URL is read again this often, and on an unknown kid
JWKS_MIN_REFRESH_SECONDS = 10.0  # but never more often than this (a flood of forged kids)
JWKS_MAX_BYTES = 1 << 20
MAX_TOKEN_BYTES = 16384


class TokenRejected(Exception):
    """A token that is not accepted; the message says why (for the caller and the log)."""


class TokenVerifier:
    def __init__(self, config: Jwt):
        self.config = config
        self.keys: KeySet | None = None
        self._fetched = 0.0
        self._fetching: asyncio.Lock | None = None
        if config.jwks_file:
            self.keys = _key_set(Path(config.jwks_file).read_bytes(), config.jwks_file)
        elif config.public_key_file:
            key = _pem_key(Path(config.public_key_file).read_bytes(), config.public_key_file)
            if key.is_private:
                raise ValueError(f"{config.public_key_file}: a public key is expected")
            self.keys = KeySet([key])

    @property
    def configured(self) -> bool:
        c = self.config
        return bool(c.jwks_url or c.jwks_file or c.public_key_file)

    async def refresh(self, *, force: bool = False) -> None:
        """Read the JWKS URL (when configured) if it is due, or on ``force`` (an unknown kid)."""
        if not self.config.jwks_url:
            return
        age = time.monotonic() - self._fetched
        if self.keys is not None and age < (JWKS_MIN_REFRESH_SECONDS if force
                                            else JWKS_REFRESH_SECONDS):
            return
        self._fetching = self._fetching or asyncio.Lock()
        async with self._fetching:
            if time.monotonic() - self._fetched < JWKS_MIN_REFRESH_SECONDS and self.keys:
                return
            self._fetched = time.monotonic()
            try:
                raw = await asyncio.to_thread(_fetch, self.config.jwks_url)
                self.keys = _key_set(raw, self.config.jwks_url)
            except (OSError, ValueError) as exc:
                log.warning("JWKS not read; keeping the keys we have",
                            extra={"url": self.config.jwks_url, "error": str(exc)})

    async def verify_async(self, token: str) -> dict[str, Any]:
        await self.refresh()
        try:
            return self.verify(token)
        except TokenRejected as exc:
            if "key" not in str(exc) or not self.config.jwks_url:
                raise
        await self.refresh(force=True)  # the issuer may have rotated its keys
        return self.verify(token)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, once signature, time, issuer and audience are right."""
        if not self.configured:
            raise TokenRejected("bearer tokens are not accepted here (no JWT keys configured)")
        if self.keys is None:
            raise TokenRejected("the token signing keys are not available yet")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected("the token is too long")
        try:
            # One PEM key verifies whatever "kid" the token names; a JWKS is looked up by it.
            key = self.keys.keys[0] if self.config.public_key_file else self.keys
            decoded = jwt.decode(token, key, algorithms=list(self.config.algorithms))
        except JoseError as exc:
            raise TokenRejected(_why(exc)) from None
        except (ValueError, TypeError, KeyError):
            raise TokenRejected("the token is malformed") from None
        options: dict[str, Any] = {"exp": {"essential": True}}  # no token lives for ever
        if self.config.issuer:
            options["iss"] = {"essential": True, "value": self.config.issuer}
        if self.config.audience:
            options["aud"] = {"essential": True, "value": self.config.audience}
        registry = jwt.JWTClaimsRegistry(leeway=int(self.config.leeway_seconds), **options)
        try:
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise TokenRejected(_why(exc)) from None
        return decoded.claims


def _why(exc: JoseError) -> str:
    name = type(exc).__name__
    if name == "ExpiredTokenError":
        return "the token has expired"
    if name == "InvalidTokenError":
        return "the token is not valid yet"
    if name in ("BadSignatureError",):
        return "the token's signature does not verify"
    if name in ("MissingKeyError", "InvalidKeyIdError"):
        return "the token is signed with an unknown key"
    if name in ("UnsupportedAlgorithmError", "MissingAlgorithmError", "ConflictAlgorithmError"):
        return "the token's signature algorithm is not accepted"
    if name in ("InvalidClaimError", "MissingClaimError"):
        return f"the token's claims are not accepted: {exc.description or name}"
    return f"the token is not accepted ({exc.description or name})"


def _pem_key(raw: bytes, where: str):
    for kind in ("RSA", "EC"):
        try:
            return import_key(raw, kind)
        except (ValueError, TypeError, JoseError):
            continue
    raise ValueError(f"{where}: not an RSA or EC public key in PEM")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - configured URL
        return response.read(JWKS_MAX_BYTES + 1)[:JWKS_MAX_BYTES]


def _key_set(raw: bytes, where: str) -> KeySet:
    import json
    try:
        data = json.loads(raw)
        keys = KeySet.import_key_set(data)
    except (ValueError, TypeError, KeyError, JoseError) as exc:
        raise ValueError(f"{where}: not a JWKS ({exc})") from None
    if any(key.is_private for key in keys.keys):
        raise ValueError(f"{where}: holds private keys; publish only the public ones")
    return keys
