"""The OpenAPI 3.1 description (issue 19): generated from the route table, valid OpenAPI 3.1,
kept current in docs/, served by a running gateway — every route documented, and every
documented operation answered by the router as documented (never "no resource here")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from gateway.config import Rest
from gateway.rest import openapi, paths
from gateway.rest.app import ROUTES, SCOPES
from tests.helpers import new_uid

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
BASE = Rest().base_path
SAMPLES = {"workitem": None, "uid": None, "requester": "OPENAPI_RQ", "aetitle": "OPENAPI_AE"}


def current() -> dict:
    return openapi.document(ROUTES, BASE, scopes=SCOPES)


def test_the_document_in_docs_is_the_generated_one():
    assert json.loads(DOCS.read_text()) == current(), \
        "docs/openapi.json is stale: python -m gateway.rest.write_openapi > docs/openapi.json"


def test_it_is_valid_openapi_3_1():
    doc = current()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_route_of_the_table_is_documented_with_its_scope():
    doc = current()
    documented = openapi.described(doc)
    for kind, methods in ROUTES.items():
        for method in methods:
            for template in paths.TEMPLATES[kind]:
                assert (template, method) in documented, (kind, method, template)
                operation = doc["paths"][template][method.lower()]
                assert operation.get("x-ups-scope") == SCOPES[kind].get(method), (kind, method)


def test_everything_documented_is_a_route_of_the_table():
    for template, method in openapi.described(current()):
        if template in openapi.ROOT_ROUTES or template in openapi.SERVICES \
                or template == openapi.SELF:
            continue  # (not in the table; the running gateway answers them, below)
        filled = template.format(**{k: v or new_uid() for k, v in SAMPLES.items()})
        resource = paths.parse(BASE + filled, BASE)
        assert resource is not None, template
        assert method in ROUTES[resource.kind], (template, method)
        assert template in paths.TEMPLATES[resource.kind]


def test_an_undescribed_route_stops_the_document():
    async def extra(request, resource):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(KeyError, match="no description"):
        openapi.document({**ROUTES, "workitem": {**ROUTES["workitem"], "DELETE": extra}}, BASE)
    with pytest.raises(KeyError, match="no path"):
        openapi.document({**ROUTES, "capabilities": {"GET": extra}}, BASE)
    # A route an extension registers beside the table, undescribed:
    with pytest.raises(KeyError, match="GET /dicom-web/studies has no description"):
        openapi.document(ROUTES, BASE, registered={("/dicom-web/studies", "GET")})
    with pytest.raises(KeyError, match="DELETE"):
        openapi.document(ROUTES, BASE, registered={
            ("/dicom-web/modality-performed-procedure-steps/{uid}", "DELETE")})


async def test_the_gateway_serves_it_and_answers_every_documented_operation(gateway, http):
    async with http.get(f"{gateway.base}/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        served = await r.json()
    assert served == json.loads(DOCS.read_text())
    for template, method in sorted(openapi.described(served)):
        item = served["paths"][template]
        operation = item[method.lower()]
        root = item.get("servers") == [{"url": "/"}]
        filled = template.format(**{k: v or new_uid() for k, v in SAMPLES.items()})
        url = (gateway.url if root else gateway.base) + filled
        async with http.request(method, url) as r:
            await r.read()
            warning = r.headers.get("Warning", "")
            assert "no UPS-RS resource" not in warning and "not allowed here" not in warning, \
                (method, template, warning)
            assert str(r.status) in operation["responses"], (method, template, r.status,
                                                             warning)
