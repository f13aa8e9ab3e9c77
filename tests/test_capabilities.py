"""Retrieve Capabilities (PS3.18 §8.9, gateway/rest/capabilities.py): OPTIONS on the service root
describes every resource of the route table, the event channel included; on a resource, that
resource; WADL by default, JSON on request."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gateway.rest.app import ROUTES
from tests.helpers import new_uid

NS = {"w": "http://wadl.dev.java.net/2009/02"}


async def test_options_on_the_service_root_lists_every_resource_and_the_channel(gateway, http):
    async with http.options(gateway.base) as r:
        assert r.status == 200
        assert r.content_type == "application/vnd.sun.wadl+xml"
        root = ET.fromstring(await r.text())
    [resources] = root.findall("w:resources", NS)
    assert resources.get("base") == gateway.base + "/"
    found = {res.get("path"): {m.get("name"): m.get("id") for m in res.findall("w:method", NS)}
             for res in resources.findall("w:resource", NS)}
    # one entry per resource of the route table, and the PS3.18 ch. 14 and 15 resources
    assert len(found) == len(ROUTES) + 2
    assert found["modality-scheduled-procedure-steps"] == {
        "GET": "SearchModalityScheduledProcedureSteps", "OPTIONS": "RetrieveCapabilities"}
    mpps = next(res for res in resources.findall("w:resource", NS)
                if res.get("path") == "modality-performed-procedure-steps/{uid}")
    assert [m.get("id") for m in mpps.findall("w:method", NS)] == [
        "CreateModalityPerformedProcedureStep", "UpdateModalityPerformedProcedureStep",
        "RetrieveModalityPerformedProcedureStep", "RetrieveCapabilities"]
    assert found["workitems"] == {"POST": "CreateWorkitem", "GET": "SearchWorkitems",
                                  "OPTIONS": "RetrieveCapabilities"}
    assert found["workitems/{workitem}/state"]["PUT"] == "ChangeWorkitemState"
    assert found["workitems/{workitem}/subscribers/{aetitle}/suspend"]["POST"] == \
        "SuspendGlobalSubscription"
    assert found["ws/subscribers/{aetitle}"]["GET"] == "OpenNotificationConnection"
    assert found[""] == {"OPTIONS": "RetrieveCapabilities"}  # the root itself
    channel = next(res for res in resources.findall("w:resource", NS)
                   if res.get("path") == "ws/subscribers/{aetitle}")
    upgrade = channel.find("w:method/w:request/w:param", NS)
    assert (upgrade.get("name"), upgrade.get("fixed")) == ("Upgrade", "websocket")


async def test_options_on_a_resource_describes_it_and_says_allow(gateway, http):
    uid = new_uid()
    async with http.options(f"{gateway.base}/workitems/{uid}/state",
                            headers={"Accept": "application/json"}) as r:
        assert r.status == 200 and r.content_type == "application/json"
        body = await r.json()
        assert set(r.headers["Allow"].split(", ")) == {"PUT", "POST", "OPTIONS"}
    assert body["base"] == gateway.base + "/"
    [resource] = body["resources"]
    assert resource["path"] == "workitems/{workitem}/state"
    assert [m["name"] for m in resource["methods"]] == ["PUT", "POST", "OPTIONS"]
    async with http.options(f"{gateway.base}/nothing/here") as r:
        assert r.status == 404 and "Warning" in r.headers


@pytest.mark.parametrize("path, allow, first", [
    ("modality-scheduled-procedure-steps", {"GET", "OPTIONS"},
     "SearchModalityScheduledProcedureSteps"),
    ("modality-performed-procedure-steps/1.2.3.4", {"POST", "GET", "OPTIONS"},
     "CreateModalityPerformedProcedureStep"),
])
async def test_options_on_the_worklist_and_mpps_resources_describes_them(gateway, http, path,
                                                                        allow, first):
    async with http.options(f"{gateway.base}/{path}",
                            headers={"Accept": "application/json"}) as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert set(r.headers["Allow"].split(", ")) == allow
        [resource] = (await r.json())["resources"]
    assert resource["methods"][0]["id"] == first
    assert resource["methods"][-1]["id"] == "RetrieveCapabilities"
