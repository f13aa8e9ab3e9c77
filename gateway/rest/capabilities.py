"""Retrieve Capabilities (PS3.18 §8.9): ``OPTIONS`` on the service root describes every resource,
on a resource that resource — built from the one route table (``rest.app.ROUTES``), so it
cannot describe a method the gateway does not serve. WADL (``application/vnd.sun.wadl+xml``, the
default) or the same content as JSON (``Accept: application/json``). The event channel is
listed as the ``ws/subscribers/{aetitle}`` resource, opened with a WebSocket upgrade.
"""

from __future__ import annotations

from typing import Mapping
from xml.sax.saxutils import quoteattr

import orjson
from aiohttp import web

from gateway.rest import paths
from gateway.rest.messages import DICOM_JSON, service_url

WADL = "application/vnd.sun.wadl+xml"

# Resource kind → its path template under the service root.

# (kind, method) → the PS3.18 transaction it serves; anything else is named by its handler.
TRANSACTIONS = {
    ("workitems", "POST"): "CreateWorkitem", ("workitems", "GET"): "SearchWorkitems",
    ("workitem", "GET"): "RetrieveWorkitem", ("workitem", "POST"): "UpdateWorkitem",
    ("workitem", "PUT"): "UpdateWorkitem", ("state", "PUT"): "ChangeWorkitemState",
    ("state", "POST"): "ChangeWorkitemState", ("cancelrequest", "POST"): "RequestCancellation",
    ("subscription", "POST"): "CreateSubscription", ("subscription", "DELETE"): "DeleteSubscription",
    ("subscription", "GET"): "OpenNotificationConnection",
    ("suspend", "POST"): "SuspendGlobalSubscription",
    ("channel", "GET"): "OpenNotificationConnection",
    ("tickets", "POST"): "IssueChannelTicket",  # the gateway's own (docs/security.md)
}
# The service root serves only Retrieve Capabilities (its GET just explains where the resources
# and the event channel are), so only that is described for it.
_DESCRIBED_ONLY_OPTIONS = ("root",)
_SEARCH_PARAMETERS = ("{attributeID}", "includefield", "fuzzymatching", "offset", "limit")
_WEBSOCKET = ("channel", "subscription")


def describe(routes: Mapping[str, Mapping], kinds: list[str]) -> list[dict]:
    resources = []
    for kind in kinds:
        methods = []
        for method, handler in () if kind in _DESCRIBED_ONLY_OPTIONS else routes[kind].items():
            entry = {"name": method, "id": TRANSACTIONS.get((kind, method), handler.__name__)}
            if entry["id"] == "OpenNotificationConnection" and kind in _WEBSOCKET:
                entry["request"] = {"headers": {"Upgrade": "websocket"}}
            elif method in ("POST", "PUT") and kind not in ("subscription", "suspend"):
                entry["request"] = {"mediaTypes": [DICOM_JSON, "application/json"]}
            if kind == "workitems" and method == "GET":
                entry["parameters"] = list(_SEARCH_PARAMETERS)
            if method == "GET" and entry["id"] != "OpenNotificationConnection":
                entry["response"] = {"mediaTypes": [DICOM_JSON]}
            methods.append(entry)
        methods.append({"name": "OPTIONS", "id": "RetrieveCapabilities",
                        "response": {"mediaTypes": [WADL, "application/json"]}})
        resources.append({"path": paths.TEMPLATES[kind][0].strip("/"), "methods": methods})
    return resources


def respond(request: web.Request, routes: Mapping[str, Mapping], kind: str) -> web.Response:
    kinds = list(routes) if kind == "root" else [kind]
    base = service_url(request)
    resources = describe(routes, kinds)
    allow = ", ".join([*routes[kind], "OPTIONS"])
    accept = request.headers.get("Accept", "")
    if "json" in accept and "wadl" not in accept:
        body = {"base": base + "/", "resources": resources}
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={"Allow": allow})
    return web.Response(text=_wadl(base + "/", resources), content_type=WADL,
                        headers={"Allow": allow})


def _wadl(base: str, resources: list[dict]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<application xmlns="http://wadl.dev.java.net/2009/02">',
             f"  <resources base={quoteattr(base)}>"]
    for resource in resources:
        lines.append(f"    <resource path={quoteattr(resource['path'])}>")
        for method in resource["methods"]:
            lines.append(f"      <method name={quoteattr(method['name'])} "
                         f"id={quoteattr(method['id'])}>")
            request = method.get("request", {})
            if request or method.get("parameters"):
                lines.append("        <request>")
                for name in method.get("parameters", ()):
                    lines.append(f"          <param name={quoteattr(name)} style=\"query\"/>")
                for name, value in request.get("headers", {}).items():
                    lines.append(f"          <param name={quoteattr(name)} style=\"header\" "
                                 f"fixed={quoteattr(value)}/>")
                for media in request.get("mediaTypes", ()):
                    lines.append(f"          <representation mediaType={quoteattr(media)}/>")
                lines.append("        </request>")
            for media in method.get("response", {}).get("mediaTypes", ()):
                lines.append(f"        <response><representation mediaType={quoteattr(media)}/>"
                             "</response>")
            lines.append("      </method>")
        lines.append("    </resource>")
    lines += ["  </resources>", "</application>", ""]
    return "\n".join(lines)
