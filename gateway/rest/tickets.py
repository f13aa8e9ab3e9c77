"""``POST {base_path}/ws-tickets``: a single-use ticket for opening one AE's event channel where
the client cannot set headers on the WebSocket handshake (browsers): ``?ticket=`` on the channel
URL, accepted once, within ``auth.ticket_ttl_seconds``, for the AE it names only."""

from __future__ import annotations

import secrets

from aiohttp import web

from gateway.rest.messages import json_response, problem, read_json
from gateway.rest.paths import Resource
from gateway.rest.state import PRINCIPAL, SECURITY
from gateway.security.principal import ANONYMOUS
from gateway.ups.errors import InvalidDataset


async def issue(request: web.Request, resource: Resource) -> web.StreamResponse:
    security = request.app[SECURITY]
    principal = request.get(PRINCIPAL, ANONYMOUS)
    body = await read_json(request)
    ae = body.get("ae_title") if isinstance(body, dict) else None
    if not isinstance(ae, str) or not ae.strip() or len(ae.strip()) > 16 or "\\" in ae:
        raise InvalidDataset('the body must be {"ae_title": "AE title of the channel"}')
    ae = ae.strip()
    if not principal.may_watch(ae):
        return problem(request, 403, f"this credential may not watch for AE {ae}")
    ticket = secrets.token_urlsafe(32)
    grant = {"ae": ae, "name": principal.name, "scopes": sorted(principal.scopes),
             "aes": sorted(principal.ae_titles)}
    await security.tickets.put(ticket, grant, security.ticket_ttl)
    return json_response({"ticket": ticket, "expires_in": security.ticket_ttl}, status=201,
                         headers={"Cache-Control": "no-store"})
