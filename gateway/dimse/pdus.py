"""Upper-layer PDUs both ends of an association handle alike (PS3.8 §9.3): cutting the byte
stream into PDUs within our limits, the release and abort PDUs, the socket option and write
flow control.

The acceptor (``upper_layer``) and the requestor (``requestor``) differ in what they do with a
PDU, not in how they read one: a PDU of unknown type, or one longer than we said we receive, is
a protocol error either way (``ProtocolError``, answered with A-ABORT by the caller).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, Iterator

from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

from gateway.dimse.messages import INVALID_PDU_PARAMETER, ProtocolError

# PDU types (PS3.8 Table 9-1).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, DATA = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07
_PDU_TYPES = frozenset((ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, DATA, RELEASE_RQ, RELEASE_RP,
                        ABORT))
_HEADER_SIZE = 6
# Any PDU but P-DATA is small; an A-ASSOCIATE-RQ with every context a peer could want is tens of
# kilobytes. Larger is garbage (or an attack), whatever our maximum for P-DATA is.
CONTROL_PDU_LIMIT = 1 << 20

# A-ABORT from the service provider (PS3.8 Table 9-26): the reason.
NOT_SPECIFIED, UNRECOGNIZED_PDU, UNEXPECTED_PDU = 0x00, 0x01, 0x02

RELEASE_RQ_PDU = A_RELEASE_RQ().encode()
RELEASE_RP_PDU = A_RELEASE_RP().encode()


def take(buffer: bytearray, max_pdu: int) -> Iterator[tuple[int, bytes]]:
    """Each whole PDU at the front of ``buffer`` as (type, PDU), removed from it as it is taken;
    what is left is the start of the next one. ``max_pdu``: the largest P-DATA-TF variable field
    we receive (0: no limit). Raises ``ProtocolError`` for an unknown type or a PDU too long,
    as soon as its header says so."""
    while len(buffer) >= _HEADER_SIZE:
        pdu_type = buffer[0]
        length = int.from_bytes(buffer[2:6], "big")
        if pdu_type not in _PDU_TYPES:
            raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", UNRECOGNIZED_PDU)
        limit = max_pdu if pdu_type == DATA else CONTROL_PDU_LIMIT
        if limit and length > limit:
            raise ProtocolError(f"PDU of {length} bytes exceeds the maximum of {limit}",
                                INVALID_PDU_PARAMETER)
        end = _HEADER_SIZE + length
        if len(buffer) < end:
            return
        pdu = bytes(buffer[:end])
        del buffer[:end]
        yield pdu_type, pdu


def feed(buffer: bytearray, max_pdu: int, on_pdu: Callable[[int, bytes], None],
         stop: Callable[[], bool], violation: Callable[[int, str], None]) -> None:
    """Hand each whole PDU in ``buffer`` to ``on_pdu`` until ``stop()`` says so (the peer is
    done with, or reading paused); a PDU that breaks the protocol, or that our codecs cannot
    decode, is the peer's error and goes to ``violation(A-ABORT reason, why)`` instead. The
    one reading loop of both ends of an association (``upper_layer``, ``requestor``)."""
    try:
        for pdu_type, pdu in take(buffer, max_pdu):
            on_pdu(pdu_type, pdu)
            if stop():
                return
    except ProtocolError as exc:
        violation(exc.reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - a PDU our codecs choke on is the peer's error
        violation(INVALID_PDU_PARAMETER, f"undecodable PDU: {exc!r}"[:200])


def abort_pdu(reason: int | None) -> bytes:
    """A-ABORT: from the service provider with a reason, or (None) from the service user."""
    if reason is None:
        primitive = A_ABORT()
        primitive.abort_source = 0x00
    else:
        primitive = A_P_ABORT()
        primitive.provider_reason = reason
    pdu = A_ABORT_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def describe_abort(raw: bytes) -> tuple[int | None, int | None, str]:
    """A received A-ABORT as (source, reason, text); (None, None, …) when it does not decode."""
    pdu = A_ABORT_RQ()
    try:
        pdu.decode(raw)
        return pdu.source, pdu.reason_diagnostic, f"{pdu.source_str}: {pdu.reason_str}"
    except Exception:  # noqa: BLE001 - an abort is an abort, however garbled
        return None, None, "undecodable A-ABORT"


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle: a DIMSE message is one write, and must not wait for the peer's delayed
    ACK of the previous one."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class WriteFlow:
    """asyncio.Protocol write flow control as something to wait on: a peer that reads slower
    than we write makes the transport pause us, and ``writable`` waits until it resumes (or the
    connection is lost). Whoever waits bounds the wait."""

    _can_write: asyncio.Future | None = None

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            self._can_write.set_result(None)
            self._can_write = None

    @property
    def paused(self) -> bool:
        return self._can_write is not None

    async def writable(self) -> None:
        if self._can_write is not None:  # shielded: other writers may wait on it too
            await asyncio.shield(self._can_write)
