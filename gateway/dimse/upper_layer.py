"""The DICOM upper layer as the acceptor (PS3.8 §9): one asyncio Protocol per TCP connection.

It runs in the gateway's event loop — no threads: PDUs are framed as bytes arrive, the
association is negotiated (``negotiation``), P-DATA fragments are reassembled into DIMSE messages
(``messages``), and each complete request is handed to the handlers, which ``await`` the UPS core
and write their responses back through ``send``.

A simplified form of the PS3.8 state machine, enough for an acceptor that never requests:

* ``AWAITING_RQ`` (Sta2): the ARTIM timer (``acse_timeout``) runs until the A-ASSOCIATE-RQ
  arrives; on expiry the connection is closed.
* ``ESTABLISHED`` (Sta6): requests are served one at a time, in order (asynchronous operations
  window 1/1), each as soon as its last fragment arrives. C-CANCEL reaches the request being
  served at once. An A-RELEASE-RQ is answered once the requests before it are.
* ``CLOSING`` (Sta13): after an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the peer is expected to
  close the connection; ARTIM closes it if it does not, so the TIME_WAIT stays on its side.

Whatever the peer sends that breaks the protocol — an unknown or unexpected PDU, one that does
not decode, one larger than our maximum, P-DATA on a context that was not accepted — is answered
with A-ABORT, never with a hang or a traceback. An association silent for ``network_timeout`` is
aborted, and so is a DIMSE message whose fragments stop coming for ``dimse_timeout``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING

from pynetdicom.pdu import P_DATA_TF

from gateway.dimse import negotiation, pdus
from gateway.dimse.messages import (C_CANCEL, COMMAND_LIMIT,
                                    INVALID_PDU_PARAMETER as INVALID_PARAMETER, RESPONDED_TO,
                                    Assembler, Message, ProtocolError, p_data)
from gateway.dimse.pdus import (ABORT, ASSOCIATE_RQ, DATA, NOT_SPECIFIED, RELEASE_RQ,
                                UNEXPECTED_PDU)

if TYPE_CHECKING:
    from gateway.dimse.server import Listener

log = logging.getLogger("gateway.dimse")

_RELEASE = object()  # queued after the requests an A-RELEASE-RQ must wait for


class State(enum.Enum):
    AWAITING_RQ = "awaiting A-ASSOCIATE-RQ"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


class Association(pdus.WriteFlow, asyncio.Protocol):
    def __init__(self, listener: Listener):
        self.listener = listener
        self.config = listener.config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = State.AWAITING_RQ
        self.address = "?"
        self.agreement: negotiation.Agreement | None = None
        self.cancelled: set[int] = set()  # message IDs of requests the peer sent C-CANCEL for
        # The Specific Character Set of the peer's latest request dataset that declared one:
        # what its replies are written in when they can be (an N-GET request has no dataset).
        self.charsets: list[str] | None = None
        self._buffer = bytearray()
        self._assembler = Assembler(COMMAND_LIMIT, self.config.max_message_bytes,
                                    self.config.max_message_fragments)
        self._message_started = 0.0  # when the first fragment of the message in progress came
        self._queue: asyncio.Queue = asyncio.Queue()
        self._reading_paused = False  # max_pending_requests received and not yet served
        self._worker: asyncio.Task | None = None
        self._busy = False
        self._stop_when_idle = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = self.loop.time()
        self.closed = self.loop.create_future()

    # ---- what the handlers see -----------------------------------------------------------------

    @property
    def calling_ae(self) -> str:
        return self.agreement.calling_ae if self.agreement else ""

    @property
    def is_established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def holds_slot(self) -> bool:
        """Counted against dimse.max_associations: established, or still to send its RQ."""
        return self.state in (State.ESTABLISHED, State.AWAITING_RQ)

    async def send(self, context_id: int, command: bytes, dataset: bytes | None = None) -> None:
        """Write one DIMSE message, fragmented to the peer's maximum PDU; wait while the peer
        reads slower than we write (a long C-FIND)."""
        if self.state is not State.ESTABLISHED:
            return  # aborted meanwhile: nobody to answer
        self._write(p_data(context_id, command, dataset, self.agreement.peer_max_pdu))
        if self.paused:
            try:  # a peer that stops reading is as idle as one that stops writing
                async with asyncio.timeout(self.config.network_timeout or None):
                    await self.writable()
            except TimeoutError:
                self.abort(NOT_SPECIFIED, "the peer stopped reading our responses")

    @property
    def held_bytes(self) -> int:
        """What the peer's bytes cost us now: unread PDUs, the message being reassembled and
        the requests waiting to be served (0 once the connection is closed)."""
        queued = sum(len(item.dataset or b"") for item in self._queue._queue
                     if isinstance(item, Message))
        return len(self._buffer) + self._assembler.held_bytes + queued

    def log_extra(self) -> dict:
        return {"ae": self.calling_ae or None,
                "called_ae": self.agreement.called_ae if self.agreement else None,
                "address": self.address}

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        pdus.set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.address = f"{peer[0]}:{peer[1]}"
        if not self.listener.admit(self):
            # Every slot is taken (associations and connections still to send their
            # A-ASSOCIATE-RQ count alike): nothing is read from this one.
            log.warning("connection refused: dimse.max_associations connections are open",
                        extra=self.log_extra())
            self.state = State.CLOSED
            transport.close()
            return
        self._arm(min(self.config.association_rq_timeout, self.config.acse_timeout or float("inf")),
                  self._artim_expired)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        if self.state in (State.CLOSING, State.CLOSED):
            return  # waiting for the peer to close: whatever it still sends is moot
        self._buffer += data
        self._take_pdus()

    def _take_pdus(self) -> None:
        """Act on each whole PDU in the buffer — until reading is paused: what is left waits
        in the buffer (at most one PDU's worth more) until the worker catches up."""
        pdus.feed(self._buffer, self.config.max_pdu, self._on_pdu, self._stop_taking, self.abort)

    def _stop_taking(self) -> bool:
        return self.state in (State.CLOSING, State.CLOSED) or self._reading_paused

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is State.ESTABLISHED:
            log.info("association closed by the peer without release", extra=self.log_extra())
        self.state = State.CLOSED
        self._cancel_timer()
        self._retire_worker()
        self.resume_writing()
        self.listener.connections.discard(self)
        self._release_buffers()
        if not self.closed.done():
            self.closed.set_result(None)

    def _release_buffers(self) -> None:
        """Drop what the peer sent: a closed association holds no message bytes, even while
        something (a log record, the collector's young generation) still refers to it."""
        self._buffer = bytearray()
        self._assembler.reset()
        while not self._queue.empty():
            self._queue.get_nowait()

    # ---- PDUs ------------------------------------------------------------------------------------

    def _on_pdu(self, pdu_type: int, pdu: bytes) -> None:
        if pdu_type == ABORT:
            log.info("association aborted by the peer", extra=self.log_extra())
            self.close()
        elif self.state is State.AWAITING_RQ:
            if pdu_type != ASSOCIATE_RQ:
                raise ProtocolError(f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ",
                                    UNEXPECTED_PDU)
            self._on_associate_rq(pdu)
        elif pdu_type == DATA:
            self._on_p_data(pdu)
        elif pdu_type == RELEASE_RQ:
            self._enqueue(_RELEASE)
        else:
            raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", UNEXPECTED_PDU)

    def _on_associate_rq(self, pdu: bytes) -> None:
        self._cancel_timer()
        rq = negotiation.decode_request(pdu)
        peer = {"ae": str(rq.calling_ae_title or "").strip() or None,
                "called_ae": str(rq.called_ae_title or "").strip() or None,
                "address": self.address}
        outcome = self.listener.negotiate(rq, self)
        self.listener.associated(peer["ae"] or "", self.address, outcome)
        if isinstance(outcome, negotiation.Rejection):
            log.info(f"association rejected: {outcome.reason}", extra=peer)
            self._write(outcome.pdu())
            self._closing()
            return
        self.agreement = outcome
        self.state = State.ESTABLISHED
        self._write(outcome.ac)
        self._worker = self.loop.create_task(self._serve_requests())
        self._arm(self._check_interval(), self._check_idle)
        log.debug("association established", extra=peer)

    def _on_p_data(self, pdu: bytes) -> None:
        decoded = P_DATA_TF()
        decoded.decode(pdu)
        contexts = self.agreement.contexts
        for item in decoded.presentation_data_value_items:
            context_id = item.presentation_context_id
            if context_id not in contexts:
                raise ProtocolError(f"P-DATA on presentation context {context_id}, which was "
                                    "not accepted", INVALID_PARAMETER)
            if not self._assembler.in_progress:
                self._message_started = self.loop.time()
            message = self._assembler.feed(context_id, item.presentation_data_value or b"")
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: Message) -> None:
        if message.command_field == C_CANCEL:  # for the request being served: no response
            responded_to = message.us(RESPONDED_TO)
            if responded_to is not None:
                self.cancelled.add(responded_to)
            return
        self._enqueue(message)

    def _enqueue(self, item) -> None:
        """Queue a request (or the release) for the worker. At ``max_pending_requests``
        waiting, stop reading: TCP flow control holds the peer back until the worker has
        caught up (``_resume_reading``)."""
        self._queue.put_nowait(item)
        if self._queue.qsize() >= self.config.max_pending_requests and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
            log.debug("reading paused: requests are waiting", extra=self.log_extra())

    def _resume_reading(self) -> None:
        if not self._reading_paused or self._queue.qsize() >= self.config.max_pending_requests:
            return
        self._reading_paused = False
        self._take_pdus()  # what arrived before the pause, first
        if not self._reading_paused and self.state is State.ESTABLISHED:
            self.transport.resume_reading()

    # ---- serving requests, in order ----------------------------------------------------------

    async def _serve_requests(self) -> None:
        handlers = self.listener.handlers
        while True:
            item = await self._queue.get()
            self._resume_reading()
            if item is _RELEASE:
                self._write(pdus.RELEASE_RP_PDU)
                log.debug("association released", extra=self.log_extra())
                self._closing()
                return
            self._busy = True
            try:
                await handlers.serve(self, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - handlers answer every failure; this is a bug
                log.exception("DIMSE request failed", extra=self.log_extra())
                self.abort(NOT_SPECIFIED, "internal error")
                return
            finally:
                self._busy = False
                self.cancelled.clear()
                self._last_activity = self.loop.time()
            if self.state is not State.ESTABLISHED:
                return  # aborted or closed while the request was served
            if self._stop_when_idle and self._queue.empty():
                self.abort(None, "the gateway is stopping")
                return

    # ---- ending ----------------------------------------------------------------------------------

    def abort(self, reason: int | None, why: str) -> None:
        """Send A-ABORT (``reason`` None: as the service user) and wait for the peer to close."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        log.info(f"association aborted: {why}", extra=self.log_extra())
        self._write(pdus.abort_pdu(reason))
        self._closing()

    def stop(self) -> None:
        """The gateway is stopping: abort now if idle, else once the request in hand is done."""
        if self._busy or not self._queue.empty():
            self._stop_when_idle = True
        else:
            self.abort(None, "the gateway is stopping")

    def _closing(self) -> None:
        """Sta13: the last PDU is written; the peer closes, or ARTIM does."""
        self.state = State.CLOSING
        self._retire_worker()
        self._arm(self.config.acse_timeout or 1.0, self.close)

    def _retire_worker(self) -> None:
        """No more requests: an idle worker goes now; a request in hand is finished (its answer
        goes nowhere) rather than cancelled halfway through a store call."""
        worker = self._worker
        if worker is not None and not worker.done() and not self._busy \
                and worker is not asyncio.current_task():
            worker.cancel()

    def close(self) -> None:
        """Close the connection now, whatever the state."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSING
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        self.transport.write(data)

    # ---- timers ------------------------------------------------------------------------------

    def _arm(self, delay: float | None, callback) -> None:
        self._cancel_timer()
        if delay:
            self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _artim_expired(self) -> None:
        log.info("no A-ASSOCIATE-RQ within the ACSE timeout: connection closed",
                 extra=self.log_extra())
        self.close()

    def _idle_limit(self) -> float | None:
        """How long the peer may stay silent now: ``dimse_timeout`` inside a fragmented message,
        else ``network_timeout`` (None: no limit)."""
        if self._assembler.in_progress and self.config.dimse_timeout:
            return self.config.dimse_timeout
        return self.config.network_timeout or None

    def _check_interval(self) -> float | None:
        # Checked by the shortest of the limits: a message may start fragmenting meanwhile.
        limits = [x for x in (self.config.dimse_timeout, self.config.network_timeout,
                              self.config.message_deadline_seconds) if x]
        return min(limits) if limits else None

    def _check_idle(self) -> None:
        # One timer, re-armed from the last activity, rather than one reset per packet.
        self._timer = None
        if self.state is not State.ESTABLISHED:
            return
        now = self.loop.time()
        if self._busy or not self._queue.empty():
            # Our own requests in hand (reading may be paused for them): not the peer's idling.
            self._arm(self._check_interval(), self._check_idle)
            return
        waits = []
        if self._assembler.in_progress:
            # A deadline from the first fragment: a trickle of fragments does not move it.
            deadline = self.config.message_deadline_seconds
            taken = now - self._message_started
            if taken >= deadline:
                self.abort(NOT_SPECIFIED, f"DIMSE message not complete within {deadline:g} s "
                           "of its first fragment (dimse.message_deadline_seconds)")
                return
            waits.append(deadline - taken)
        limit = self._idle_limit()
        if limit is not None:
            silent = now - self._last_activity
            if silent >= limit:
                what = "DIMSE message incomplete" if self._assembler.in_progress else "no activity"
                self.abort(NOT_SPECIFIED, f"{what} for {limit:g} s")
                return
            waits.append(limit - silent)
        interval = self._check_interval()
        if interval is not None:
            waits.append(interval)
        if waits:
            self._arm(max(min(waits), 0.01), self._check_idle)
