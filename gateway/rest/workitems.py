"""UPS-RS workitem transactions: Create, Retrieve, Update, Change State, Request Cancellation and
Search (PS3.18 §11.4–11.9), translated to UPS service calls."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from gateway.rest import media
from gateway.rest.messages import (DICOM_JSON, check_accept, datasets_response,
                                   read_dataset, service_url, update_error_response, warning)
from gateway.rest.paths import Resource
from gateway.rest.query import query_pairs, search_request
from gateway.rest.state import REQUESTER, SERVICE, SETTINGS
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import first, is_uid
from gateway.ups.errors import InvalidDataset, InvalidQuery, UPSError
from gateway.ups.service import UPSService
from gateway.ups.watch import check_ae

CREATED_WITH_MODIFICATIONS = "The Workitem was created with modifications."
UPDATED_WITH_MODIFICATIONS = "The Workitem was updated with modifications."


def _service(request: web.Request) -> UPSService:
    return request.app[SERVICE]


def workitem_url(request: web.Request, uid: str) -> str:
    return f"{service_url(request)}/workitems/{uid}"


def _query_uids(request: web.Request, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source, UID) pairs from named parameters (any case) and bare ``?UID`` parameters."""
    found = []
    for name, value in request.query.items():
        if name.lower() in names:
            found.append((name, value))
        elif value == "" and is_uid(name):
            found.append(("bare parameter", name))
    return found


def _one_uid(sources: list[tuple[str, str]], what: str) -> str | None:
    for source, value in sources:
        if not is_uid(value):
            raise InvalidDataset(f"{what} in {source}: {value!r} is not a valid UID")
    distinct = {value for _, value in sources}
    if len(distinct) > 1:
        listing = ", ".join(f"{source}={value}" for source, value in sources)
        raise InvalidDataset(f"conflicting {what}s: {listing}")
    return distinct.pop() if distinct else None


def _requester(request: web.Request, from_path: str | None) -> str | None:
    """The requester AE from the path or ``?requester=``, checked as an AE title."""
    requester = from_path or request.query.get("requester") or None
    if requester is not None:
        try:
            check_ae(requester)
        except UPSError as error:
            raise InvalidQuery(f"requester: {error.message}") from None
    return requester


async def create(request: web.Request, resource: Resource) -> web.Response:
    ds = await read_dataset(request)
    sources = _query_uids(request, ("workitem", "affectedsopinstanceuid"))
    if uid_in_payload := first(ds, t.SOPInstanceUID):
        sources.append(("payload SOPInstanceUID", uid_in_payload))
    uid = _one_uid(sources, "workitem UID")
    outcome = await _service(request).create(ds, uid, requester=request.get(REQUESTER))
    location = workitem_url(request, outcome.uid)
    headers = {"Location": location, "Content-Location": location}
    if outcome.repeated:  # a retry of a create that was applied: done, and said so
        headers["Warning"] = warning(request, outcome.message)
    elif outcome.status == st.CREATED_WITH_MODIFICATIONS:
        headers["Warning"] = warning(request, CREATED_WITH_MODIFICATIONS)
        headers["X-UPS-Modifications"] = _header_safe(outcome.message)
    return web.Response(status=201, headers=headers)


async def retrieve(request: web.Request, resource: Resource) -> web.Response:
    choice = check_accept(request)
    uid = resource.uid
    ds = await _service(request).retrieve(uid)
    return datasets_response(choice, [ds],
                             headers={"Content-Location": workitem_url(request, uid)})


async def update(request: web.Request, resource: Resource) -> web.Response:
    uid = resource.uid
    mods = await read_dataset(request)
    sources = _query_uids(request, ("transaction-uid", "transaction", "transactionuid"))
    if tx_in_payload := first(mods, t.TransactionUID):
        sources.append(("payload TransactionUID", tx_in_payload))
    try:
        try:
            tx = _one_uid(sources, "Transaction UID")
        except InvalidDataset as exc:
            raise UPSError(st.WRONG_TRANSACTION_UID, exc.message, reason="incorrect") from None
        outcome = await _service(request).update(uid, mods, tx, requester=request.get(REQUESTER))
    except UPSError as error:
        return update_error_response(request, error)
    headers = {"Content-Location": workitem_url(request, uid)}
    if outcome.modifications:
        headers["Warning"] = warning(request, UPDATED_WITH_MODIFICATIONS)
    return web.Response(status=200, headers=headers)


async def change_state(request: web.Request, resource: Resource) -> web.Response:
    uid, requester = resource.uid, resource.ae
    info = await read_dataset(request)
    state = first(info, t.ProcedureStepState)
    if t.ProcedureStepState not in info:
        raise InvalidDataset("the payload needs ProcedureStepState (0074,1000)",
                             st.MISSING_ATTRIBUTE)
    outcome = await _service(request).change_state(
        uid, state, first(info, t.TransactionUID), requester=_requester(request, requester))
    headers = {"Content-Location": workitem_url(request, uid)}
    if outcome.status != st.SUCCESS:
        headers["Warning"] = warning(request, outcome.message)
    elif outcome.modifications:
        headers["Warning"] = warning(request, f"{UPDATED_WITH_MODIFICATIONS} {outcome.message}")
    return web.Response(status=200, headers=headers)


async def request_cancel(request: web.Request, resource: Resource) -> web.Response:
    uid, requester = resource.uid, resource.ae
    info = await read_dataset(request, optional=True)
    # Requesting AE (0074,1236) is type 1 in UPS Cancel Requested: a request naming nobody is
    # sent as the configured default requester (rest.default_requester).
    outcome = await _service(request).request_cancel(
        uid, info, requester=_requester(request, requester) or request.get(REQUESTER)
        or request.app[SETTINGS].default_requester)
    headers = {"Content-Location": workitem_url(request, uid)}
    if outcome.status != st.SUCCESS:
        headers["Warning"] = warning(request, outcome.message)
    return web.Response(status=202, headers=headers)


async def search(request: web.Request, resource: Resource) -> web.Response:
    choice = check_accept(request)
    settings = _service(request).settings
    search = search_request(query_pairs(request.rel_url.raw_query_string),
                            tz=settings.timezone, default_limit=settings.search_default_limit,
                            max_limit=settings.search_max_limit)
    result = await _service(request).search(search.query)
    headers = CIMultiDict()
    for text in search.warnings:
        headers.add("Warning", warning(request, text))
    if not result.rendered:  # not ``items``: that would decode every result of the page
        return web.Response(status=204, headers=headers)
    if result.remaining:
        headers.add("Warning", warning(
            request, f"There are {result.remaining} additional results that can be requested"))
    if choice.xml:  # (the JSON form splices the stored text without decoding it)
        return datasets_response(media.XML_PARTS, result.items, headers=headers)
    return web.Response(body=result.to_json(), content_type=DICOM_JSON, headers=headers)


def _header_safe(text: str) -> str:
    return " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")[:1000]
