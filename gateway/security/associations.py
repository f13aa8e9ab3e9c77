"""What a DIMSE association may do (issue 17), decided once at A-ASSOCIATE-RQ.

With ``auth.enabled`` off, everything (the README's local use). With it on:

* User Identity (PS3.7 D.3.3.7) type 2, username + passcode: the passcode is an API key of
  ``auth.api_keys`` (a key with a ``name`` also needs that name as the username) → its scopes
  and AE titles. Type 5, JWT: verified as REST bearer tokens are → the token's scopes and AE
  titles. A given identity that is not valid rejects the association; so do types 3 and 4
  (Kerberos, SAML), which this gateway cannot verify.
* No identity, or type 1 (a bare username proves nothing): the calling AE's scopes from
  ``dimse.ae_scopes`` (its own entry, else "*", else none), watching only for itself — unless
  ``dimse.require_identity``, which rejects the association.
"""

from __future__ import annotations

from gateway.security.credentials import Authenticator, BadCredential
from gateway.security.principal import ANONYMOUS, Principal

USERNAME, USERNAME_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5


class IdentityRefused(Exception):
    """The association is not accepted; the message says why (for the log)."""


class AssociationAccess:
    def __init__(self, authenticator: Authenticator, ae_scopes: dict[str, list[str]],
                 require_identity: bool):
        self.auth = authenticator
        self.ae_scopes = {ae: frozenset(scopes) for ae, scopes in ae_scopes.items()}
        self.require_identity = require_identity

    @property
    def enabled(self) -> bool:
        return self.auth.enabled

    def grant(self, calling_ae: str, identity: tuple[int, bytes, bytes] | None) -> Principal:
        """The principal of an association from ``calling_ae`` with User Identity
        ``(type, primary field, secondary field)`` or None; raises ``IdentityRefused``."""
        if not self.auth.enabled:
            return ANONYMOUS
        kind, primary, secondary = identity or (None, b"", b"")
        if kind is None or kind == USERNAME:
            if self.require_identity:
                raise IdentityRefused("a User Identity (username and passcode, or a JWT) is "
                                      "required")
            scopes = self.ae_scopes.get(calling_ae, self.ae_scopes.get("*", frozenset()))
            return Principal(f"ae:{calling_ae}", scopes, frozenset((calling_ae,)), "ae")
        try:
            if kind == USERNAME_PASSCODE:
                return self.auth.api_key(_text(secondary), username=_text(primary))
            if kind == JWT:
                return self.auth.token_now(_text(primary))
        except BadCredential as exc:
            raise IdentityRefused(f"User Identity not accepted: {exc}") from None
        raise IdentityRefused(f"User Identity type {kind} is not supported (use 2 or 5)")


def _text(raw: bytes) -> str:
    try:
        return bytes(raw or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityRefused("the User Identity is not UTF-8 text") from None
