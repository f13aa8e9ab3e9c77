"""REST and WebSocket security (issue 17): credentials on every route, scopes per operation
class, JWT checks, AE binding of subscriptions and channels (tenant isolation), single-use
tickets, cross-site refusal. Real gateway processes, real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import redis.asyncio as aioredis
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from gateway.rest.app import ROUTES, SCOPES
from tests.event_receiver import WsListener
from gateway.testing import free_port
from tests.helpers import GatewayProcess, new_uid, workitem

GLOBAL = "1.2.840.10008.5.1.4.34.5"
ISSUER, AUDIENCE = "https://idp.test/realms/hospital", "ups-gateway"
ALLOWED_ORIGIN = "https://worklist.hospital.example"
EVIL = "https://evil.example"
READ, WRITE, PERFORM, WATCH = "ups.read", "ups.write", "ups.perform", "ups.watch"
ALL = [READ, WRITE, PERFORM, WATCH]

ADMIN = "admin-key-0123456789abcdef"
TENANT_A, TENANT_B = "tenant-a-key-0123456789", "tenant-b-key-0123456789"
ONLY = {scope: f"only-{scope}-key-0123456789" for scope in ALL}  # one scope each, any AE

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa1"}, private=True)
EC = ECKey.generate_key("P-256", parameters={"kid": "ec1"}, private=True)
STRANGER = RSAKey.generate_key(2048, parameters={"kid": "rsa1"}, private=True)  # not published


def token(claims: dict | None = None, *, key=RSA, alg: str = "RS256", **overrides) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "performer-1", "iat": now, "nbf": now,
            "exp": now + 300, "scope": " ".join(ALL), "ae_titles": ["*"], **(claims or {})}
    for name, value in overrides.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key, algorithms=[alg])


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("secure")
    jwks = workdir / "jwks.json"
    jwks.write_text(json.dumps(KeySet([RSA, EC]).as_dict(private=False)))
    keys = [{"key": ADMIN, "name": "admin", "scopes": ALL, "ae_titles": ["*"]},
            {"key": TENANT_A, "scopes": [READ, WATCH], "ae_titles": ["TENANT_A"]},
            {"key": TENANT_B, "scopes": [READ, WATCH], "ae_titles": ["TENANT_B"]},
            *({"key": key, "scopes": [scope], "ae_titles": ["*"]} for scope, key in ONLY.items())]
    extra = {"auth": {"enabled": True, "ticket_ttl_seconds": 3, "api_keys": keys,
                      "jwt": {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE,
                              "leeway_seconds": 30}},
             "rest": {"cors_allow_origins": [ALLOWED_ORIGIN]}}
    proc = GatewayProcess(workdir, extra=extra).start()
    yield proc
    proc.stop()


def api(key: str) -> dict:
    return {"Authorization": f"ApiKey {key}"}


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}"}


UID = "1.2.826.0.1.3680043.10.1.999"
# (method, path under the base, scope), one per route of the route table.
CASES = [
    ("POST", "/workitems", WRITE), ("GET", "/workitems", READ),
    ("GET", f"/workitems/{UID}", READ), ("POST", f"/workitems/{UID}", WRITE),
    ("PUT", f"/workitems/{UID}", WRITE), ("PUT", f"/workitems/{UID}/state", PERFORM),
    ("POST", f"/workitems/{UID}/state", PERFORM),
    ("POST", f"/workitems/{UID}/cancelrequest", PERFORM),
    ("POST", f"/workitems/{UID}/subscribers/SOME_AE", WATCH),
    ("DELETE", f"/workitems/{UID}/subscribers/SOME_AE", WATCH),
    ("GET", f"/workitems/{UID}/subscribers/SOME_AE", WATCH),
    ("POST", f"/workitems/{GLOBAL}/subscribers/SOME_AE/suspend", WATCH),
    ("GET", "/ws/subscribers/SOME_AE", WATCH), ("POST", "/ws-tickets", WATCH),
    # PS3.18 ch. 14/15 (rest/mwl.py, rest/mpps.py): an MPPS drives its workitem.
    ("GET", "/modality-scheduled-procedure-steps", READ),
    ("GET", f"/modality-performed-procedure-steps/{UID}", READ),
    ("POST", f"/modality-performed-procedure-steps/{UID}", PERFORM),
]
EXTENSION_ROUTES = {"mwl": {"GET"}, "mpps": {"GET", "POST"}}


def test_every_route_has_a_scope_and_a_case():
    assert {k: set(v) for k, v in SCOPES.items()} == {
        **{k: set(v) for k, v in ROUTES.items()}, **EXTENSION_ROUTES}
    assert len(CASES) == sum(len(v) for v in [*ROUTES.values(), *EXTENSION_ROUTES.values()])


async def _call(http, secure, method, path, headers=None, **kw):
    async with http.request(method, secure.base + path, headers=headers or {}, **kw) as r:
        await r.read()
        return r


@pytest.mark.parametrize("method,path,scope", CASES)
async def test_no_credentials_is_401_with_a_bearer_challenge(secure, http, method, path, scope):
    r = await _call(http, secure, method, path)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="ups-gateway"'
    assert "credentials are required" in r.headers["Warning"]


@pytest.mark.parametrize("method,path,scope", CASES)
@pytest.mark.parametrize("headers", [
    {"Authorization": "ApiKey not-a-key-of-ours-123456"},
    {"X-API-Key": "not-a-key-of-ours-123456"},
    {"Authorization": "Bearer not.a.jwt"},
    {"Authorization": f"Basic {ADMIN}"},
    {"Authorization": "Bearer"},
], ids=["apikey", "x-api-key", "garbage-jwt", "basic", "empty-bearer"])
async def test_invalid_credentials_are_401_invalid_token(secure, http, method, path, scope,
                                                         headers):
    r = await _call(http, secure, method, path, headers)
    assert r.status == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="ups-gateway", error="invalid_token"'), challenge
    assert "error_description=" in challenge and r.headers["Warning"]


@pytest.mark.parametrize("method,path,scope", CASES)
async def test_each_operation_class_needs_its_scope(secure, http, method, path, scope):
    for other in ALL:
        r = await _call(http, secure, method, path, api(ONLY[other]))
        if other == scope:
            assert r.status not in (401, 403), (other, r.status, r.headers.get("Warning"))
        else:
            assert r.status == 403, (other, r.status)
            assert r.headers["WWW-Authenticate"] == \
                f'Bearer realm="ups-gateway", error="insufficient_scope", scope="{scope}"'
            assert f"lacks the scope {scope}" in r.headers["Warning"]


async def test_health_needs_no_credentials(secure, http):
    async with http.get(secure.url + "/health") as r:
        assert r.status == 200


async def test_api_key_spellings_and_a_full_workitem_life(secure, http):
    uid = new_uid()
    async with http.post(f"{secure.base}/workitems?workitem={uid}", json=workitem(),
                         headers={"X-API-Key": ADMIN,
                                  "Content-Type": "application/dicom+json"}) as r:
        assert r.status == 201, await r.text()
    async with http.get(f"{secure.base}/workitems/{uid}", headers=api(ADMIN)) as r:
        assert r.status == 200
    async with http.get(f"{secure.base}/workitems/{uid}", headers=api(TENANT_A)) as r:
        assert r.status == 200  # read scope: any workitem


# ---- JWT ------------------------------------------------------------------------------------

async def _search(http, secure, value: str) -> aiohttp.ClientResponse:
    return await _call(http, secure, "GET", "/workitems?limit=1", bearer(value))


@pytest.mark.parametrize("make", [
    lambda: token(),
    lambda: token(key=EC, alg="ES256"),
    lambda: token(scope=[READ]),  # a list instead of a space-separated string
    lambda: token(exp=int(time.time()) - 10),  # expired, within the leeway
    lambda: token(nbf=int(time.time()) + 10),  # not yet valid, within the leeway
    lambda: token(aud=["other", AUDIENCE]),
], ids=["rs256", "es256", "scope-list", "exp-leeway", "nbf-leeway", "aud-list"])
async def test_valid_tokens_are_accepted(secure, http, make):
    r = await _search(http, secure, make())
    assert r.status in (200, 204), r.headers.get("Warning")


def _none_token() -> str:
    import base64

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}." \
           f"{b64({'iss': ISSUER, 'aud': AUDIENCE, 'exp': now + 300, 'scope': READ})}."


def _hmac_with_public_key() -> str:
    secret = OctKey.import_key(json.dumps(RSA.as_dict(private=False)).encode())
    return jwt.encode({"alg": "HS256", "kid": "rsa1"}, {"iss": ISSUER, "aud": AUDIENCE,
                      "exp": int(time.time()) + 300, "scope": READ}, secret, algorithms=["HS256"])


@pytest.mark.parametrize("make,why", [
    (lambda: token(exp=int(time.time()) - 120), "expired"),
    (lambda: token(nbf=int(time.time()) + 120), "not valid yet"),
    (lambda: token(exp=None), "claims"),
    (lambda: token(iss="https://other.idp"), "claims"),
    (lambda: token(iss=None), "claims"),
    (lambda: token(aud="someone-else"), "claims"),
    (lambda: token(key=STRANGER), "signature"),
    (_none_token, "not accepted"),
    (_hmac_with_public_key, "not accepted"),
    (lambda: token()[:-4] + "AAAA", "signature"),
], ids=["expired", "nbf", "no-exp", "issuer", "no-issuer", "audience", "unknown-key", "alg-none",
        "hs256-confusion", "tampered"])
async def test_bad_tokens_are_401(secure, http, make, why):
    r = await _search(http, secure, make())
    assert r.status == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_token_scopes_and_ae_claim(secure, http):
    r = await _call(http, secure, "POST", f"/workitems/{GLOBAL}/subscribers/TENANT_A",
                    bearer(token(scope=READ)))
    assert r.status == 403 and 'scope="ups.watch"' in r.headers["WWW-Authenticate"]
    ok = bearer(token(scope=WATCH, ae_titles=["TOKEN_AE"]))
    r = await _call(http, secure, "POST", f"/workitems/{GLOBAL}/subscribers/TOKEN_AE", ok)
    assert r.status == 201, r.headers.get("Warning")
    r = await _call(http, secure, "POST", f"/workitems/{GLOBAL}/subscribers/OTHER_AE", ok)
    assert r.status == 403 and "may not watch for AE OTHER_AE" in r.headers["Warning"]
    no_claim = bearer(token(scope=WATCH, ae_titles=None))  # absent: no AE at all
    r = await _call(http, secure, "POST", f"/workitems/{GLOBAL}/subscribers/TOKEN_AE", no_claim)
    assert r.status == 403


# ---- tenant isolation -----------------------------------------------------------------------

async def _create(http, secure) -> str:
    uid = new_uid()
    async with http.post(f"{secure.base}/workitems?workitem={uid}", json=workitem(),
                         headers={**api(ADMIN), "Content-Type": "application/dicom+json"}) as r:
        assert r.status == 201, await r.text()
    return uid


async def _handshake_status(http, url: str, **kw) -> int:
    try:
        ws = await http.ws_connect(url, **kw)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_one_tenant_cannot_touch_anothers_subscriptions_or_channel(secure, http):
    sub_b = f"/workitems/{GLOBAL}/subscribers/TENANT_B"
    r = await _call(http, secure, "POST", sub_b, api(TENANT_B))
    assert r.status == 201
    channel_b = f"{secure.ws_base}/ws/subscribers/TENANT_B"
    listener = await WsListener.open(http, channel_b, headers=api(TENANT_B))
    try:
        for method, path in (("POST", sub_b), ("DELETE", sub_b), ("POST", f"{sub_b}/suspend")):
            r = await _call(http, secure, method, path, api(TENANT_A))
            assert r.status == 403, (method, path, r.status)
            assert "may not watch for AE TENANT_B" in r.headers["Warning"]
        # Failed handshakes for B's channel: wrong tenant, bad key, none, foreign origin.
        assert await _handshake_status(http, channel_b, headers=api(TENANT_A)) == 403
        assert await _handshake_status(http, channel_b, headers=api("wrong-key-0123456789")) \
            == 401
        assert await _handshake_status(http, channel_b) == 401
        assert await _handshake_status(http, channel_b, headers=api(TENANT_B), origin=EVIL) \
            == 403
        assert await _handshake_status(http, f"{secure.ws_base}/workitems/{GLOBAL}/subscribers"
                                       "/TENANT_B", headers=api(TENANT_A)) == 403
        # B's channel is untouched: still open, and it gets the next event.
        uid = await _create(http, secure)
        await listener.wait(1, uid=uid)
        assert not listener.closed
    finally:
        await listener.close()
    r = await _call(http, secure, "DELETE", sub_b, api(TENANT_B))
    assert r.status == 200


# ---- tickets --------------------------------------------------------------------------------

async def _ticket(http, secure, key: str, ae: str) -> aiohttp.ClientResponse:
    async with http.post(f"{secure.base}/ws-tickets", json={"ae_title": ae},
                         headers=api(key)) as r:
        r.body = await r.json() if r.status == 201 else None
        return r


async def test_ticket_opens_the_channel_once(secure, http):
    r = await _ticket(http, secure, TENANT_A, "TENANT_A")
    assert r.status == 201 and r.body["expires_in"] == 3 and len(r.body["ticket"]) >= 32
    assert r.headers["Cache-Control"] == "no-store"
    url = f"{secure.ws_base}/ws/subscribers/TENANT_A?ticket={r.body['ticket']}"
    listener = await WsListener.open(http, url, origin=ALLOWED_ORIGIN)
    try:
        assert await _handshake_status(http, url) == 401  # used
    finally:
        await listener.close()
    assert not (await _call(http, secure, "GET", f"/workitems?ticket={r.body['ticket']}")).ok


async def test_ticket_is_bound_to_its_ae(secure, http):
    r = await _ticket(http, secure, TENANT_A, "TENANT_B")
    assert r.status == 403
    r = await _ticket(http, secure, ADMIN, "TENANT_A")
    url = f"{secure.ws_base}/ws/subscribers/TENANT_B?ticket={r.body['ticket']}"
    assert await _handshake_status(http, url) == 403
    r = await _ticket(http, secure, ONLY[READ], "TENANT_A")
    assert r.status == 403  # ups.watch is needed


async def test_ticket_bad_body_is_400(secure, http):
    for body in ({}, {"ae_title": ""}, {"ae_title": "X" * 17}, ["TENANT_A"]):
        async with http.post(f"{secure.base}/ws-tickets", json=body, headers=api(ADMIN)) as r:
            assert r.status == 400, body
            assert "ae_title" in r.headers["Warning"]


async def test_expired_ticket_is_401(secure, http):
    r = await _ticket(http, secure, TENANT_A, "TENANT_A")
    client = aioredis.Redis.from_url(secure.redis_url)
    try:
        deadline = time.monotonic() + 30
        while await client.keys("ups:tkt:*"):  # the TTL runs out in Redis
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    url = f"{secure.ws_base}/ws/subscribers/TENANT_A?ticket={r.body['ticket']}"
    assert await _handshake_status(http, url) == 401


async def test_ticket_from_one_process_is_accepted_once_by_another(secure, http, tmp_path):
    other = GatewayProcess(tmp_path, redis_url=secure.redis_url,
                           extra={"auth": secure.config["auth"]}).start()
    try:
        r = await _ticket(http, secure, TENANT_A, "TENANT_A")
        url = f"ws://127.0.0.1:{other.rest_port}/dicom-web/ws/subscribers/TENANT_A" \
              f"?ticket={r.body['ticket']}"
        assert await _handshake_status(http, url) == 101
        assert await _handshake_status(http, url) == 401
        first = f"{secure.ws_base}/ws/subscribers/TENANT_A?ticket={r.body['ticket']}"
        assert await _handshake_status(http, first) == 401
    finally:
        other.stop()


# ---- cross-site -----------------------------------------------------------------------------

async def test_allowed_origin_passes_with_credentials(secure, http):
    r = await _call(http, secure, "POST", f"/workitems/{GLOBAL}/subscribers/TENANT_A",
                    {**api(TENANT_A), "Origin": ALLOWED_ORIGIN})
    assert r.status == 201
    r = await _call(http, secure, "POST", f"/workitems/{GLOBAL}/subscribers/TENANT_A",
                    {**api(TENANT_A), "Origin": EVIL})
    assert r.status == 403 and "origin" in r.headers["Warning"]


async def test_cross_site_requests_are_refused_with_auth_off(gateway, http):
    base = gateway.base
    uid = new_uid()
    evil = {"Origin": EVIL, "Content-Type": "application/dicom+json"}
    async with http.post(f"{base}/workitems?workitem={uid}", json=workitem(),
                         headers=evil) as r:
        assert r.status == 403 and "rest.cors_allow_origins" in r.headers["Warning"]
    async with http.post(f"{base}/workitems?workitem={uid}", json=workitem(),
                         headers={"Content-Type": "application/dicom+json"}) as r:
        assert r.status == 201  # no Origin: not a browser's cross-site request
    for method, path in (("POST", f"/workitems/{uid}/cancelrequest"),
                         ("POST", f"/workitems/{GLOBAL}/subscribers/VICTIM"),
                         ("DELETE", f"/workitems/{GLOBAL}/subscribers/VICTIM"),
                         ("PUT", f"/workitems/{uid}/state"), ("POST", "/ws-tickets")):
        async with http.request(method, base + path, headers={"Origin": EVIL}) as r:
            assert r.status == 403, (method, path)
    async with http.get(f"{base}/workitems/{uid}", headers={"Origin": EVIL}) as r:
        assert r.status == 200  # reading is for CORS to allow or not
    assert await _handshake_status(http, f"{gateway.ws_base}/ws/subscribers/VICTIM",
                                   origin=EVIL) == 403
    assert await _handshake_status(http, f"{gateway.ws_base}/ws/subscribers/VICTIM",
                                   origin="null") == 403


# ---- JWKS from a URL, with key rotation -------------------------------------------------------

async def test_jwks_url_is_read_and_followed_on_rotation(tmp_path, http):
    from aiohttp import web

    published = {"keys": [RSA.as_dict(private=False)]}

    async def jwks(request):
        return web.json_response(published)

    app = web.Application()
    app.router.add_get("/certs", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        extra = {"auth": {"enabled": True, "jwt": {
            "jwks_url": f"http://127.0.0.1:{port}/certs", "issuer": ISSUER,
            "audience": AUDIENCE}}}
        with GatewayProcess(tmp_path, dimse=False, extra=extra) as gw:
            async def search(value):
                async with http.get(f"{gw.base}/workitems?limit=1",
                                    headers=bearer(value)) as r:
                    return r.status
            assert await search(token()) in (200, 204)
            rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa2"}, private=True)
            assert await search(token(key=rotated)) == 401  # not published yet
            published["keys"].append(rotated.as_dict(private=False))
            deadline = time.monotonic() + 60
            while await search(token(key=rotated)) == 401:  # read again on an unknown kid,
                assert time.monotonic() < deadline  # at most every 10 s
                await asyncio.sleep(0.5)
            assert await search(token()) in (200, 204)
    finally:
        await runner.cleanup()


async def test_a_failed_handshake_leaves_the_live_channel_alone(gateway, http):
    ae = "LIVE_" + new_uid()[-8:]
    async with http.post(f"{gateway.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
        assert r.status == 201
    listener = await WsListener.open(http, f"{gateway.ws_base}/ws/subscribers/{ae}")
    try:
        bad = [{"Upgrade": "websocket", "Connection": "Upgrade"},  # no key, no version
               {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "99",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}]
        for headers in bad:
            async with http.get(f"{gateway.base}/ws/subscribers/{ae}", headers=headers) as r:
                assert r.status in (400, 426), r.status
        assert await _handshake_status(http, f"{gateway.ws_base}/ws/subscribers/{ae}",
                                       origin=EVIL) == 403
        uid = new_uid()
        async with http.post(f"{gateway.base}/workitems?workitem={uid}", json=workitem(),
                             headers={"Content-Type": "application/dicom+json"}) as r:
            assert r.status == 201
        await listener.wait(1, uid=uid)
        assert not listener.closed
    finally:
        await listener.close()
        async with http.delete(f"{gateway.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
            assert r.status == 200
