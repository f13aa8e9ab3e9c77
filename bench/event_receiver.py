"""Scenario 5's DIMSE event subscriber: an asyncio N-EVENT-REPORT receiver on the bench's own loop.

Why not pynetdicom's: its acceptor reads the socket in one thread and runs the handler in the
association's thread, so the report's wait for those two threads (and for the GIL, held by the
bench's event loop reading the HTTP answer of the very change that caused the event) was part of
what "REST change → DIMSE receiver" measured. Here the arrival time is taken in
``data_received``, as soon as the bytes holding the **last fragment of an N-EVENT-REPORT-RQ** are
in, before anything is decoded; the command and the event information are decoded afterwards
(pydicom) for the workitem UID and its state, and the N-EVENT-REPORT-RSP answers success.

It shares no code with the gateway (the gateway's DIMSE layer is part of what is measured): the
A-ASSOCIATE-RQ is decoded and the A-ASSOCIATE-AC encoded with pynetdicom's PDU classes, the
DIMSE messages with pydicom. What it accepts: associations called ``ae_title``; presentation
contexts of UPS Event with Explicit or Implicit VR Little Endian (others are refused, reason
"abstract syntax not supported"); the SCP/SCU role selection exactly as proposed (the gateway
proposes the SCP role for itself); only N-EVENT-REPORT-RQ messages (anything else aborts).

Bounds: a PDU up to the maximum length it announces (``MAX_PDU``), a message up to
``MAX_MESSAGE`` bytes, ``MAX_ASSOCIATIONS`` at a time; a peer beyond them is aborted.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import struct
import time
from collections.abc import Callable

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP
from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                       MaximumLengthNotification,
                                       SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import PresentationContext

log = logging.getLogger("bench.event_receiver")

UPS_EVENT = "1.2.840.10008.5.1.4.34.6.4"
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
IMPLEMENTATION_UID = "2.25.229015487612338011726377843935514711911"  # this receiver's own
MAX_PDU = 65536
MAX_MESSAGE = 1 << 20
MAX_ASSOCIATIONS = 8

N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP, NO_DATASET = 0x0100, 0x8100, 0x0101
ASSOCIATE_RQ, P_DATA, RELEASE_RQ, ABORT = 0x01, 0x04, 0x05, 0x07
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4

OnReport = Callable[[str, str, float], None]  # (workitem UID, Procedure Step State, arrival)


class EventReceiver:
    """Listens on 127.0.0.1; ``on_report`` is called on the loop for each N-EVENT-REPORT-RQ."""

    def __init__(self, on_report: OnReport, ae_title: str = "RECEIVER"):
        self.on_report = on_report
        self.ae_title = ae_title
        self.port = 0
        self.reports = 0
        self.failures = 0  # reports that could not be decoded (answered 0x0110)
        self.associations: set[_Association] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> "EventReceiver":
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Association(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for association in list(self.associations):
                association.transport.close()
            await self._server.wait_closed()


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _encode(ds: Dataset, implicit: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _decode(data: bytes, implicit: bool = True) -> Dataset:
    return read_dataset(io.BytesIO(data), implicit, True)


class _Association(asyncio.Protocol):
    """One connection: PDUs are cut out of the byte stream as they arrive, DIMSE messages
    reassembled from their PDVs."""

    def __init__(self, receiver: EventReceiver):
        self.receiver = receiver
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.contexts: dict[int, bool] = {}  # accepted context ID → implicit VR
        self.peer_max_pdu = 0  # 0: no limit
        self.command = bytearray()
        self.dataset = bytearray()
        self.pending: Dataset | None = None  # a decoded command waiting for its dataset
        self.established = False

    # ---- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.receiver.associations) >= MAX_ASSOCIATIONS:
            self._abort("too many associations")
            return
        self.receiver.associations.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver.associations.discard(self)

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()  # before any decoding: when these bytes were in
        self.buffer += data
        while len(self.buffer) >= 6 and not self.transport.is_closing():
            pdu_type, _, length = struct.unpack_from(">BBI", self.buffer)
            if length > MAX_PDU:
                self._abort(f"PDU of {length} bytes exceeds {MAX_PDU}")
                return
            if len(self.buffer) < 6 + length:
                return
            body = bytes(self.buffer[6:6 + length])
            del self.buffer[:6 + length]
            self._pdu(pdu_type, body, arrived)

    def _pdu(self, pdu_type: int, body: bytes, arrived: float) -> None:
        if pdu_type == ASSOCIATE_RQ and not self.established:
            self._associate(body)
        elif pdu_type == P_DATA and self.established:
            self._p_data(body, arrived)
        elif pdu_type == RELEASE_RQ:
            self.transport.write(A_RELEASE_RP().encode())
            self.transport.close()
        elif pdu_type == ABORT:
            self.transport.close()
        else:
            self._abort(f"unexpected PDU type 0x{pdu_type:02X}")

    def _abort(self, why: str) -> None:
        log.warning("aborting an association", extra={"reason": why})
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 2, 0  # service provider, not specified
        self.transport.write(abort.encode())
        self.transport.close()

    # ---- association ----------------------------------------------------------------------

    def _associate(self, body: bytes) -> None:
        rq = A_ASSOCIATE_RQ()
        rq.decode(_pdu(ASSOCIATE_RQ, body))
        request = rq.to_primitive()
        if request.called_ae_title != self.receiver.ae_title:
            rj = A_ASSOCIATE_RJ()
            rj.result, rj.source, rj.reason_diagnostic = 1, 1, 7  # permanent, user, called AE
            self.transport.write(rj.encode())
            self.transport.close()
            return
        accept = A_ASSOCIATE()
        accept.application_context_name = request.application_context_name
        accept.calling_ae_title = request.calling_ae_title
        accept.called_ae_title = request.called_ae_title
        for proposed in request.presentation_context_definition_list:
            accept.presentation_context_definition_results_list.append(self._context(proposed))
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = MAX_PDU
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = IMPLEMENTATION_UID
        accept.user_information = [max_length, implementation]
        for item in request.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = item.maximum_length_received or 0
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and \
                    item.sop_class_uid == UPS_EVENT:
                role = SCP_SCU_RoleSelectionNegotiation()
                role.sop_class_uid = item.sop_class_uid
                role.scu_role, role.scp_role = bool(item.scu_role), bool(item.scp_role)
                accept.user_information.append(role)
        self.transport.write(A_ASSOCIATE_AC(accept).encode())
        self.established = True

    def _context(self, proposed: PresentationContext) -> PresentationContext:
        answer = PresentationContext()
        answer.context_id = proposed.context_id
        answer.abstract_syntax = proposed.abstract_syntax
        offered = [str(ts) for ts in proposed.transfer_syntax]
        chosen = next((ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts in offered), None)
        if proposed.abstract_syntax != UPS_EVENT:
            answer.result = ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif chosen is None:
            answer.result = TRANSFER_SYNTAXES_NOT_SUPPORTED
        else:
            answer.result = ACCEPTANCE
            self.contexts[proposed.context_id] = chosen == IMPLICIT_LE
        answer.add_transfer_syntax(chosen or offered[0])
        return answer

    # ---- DIMSE ----------------------------------------------------------------------------

    def _p_data(self, body: bytes, arrived: float) -> None:
        at = 0
        while at + 6 <= len(body):
            length, context_id, header = struct.unpack_from(">IBB", body, at)
            fragment = body[at + 6:at + 4 + length]
            at += 4 + length
            if context_id not in self.contexts:
                self._abort(f"PDV on presentation context {context_id}, not accepted")
                return
            if not header & 1 and self.pending is None:
                self._abort("a dataset fragment before its command")
                return
            part = self.command if header & 1 else self.dataset
            if len(self.command) + len(self.dataset) + len(fragment) > MAX_MESSAGE:
                self._abort(f"a message of more than {MAX_MESSAGE} bytes")
                return
            part += fragment
            if not header & 2:
                continue
            if header & 1:  # the command is complete
                command = _decode(bytes(self.command))
                self.command.clear()
                if command.get("CommandField") != N_EVENT_REPORT_RQ:
                    self._abort(f"not an N-EVENT-REPORT-RQ: {command.get('CommandField')}")
                    return
                if command.get("CommandDataSetType") == NO_DATASET:
                    self._report(context_id, command, None, arrived)
                else:
                    self.pending = command
            else:  # the dataset of the pending command is complete
                command, self.pending = self.pending, None
                data = bytes(self.dataset)
                self.dataset.clear()
                self._report(context_id, command, data, arrived)

    def _report(self, context_id: int, command: Dataset, data: bytes | None,
                arrived: float) -> None:
        uid = str(command.get("AffectedSOPInstanceUID", ""))
        status = 0x0000
        try:
            info = _decode(data, self.contexts[context_id]) if data else Dataset()
            state = str(info.get("ProcedureStepState", ""))
        except Exception as exc:  # counted and answered, not fatal to the association
            self.receiver.failures += 1
            log.warning("undecodable event information", extra={"uid": uid, "error": str(exc)})
            status, state = 0x0110, ""  # Processing failure
        self.receiver.reports += 1
        self.receiver.on_report(uid, state, arrived)
        self._send_response(context_id, command, status)

    def _send_response(self, context_id: int, request: Dataset, status: int) -> None:
        rsp = Dataset()
        rsp.AffectedSOPClassUID = request.get("AffectedSOPClassUID", "")
        rsp.CommandField = N_EVENT_REPORT_RSP
        rsp.MessageIDBeingRespondedTo = request.get("MessageID", 0)
        rsp.CommandDataSetType = NO_DATASET
        rsp.Status = status
        rsp.AffectedSOPInstanceUID = request.get("AffectedSOPInstanceUID", "")
        rsp.EventTypeID = request.get("EventTypeID", 0)
        elements = _encode(rsp)
        command = struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements
        room = max(16, self.peer_max_pdu - 6) if self.peer_max_pdu else len(command)
        pdus = []
        for start in range(0, len(command), room):
            fragment = command[start:start + room]
            last = 0x02 if start + room >= len(command) else 0x00
            pdus.append(_pdu(P_DATA, struct.pack(">IBB", len(fragment) + 2, context_id,
                                                 0x01 | last) + fragment))
        self.transport.write(b"".join(pdus))
