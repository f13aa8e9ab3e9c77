"""The DICOM upper layer as the requestor (PS3.8 §9), for the one request the gateway sends: an
N-EVENT-REPORT to a UPS subscriber. One asyncio Protocol per association, in the gateway's event
loop, as the listener's associations are (``upper_layer``).

pynetdicom's requestor runs a reactor thread per association; driven from the event loop it
needed a thread pool and a patch of its internals (it could lose a response to its own reactor),
and it encoded datasets outside ``convert``. The pieces the listener already has suffice to do
it here: PDU framing (``pdus``), P-DATA fragments and reassembly (``messages``), command sets
(``responses``), negotiation and the implementation identity (``negotiation``).

The gateway is the UPS Event SCP on this association (PS3.4 CC.3.3): it proposes UPS Event with
Explicit then Implicit VR Little Endian and the SCP role, and each report carries the UPS Push
SOP Class UID (PS3.4 CC.3.1). A peer that answers the role proposal by refusing the SCP role has
said it takes no reports from us (``NotAccepted``); a peer that ignores role selection gets them
anyway, as pynetdicom's requestor sends them.

A simplified form of the PS3.8 state machine, enough for a requestor that never accepts
requests:

* ``CONNECTING`` (Sta4): the TCP connection is opened within ``timeout``.
* ``AWAITING_AC`` (Sta5): A-ASSOCIATE-RQ sent as soon as it is; the AC, RJ or A-ABORT must
  come within ``timeout`` (the ACSE timeout).
* ``ESTABLISHED`` (Sta6): one report at a time, each with the next Message ID: written
  (waiting while the transport is paused) and answered within ``timeout``. A request from the
  peer is answered "unrecognised operation".
* ``RELEASING`` (Sta7): A-RELEASE-RQ sent; the RP must come within ``timeout``, else A-ABORT.
* ``CLOSED``: the connection is closed, or closing after our last PDU (flushed, or cut after
  ``timeout`` if the peer reads no more); ``error`` says why it ended.

Whatever goes wrong ends the association and raises an ``AssociationError``: a peer's A-ABORT or
A-RELEASE-RQ, a lost connection, a PDU that does not decode, is unexpected or is larger than our
maximum (answered with A-ABORT), a timeout. Nothing is retried here: a report whose answer was
lost may or may not have been delivered, and only the caller knows whether to send it again,
on a fresh association.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl as ssl_module

from pynetdicom.pdu import P_DATA_TF

from gateway.config import Dimse
from gateway.dimse import negotiation, pdus
from gateway.dimse.binary import EXPLICIT_LE, IMPLICIT_LE
from gateway.dimse.messages import N_EVENT_REPORT, Assembler, Message, ProtocolError, p_data
from gateway.dimse.pdus import (ABORT, ASSOCIATE_AC, ASSOCIATE_RJ, DATA, NOT_SPECIFIED,
                                RELEASE_RP, RELEASE_RQ, UNEXPECTED_PDU)
from gateway.dimse.responses import (ERROR_COMMENT, RESPONDED_TO, RESPONSE_BIT, STATUS,
                                     response, request)
from gateway.ups.uids import UPS_EVENT, UPS_PUSH

log = logging.getLogger("gateway.dimse")

TRANSFER_SYNTAXES = (EXPLICIT_LE, IMPLICIT_LE)  # proposed for UPS Event, in this order
_CONTEXT_ID = 1
COMMAND_LIMIT = 1 << 16  # a response command set is a few hundred bytes
RESPONSE_DATASET_LIMIT = 1 << 16  # an Event Reply, which UPS events never carry
UNRECOGNIZED_OPERATION = 0x0211


class AssociationError(Exception):
    """The association cannot carry (more) reports: it is closed. ``permanent``: the peer said
    it does not want them (a fresh association would be answered the same way, until the peer
    is reconfigured)."""

    permanent = False


class ConnectFailed(AssociationError):
    """No TCP connection to the peer (refused, unreachable, or not within the timeout)."""


class Rejected(AssociationError):
    """A-ASSOCIATE-RJ: ``rejection`` holds its result, source and reason."""

    def __init__(self, message: str, rejection: negotiation.Rejection):
        super().__init__(message)
        self.rejection = rejection
        self.permanent = rejection.permanent


class NotAccepted(AssociationError):
    """The peer accepted the association but not what it is for: no UPS Event context in a
    transfer syntax we proposed, or the SCP role refused."""

    permanent = True


class Aborted(AssociationError):
    """A-ABORT, by the peer (``by_peer``; ``source``/``reason`` as it said) or by us because
    the peer broke the protocol."""

    def __init__(self, message: str, by_peer: bool, source: int | None = None,
                 reason: int | None = None):
        super().__init__(message)
        self.by_peer, self.source, self.reason = by_peer, source, reason


class Closed(AssociationError):
    """The connection was lost, the peer released the association, or it was already closed."""


class TimedOut(AssociationError):
    """The peer did not answer (or read) within the timeout; the association was aborted."""


class State(enum.Enum):
    CONNECTING = "connecting"
    AWAITING_AC = "awaiting A-ASSOCIATE-AC"
    ESTABLISHED = "established"
    RELEASING = "awaiting A-RELEASE-RP"
    CLOSED = "closed"


def next_message_id(current: int) -> int:
    """The Message ID after ``current``: 1 … 0xFFFF (US), then 1 again; never 0."""
    return current % 0xFFFF + 1


class Requestor(pdus.WriteFlow, asyncio.Protocol):
    """One association to a UPS Event SCU, sending N-EVENT-REPORTs; open with ``associate``."""

    def __init__(self, calling_ae: str, called_ae: str, address: str, *, timeout: float,
                 max_pdu: int = Dimse.max_pdu, max_response_dataset: int = RESPONSE_DATASET_LIMIT):
        self.calling_ae, self.called_ae, self.address = calling_ae, called_ae, address
        self.timeout = timeout
        self.max_pdu = max_pdu  # ours: the largest P-DATA-TF variable field we receive
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = State.CONNECTING
        self.agreement: negotiation.Agreement | None = None
        self.context_id = _CONTEXT_ID
        self.error: AssociationError | None = None  # why the association ended
        self._proposed = [negotiation.proposal(_CONTEXT_ID, UPS_EVENT, TRANSFER_SYNTAXES,
                                               scu_role=False, scp_role=True)]
        # Built before connecting: an AE title that cannot be encoded raises here (ValueError).
        self._associate_rq = negotiation.request_pdu(calling_ae, called_ae, self._proposed,
                                                     max_pdu)
        self._buffer = bytearray()
        self._assembler = Assembler(COMMAND_LIMIT, max_response_dataset)
        self._message_id = 1
        self._outstanding: int | None = None  # the Message ID awaiting its response
        self._accepted = self.loop.create_future()
        self._response: asyncio.Future | None = None
        self._released: asyncio.Future | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = self.loop.create_future()

    # ---- what the caller sees --------------------------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def transfer_syntax(self) -> str:
        """The accepted context's transfer syntax: what the report's dataset must be in."""
        return self.agreement.transfer_syntaxes[self.context_id]

    async def send_event_report(self, sop_instance_uid: str, event_type_id: int,
                                dataset: bytes) -> tuple[int, str | None]:
        """Send one N-EVENT-REPORT (``dataset``: the Event Information, encoded in
        ``transfer_syntax``) and wait for its response: (Status, Error Comment or None).
        Raises ``AssociationError`` — the association is then closed — and RuntimeError when a
        report is already in flight on it."""
        if self.state is not State.ESTABLISHED:
            raise Closed(f"the association with {self.called_ae} is closed"
                         + (f" ({self.error})" if self.error else ""))
        if self._response is not None:
            raise RuntimeError("one N-EVENT-REPORT at a time on an association")
        msg_id, self._message_id = self._message_id, next_message_id(self._message_id)
        command = request(N_EVENT_REPORT, msg_id, UPS_PUSH, sop_instance=sop_instance_uid,
                          event_type=event_type_id, has_dataset=bool(dataset))
        self._outstanding, self._response = msg_id, self.loop.create_future()
        try:
            async with asyncio.timeout(self.timeout):
                self._write(p_data(self.context_id, command, dataset or None,
                                   self.agreement.peer_max_pdu))
                await self.writable()
                return await self._response
        except TimeoutError:
            why = "stopped reading the report" if self.paused else "sent no N-EVENT-REPORT-RSP"
            raise self._give_up(f"{why} (message {msg_id}) within {self.timeout:g} s") \
                from None
        except asyncio.CancelledError:
            self.abort()  # the response would come to nobody
            raise
        finally:
            self._outstanding = self._response = None

    async def release(self) -> bool:
        """A-RELEASE-RQ, the RP awaited within the timeout, the connection closed. True when
        released; False when the association was already gone or had to be aborted."""
        if self.state is not State.ESTABLISHED or self._response is not None:
            self.abort()
            return False
        self.state = State.RELEASING
        self._released = self.loop.create_future()
        self._write(pdus.RELEASE_RQ_PDU)
        try:
            async with asyncio.timeout(self.timeout):
                await self._released
        except TimeoutError:
            self._give_up(f"no A-RELEASE-RP within {self.timeout:g} s")
            return False
        except AssociationError:
            return False
        except asyncio.CancelledError:
            self.abort()
            raise
        log.debug("association released", extra=self.log_extra())
        await asyncio.wait([self.closed], timeout=self.timeout)  # closed by us, so at once
        return True

    def abort(self) -> None:
        """A-ABORT (as the service user) and close; nothing if the association is closed."""
        if self.state is not State.CLOSED:
            self._write(pdus.abort_pdu(None))
            self._end(Aborted("aborted by the gateway", by_peer=False))

    def log_extra(self) -> dict:
        return {"ae": self.called_ae, "address": self.address}

    async def __aenter__(self) -> Requestor:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.release()

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        pdus.set_nodelay(transport)
        self.state = State.AWAITING_AC
        self._write(self._associate_rq)

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return  # our last PDU is written: whatever the peer still sends is moot
        self._buffer += data
        pdus.feed(self._buffer, self.max_pdu, self._on_pdu,
                  lambda: self.state is State.CLOSED, self._violation)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            when = {State.AWAITING_AC: " before answering the A-ASSOCIATE-RQ",
                    State.RELEASING: " before answering the A-RELEASE-RQ"}.get(self.state, "")
            why = f"{self.called_ae} closed the connection{when}" + (f" ({exc})" if exc else "")
            log.info(why, extra=self.log_extra())
            self._end(Closed(why))
        self.resume_writing()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- PDUs ------------------------------------------------------------------------------------

    def _on_pdu(self, pdu_type: int, pdu: bytes) -> None:
        if pdu_type == ABORT:
            source, reason, text = pdus.describe_abort(pdu)
            log.info(f"association aborted by the peer ({text})", extra=self.log_extra())
            self._end(Aborted(f"{self.called_ae} aborted the association ({text})", by_peer=True,
                              source=source, reason=reason))
        elif self.state is State.AWAITING_AC:
            if pdu_type == ASSOCIATE_AC:
                self._on_accept(pdu)
            elif pdu_type == ASSOCIATE_RJ:
                self._on_reject(pdu)
            else:
                raise ProtocolError(f"PDU type 0x{pdu_type:02X} in answer to A-ASSOCIATE-RQ",
                                    UNEXPECTED_PDU)
        elif pdu_type == DATA:
            self._on_p_data(pdu)
        elif pdu_type == RELEASE_RQ:
            # Answered at once: a report in flight fails (its answer can no longer come).
            self._write(pdus.RELEASE_RP_PDU)
            if self.state is State.RELEASING:  # both released at once (PS3.8 release collision)
                self._end(None)
            else:
                log.info("association released by the peer", extra=self.log_extra())
                self._end(Closed(f"{self.called_ae} released the association"))
        elif pdu_type == RELEASE_RP and self.state is State.RELEASING:
            self._end(None)
        else:
            raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", UNEXPECTED_PDU)

    def _on_accept(self, pdu: bytes) -> None:
        agreement = negotiation.read_acceptance(pdu, self._proposed)
        self.agreement = agreement
        refusal = None
        syntax = agreement.transfer_syntaxes.get(self.context_id)
        if agreement.contexts.get(self.context_id) != UPS_EVENT:
            refusal = "accepted no presentation context for UPS Event"
        elif syntax not in TRANSFER_SYNTAXES:
            refusal = f"accepted UPS Event in transfer syntax {syntax}, which was not proposed"
        elif agreement.roles.get(UPS_EVENT, (None, None))[1] is False:
            refusal = "refused the SCP role for UPS Event: it takes no event reports from us"
        if refusal is not None:
            log.info(f"association not usable: the peer {refusal}", extra=self.log_extra())
            self._write(pdus.abort_pdu(None))
            self._end(NotAccepted(f"{self.called_ae} {refusal}"))
            return
        self.state = State.ESTABLISHED
        self._accepted.set_result(None)
        log.debug("association established", extra=self.log_extra())

    def _on_reject(self, pdu: bytes) -> None:
        rejection = negotiation.read_rejection(pdu)
        log.info(f"association rejected: {rejection.reason}", extra=self.log_extra())
        self._end(Rejected(f"{self.called_ae} rejected the association ({rejection.reason})",
                           rejection))

    def _on_p_data(self, pdu: bytes) -> None:
        decoded = P_DATA_TF()
        decoded.decode(pdu)
        for item in decoded.presentation_data_value_items:
            context_id = item.presentation_context_id
            if context_id not in self.agreement.contexts:
                raise ProtocolError(f"P-DATA on presentation context {context_id}, which was "
                                    "not accepted")
            message = self._assembler.feed(context_id, item.presentation_data_value or b"")
            if message is not None:
                self._on_message(message)
                if self.state is State.CLOSED:
                    return

    def _on_message(self, message: Message) -> None:
        field_ = message.command_field
        if not field_ & RESPONSE_BIT:
            # We are no SCP of anything the peer could ask; answer, and go on.
            comment = "This UPS event sender serves no requests"
            self._write(p_data(message.context_id, response(
                field_, message.msg_id or 0, UNRECOGNIZED_OPERATION, message.sop_class,
                comment=comment), None, self.agreement.peer_max_pdu))
            return
        responded_to = message.us(RESPONDED_TO)
        if field_ != N_EVENT_REPORT | RESPONSE_BIT or self._outstanding is None \
                or responded_to != self._outstanding:
            raise ProtocolError(f"unexpected DIMSE response 0x{field_:04X} to message "
                                f"{responded_to} (awaiting {self._outstanding})")
        status = message.us(STATUS)
        if status is None:
            raise ProtocolError("N-EVENT-REPORT-RSP without a Status")
        self._outstanding = None
        self._response.set_result((status, message.text(ERROR_COMMENT)))

    # ---- ending ----------------------------------------------------------------------------------

    def _violation(self, reason: int, why: str) -> None:
        """The peer broke the protocol: A-ABORT with ``reason``, and close."""
        if self.state is State.CLOSED:
            return
        log.info(f"association aborted: {why}", extra=self.log_extra())
        self._write(pdus.abort_pdu(reason))
        self._end(Aborted(f"aborted: {self.called_ae} {why}"[:300], by_peer=False, reason=reason))

    def _give_up(self, why: str) -> AssociationError:
        """A timeout: abort, and the error the waiter raises."""
        if self.state is not State.CLOSED:
            log.info(f"association aborted: {why}", extra=self.log_extra())
            self._write(pdus.abort_pdu(NOT_SPECIFIED))
            self._end(TimedOut(f"{self.called_ae}: {why}"))
        return self.error or TimedOut(why)

    def _end(self, error: AssociationError | None) -> None:
        """The association is over (``error`` None: released): every waiter learns it, and the
        connection is closed — at once if our last PDU is written, else once it is or after
        ``timeout``."""
        self.state = State.CLOSED
        if self.error is None:
            self.error = error or Closed(f"the association with {self.called_ae} was released")
        if error is None:
            _settle(self._released, None)
        for waiter in (self._accepted, self._response, self._released):
            _settle(waiter, self.error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            self._close_timer = self.loop.call_later(self.timeout or 1.0, self.transport.abort)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _negotiated(self) -> None:
        """Wait for the answer to the A-ASSOCIATE-RQ (sent as the connection was made)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._accepted
        except TimeoutError:
            raise self._give_up(f"no answer to A-ASSOCIATE-RQ within {self.timeout:g} s") \
                from None
        except asyncio.CancelledError:
            self.abort()
            raise


def _settle(waiter: asyncio.Future | None, outcome: AssociationError | None) -> None:
    if waiter is None or waiter.done():
        return
    if outcome is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(outcome)
        waiter.exception()  # retrieved here, so never reported as lost if nobody awaits it


async def associate(host: str, port: int, *, calling_ae: str, called_ae: str, timeout: float,
                    max_pdu: int = Dimse.max_pdu,
                    max_response_dataset: int = RESPONSE_DATASET_LIMIT,
                    ssl: ssl_module.SSLContext | None = None) -> Requestor:
    """Open an association with the UPS Event SCU ``called_ae`` at ``host``:``port``, ready for
    ``send_event_report``. ``timeout`` bounds each wait: the connection, the A-ASSOCIATE-AC,
    each report's write and response, the A-RELEASE-RP. ``ssl``: over TLS (PS3.15 B.1), the
    peer's certificate verified for ``host``. Raises ``AssociationError``, or ValueError for an
    AE title that is not one."""
    address = f"{host}:{port}"
    assoc = Requestor(calling_ae, called_ae, address, timeout=timeout, max_pdu=max_pdu,
                      max_response_dataset=max_response_dataset)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().create_connection(
                lambda: assoc, host, port, ssl=ssl, server_hostname=host if ssl else None)
    except TimeoutError:
        raise ConnectFailed(f"cannot connect to {called_ae} at {address} within "
                            f"{timeout:g} s") from None
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {called_ae} at {address}: "
                            f"{exc.strerror or exc}") from None
    await assoc._negotiated()
    return assoc
