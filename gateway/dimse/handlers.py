"""DIMSE request handlers: translate each UPS DIMSE message into one UPS service call.

The upper layer (``gateway.dimse.upper_layer``) hands over each complete request message; a
handler decodes its dataset (``binary``, else ``convert``), awaits one ``UPSService`` method and
writes the response (``responses``). All UPS rules live in the core; the adapter only knows the
wire: which operations a negotiated SOP class offers (digest §1.2), how action information is
laid out, and how a ``UPSError`` becomes a Status with an Error Comment.

Handlers never raise: every failure is caught here and answered with an explicit status, and the
association goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from redis.exceptions import RedisError

from gateway import logs
from gateway.dimse import access, binary, convert, responses
from gateway.dimse.decoding import (UNRECOGNIZED_OPERATION, Refused, canonical, decoded,
                                    noting_charsets, requested_uid, uid_param)
from gateway.dimse import messages as m
from gateway.metrics import FAILURE, SUCCESS, WARNING, Metrics
from gateway.ups import matching
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, describe, first
from gateway.ups.attempt import commit_tracking
from gateway.ups.errors import InvalidDataset, OutcomeUnknown, UPSError
from gateway.ups.mpps import MPPS_CLASS
from gateway.ups.mwl import MWL_FIND
from gateway.ups.uids import (FILTERED_GLOBAL_SUBSCRIPTION, UPS_EVENT, UPS_PULL, UPS_PUSH,
                              UPS_QUERY, UPS_WATCH)

if TYPE_CHECKING:
    from gateway.dimse.upper_layer import Association
    from gateway.ups.service import UPSService

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

SOP_CLASS_NOT_SUPPORTED = 0x0122
IDENTIFIER_DOES_NOT_MATCH = 0xA900
QUERY_RETRIEVE_LEVEL = "00080052"
OUT_OF_RESOURCES = 0xA700
RESOURCE_LIMITATION = st.RESOURCE_LIMITATION
# Failures a C-FIND may answer (PS3.4 C.4.1.1.4, CC.2.8.4); anything else becomes 0xC000. Never
# 0xC311/0xC312: UPS uses them for N-ACTION refusals (and pynetdicom for its own C-FIND errors).
_FIND_FAILURES = frozenset((SOP_CLASS_NOT_SUPPORTED, UNRECOGNIZED_OPERATION, OUT_OF_RESOURCES,
                            IDENTIFIER_DOES_NOT_MATCH, st.UNABLE_TO_PROCESS,
                            access.NOT_AUTHORIZED))

# Core statuses that name a bad argument; N-ACTION's status table says it with 0x0115.
_ACTION_ARGUMENT_STATUSES = frozenset((st.INVALID_ATTRIBUTE_VALUE, st.MISSING_ATTRIBUTE,
                                       st.MISSING_ATTRIBUTE_VALUE, st.NO_SUCH_ATTRIBUTE))

# DIMSE request Command Fields (PS3.7 E.1): those served, and those this SCP does not serve,
# which are answered 0x0211 with the association kept.
C_ECHO, C_FIND = 0x0030, 0x0020
N_CREATE, N_SET, N_GET, N_ACTION, N_EVENT_REPORT = 0x0140, 0x0120, 0x0110, 0x0130, 0x0100
COMMANDS = {C_ECHO: "C-ECHO", C_FIND: "C-FIND", N_CREATE: "N-CREATE", N_SET: "N-SET",
            N_GET: "N-GET", N_ACTION: "N-ACTION", N_EVENT_REPORT: "N-EVENT-REPORT",
            0x0001: "C-STORE", 0x0010: "C-GET", 0x0021: "C-MOVE", 0x0150: "N-DELETE"}

COMMENT_MAX = 64         # Error Comment is LO

# The UPS transaction of a request, for the metrics: the names the REST side uses too.
TRANSACTIONS = {"N-CREATE": "create", "N-SET": "update", "N-GET": "retrieve", "C-FIND": "search",
                "C-ECHO": "echo"}
ACTION_TRANSACTIONS = {1: "change_state", 2: "request_cancel", 3: "subscribe", 4: "unsubscribe",
                       5: "suspend"}
SERVICES = {MWL_FIND: "mwl", MPPS_CLASS: "mpps"}  # SOP classes served by the extensions


@dataclass
class Request:
    """What a handler knows about the request, for the answer and the logs."""

    op: str
    ae: str
    msg_id: int | None
    context_class: str
    message: m.Message
    syntax: str  # the context's transfer syntax
    # Every UPS SOP class accepted on the association. A message carries the Push UID whatever
    # the service (PS3.4 CC.3.1), so a requestor that negotiated Push and Pull may well send a
    # Change State on the Push context: what the association offers decides, liberally.
    offered: frozenset[str] = frozenset()
    uid: str | None = None
    sop_class: str | None = None  # the message's SOP class when it is not a UPS one
    instance: str | None = None  # the Affected SOP Instance UID of the response
    decoder: str | None = None  # what read the request's dataset: "binary" or "pydicom"
    assoc: Any = None  # the association (it remembers the peer's character set)
    called_ae: str | None = None
    principal: Any = None  # who the association acts as (``access``); None: unchecked
    address: str | None = None  # the peer's, for the audit trail
    patient: tuple[Any, Any] | None = None  # (Patient ID, Patient's Name) a request carried
    started: float = field(default_factory=time.perf_counter)

    @property
    def charsets(self) -> list[str] | None:
        return self.assoc.charsets if self.assoc is not None else None

    def log_extra(self, **more: Any) -> dict[str, Any]:
        return {"uid": self.uid, "ae": self.ae, "called_ae": self.called_ae,
                "msg_id": self.msg_id, "op": self.op,
                "decoder": self.decoder,
                "ms": round((time.perf_counter() - self.started) * 1000, 2), **more}


# What a DIMSE-N body returns: status, Error Comment text, response dataset (encoded) or None.
Outcome = tuple[int, str, bytes | None]


class DimseHandlers:
    def __init__(self, service: UPSService, request_timeout: float, extensions=(),
                 metrics: Metrics | None = None, max_dataset_bytes: int = 1 << 20):
        self.service = service
        self.timeout = request_timeout
        self.max_dataset_bytes = max_dataset_bytes  # a deflated dataset, once inflated
        # Other SOP classes' handlers (MWL, MPPS): ``sop_class`` and ``serve(self, assoc, req)``.
        self.extensions = {extension.sop_class: extension for extension in extensions}
        self.metrics = metrics or Metrics(process=False)
        # Told of every answered request (gateway.dimse.audit_hook), when auditing is on.
        self.audit: Callable[[Request, int, str], None] | None = None
        self._bodies: dict[int, Callable[[Request], Awaitable[Outcome]]] = {
            N_CREATE: self.n_create, N_SET: self.n_set, N_GET: self.n_get,
            N_ACTION: self.n_action, N_EVENT_REPORT: self.n_event_report}

    async def serve(self, assoc: Association, message: m.Message) -> None:
        """Answer one request message (never raises for what the request holds)."""
        field_ = message.command_field
        if field_ & responses.RESPONSE_BIT:
            # This SCP never sends requests on an association it accepted: nothing to match.
            log.info(f"unexpected DIMSE response 0x{field_:04X} ignored", extra=assoc.log_extra())
            return
        req = self._request(assoc, message)
        if field_ == C_ECHO:
            self._done(req, st.SUCCESS, "")
            await self._respond(assoc, req, st.SUCCESS, "")
        elif extension := self.extensions.get(req.context_class):
            if refusal := access.denied(req.principal, req.op, None, extension.sop_class):
                self._done(req, *refusal)
                await self._respond(assoc, req, *refusal)
            elif await self._inflated_for(assoc, req):
                await extension.serve(self, assoc, req)
        elif field_ == C_FIND:
            await self.c_find(assoc, req)
        elif field_ in self._bodies:
            code, comment, reply = await self._run(req, self._bodies[field_])
            await self._respond(assoc, req, code, comment, reply)
        else:
            comment = f"{req.op} is not a service of this UPS SCP"
            self._done(req, UNRECOGNIZED_OPERATION, comment)
            await self._respond(assoc, req, UNRECOGNIZED_OPERATION, comment)

    # ---- N-CREATE ----------------------------------------------------------------------------

    async def n_create(self, req: Request) -> Outcome:
        uid = req.uid = uid_param(req.message.text(m.AFFECTED_SOP_INSTANCE),
                                  "Affected SOP Instance UID")
        ds = canonical(req, "Attribute List")
        req.patient = (first(ds, t.PatientID), first(ds, t.PatientName))
        outcome = await self._core(self.service.create(ds, uid, requester=req.ae))
        req.uid = outcome.uid
        if outcome.uid_assigned:
            # The assigned UID goes into the response, with 0x0000 (decisions.md: the gateway
            # assigns one and answers Success).
            req.instance = outcome.uid
            return st.SUCCESS, outcome.message, None
        if outcome.repeated:  # done before (a retried request): a warning says so
            return st.CREATED_WITH_MODIFICATIONS, outcome.message, None
        return outcome.status, outcome.message, None

    # ---- N-SET -------------------------------------------------------------------------------

    async def n_set(self, req: Request) -> Outcome:
        uid = req.uid = requested_uid(req)
        mods = canonical(req, "Modification List")
        # DIMSE carries the Transaction UID inside the Modification List (PS3.4 CC.2.6).
        tx = first(mods, t.TransactionUID)
        outcome = await self._core(self.service.update(uid, mods, tx, requester=req.ae))
        return outcome.status, outcome.message, None

    # ---- N-GET -------------------------------------------------------------------------------

    async def n_get(self, req: Request) -> Outcome:
        uid = req.uid = requested_uid(req)
        raw = req.message.command.get(m.ATTRIBUTE_IDENTIFIERS) or b""
        if len(raw) % 4:
            raise Refused(st.INVALID_ARGUMENT_VALUE,
                          "Attribute Identifier List cannot be read: not a list of tags")
        keys = [f"{tag:08X}" for tag in req.message.tags(m.ATTRIBUTE_IDENTIFIERS)]
        ds = await self._core(self.service.retrieve(uid, keys or None))
        reply = convert.encode(ds, req.syntax, req.charsets)
        if reply is None:
            raise Refused(st.PROCESSING_FAILURE, f"Workitem {uid} cannot be encoded")
        return st.SUCCESS, "", reply

    # ---- N-ACTION ----------------------------------------------------------------------------

    async def n_action(self, req: Request) -> Outcome:
        action = req.message.us(m.ACTION_TYPE)
        allowed = {a for cls in req.offered for a in ACTION_TYPES.get(cls, ())}
        if action not in allowed:
            name = ACTION_NAMES.get(action, "unknown")
            where = CLASS_NAMES.get(req.context_class, req.context_class)
            raise Refused(st.NO_SUCH_ACTION,
                          f"Action Type {action} ({name}) is not offered on a {where} context")
        uid = req.uid = requested_uid(req)
        if action == 1:
            info = canonical(req, "Action Information")
            outcome = await self._core(self.service.change_state(
                uid, first(info, t.ProcedureStepState), first(info, t.TransactionUID),
                requester=req.ae))
        elif action == 2:
            info = canonical(req, "Action Information")
            outcome = await self._core(self.service.request_cancel(uid, info or None,
                                                                   requester=req.ae))
        else:
            outcome = await self._subscription_action(req, action, uid)
        return outcome.status, outcome.message, None

    async def _subscription_action(self, req: Request, action: int, uid: str):
        info = noting_charsets(req, convert.identifier_to_canonical(
            decoded(req, "Action Information"), "Action Information"))
        receiving_ae = first(info, t.ReceivingAE)
        if not isinstance(receiving_ae, str) or not receiving_ae.strip():
            raise Refused(st.INVALID_ARGUMENT_VALUE, "Receiving AE (0074,1234) is required")
        receiving_ae = receiving_ae.strip()
        if len(receiving_ae) > 16 or "\\" in receiving_ae:
            raise Refused(st.INVALID_ARGUMENT_VALUE,
                          f"Receiving AE (0074,1234) {receiving_ae!r} is not an AE title")
        if refusal := access.denied_watch(req.principal, receiving_ae):
            raise Refused(*refusal)
        if action == 4:
            return await self._core(self.service.unsubscribe(uid, receiving_ae))
        if action == 5:
            return await self._core(self.service.suspend(uid, receiving_ae))
        lock_value = first(info, t.DeletionLock, "FALSE")  # absent or empty: FALSE
        lock_text = lock_value.strip().upper() if isinstance(lock_value, str) else None
        if lock_text not in ("TRUE", "FALSE"):
            raise Refused(st.INVALID_ARGUMENT_VALUE,
                          f"Deletion Lock (0074,1230) must be TRUE or FALSE, got {lock_value!r}")
        terms = None
        if uid == FILTERED_GLOBAL_SUBSCRIPTION:
            # Every other attribute of the Action Information is a matching key (as dcm4chee).
            keys = {k: v for k, v in info.items() if k not in (t.ReceivingAE, t.DeletionLock)}
            terms = matching.identifier_terms(keys)
            matching.from_terms(terms)  # valid? (a bad key is refused now, not at each create)
        # A DIMSE subscriber must be reachable: a configured peer or an open WebSocket (C308).
        return await self._core(self.service.subscribe(uid, receiving_ae, lock_text == "TRUE",
                                                       terms or None, check_reachable=True))

    # ---- N-EVENT-REPORT ----------------------------------------------------------------------

    async def n_event_report(self, req: Request) -> Outcome:
        raise Refused(UNRECOGNIZED_OPERATION,
                      "This gateway sends UPS event reports; it does not receive them")

    # ---- C-FIND ------------------------------------------------------------------------------

    async def c_find(self, assoc: Association, req: Request) -> None:
        """Stream the matching workitems as Pending responses (``stream_find``)."""
        await self.stream_find(assoc, req, self._find_query,
                               self.service.search_stream, "Workitem", check=self._check_context)

    async def stream_find(self, assoc: Association, req: Request, query_of, matches_of,
                          what: str, check=None) -> None:
        """A C-FIND on any information model (UPS, Modality Worklist): the identifier read and
        its character set noted, ``query_of(identifier)`` the query, ``matches_of(query)`` the
        async stream of matching datasets, each sent as a Pending response in the requester's
        character set; a C-CANCEL stops it with 0xFE00, a failure with a C-FIND status."""
        try:
            if check is not None:
                check(req)
            await self._inflate(req, "Identifier")
            identifier = noting_charsets(req, convert.identifier_to_canonical(
                decoded(req, "Identifier")))
            query = query_of(identifier)
        except Exception as exc:  # noqa: BLE001 - every failure gets an explicit status
            await self._find_failure(assoc, req, exc)
            return
        stream = matches_of(query)
        count = 0
        try:
            while assoc.is_established:  # else: aborted meanwhile, nobody to answer
                if req.msg_id in assoc.cancelled:
                    self._done(req, st.CANCEL, "", results=count)
                    await self._respond(assoc, req, st.CANCEL, "")
                    return
                async with asyncio.timeout(self.timeout):
                    ds = await anext(stream, None)
                if ds is None:
                    break
                result = convert.encode(ds, req.syntax, req.charsets)
                if result is None:
                    raise Refused(st.UNABLE_TO_PROCESS,
                                  f"{what} {first(ds, t.SOPInstanceUID) or ''} cannot be encoded")
                count += 1
                await self._respond(assoc, req, st.PENDING, "", result)
                # Let the upper layer read what the peer sent meanwhile (a C-CANCEL) even when
                # the matches come without waiting for Redis.
                await asyncio.sleep(0)
        except Exception as exc:  # noqa: BLE001
            await self._find_failure(assoc, req, exc)
            return
        finally:
            await _close_stream(stream)
        self._done(req, st.SUCCESS, "", results=count)
        await self._respond(assoc, req, st.SUCCESS, "")

    def _find_query(self, identifier: Dataset) -> matching.Query:
        # Any attribute is a return key (and matched by the general rules); only a key that
        # names another query model says the identifier is not one of this SOP class.
        if QUERY_RETRIEVE_LEVEL in identifier:
            raise Refused(IDENTIFIER_DOES_NOT_MATCH,
                          f"{describe(QUERY_RETRIEVE_LEVEL)} belongs to the Query/Retrieve "
                          "model, not to a UPS identifier")
        return matching.from_identifier(identifier, default_tz=self.service.settings.timezone)

    async def _find_failure(self, assoc: Association, req: Request, exc: BaseException) -> None:
        status, message = self._classify(req, exc)
        if status not in _FIND_FAILURES:
            status = st.UNABLE_TO_PROCESS  # C-FIND has no 0x01xx or UPS C3xx codes
        self._done(req, status, message)
        await self._respond(assoc, req, status, message)

    # ---- shared plumbing -----------------------------------------------------------------------

    def _request(self, assoc: Association, message: m.Message) -> Request:
        agreement = assoc.agreement
        ae = agreement.calling_ae
        msg_id = message.msg_id
        context_class = agreement.contexts.get(message.context_id, "")
        offered = frozenset(cls for cls in agreement.contexts.values()
                            if cls in UPS_CLASSES) | {context_class}
        op = COMMANDS.get(message.command_field, f"DIMSE 0x{message.command_field:04X}")
        syntax = agreement.transfer_syntaxes.get(message.context_id, binary.IMPLICIT_LE)
        req = Request(op, ae, msg_id, context_class, message, syntax, offered,
                      instance=message.sop_instance, assoc=assoc, principal=agreement.principal,
                      address=assoc.address, called_ae=agreement.called_ae)
        sop_class = message.sop_class
        if sop_class not in UPS_CLASSES:
            req.sop_class = sop_class or ""
        # The core's own log records carry this request's identity too.
        logs.bind(request=f"{ae}#{msg_id}", ae=ae)
        return req

    def _check_context(self, req: Request) -> None:
        if req.sop_class is not None:
            raise Refused(SOP_CLASS_NOT_SUPPORTED,
                          f"SOP Class {req.sop_class or '(absent)'} is not supported here")
        if not req.offered & OPERATIONS[req.op]:
            where = CLASS_NAMES.get(req.context_class, req.context_class)
            raise Refused(UNRECOGNIZED_OPERATION, f"{req.op} is not offered on a {where} context")
        if refusal := access.denied(req.principal, req.op, req.message.us(m.ACTION_TYPE)):
            raise Refused(*refusal)

    async def _run(self, req: Request, body: Callable[[Request], Awaitable[Outcome]]) -> Outcome:
        """Run one DIMSE-N request body: (status, comment, dataset), never an exception."""
        try:
            if req.op != "N-EVENT-REPORT":
                self._check_context(req)
            await self._inflate(req, "dataset")
            code, message, reply = await body(req)
        except Exception as exc:  # noqa: BLE001 - every failure gets an explicit status
            code, message = self._classify(req, exc)
            reply = None
        self._done(req, code, message)
        return code, message, reply

    async def _inflated_for(self, assoc: Association, req: Request) -> bool:
        """``_inflate`` for the extensions, answering a refusal itself (False: answered)."""
        try:
            await self._inflate(req, "dataset")
            return True
        except Exception as exc:  # noqa: BLE001 - answered with an explicit status
            if req.message.command_field == C_FIND:
                await self._find_failure(assoc, req, exc)
            else:
                code, message = self._classify(req, exc)
                self._done(req, code, message)
                await self._respond(assoc, req, code, message)
            return False

    async def _inflate(self, req: Request, what: str) -> None:
        """A dataset on a Deflated context, inflated off the event loop and only up to
        ``max_dataset_bytes``: a deflate bomb is refused (0x0213 Resource limitation; C-FIND
        0xA700 Out of resources) after inflating no more than that, and nothing else waits
        meanwhile. From here on the dataset is Explicit VR Little Endian."""
        message = req.message
        if req.syntax != binary.DEFLATED_LE or not message.dataset or message.inflated:
            return
        try:
            message.dataset = await asyncio.to_thread(binary.inflate, message.dataset,
                                                      self.max_dataset_bytes)
        except binary.TooLarge:
            status = OUT_OF_RESOURCES if req.op == "C-FIND" else RESOURCE_LIMITATION
            raise Refused(status, f"The deflated {what} inflates to more than "
                          f"{self.max_dataset_bytes} bytes") from None
        except zlib.error:
            raise InvalidDataset(f"cannot decode the {what}: not valid deflate data") from None
        message.inflated = True

    async def _core(self, coro):
        """Await the UPS core, at most ``dimse.request_timeout`` seconds. Cut short while its
        commit is in flight, the request's outcome is unknown, and the answer says so."""
        with commit_tracking() as tracking:
            try:
                async with asyncio.timeout(self.timeout):
                    return await coro
            except TimeoutError:
                if tracking.pending is not None:
                    raise OutcomeUnknown(tracking.pending, "the store did not confirm it within "
                                         f"{self.timeout:g} s") from None
                raise

    async def _respond(self, assoc: Association, req: Request, code: int, message: str,
                       dataset: bytes | None = None) -> None:
        message_ = req.message
        comment = error_comment(message) if message and code not in (st.SUCCESS, st.PENDING) \
            else None
        command = responses.response(
            message_.command_field, req.msg_id or 0, code, message_.sop_class,
            sop_instance=req.instance, comment=comment, has_dataset=bool(dataset),
            action_type=message_.us(m.ACTION_TYPE), event_type=message_.us(m.EVENT_TYPE))
        await assoc.send(message_.context_id, command, dataset or None)

    def _classify(self, req: Request, exc: BaseException) -> tuple[int, str]:
        """The status and Error Comment for a failed request."""
        if isinstance(exc, OutcomeUnknown) and req.op == "N-CREATE":
            req.instance = exc.uid  # (an assigned UID too: a retry with it converges)
        if isinstance(exc, (UPSError, Refused)):
            code, message = exc.status, exc.message
            if req.op == "N-ACTION" and code in _ACTION_ARGUMENT_STATUSES:
                code = st.INVALID_ARGUMENT_VALUE
            return code, message
        if isinstance(exc, TimeoutError):
            log.warning("UPS core timed out", extra=req.log_extra())
            return st.PROCESSING_FAILURE, (f"The worklist did not answer within "
                                           f"{self.timeout:g} s; try again")
        if isinstance(exc, (RedisError, OSError)):
            log.warning("worklist store unavailable", extra=req.log_extra(error=str(exc)))
            return st.PROCESSING_FAILURE, "The worklist store is unavailable; try again"
        log.exception("unhandled error in DIMSE handler", extra=req.log_extra())
        return st.PROCESSING_FAILURE, f"Internal error; see the gateway log (msg {req.msg_id})"

    def _done(self, req: Request, code: int, message: str, **more: Any) -> None:
        """Every answered request ends here: its log record and its metrics."""
        if self.audit is not None:
            self.audit(req, code, message)
        failed = code not in (st.SUCCESS, st.PENDING, st.CANCEL) and not st.is_warning(code)
        outcome = FAILURE if failed else WARNING if st.is_warning(code) else SUCCESS
        operation = _transaction(req)
        self.metrics.request("dimse", operation, outcome, time.perf_counter() - req.started)
        level = logging.INFO if failed or st.is_warning(code) else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, f"{req.op} 0x{code:04X}" + (f": {message}" if message else ""),
                    extra=req.log_extra(status=f"0x{code:04X}", operation=operation,
                                        outcome=outcome, **more))

    # What the extensions (``dimse/mwl.py``, ``dimse/mpps.py``) share of the plumbing.
    done, respond, find_failure, classify, core = (_done, _respond, _find_failure, _classify,
                                                   _core)


# ---- helpers -----------------------------------------------------------------------------------

def _transaction(req: Request) -> str:
    service = SERVICES.get(req.context_class)
    if service is not None:  # MWL, MPPS: their own names (mwl_search, mpps_create …)
        return f"{service}_{TRANSACTIONS.get(req.op, 'unsupported')}"
    if req.op == "N-ACTION":
        return ACTION_TRANSACTIONS.get(req.message.us(m.ACTION_TYPE), "unknown_action")
    return TRANSACTIONS.get(req.op, "unsupported")


async def _close_stream(stream) -> None:
    try:
        await stream.aclose()
    except Exception:  # noqa: BLE001 - already finished or still running: nothing to do
        pass


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
