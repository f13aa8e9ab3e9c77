"""CORS (gateway/rest/cors.py): a browser app on another origin searches, claims, subscribes and
opens the event channel — in a real headless Chromium, which enforces CORS itself — while a page
on an origin that is not allowed is refused; preflights on every route, checked directly too."""

from __future__ import annotations

import json

import pytest

from gateway.config import ConfigError, load
from tests.browser import CHROMIUM, Browser, PageServer
from tests.event_receiver import GLOBAL, Ups, unassigned
from tests.helpers import GatewayProcess, new_uid, state_payload, workitem

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(.ci/run installs it)")

APP = """
const gw = GW, out = {};
let r = await fetch(gw + '/workitems?ProcedureStepState=SCHEDULED&limit=1',
                    {headers: {Accept: 'application/dicom+json'}});
out.search = r.status;
out.searchWarning = r.headers.get('Warning');
const uid = (await r.json())[0]['00080018'].Value[0];
r = await fetch(gw + '/workitems/' + uid + '/state/BROWSER', {method: 'PUT',
    headers: {'Content-Type': 'application/dicom+json'}, body: JSON.stringify(CLAIM)});
out.claim = r.status;
r = await fetch(gw + '/workitems/' + GLOBAL_UID + '/subscribers/BROWSER', {method: 'POST'});
out.subscribe = r.status;
out.location = r.headers.get('Location');
out.contentLocation = r.headers.get('Content-Location');
const ws = new WebSocket(out.location, ['dicom+json']);
const frameArrived = new Promise((resolve, reject) => {
  ws.onerror = () => reject(new Error('the event channel failed'));
  ws.onmessage = event => resolve(JSON.parse(event.data));
});
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onclose = reject; });
out.protocol = ws.protocol;
const created = await fetch(gw + '/workitems?' + NEW_UID, {method: 'POST',
    headers: {'Content-Type': 'application/dicom+json'}, body: JSON.stringify(WORKITEM)});
out.create = created.status;
const frame = await frameArrived;
out.event = frame['00001000'].Value[0];
ws.close();
return out;
"""

REFUSED = """
const out = {};
for (const [name, init] of [['search', {headers: {Accept: 'application/dicom+json'}}],
                            ['claim', {method: 'PUT', body: '{}',
                                       headers: {'Content-Type': 'application/dicom+json'}}]]) {
  try {
    const r = await fetch(GW + '/workitems' + (name === 'claim' ? '/1.2.3/state' : ''), init);
    out[name] = r.status;
  } catch (e) {
    out[name] = e.name;  // TypeError: the browser refused to hand the response over
  }
}
return out;
"""


def _script(template: str, **values) -> str:
    for name, value in values.items():
        template = template.replace(name, json.dumps(value))
    return template


async def test_a_browser_app_on_an_allowed_origin_searches_claims_and_subscribes(tmp_path,
                                                                                 http):
    async with PageServer() as allowed, PageServer() as other, Browser(http) as browser:
        proc = GatewayProcess(tmp_path, extra={
            "rest": {"cors_allow_origins": [allowed.origin]}}).start()
        try:
            ups = Ups(http, proc.base)
            for _ in range(2):
                await ups.create(unassigned())
            new = new_uid()
            out = await browser.evaluate(allowed.origin + "/", _script(
                APP, GW=proc.base, CLAIM=state_payload("IN PROGRESS", new_uid()),
                GLOBAL_UID=GLOBAL, NEW_UID=new, WORKITEM=workitem()))
            assert out["search"] == 200
            assert "additional results" in out["searchWarning"]  # an exposed header
            assert out["claim"] == 200  # preflighted: PUT with application/dicom+json
            assert out["subscribe"] == 201
            assert out["location"] == out["contentLocation"]
            assert out["location"].startswith("ws://") and "/subscribers/BROWSER" in out["location"]
            assert out["protocol"] == "dicom+json"
            assert out["create"] == 201
            assert out["event"] == new

            refused = await browser.evaluate(other.origin + "/", _script(REFUSED, GW=proc.base))
            assert refused == {"search": "TypeError", "claim": "TypeError"}
        finally:
            proc.stop()


async def test_preflight_on_every_route_and_the_headers_of_an_allowed_origin(tmp_path, http):
    origin = "http://app.example:8000"
    proc = GatewayProcess(tmp_path, extra={"rest": {"cors_allow_origins": [origin]}}).start()
    try:
        uid = new_uid()
        routes = {f"/workitems": "POST", f"/workitems/{uid}": "GET",
                  f"/workitems/{uid}/state": "PUT", f"/workitems/{uid}/cancelrequest": "POST",
                  f"/workitems/{GLOBAL}/subscribers/AE1": "DELETE",
                  f"/workitems/{GLOBAL}/subscribers/AE1/suspend": "POST"}
        for path, method in routes.items():
            async with http.options(proc.base + path, headers={
                    "Origin": origin, "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "content-type, authorization"}) as r:
                assert r.status == 204, (path, r.status, r.headers.get("Warning"))
                assert r.headers["Access-Control-Allow-Origin"] == origin
                assert method in r.headers["Access-Control-Allow-Methods"].split(", ")
                assert r.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
        # the routes other services add (Modality Worklist) and /health
        for path, method in ((proc.base + "/modality-scheduled-procedure-steps", "GET"),
                             (proc.base.rsplit("/", 1)[0] + "/health", "GET")):
            async with http.options(path, headers={
                    "Origin": origin, "Access-Control-Request-Method": method}) as r:
                assert r.status == 204, (path, r.status, r.headers.get("Warning"))
                assert r.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"
        # Retrieve Capabilities from a page: its OPTIONS is preflighted too
        async with http.options(proc.base, headers={
                "Origin": origin, "Access-Control-Request-Method": "OPTIONS"}) as r:
            assert r.status == 204
        async with http.options(proc.base, headers={"Origin": origin}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == origin
        async with http.options(proc.base + "/workitems", headers={
                "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 403 and "cors_allow_origins" in r.headers["Warning"]
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.options(proc.base + "/workitems", headers={
                "Origin": origin, "Access-Control-Request-Method": "DELETE"}) as r:
            assert r.status == 405 and "Access-Control-Allow-Origin" in r.headers
        # an error answer carries the headers too, so the app can read its Warning
        async with http.get(f"{proc.base}/workitems/{uid}", headers={"Origin": origin}) as r:
            assert r.status == 404
            assert r.headers["Access-Control-Allow-Origin"] == origin
            assert "Warning" in r.headers["Access-Control-Expose-Headers"]
            assert "Location" in r.headers["Access-Control-Expose-Headers"]
        async with http.get(f"{proc.base}/workitems/{uid}",
                            headers={"Origin": "http://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        proc.stop()


async def test_without_allowed_origins_no_cors_header_is_sent(gateway, http):
    async with http.get(f"{gateway.base}/workitems?limit=1",
                        headers={"Origin": "http://app.example"}) as r:
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]


def test_cors_allow_origins_setting(tmp_path):
    assert load(None, {"UPSGW_REST__CORS_ALLOW_ORIGINS": '["*"]'}).rest.cors_allow_origins == ["*"]
    assert load(None, {}).rest.cors_allow_origins == []
    for bad in ('["http://app.example/"]', '["app.example"]', '["http://a.example/x"]'):
        with pytest.raises(ConfigError, match="rest.cors_allow_origins"):
            load(None, {"UPSGW_REST__CORS_ALLOW_ORIGINS": bad})
