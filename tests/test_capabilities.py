"""Retrieve Capabilities (PS3.18 §8.9, gateway/rest/capabilities.py): OPTIONS on the service root
describes every resource of the route table, the event channel included; on a resource, that
resource; WADL by default, JSON on request."""

from __future__ import annotations

import xml.etree.ElementTree as ET

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
    assert len(found) == len(ROUTES)  # one entry per resource of the route table
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
