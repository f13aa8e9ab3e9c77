"""DICOM JSON in and out of HTTP messages, and UPS errors as HTTP answers (digest §2.5, §6)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.rest.state import ORIGIN, SETTINGS
from gateway.ups import status as st
from gateway.ups.dataset import Dataset, normalize
from gateway.ups.errors import InvalidDataset, UPSError

DICOM_JSON = "application/dicom+json"
_JSON_TYPES = ("application/dicom+json", "application/json")

STATE_CONFLICT = "The submitted request is inconsistent with the state of the UPS Instance."

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


def error_response(request: web.Request, error: UPSError) -> web.Response:
    if error.reason == "gone":
        http = 410
    else:
        http = HTTP_STATUS.get(error.status, 400)
    text = error.message
    if error.status in _STATE_CODES:
        text = f"{STATE_CONFLICT} {error.message}"
    return problem(request, http, text, error.status)


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


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    seconds = request.app[SETTINGS].body_timeout_seconds
    try:  # a body trickled in slower than this holds a connection and its buffer: no more
        async with asyncio.timeout(seconds):
            raw = await request.read()  # aiohttp enforces client_max_size on chunked bodies too
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {seconds:g} s "
                          "(rest.body_timeout_seconds)") from None
    if not raw.strip():
        if optional:
            return None
        raise InvalidDataset("the request has no payload", st.MISSING_ATTRIBUTE)
    media = request.content_type.lower()
    if media not in _JSON_TYPES:
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type {media or '(none)'} is not supported; use {DICOM_JSON}")
    try:
        return orjson.loads(raw)  # strict: no NaN/Infinity, no lone surrogates, ≤ 64-bit ints
    except orjson.JSONDecodeError as exc:
        raise InvalidDataset(f"the payload is not valid JSON: {exc}") from None


def check_accept(request: web.Request) -> None:
    """406 only when the client accepts nothing we can send (JSON is the default type)."""
    accept = request.headers.get("Accept", "")
    if not accept:
        return
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", DICOM_JSON, "application/json", ""):
            return
        if media.startswith("multipart/related") and "dicom+json" in part:
            return
    raise web.HTTPNotAcceptable(text=f"Only {DICOM_JSON} responses are offered")


def json_response(data: Any, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status,
                        content_type=DICOM_JSON, headers=headers)
