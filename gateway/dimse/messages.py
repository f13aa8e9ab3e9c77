"""DIMSE messages on the wire: P-DATA fragments in, command set + dataset out, and back.

A DIMSE message travels as presentation data values (PDVs), each carrying one fragment of either
its command set or its dataset, with a message control header byte saying which and whether it
is the last one (PS3.8 E.2). The command set is always Implicit VR Little Endian (PS3.7 §6.3.1)
and a request's holds a handful of elements, so it is read here directly; the dataset stays bytes
until a handler knows what to do with it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

# Message control header (PS3.8 E.2): bit 0 command/dataset, bit 1 last fragment.
_COMMAND = 0x01
_LAST = 0x02

C_CANCEL = 0x0FFF  # the one request Command Field the upper layer itself acts on
N_EVENT_REPORT = 0x0100  # the one request the gateway sends (``requestor``)

# Command set elements a request may carry, by element number (group 0000).
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDED_TO = 0x0120
DATASET_TYPE = 0x0800
NO_DATASET = 0x0101
AFFECTED_SOP_CLASS = 0x0002
REQUESTED_SOP_CLASS = 0x0003
AFFECTED_SOP_INSTANCE = 0x1000
REQUESTED_SOP_INSTANCE = 0x1001
EVENT_TYPE = 0x1002
ATTRIBUTE_IDENTIFIERS = 0x1005
ACTION_TYPE = 0x1008

_ELEMENT = struct.Struct("<HHI")


INVALID_PDU_PARAMETER = 0x06  # A-ABORT reason (PS3.8 Table 9-26)
COMMAND_LIMIT = 1 << 16  # a command set holds a handful of short elements


class ProtocolError(Exception):
    """The peer broke the upper-layer or DIMSE framing rules: the association is aborted, with
    ``reason`` as the A-ABORT's reason/diagnostic."""

    def __init__(self, message: str, reason: int = INVALID_PDU_PARAMETER):
        super().__init__(message)
        self.reason = reason


@dataclass
class Message:
    """One complete DIMSE message: its presentation context, command set, dataset bytes."""

    context_id: int
    command: dict[int, bytes]  # element number -> raw value
    dataset: bytes | None
    inflated: bool = False  # dataset received deflated and inflated since: Explicit VR LE

    def us(self, element: int) -> int | None:
        return _us(self.command.get(element))

    def text(self, element: int) -> str | None:
        raw = self.command.get(element)
        if raw is None:
            return None
        return raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ")

    def tags(self, element: int) -> list[int]:
        raw = self.command.get(element) or b""
        pairs = struct.unpack(f"<{len(raw) // 2}H", raw[:len(raw) // 4 * 4])
        return [pairs[i] << 16 | pairs[i + 1] for i in range(0, len(pairs), 2)]

    @property
    def command_field(self) -> int:
        return self.us(COMMAND_FIELD)  # always present: checked on arrival

    @property
    def msg_id(self) -> int | None:
        return self.us(MESSAGE_ID)

    @property
    def sop_class(self) -> str | None:
        """The Affected or Requested SOP Class UID, whichever the message has."""
        value = self.text(AFFECTED_SOP_CLASS)
        return value if value is not None else self.text(REQUESTED_SOP_CLASS)

    @property
    def sop_instance(self) -> str | None:
        value = self.text(AFFECTED_SOP_INSTANCE)
        return value if value is not None else self.text(REQUESTED_SOP_INSTANCE)


def parse_command(data: bytes) -> dict[int, bytes]:
    """An Implicit VR Little Endian command set as ``{element: raw value}``."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError("truncated command set element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError(f"invalid command set element ({group:04X},{element:04X})")
        out[element] = data[pos:pos + length]
        pos += length
    if out.get(COMMAND_FIELD) is None or len(out[COMMAND_FIELD]) != 2:
        raise ProtocolError("the command set has no Command Field")
    return out


class Assembler:
    """Collects the PDV fragments of one association into whole messages (PS3.8 E.2: all of a
    message's command fragments, then all of its dataset fragments, on one context).

    ``max_command`` / ``max_dataset`` bound what one message may make us hold (None: no bound);
    each fragment counts its PDV's length, so a flood of empty fragments is bounded too, and
    ``max_fragments`` bounds how many PDVs one message may take (each costs more to hold than
    its bytes)."""

    def __init__(self, max_command: int | None = None, max_dataset: int | None = None,
                 max_fragments: int | None = None):
        self.max_command = max_command
        self.max_dataset = max_dataset
        self.max_fragments = max_fragments
        self._context_id: int | None = None
        self._command: list[bytes] = []
        self._dataset: list[bytes] = []
        self._held = 0  # what the message's fragments so far count
        self._fragments = 0  # PDVs of the message so far
        self._parsed: dict[int, bytes] | None = None  # the command, once complete

    @property
    def in_progress(self) -> bool:
        return self._context_id is not None

    @property
    def held_bytes(self) -> int:
        """What the fragments of the message in progress hold."""
        return sum(map(len, self._command)) + sum(map(len, self._dataset))

    def feed(self, context_id: int, pdv: bytes) -> Message | None:
        """One PDV (control header + fragment); the message it completes, if any."""
        if not pdv:
            raise ProtocolError("empty presentation data value")
        header, fragment = pdv[0], pdv[1:]
        self._fragments += 1
        if self.max_fragments is not None and self._fragments > self.max_fragments:
            raise ProtocolError(f"a DIMSE message in more than {self.max_fragments} fragments")
        if self._context_id is None:
            self._context_id = context_id
        elif context_id != self._context_id:
            raise ProtocolError("a message's fragments span presentation contexts")
        if header & _COMMAND:
            if self._parsed is not None:
                raise ProtocolError("command fragment after the command set was complete")
            self._hold(len(pdv), self.max_command, "command set")
            self._command.append(fragment)
            if not header & _LAST:
                return None
            self._parsed = parse_command(b"".join(self._command))
            self._held = 0
            if _us(self._parsed.get(DATASET_TYPE)) != NO_DATASET:
                return None  # its dataset follows
            return self._complete(None)
        if self._parsed is None:
            raise ProtocolError("dataset fragment before the command set")
        self._hold(len(pdv), self.max_dataset, "dataset")
        self._dataset.append(fragment)
        if not header & _LAST:
            return None
        return self._complete(b"".join(self._dataset))

    def _hold(self, size: int, limit: int | None, what: str) -> None:
        self._held += size
        if limit is not None and self._held > limit:
            raise ProtocolError(f"a DIMSE message's {what} exceeds {limit} bytes")

    def _complete(self, dataset: bytes | None) -> Message:
        message = Message(self._context_id, self._parsed, dataset)
        self.reset()
        return message

    def reset(self) -> None:
        """Forget the message in progress (its fragments are released)."""
        self._context_id, self._command, self._dataset, self._parsed = None, [], [], None
        self._held = self._fragments = 0


def _us(raw: bytes | None) -> int | None:
    return struct.unpack("<H", raw[:2])[0] if raw and len(raw) >= 2 else None


def p_data(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> bytes:
    """The message as P-DATA-TF PDUs, one PDV each, every PDU within the peer's maximum length
    (``max_pdu``: its variable field; 0 means no limit)."""
    out = [_pdus(context_id, command, max_pdu, _COMMAND)]
    if dataset:
        out.append(_pdus(context_id, dataset, max_pdu, 0))
    return b"".join(out)


def _pdus(context_id: int, data: bytes, max_pdu: int, kind: int) -> bytes:
    # A PDV item adds 6 bytes to its fragment: length (4), context ID, control header.
    size = len(data) if max_pdu == 0 else max(max_pdu - 6, 1)
    chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    out = []
    for n, chunk in enumerate(chunks):
        header = kind | (_LAST if n == len(chunks) - 1 else 0)
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[context_id, bytes((header,)) + chunk]]
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return b"".join(out)
