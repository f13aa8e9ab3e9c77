"""DIMSE request handlers: translate each UPS DIMSE message into one UPS service call.

Every handler decodes the request (``gateway.dimse.convert``), calls one ``UPSService`` method
through the ``LoopBridge`` and encodes the answer. All UPS rules live in the core; the adapter only
knows the wire: which operations a negotiated SOP class offers (digest §1.2), how action
information is laid out, and how a ``UPSError`` becomes a Status with an Error Comment.

Handlers never raise: pynetdicom would answer a handler exception with its own codes (0x0110 for
DIMSE-N, 0xC311 for C-FIND — which means something else in UPS), so every failure is caught here
and answered with an explicit status.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

from pydicom.dataset import Dataset as PydicomDataset
from pynetdicom import evt
from pynetdicom.dsutils import encode
from redis.exceptions import RedisError

from gateway import logs
from gateway.dimse import binary, convert
from gateway.ups import matching
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, describe, first, is_uid, normalize
from gateway.ups.errors import InvalidDataset, UPSError
from gateway.ups.uids import (FILTERED_GLOBAL_SUBSCRIPTION, UPS_EVENT, UPS_PULL, UPS_PUSH,
                              UPS_QUERY, UPS_WATCH)

log = logging.getLogger("gateway.dimse")

UPS_CLASSES = frozenset((UPS_PUSH, UPS_PULL, UPS_WATCH, UPS_EVENT, UPS_QUERY))
CLASS_NAMES = {UPS_PUSH: "UPS Push", UPS_PULL: "UPS Pull", UPS_WATCH: "UPS Watch",
               UPS_EVENT: "UPS Event", UPS_QUERY: "UPS Query"}

# What each negotiated SOP class offers (PS3.4 Tables CC.2-1…CC.2-5, enforced like dcm4chee,
# which also takes N-SET on a Push context). The message itself may carry the Push UID on any
# of these contexts (PS3.4 CC.3.1): the presentation context decides.
OPERATIONS = {
    "N-CREATE": frozenset((UPS_PUSH,)),
    "N-SET": frozenset((UPS_PUSH, UPS_PULL)),
    "N-GET": frozenset((UPS_PUSH, UPS_PULL, UPS_WATCH)),
    "N-ACTION": frozenset((UPS_PUSH, UPS_PULL, UPS_WATCH)),
    "C-FIND": frozenset((UPS_PULL, UPS_WATCH, UPS_QUERY)),
}
ACTION_TYPES = {UPS_PUSH: (2,), UPS_PULL: (1,), UPS_WATCH: (2, 3, 4, 5)}
ACTION_NAMES = {1: "Change UPS State", 2: "Request UPS Cancel", 3: "Subscribe",
                4: "Unsubscribe", 5: "Suspend Global Subscription"}

UNRECOGNIZED_OPERATION = 0x0211
SOP_CLASS_NOT_SUPPORTED = 0x0122
INVALID_OBJECT_INSTANCE = 0x0117
IDENTIFIER_DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700
# Failures a C-FIND may answer (PS3.4 C.4.1.1.4, CC.2.8.4); anything else becomes 0xC000. Never
# 0xC311/0xC312: pynetdicom uses them for its own C-FIND errors and UPS for N-ACTION refusals.
_FIND_FAILURES = frozenset((SOP_CLASS_NOT_SUPPORTED, UNRECOGNIZED_OPERATION, OUT_OF_RESOURCES,
                            IDENTIFIER_DOES_NOT_MATCH, st.UNABLE_TO_PROCESS))

# Core statuses that name a bad argument; N-ACTION's status table says it with 0x0115.
_ACTION_ARGUMENT_STATUSES = frozenset((st.INVALID_ATTRIBUTE_VALUE, st.MISSING_ATTRIBUTE,
                                       st.MISSING_ATTRIBUTE_VALUE, st.NO_SUCH_ATTRIBUTE))

# DIMSE request command fields and the element naming their SOP class.
_SOP_CLASS_FIELD = {0x0020: "AffectedSOPClassUID", 0x0140: "AffectedSOPClassUID",
                    0x0100: "AffectedSOPClassUID",
                    0x0110: "RequestedSOPClassUID", 0x0120: "RequestedSOPClassUID",
                    0x0130: "RequestedSOPClassUID"}

FIND_BATCH = 50          # matches fetched per hop to the event loop
FIND_BATCH_SECONDS = 0.05  # …or fewer, once this long has passed: results stream as found
COMMENT_MAX = 64         # Error Comment is LO


class Refused(Exception):
    """A request the adapter itself refuses (wrong context, bad action type …)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """What a handler knows about the request, for the answer and the logs."""

    op: str
    ae: str
    msg_id: int | None
    context_class: str
    # Every UPS SOP class accepted on the association. A message carries the Push UID whatever
    # the service (PS3.4 CC.3.1), so a requestor that negotiated Push and Pull may well send a
    # Change State on the Push context: what the association offers decides, liberally.
    offered: frozenset[str] = frozenset()
    uid: str | None = None
    sop_class: str | None = None  # a foreign SOP class UID the guard replaced
    started: float = field(default_factory=time.perf_counter)

    def log_extra(self, **more: Any) -> dict[str, Any]:
        return {"uid": self.uid, "ae": self.ae, "msg_id": self.msg_id, "op": self.op,
                "ms": round((time.perf_counter() - self.started) * 1000, 2), **more}


def bind(gateway, bridge) -> list:
    """The (event, handler) pairs of the DIMSE listener."""
    return DimseHandlers(gateway, bridge).bindings()


class DimseHandlers:
    def __init__(self, gateway, bridge):
        self.gateway = gateway
        self.bridge = bridge

    @property
    def service(self):
        return self.gateway.service

    def bindings(self) -> list:
        return [
            (evt.EVT_DIMSE_RECV, self.guard_sop_class),
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_N_CREATE, self.on_n_create),
            (evt.EVT_N_SET, self.on_n_set),
            (evt.EVT_N_GET, self.on_n_get),
            (evt.EVT_N_ACTION, self.on_n_action),
            (evt.EVT_C_FIND, self.on_c_find),
            (evt.EVT_N_EVENT_REPORT, self.on_n_event_report),
        ]

    # ---- C-ECHO ------------------------------------------------------------------------------

    def on_c_echo(self, event) -> int:
        return st.SUCCESS

    # ---- N-CREATE ----------------------------------------------------------------------------

    def on_n_create(self, event):
        def body(req: Request):
            uid = _uid_param(event.request.AffectedSOPInstanceUID, "Affected SOP Instance UID")
            req.uid = uid
            ds = _canonical(event, "attribute_list")
            outcome = self.bridge.run(self.service.create(ds, uid, requester=req.ae))
            req.uid = outcome.uid
            if outcome.uid_assigned:
                # pynetdicom puts an assigned UID into the response only with 0x0000
                # (decisions.md: the gateway assigns one and answers Success).
                reply = PydicomDataset()
                reply.AffectedSOPInstanceUID = outcome.uid
                return st.SUCCESS, outcome.message, reply
            return outcome.status, outcome.message, None

        return self._serve(event, "N-CREATE", body)

    # ---- N-SET -------------------------------------------------------------------------------

    def on_n_set(self, event):
        def body(req: Request):
            uid = req.uid = _uid_param(event.request.RequestedSOPInstanceUID,
                                       "Requested SOP Instance UID", required=True)
            mods = _canonical(event, "modification_list")
            # DIMSE carries the Transaction UID inside the Modification List (PS3.4 CC.2.6).
            tx = first(mods, t.TransactionUID)
            outcome = self.bridge.run(self.service.update(uid, mods, tx, requester=req.ae))
            return outcome.status, outcome.message, None

        return self._serve(event, "N-SET", body)

    # ---- N-GET -------------------------------------------------------------------------------

    def on_n_get(self, event):
        def body(req: Request):
            uid = req.uid = _uid_param(event.request.RequestedSOPInstanceUID,
                                       "Requested SOP Instance UID", required=True)
            try:
                identifiers = event.attribute_identifiers or []
                keys = [f"{int(tag):08X}" for tag in identifiers]
            except Exception as exc:
                raise Refused(st.INVALID_ARGUMENT_VALUE,
                              f"Attribute Identifier List cannot be read: {exc}") from None
            ds = self.bridge.run(self.service.retrieve(uid, keys or None))
            return st.SUCCESS, "", convert.from_canonical(ds)

        return self._serve(event, "N-GET", body)

    # ---- N-ACTION ----------------------------------------------------------------------------

    def on_n_action(self, event):
        def body(req: Request):
            action = event.action_type
            allowed = {a for cls in req.offered for a in ACTION_TYPES.get(cls, ())}
            if action not in allowed:
                name = ACTION_NAMES.get(action, "unknown")
                where = CLASS_NAMES.get(req.context_class, req.context_class)
                raise Refused(st.NO_SUCH_ACTION,
                              f"Action Type {action} ({name}) is not offered on a {where} context")
            uid = req.uid = _uid_param(event.request.RequestedSOPInstanceUID,
                                       "Requested SOP Instance UID", required=True)
            if action == 1:
                info = _canonical(event, "action_information")
                outcome = self.bridge.run(self.service.change_state(
                    uid, first(info, t.ProcedureStepState), first(info, t.TransactionUID),
                    requester=req.ae))
            elif action == 2:
                info = _canonical(event, "action_information")
                outcome = self.bridge.run(self.service.request_cancel(uid, info or None,
                                                                      requester=req.ae))
            else:
                outcome = self._subscription_action(event, action, uid)
            return outcome.status, outcome.message, None

        return self._serve(event, "N-ACTION", body)

    def _subscription_action(self, event, action: int, uid: str):
        info = convert.identifier_to_canonical(_decoded(event, "action_information"),
                                               "Action Information")
        receiving_ae = first(info, t.ReceivingAE)
        if not isinstance(receiving_ae, str) or not receiving_ae.strip():
            raise Refused(st.INVALID_ARGUMENT_VALUE, "Receiving AE (0074,1234) is required")
        receiving_ae = receiving_ae.strip()
        if len(receiving_ae) > 16 or "\\" in receiving_ae:
            raise Refused(st.INVALID_ARGUMENT_VALUE,
                          f"Receiving AE (0074,1234) {receiving_ae!r} is not an AE title")
        if action == 4:
            return self.bridge.run(self.service.unsubscribe(uid, receiving_ae))
        if action == 5:
            return self.bridge.run(self.service.suspend(uid, receiving_ae))
        lock_value = first(info, t.DeletionLock, "FALSE")  # absent or empty: FALSE
        lock_text = lock_value.strip().upper() if isinstance(lock_value, str) else None
        if lock_text not in ("TRUE", "FALSE"):
            raise Refused(st.INVALID_ARGUMENT_VALUE,
                          f"Deletion Lock (0074,1230) must be TRUE or FALSE, got {lock_value!r}")
        filter_spec = None
        if uid == FILTERED_GLOBAL_SUBSCRIPTION:
            # Every other attribute of the Action Information is a matching key (as dcm4chee).
            keys = {k: v for k, v in info.items() if k not in (t.ReceivingAE, t.DeletionLock)}
            matching.from_identifier(keys, default_tz=self.service.settings.timezone)  # valid?
            filter_spec = matching.filter_spec(identifier=keys)
        # A DIMSE subscriber must be reachable: a configured peer or an open WebSocket (C308).
        return self.bridge.run(self.service.subscribe(uid, receiving_ae, lock_text == "TRUE",
                                                      filter_spec, check_reachable=True))

    # ---- N-EVENT-REPORT ----------------------------------------------------------------------

    def on_n_event_report(self, event):
        def body(req: Request):
            raise Refused(UNRECOGNIZED_OPERATION,
                          "This gateway sends UPS event reports; it does not receive them")

        return self._serve(event, "N-EVENT-REPORT", body)

    # ---- C-FIND ------------------------------------------------------------------------------

    def on_c_find(self, event) -> Iterator[tuple[Any, PydicomDataset | None]]:
        """Stream matches as Pending responses; stop on C-CANCEL with 0xFE00."""
        req = self._request(event, "C-FIND")
        try:
            self._check_context(req)
            identifier = convert.identifier_to_canonical(_decoded(event, "identifier"))
            query = self._find_query(identifier)
        except Exception as exc:  # noqa: BLE001 - every failure gets an explicit status
            yield self._find_failure(req, exc), None
            return
        stream = self.service.search_stream(query)
        syntax = event.context.transfer_syntax
        count = 0
        try:
            while True:
                if event.is_cancelled:
                    self._done(req, st.CANCEL, "", results=count)
                    yield st.CANCEL, None
                    return
                batch = self.bridge.run(_take(stream, FIND_BATCH, FIND_BATCH_SECONDS))
                if not batch:
                    break
                for ds in batch:
                    if event.is_cancelled:
                        self._done(req, st.CANCEL, "", results=count)
                        yield st.CANCEL, None
                        return
                    result = self._find_result(ds, syntax)
                    count += 1
                    yield st.PENDING, result
        except Exception as exc:  # noqa: BLE001
            yield self._find_failure(req, exc), None
            return
        finally:
            self._close_stream(stream)
        self._done(req, st.SUCCESS, "", results=count)
        yield st.SUCCESS, None

    def _find_query(self, identifier: Dataset) -> matching.Query:
        unsupported = [k for k in identifier
                       if k not in matching.MATCHABLE and k not in matching.NOT_MATCHED
                       and k not in matching.NEVER_RETURNED]
        if unsupported:
            raise Refused(IDENTIFIER_DOES_NOT_MATCH,
                          f"{describe(unsupported[0])} is not a UPS matching or return key")
        return matching.from_identifier(identifier, default_tz=self.service.settings.timezone)

    def _find_result(self, ds: Dataset, syntax) -> PydicomDataset:
        result = convert.from_canonical(ds)
        # pynetdicom would answer an encoding failure with 0xC312, a UPS N-ACTION code: check here.
        if encode(result, syntax.is_implicit_VR, syntax.is_little_endian,
                  syntax.is_deflated) is None:
            raise Refused(st.UNABLE_TO_PROCESS,
                          f"Workitem {first(ds, t.SOPInstanceUID)} cannot be encoded")
        return result

    def _find_failure(self, req: Request, exc: BaseException) -> PydicomDataset | int:
        status, message = self._classify(req, exc)
        if status not in _FIND_FAILURES:
            status = st.UNABLE_TO_PROCESS  # C-FIND has no 0x01xx or UPS C3xx codes
        self._done(req, status, message)
        return _status(status, message, req)

    def _close_stream(self, stream: AsyncIterator) -> None:
        async def close():
            try:
                await stream.aclose()
            except Exception:  # noqa: BLE001 - already finished or still running: nothing to do
                pass

        try:
            asyncio.run_coroutine_threadsafe(close(), self.bridge.loop)
        except RuntimeError:  # the loop is closed: the generator goes with it
            pass

    # ---- the foreign SOP class guard -----------------------------------------------------------

    def guard_sop_class(self, event) -> None:
        """EVT_DIMSE_RECV: a request on a UPS context naming a non-UPS SOP class would make
        pynetdicom abort the association (it picks the service class from the message). Route it
        to the UPS handlers instead, which refuse it with 0x0122 and keep the association."""
        try:
            message = event.message
            command = message.command_set
            element = _SOP_CLASS_FIELD.get(command.get("CommandField"))
            if element is None:
                return
            sop_class = command.get(element)
            if sop_class in UPS_CLASSES:
                return
            context = _accepted_context(event.assoc, message.context_id)
            if context is None or context.abstract_syntax not in UPS_CLASSES:
                return
            foreign = event.assoc.__dict__.setdefault("_ups_foreign_sop_classes", {})
            foreign[int(command.MessageID)] = str(sop_class or "")
            setattr(command, element, context.abstract_syntax)
        except Exception:  # noqa: BLE001 - never break message reception
            log.debug("SOP class guard skipped a message", exc_info=True)

    # ---- shared plumbing -----------------------------------------------------------------------

    def _request(self, event, op: str) -> Request:
        try:
            ae = str(event.assoc.requestor.ae_title).strip()
        except Exception:  # noqa: BLE001
            ae = ""
        msg_id = getattr(event.request, "MessageID", None)
        context_class = str(getattr(event.context, "abstract_syntax", ""))
        offered = frozenset(str(cx.abstract_syntax) for cx in event.assoc.accepted_contexts
                            if str(cx.abstract_syntax) in UPS_CLASSES) | {context_class}
        req = Request(op, ae, msg_id, context_class, offered)
        # The core's own log records (written on the loop) carry this request's identity too.
        logs.bind(request=f"{ae}#{msg_id}", ae=ae)
        foreign = getattr(event.assoc, "_ups_foreign_sop_classes", None)
        if foreign and msg_id in foreign:
            req.sop_class = foreign.pop(msg_id)
        return req

    def _check_context(self, req: Request) -> None:
        if req.sop_class is not None:
            raise Refused(SOP_CLASS_NOT_SUPPORTED,
                          f"SOP Class {req.sop_class or '(absent)'} is not supported here")
        if not req.offered & OPERATIONS[req.op]:
            where = CLASS_NAMES.get(req.context_class, req.context_class)
            raise Refused(UNRECOGNIZED_OPERATION, f"{req.op} is not offered on a {where} context")

    def _serve(self, event, op: str, body: Callable[[Request], tuple]) -> tuple:
        """Run one DIMSE-N request: (status, dataset) for pynetdicom, never an exception."""
        req = self._request(event, op)
        try:
            if op != "N-EVENT-REPORT":
                self._check_context(req)
            code, message, reply = body(req)
        except Exception as exc:  # noqa: BLE001 - every failure gets an explicit status
            code, message = self._classify(req, exc)
            reply = None
        self._done(req, code, message)
        return _status(code, message, req), reply

    def _classify(self, req: Request, exc: BaseException) -> tuple[int, str]:
        """The status and Error Comment for a failed request."""
        if isinstance(exc, (UPSError, Refused)):
            code, message = exc.status, exc.message
            if req.op == "N-ACTION" and code in _ACTION_ARGUMENT_STATUSES:
                code = st.INVALID_ARGUMENT_VALUE
            return code, message
        if isinstance(exc, TimeoutError):
            log.warning("UPS core timed out", extra=req.log_extra())
            return st.PROCESSING_FAILURE, (f"The worklist did not answer within "
                                           f"{self.bridge.timeout:g} s; try again")
        if isinstance(exc, (RedisError, OSError)):
            log.warning("worklist store unavailable", extra=req.log_extra(error=str(exc)))
            return st.PROCESSING_FAILURE, "The worklist store is unavailable; try again"
        log.exception("unhandled error in DIMSE handler", extra=req.log_extra())
        return st.PROCESSING_FAILURE, f"Internal error; see the gateway log (msg {req.msg_id})"

    def _done(self, req: Request, code: int, message: str, **more: Any) -> None:
        failed = code not in (st.SUCCESS, st.PENDING, st.CANCEL) and not st.is_warning(code)
        level = logging.INFO if failed or st.is_warning(code) else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, f"{req.op} 0x{code:04X}" + (f": {message}" if message else ""),
                    extra=req.log_extra(status=f"0x{code:04X}", **more))


# ---- helpers -----------------------------------------------------------------------------------

async def _take(stream: AsyncIterator[Dataset], limit: int, seconds: float) -> list[Dataset]:
    """Up to ``limit`` items from ``stream``; fewer once ``seconds`` passed (at least one)."""
    batch: list[Dataset] = []
    deadline = time.monotonic() + seconds
    async for item in stream:
        batch.append(item)
        if len(batch) >= limit or time.monotonic() >= deadline:
            break
    return batch


_DATASET_NAMES = {"attribute_list": "Attribute List", "modification_list": "Modification List",
                  "action_information": "Action Information", "identifier": "Identifier"}


# Where each request dataset travels in the DIMSE message (pynetdicom primitive attributes).
_RAW_FIELDS = {"attribute_list": "AttributeList", "modification_list": "ModificationList",
               "action_information": "ActionInformation"}


def _canonical(event, name: str) -> Dataset:
    """A request dataset in canonical form: read straight from its bytes when it is plain
    little-endian (``binary``), else decoded by pynetdicom/pydicom."""
    what = _DATASET_NAMES[name]
    stream = getattr(event.request, _RAW_FIELDS[name], None)
    if stream is None:
        return {}
    raw = stream.getvalue()
    if not raw:
        return {}
    syntax = event.context.transfer_syntax  # a UID on the acceptor side, a list when proposed
    fast = binary.read(raw, str(syntax if isinstance(syntax, str) else syntax[0]))
    if fast is not None:
        return normalize(fast)
    return convert.to_canonical(_decoded(event, name), what)


def _decoded(event, name: str) -> PydicomDataset | None:
    """The request's dataset, decoded by pynetdicom; a byte stream that does not parse is the
    requester's error, not ours."""
    try:
        return getattr(event, name)
    except Exception as exc:  # noqa: BLE001
        raise InvalidDataset(f"cannot decode the {_DATASET_NAMES[name]}: "
                             f"{str(exc)[:100] or type(exc).__name__}") from None


def _uid_param(value: Any, name: str, required: bool = False) -> str | None:
    if value is None or str(value) == "":
        if required:
            raise Refused(st.INVALID_ARGUMENT_VALUE if name.startswith("Requested")
                          else st.MISSING_ATTRIBUTE, f"{name} is required")
        return None
    uid = str(value).strip().rstrip("\x00")
    if not is_uid(uid):
        raise Refused(INVALID_OBJECT_INSTANCE, f"{name} {uid[:40]!r} is not a valid UID")
    return uid


def _accepted_context(assoc, context_id):
    for context in assoc.accepted_contexts:
        if context.context_id == context_id:
            return context
    return None


def _status(code: int, message: str, req: Request | None = None) -> PydicomDataset | int:
    """A status for pynetdicom: a bare int, or a status dataset with the Error Comment."""
    if code in (st.SUCCESS, st.PENDING) or (not message and (req is None or not req.sop_class)):
        return code
    status = PydicomDataset()
    status.Status = code
    if message:
        status.ErrorComment = error_comment(message)
    if req is not None and req.sop_class and is_uid(req.sop_class):
        status.AffectedSOPClassUID = req.sop_class  # answer with the SOP class that was asked
    return status


_TAG_RE = re.compile(r" ?\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)")
_PARENS_RE = re.compile(r" ?\([^()]*\)")
_LONG_UID_RE = re.compile(r"\b(\d+\.\d+\.\d{4})[\d.]{8,}(\d{4})\b")


def error_comment(message: str) -> str:
    """An Error Comment: LO, so at most 64 characters, no backslash, ASCII for the command set.

    Long messages are compacted before they are cut: tag numbers go first (the keyword stays),
    then other parenthesised asides, then long UIDs are abbreviated (2.25.1234...5678); what is
    still too long is cut, at a word boundary when that loses little. The full message is in the
    gateway log.
    """
    text = " ".join(message.replace("\\", "/").split())
    text = text.encode("ascii", "replace").decode("ascii")
    for compact in (lambda s: _TAG_RE.sub("", s), lambda s: _PARENS_RE.sub("", s),
                    lambda s: _LONG_UID_RE.sub(r"\1...\2", s)):
        if len(text) <= COMMENT_MAX:
            return text
        text = compact(text)
    if len(text) <= COMMENT_MAX:
        return text
    cut = text[:COMMENT_MAX - 3]
    space = cut.rfind(" ")
    if space >= len(cut) - 12:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "..."
