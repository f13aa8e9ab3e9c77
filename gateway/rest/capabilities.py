"""Retrieve Capabilities (PS3.18 §8.9): ``OPTIONS`` on the service root describes every resource,
on a resource that resource — built from the one route table (``rest.app.ROUTES``), so it
cannot describe a method the gateway does not serve. WADL (``application/vnd.sun.wadl+xml``, the
default) or the same content as JSON (``Accept: application/json``). The event channel is
listed as the ``ws/subscribers/{aetitle}`` resource, opened with a WebSocket upgrade; the
services that add their own routes (the PS3.18 chapter 14 and 15 ones, ``rest/mwl.py`` and
``rest/mpps.py``) describe their resources with ``add_extension`` as they install them.
"""

from __future__ import annotations

from typing import Mapping
from xml.sax.saxutils import quoteattr

import orjson
from aiohttp import web

from gateway.rest import paths
from gateway.rest.messages import DICOM_JSON, service_url

WADL = "application/vnd.sun.wadl+xml"
# What the application holds for this module: the route table (``rest.app.ROUTES``) and the
# extensions' resources (kind → description), set by ``create_app``.
ROUTE_TABLE = web.AppKey("capabilities-route-table", dict)
EXTENSIONS = web.AppKey("capabilities-extensions", dict)
_OPTIONS = {"name": "OPTIONS", "id": "RetrieveCapabilities",
            "response": {"mediaTypes": [WADL, "application/json"]}}

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
# A search's parameters besides its matching keys (UPS-RS and MWL-RS searches alike).
SEARCH_CONTROLS = ("includefield", "fuzzymatching", "offset", "limit")
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
                entry["parameters"] = ["{attributeID}", *SEARCH_CONTROLS]
            if method == "GET" and entry["id"] != "OpenNotificationConnection":
                entry["response"] = {"mediaTypes": [DICOM_JSON]}
            methods.append(entry)
        methods.append(_OPTIONS)
        resources.append({"path": paths.TEMPLATES[kind][0].strip("/"), "methods": methods})
    return resources


def add_extension(app: web.Application, kind: str, path: str, methods: list[dict]) -> None:
    """Describe the resource an extension serves at ``path`` (under the service root) as
    ``kind`` (its ``paths.Resource`` kind): ``methods`` as ``describe`` writes them
    (name, id, request, response); Retrieve Capabilities is added."""
    app[EXTENSIONS][kind] = {"path": path, "methods": [*methods, _OPTIONS]}


def respond(request: web.Request, kind: str) -> web.Response:
    """Retrieve Capabilities of the resource ``kind`` (``root``: of every resource)."""
    routes, extensions = request.app[ROUTE_TABLE], request.app[EXTENSIONS]
    base = service_url(request)
    if kind in extensions:
        resources = [extensions[kind]]
        allow = ", ".join(dict.fromkeys(method["name"] for method in extensions[kind]["methods"]))
    else:
        resources = describe(routes, list(routes) if kind == "root" else [kind])
        if kind == "root":
            resources += list(extensions.values())
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
