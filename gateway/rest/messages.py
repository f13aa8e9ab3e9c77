"""Datasets in and out of HTTP messages — DICOM JSON, or the XML Native DICOM Model converted
to and from it here (``media``, ``native_xml``) — and UPS errors as HTTP answers (digest §2.5,
§6)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.rest import media, native_xml
from gateway.rest.state import ORIGIN, SETTINGS
from gateway.ups import status as st
from gateway.ups.dataset import Dataset, normalize
from gateway.ups.errors import InvalidDataset, OutcomeUnknown, UPSError

DICOM_JSON = media.DICOM_JSON

STATE_CONFLICT = "The submitted request is inconsistent with the state of the UPS Instance."
# Update Workitem's own texts (PS3.18 §11.6.3)
UPDATE_CONFLICT = "The submitted request is inconsistent with the current state of the Workitem."
NOT_CLAIMED = "The target URI did not reference a claimed Workitem."

# DIMSE status → HTTP status (decisions.md "HTTP mapping").
HTTP_STATUS = {
    st.WRONG_TRANSACTION_UID: 400,
    st.MAY_NO_LONGER_BE_UPDATED: 409, st.ALREADY_IN_PROGRESS: 409, st.ONLY_CREATE_SCHEDULES: 409,
    st.FINAL_STATE_REQUIREMENTS_NOT_MET: 409, st.NOT_IN_PROGRESS: 409,
    st.CANCEL_ALREADY_COMPLETED: 409, st.PERFORMER_UNREACHABLE: 409, st.PERFORMER_DECLINES: 409,
    st.NO_SUCH_UPS: 404, st.UNKNOWN_RECEIVING_AE: 404, st.DUPLICATE_INSTANCE: 409,
    st.CREATE_NOT_SCHEDULED: 400, st.ACTION_NOT_APPROPRIATE: 400, st.EVENTS_NOT_SUPPORTED: 403,
    st.PROCESSING_FAILURE: 503, st.RESOURCE_LIMITATION: 403,
}
_STATE_CODES = (st.MAY_NO_LONGER_BE_UPDATED, st.ALREADY_IN_PROGRESS, st.ONLY_CREATE_SCHEDULES,
                st.FINAL_STATE_REQUIREMENTS_NOT_MET, st.NOT_IN_PROGRESS)


class BodyTimeout(Exception):
    """The request body did not arrive in time: 408, and the connection is closed."""


def service_url(request: web.Request) -> str:
    """The origin server's base URI, ``<service>`` in Warning headers."""
    return request.app[ORIGIN](request) + request.app[SETTINGS].base_path


def warning(request: web.Request, text: str) -> str:
    clean = " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")
    return f"299 {service_url(request)}: {clean}"


# Finer causes (``UPSError.reason``) that one DIMSE status covers, where HTTP tells them apart.
HTTP_STATUS_BY_REASON = {
    "gone": 410,  # purged after its retention period
    "outcome unknown": 504,  # the commit was sent, its answer did not come: it may be applied
}


def error_response(request: web.Request, error: UPSError) -> web.Response:
    http = HTTP_STATUS_BY_REASON.get(error.reason) or HTTP_STATUS.get(error.status, 400)
    text = error.message
    if error.status in _STATE_CODES:
        text = f"{STATE_CONFLICT} {error.message}"
    headers = None
    if isinstance(error, OutcomeUnknown):  # where to look (an assigned UID too: retry with it)
        headers = {"Content-Location": f"{service_url(request)}/workitems/{error.uid}"}
    return problem(request, http, text, error.status, headers)


def update_error_response(request: web.Request, error: UPSError) -> web.Response:
    """A refused Update Workitem: a COMPLETED or CANCELED workitem is 400 (§11.6.2 says so), any
    other state conflict 409, a missing or wrong Transaction UID 400, with the Update texts
    followed by the reason."""
    if error.status == st.MAY_NO_LONGER_BE_UPDATED:
        return problem(request, 400, f"{UPDATE_CONFLICT} {error.message}", error.status)
    if error.status in _STATE_CODES:
        return problem(request, 409, f"{UPDATE_CONFLICT} {error.message}", error.status)
    if error.status == st.WRONG_TRANSACTION_UID:
        return problem(request, 400, f"{NOT_CLAIMED} {error.message}", error.status)
    return error_response(request, error)


def problem(request: web.Request, http: int, text: str, dimse: int | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": text}
    if dimse is not None:
        body["status"] = f"0x{dimse:04X}"
    all_headers = {"Warning": warning(request, text), **(headers or {})}
    return web.Response(body=orjson.dumps(body), status=http, content_type="application/json",
                        headers=all_headers)


async def read_dataset(request: web.Request, *, optional: bool = False) -> Dataset:
    """The request's DICOM JSON payload (an object or a one-element array), normalised."""
    body = await read_json(request, optional=optional)
    if body is None:
        return {}
    if isinstance(body, list):
        if len(body) != 1:
            raise InvalidDataset(f"the payload must hold exactly one dataset, got {len(body)}")
        body = body[0]
    return normalize(body)


async def read_body(request: web.Request) -> bytes:
    """The request's body, within ``rest.max_body_bytes`` (else 413) and
    ``rest.body_timeout_seconds`` (else ``BodyTimeout``: a body trickled in slower holds a
    connection and its buffer). aiohttp keeps it: reading it again costs nothing."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if request.content.is_eof():  # all of it is in (the usual case): nothing to wait for
        return await request.read()
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            return await request.read()  # aiohttp enforces client_max_size on chunked bodies too
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {seconds:g} s "
                          "(rest.body_timeout_seconds)") from None


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        if optional:
            return None
        raise InvalidDataset("the request has no payload", st.MISSING_ATTRIBUTE)
    content_type = request.headers.get("Content-Type", "")
    found = media.payload_kind(content_type)
    if found is None:
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type {request.content_type or '(none)'} is not supported; use "
                 f"{DICOM_JSON}, {media.DICOM_XML} or multipart/related; "
                 f"type=\"{media.DICOM_XML}\"")
    kind, boundary = found
    if boundary is not None:
        kind, raw = media.single_part(raw, boundary, kind)
    if kind == "xml":  # converted once, here: from now on it is DICOM JSON
        return native_xml.from_xml(raw)
    try:
        return orjson.loads(raw)  # strict: no NaN/Infinity, no lone surrogates, ≤ 64-bit ints
    except orjson.JSONDecodeError as exc:
        raise InvalidDataset(f"the payload is not valid JSON: {exc}") from None


def check_accept(request: web.Request) -> media.Choice:
    """The response's media type (``media.negotiate``); 406 when nothing acceptable is
    offered."""
    return media.negotiate(request)


def datasets_response(choice: media.Choice, datasets: list[Dataset], status: int = 200,
                      headers=None) -> web.Response:
    """Datasets in the negotiated form: a DICOM JSON array, a multipart/related of XML
    documents, or (asked for bare ``application/dicom+xml``, one dataset) one XML document."""
    if not choice.xml:
        return json_response(datasets, status, headers)
    try:
        documents = [native_xml.to_xml(ds) for ds in datasets]
    except native_xml.NotRepresentable as exc:
        raise web.HTTPNotAcceptable(text=str(exc)) from None
    if not choice.multipart and len(documents) == 1:
        return web.Response(body=documents[0], status=status, headers=headers,
                            content_type=media.DICOM_XML, charset="utf-8")
    body, content_type = media.multipart(documents)
    response = web.Response(body=body, status=status, headers=headers)
    response.headers["Content-Type"] = content_type
    return response


def json_response(data: Any, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type=DICOM_JSON, headers=headers)
