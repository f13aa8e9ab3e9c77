"""The PS3.18 chapter 15 Modality Performed Procedure Step service:
``{base_path}/modality-performed-procedure-steps/{uid}`` — Create (POST, 201), Update (POST
``?update``) and Retrieve (GET, ``includefield``), each one call of the core's ``MppsService``
(``ups.mpps``), the same the DIMSE MPPS SCP makes.
"""

from __future__ import annotations

from aiohttp import web

from gateway.rest import capabilities, dicomxml
from gateway.rest.messages import DICOM_JSON, json_response, problem, read_dataset, service_url
from gateway.rest.query import attribute_path
from gateway.rest.state import OPERATION, SETTINGS
from gateway.ups import status as st
from gateway.ups.dataset import is_uid, select
from gateway.ups.errors import InvalidDataset, InvalidQuery, UPSError
from gateway.ups.mpps import FinalMpps, MppsService

MPPS = web.AppKey("mpps", MppsService)
RESOURCE = "modality-performed-procedure-steps"
# DIMSE status → HTTP status, for what only MPPS answers.
_HTTP = {st.NO_SUCH_INSTANCE: 404, st.DUPLICATE_INSTANCE: 409}


def installer(service: MppsService):
    """What ``create_app`` calls to add this service's routes."""
    def install(app: web.Application) -> None:
        app[MPPS] = service
        base = app[SETTINGS].base_path
        for prefix in {base, ""}:
            app.router.add_route("*", f"{prefix}/{RESOURCE}/{{uid}}", dispatch)
        payload = {"mediaTypes": [DICOM_JSON, dicomxml.DICOM_XML]}
        capabilities.add_extension(app, "mpps", f"{RESOURCE}/{{uid}}", [
            {"name": "POST", "id": "CreateModalityPerformedProcedureStep", "request": payload},
            {"name": "POST", "id": "UpdateModalityPerformedProcedureStep", "parameters": ["update"],
             "request": payload},
            {"name": "GET", "id": "RetrieveModalityPerformedProcedureStep",
             "parameters": ["includefield"], "response": payload}])
    return install


async def dispatch(request: web.Request) -> web.StreamResponse:
    if request.method == "OPTIONS":  # Retrieve Capabilities (a CORS preflight never gets here)
        return capabilities.respond(request, "mpps")
    uid = request.match_info["uid"].strip("/")
    if not is_uid(uid):
        raise InvalidDataset(f"{uid[:64]!r} is not a valid MPPS UID")
    handler = {"POST": _update if _is_update(request) else create, "GET": retrieve}.get(
        request.method)
    if handler is not None:  # (metrics and logs: as the DIMSE MPPS N-CREATE, N-SET, N-GET)
        request[OPERATION] = "mpps_" + handler.__name__.strip("_")
    if handler is None:
        raise web.HTTPMethodNotAllowed(request.method, ["POST", "GET"],
                                       text=f"{request.method} is not allowed here; use POST "
                                       "(create, ?update) or GET")
    try:
        return await handler(request, uid)
    except FinalMpps as error:
        return problem(request, 409, error.message, error.status)
    except UPSError as error:
        if error.status in _HTTP:
            return problem(request, _HTTP[error.status], error.message, error.status)
        raise


def _is_update(request: web.Request) -> bool:
    return any(name.lower() == "update" for name in request.query)


async def create(request: web.Request, uid: str) -> web.Response:
    ds = await read_dataset(request)
    await request.app[MPPS].create(ds, uid, requester=request.query.get("requester"))
    location = f"{service_url(request)}/{RESOURCE}/{uid}"
    return web.Response(status=201, headers={"Location": location, "Content-Location": location})


async def _update(request: web.Request, uid: str) -> web.Response:
    mods = await read_dataset(request)
    await request.app[MPPS].update(uid, mods, requester=request.query.get("requester"))
    return web.Response(status=200)


async def retrieve(request: web.Request, uid: str) -> web.Response:
    media = dicomxml.negotiate(request)
    ds = await request.app[MPPS].retrieve(uid)
    fields = [f.strip() for value in request.query.getall("includefield", [])
              for f in value.split(",") if f.strip()]
    if fields and "all" not in (f.lower() for f in fields):
        tags = []
        for name in fields:
            path = attribute_path(name)
            if path is None:
                raise InvalidQuery(f"includefield: {name!r} is not a DICOM attribute keyword or "
                                   "tag")
            tags.append(path[0])
        ds = select(ds, tags)
    headers = {"Content-Location": f"{service_url(request)}/{RESOURCE}/{uid}"}
    if media != dicomxml.JSON:
        return dicomxml.response([ds], media, headers, single=media == dicomxml.XML)
    return json_response([ds], headers=headers)
