"""The PS3.18 chapter 14 Modality Scheduled Procedure Step service: ``GET
{base_path}/modality-scheduled-procedure-steps`` searches the Modality Worklist — the core's
projection of the UPS worklist (``ups.mwl``), the same entries the DIMSE MWL SCP answers.

Matching keys use the PS3.18 §8.3.4.1 attribute-path spelling
(``ScheduledProcedureStepSequence.ScheduledStationAETitle=CT1``, keywords or tags); unknown
parameters are ignored, as for UPS-RS searches.
"""

from __future__ import annotations

from aiohttp import web

from gateway.rest import capabilities, dicomxml
from gateway.rest.messages import DICOM_JSON, json_response, service_url, warning
from gateway.rest.query import attribute_path
from gateway.rest.state import OPERATION, SERVICE
from gateway.ups.errors import InvalidQuery
from gateway.ups.mwl import ModalityWorklist

WORKLIST = web.AppKey("modality-worklist", ModalityWorklist)
RESOURCE = "modality-scheduled-procedure-steps"
_CONTROL = frozenset(("accept", "charset", "includefield", "emptyvaluematching",
                      "multiplevaluematching"))


def installer(worklist: ModalityWorklist):
    """What ``create_app`` calls to add this service's route."""
    def install(app: web.Application) -> None:
        from gateway.rest.state import SETTINGS
        app[WORKLIST] = worklist
        base = app[SETTINGS].base_path
        for prefix in {base, ""}:
            app.router.add_get(f"{prefix}/{RESOURCE}", search)
            app.router.add_get(f"{prefix}/{RESOURCE}/", search)
        capabilities.add_extension(app, "mwl", RESOURCE, [{
            "name": "GET", "id": "SearchModalityScheduledProcedureSteps",
            "parameters": ["{attributePath}", *capabilities.SEARCH_CONTROLS],
            "response": {"mediaTypes": [DICOM_JSON,
                                        f'multipart/related; type="{dicomxml.DICOM_XML}"']}}])
    return install


async def search(request: web.Request) -> web.StreamResponse:
    request[OPERATION] = "mwl_search"  # (metrics and logs: as the DIMSE MWL C-FIND)
    media = dicomxml.negotiate(request)
    worklist = request.app[WORKLIST]
    settings = request.app[SERVICE].settings
    offset, limit, fuzzy = 0, settings.search_default_limit, False
    terms = []
    for name, value in request.query.items():
        lower = name.lower()
        if lower == "offset":
            offset = _count(name, value)
        elif lower == "limit":
            limit = min(_count(name, value) or settings.search_default_limit,
                        settings.search_max_limit)
        elif lower == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidQuery(f"{name}: {value!r} must be true or false")
            fuzzy = value.lower() == "true"
        elif lower not in _CONTROL and (path := attribute_path(name)) is not None:
            terms.append((path, value, name))
    query = worklist.from_terms(terms, offset, limit)
    query.match.fuzzy = fuzzy
    page, total = [], 0
    async for entry in worklist.find(query):
        if offset <= total < offset + limit:
            page.append(entry)
        total += 1
    headers = {"Content-Location": f"{service_url(request)}/{RESOURCE}"}
    if not page:
        return web.Response(status=204, headers=headers)
    remaining = total - offset - len(page)
    if remaining > 0:
        headers["Warning"] = warning(
            request, f"There are {remaining} additional results that can be requested")
    if media != dicomxml.JSON:
        return dicomxml.response(page, media, headers)
    return json_response(page, headers=headers)


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidQuery(f"{name}: {value!r} must be a non-negative integer")
    return int(value)
