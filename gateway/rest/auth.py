"""Who is calling, and may they (``auth`` in config.yaml; off by default).

One middleware, in front of every route but ``/health``:

1. Cross-site refusal (``origin``), with authentication on or off: 403.
2. With ``auth.enabled``: a credential is required — ``Authorization: Bearer <JWT>``,
   ``Authorization: ApiKey <key>``, ``X-API-Key: <key>``, or, on the event channel's WebSocket
   handshake, ``?ticket=`` (``tickets``). None → 401 with ``WWW-Authenticate: Bearer
   realm="…"``; one that is not valid → 401 with ``error="invalid_token"`` (RFC 6750 §3.1).
3. The scope of the operation class (``SCOPES`` in ``rest/app.py``, next to the route table)
   must be granted, else 403 ``error="insufficient_scope"``.
4. Subscribe, unsubscribe, suspend and the event channel act for an AE title: the credential
   must be bound to it (``ae_titles``; "*" = any), else 403 — one tenant never reads another's
   events nor knocks its channel off. All of this happens before the handler runs, so a refused
   handshake never touches the AE's live channels.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web

from gateway.rest import paths
from gateway.rest.messages import problem
from gateway.rest.origin import is_websocket_handshake, refused_origin
from gateway.rest.state import PRINCIPAL, REQUESTER, SECURITY, SETTINGS, Security
from gateway.security.credentials import BadCredential
from gateway.security.principal import Principal

log = logging.getLogger("gateway.security")

OPEN_PATHS = frozenset(("/health",))
AE_BOUND = frozenset(("subscription", "suspend", "channel"))
CHANNEL_KINDS = frozenset(("channel", "subscription"))

ScopeOf = Callable[[paths.Resource | None, str], str | None]


class _Missing(Exception):
    pass


def security_middleware(scope_of: ScopeOf):
    """The middleware, with ``scope_of(resource, method)`` naming the scope an operation needs
    (None: authentication only — unknown resources, which then answer 404/405)."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        security = request.app[SECURITY]
        origin = refused_origin(request, security.allowed_origins)
        if origin is not None:
            log.warning("cross-site request refused",
                        extra={"origin": origin[:200], "method": request.method,
                               "path": request.path, "peer": request.remote})
            return problem(request, 403, f"requests from the origin {origin[:100]} are not "
                           "allowed (rest.cors_allow_origins)")
        if not security.authenticator.enabled or request.method == "OPTIONS":
            return await handler(request)
        resource = paths.parse(request.path, request.app[SETTINGS].base_path)
        refusal, principal = await _check(request, security, resource, scope_of)
        if refusal is not None:
            return refusal
        request[PRINCIPAL] = principal
        if principal.single_ae:
            request[REQUESTER] = principal.single_ae
        return await handler(request)

    return middleware


async def _check(request: web.Request, security: Security, resource: paths.Resource | None,
                 scope_of: ScopeOf) -> tuple[web.Response | None, Principal | None]:
    realm = security.authenticator.realm
    try:
        principal, ticket_ae = await _authenticate(request, security, resource)
    except _Missing:
        return _unauthorized(request, realm, "credentials are required: Authorization: Bearer "
                             "<token> or ApiKey <key>, or X-API-Key"), None
    except BadCredential as exc:
        _refused(request, "authentication failed", str(exc))
        return _unauthorized(request, realm, str(exc), error="invalid_token"), None
    request[PRINCIPAL] = principal  # known now, refused or not (the audit trail says who)
    scope = scope_of(resource, request.method)
    if scope is not None and not principal.may(scope):
        _refused(request, "access refused: scope", scope, principal)
        return _forbidden(request, realm, f"this credential lacks the scope {scope}",
                          scope), None
    if resource is not None and resource.kind in AE_BOUND and not principal.may_watch(resource.ae):
        _refused(request, "access refused: AE", resource.ae, principal)
        return _forbidden(request, realm, f"this credential may not watch for AE {resource.ae}",
                          None), None
    if ticket_ae is not None and (resource is None or resource.ae != ticket_ae):
        _refused(request, "access refused: ticket AE", ticket_ae, principal)
        return _forbidden(request, realm, f"the ticket is for the channel of AE {ticket_ae}",
                          None), None
    return None, principal


async def _authenticate(request: web.Request, security: Security,
                        resource: paths.Resource | None) -> tuple[Principal, str | None]:
    """The caller's principal, and the AE a ticket was issued for (None: no ticket)."""
    auth = security.authenticator
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if not value:
            raise BadCredential(f"the Authorization header ({scheme}) carries no credential")
        if scheme.lower() == "bearer":
            return await auth.token(value), None
        if scheme.lower() == "apikey":
            return auth.api_key(value), None
        raise BadCredential(f"the Authorization scheme {scheme[:20]!r} is not supported; "
                            "use Bearer or ApiKey")
    key = request.headers.get("X-API-Key")
    if key is not None:
        return auth.api_key(key.strip()), None
    ticket = request.query.get("ticket")
    if ticket is not None and resource is not None and resource.kind in CHANNEL_KINDS \
            and is_websocket_handshake(request):
        grant = await security.tickets.take(ticket)
        if grant is None:
            raise BadCredential("the ticket is unknown, expired or already used")
        return Principal(grant["name"], frozenset(grant["scopes"]), frozenset(grant["aes"]),
                         "ticket"), grant["ae"]
    raise _Missing()


def _quoted(text: str) -> str:
    """A quoted-string for an auth-param (RFC 6750 limits it to printable ASCII, no " or \\)."""
    clean = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "?" for c in text)
    return f'"{clean[:200]}"'


def _unauthorized(request: web.Request, realm: str, text: str,
                  error: str | None = None) -> web.Response:
    challenge = f"Bearer realm={_quoted(realm)}"
    if error:
        challenge += f", error={_quoted(error)}, error_description={_quoted(text)}"
    return problem(request, 401, text, headers={"WWW-Authenticate": challenge})


def _forbidden(request: web.Request, realm: str, text: str, scope: str | None) -> web.Response:
    challenge = f'Bearer realm={_quoted(realm)}, error="insufficient_scope"'
    if scope:
        challenge += f", scope={_quoted(scope)}"
    return problem(request, 403, text, headers={"WWW-Authenticate": challenge})


def _refused(request: web.Request, what: str, detail: str | None,
             principal: Principal | None = None) -> None:
    log.warning(what, extra={"detail": detail, "principal": principal.name if principal else None,
                             "method": request.method, "path": request.path,
                             "peer": request.remote})
