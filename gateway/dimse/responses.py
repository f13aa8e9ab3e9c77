"""DIMSE response command sets written straight to bytes: pynetdicom 3.0 internals, isolated here.

Why: to send a response, pynetdicom copies the primitive into a pydicom Dataset (validating each
value) and encodes that Dataset twice — once for the Command Group Length, once to send. For an
N-CREATE response that is ≈1.3 ms of the GIL, more than reading the request's whole workitem.
A response command set is a handful of US/UL/UI/LO/AT elements in Implicit VR Little Endian, so
this module writes the same bytes directly (``tests/test_dimse_responses.py`` checks them against
pynetdicom's encoding for every response type and field the gateway sends).

How: on EVT_CONN_OPEN an accepted association's ``dimse.send_msg`` is wrapped. A response whose
fields are all of the plain kinds below is encoded here and handed to the DUL as pynetdicom would
(same P-DATA fragmentation); anything else — a request, a value of an unexpected type, non-ASCII
text, or an EVT_DIMSE_SENT handler that wants pynetdicom's message object — goes through
pynetdicom's own ``send_msg``. Installed only on pynetdicom 3.0.x with the internals it reads.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger("gateway.dimse")

SUPPORTED_VERSIONS = ("3.0.",)
IMPLICIT_LE = "1.2.840.10008.1.2"

_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_HEADER = struct.Struct("<HHI")  # Implicit VR: group, element, 32-bit length
_GROUP_LENGTH_TAG = 0x00000000


def install(event) -> None:
    """EVT_CONN_OPEN handler: send this association's responses through ``send_response``."""
    try:
        dimse = event.assoc.dimse
        if _TEMPLATES is None or not hasattr(dimse, "send_msg") or not hasattr(dimse, "dul"):
            return
        original = dimse.send_msg
        assoc = event.assoc

        def send_msg(primitive, context_id):
            if not send_response(dimse, assoc, primitive, context_id):
                original(primitive, context_id)

        dimse.send_msg = send_msg
    except Exception:  # noqa: BLE001 - pynetdicom's own send_msg still works
        log.debug("fast DIMSE responses not installed", exc_info=True)


def send_response(dimse, assoc, primitive, context_id: int) -> bool:
    """Encode and queue ``primitive`` if it is a response this module can write; False if not."""
    if getattr(primitive, "MessageIDBeingRespondedTo", None) is None:
        return False  # a request: pynetdicom's path
    if assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return False  # someone wants pynetdicom's DIMSEMessage object
    pdus = response_pdus(primitive, context_id, dimse.maximum_pdu_size)
    if pdus is None:
        return False
    for pdu in pdus:
        dimse.dul.send_pdu(pdu)
    return True


def response_pdus(primitive, context_id: int, max_pdu: int) -> list[P_DATA] | None:
    """The P-DATA primitives pynetdicom would send for this response, or None."""
    command = encode_command_set(primitive)
    if command is None:
        return None
    dataset = _dataset_bytes(primitive)
    pdus = _fragments(context_id, command, max_pdu, b"\x01", b"\x03")
    if dataset:
        pdus += _fragments(context_id, dataset, max_pdu, b"\x00", b"\x02")
    return pdus


def encode_command_set(primitive) -> bytes | None:
    """The response's command set as pynetdicom's ``primitive_to_message`` + ``encode_msg``
    would encode it (Implicit VR Little Endian, with its Command Group Length), or None."""
    template = _TEMPLATES.get(type(primitive)) if _TEMPLATES else None
    if template is None:
        return None
    command_field, dataset_keyword, elements = template
    if getattr(primitive, "_dataset_path", None):
        return None  # a dataset streamed from a file (C-STORE): pynetdicom's path
    has_dataset = bool(getattr(primitive, dataset_keyword, None)) if dataset_keyword else False
    parts = []
    for tag, keyword, vr in elements:
        if keyword == "CommandField":
            value: Any = command_field
        elif keyword == "CommandDataSetType":
            value = 0x0001 if has_dataset else 0x0101
        elif hasattr(primitive, keyword):
            value = getattr(primitive, keyword)
            if value is None:
                continue  # pynetdicom deletes unset elements
        else:
            value = None  # left in the template without a value: written empty
        raw = _encode_value(vr, value)
        if raw is None:
            return None
        parts.append(_HEADER.pack(tag >> 16, tag & 0xFFFF, len(raw)) + raw)
    body = b"".join(parts)
    return _HEADER.pack(0, 0, 4) + _UL.pack(len(body)) + body


def _encode_value(vr: str, value: Any) -> bytes | None:
    if value is None:
        return b""
    if vr in ("US", "UL"):
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        packer = _US if vr == "US" else _UL
        try:
            return packer.pack(value)
        except struct.error:
            return None
    if vr in ("UI", "LO", "AE", "SH", "CS"):
        if not isinstance(value, str) or not value.isascii() or "\\" in value:
            return None
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return raw
    if vr == "AT":
        tags = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(t, int) and 0 <= t <= 0xFFFFFFFF for t in tags):
            return None
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    return None


def _dataset_bytes(primitive) -> bytes:
    template = _TEMPLATES.get(type(primitive))
    keyword = template[1] if template else None
    stream = getattr(primitive, keyword, None) if keyword else None
    return stream.getvalue() if stream is not None else b""


def _fragments(context_id: int, data: bytes, max_pdu: int, more: bytes,
               last: bytes) -> list[P_DATA]:
    """One P-DATA per PDV, each fragment at most ``max_pdu - 6`` bytes (0: unlimited)."""
    size = len(data) if max_pdu == 0 else max_pdu - 6
    chunks = [data[i:i + size] for i in range(0, len(data), size)] if size > 0 else [data]
    out = []
    for n, chunk in enumerate(chunks):
        pdu = P_DATA()
        pdu.presentation_data_value_list.append(
            (context_id, (last if n == len(chunks) - 1 else more) + chunk))
        out.append(pdu)
    return out


def _templates() -> dict | None:
    """Per response primitive class: (Command Field, dataset keyword, [(tag, keyword, VR)])
    from pynetdicom's own message classes, or None where this pynetdicom is not the one known."""
    if not str(getattr(pynetdicom, "__version__", "")).startswith(SUPPORTED_VERSIONS):
        return None
    try:
        from pynetdicom.dimse import _RSP_TO_MESSAGE
        from pynetdicom.dimse_messages import _DATASET_KEYWORDS, _MESSAGE_TYPES
        field_of = {name: field for field, (name, _cls) in _MESSAGE_TYPES.items()}
        out = {}
        for primitive_cls, message_cls in _RSP_TO_MESSAGE.items():
            name = message_cls.__name__
            elements = [(int(e.tag), e.keyword, e.VR) for e in message_cls().command_set
                        if int(e.tag) != _GROUP_LENGTH_TAG]
            if any(vr not in ("US", "UL", "UI", "LO", "AE", "SH", "CS", "AT")
                   for _t, _k, vr in elements):
                continue
            out[primitive_cls] = (field_of[name.replace("_", "-")],
                                  _DATASET_KEYWORDS.get(name), sorted(elements))
        return out
    except Exception:  # noqa: BLE001 - internals moved: pynetdicom's path for everything
        log.debug("pynetdicom internals not as expected: fast responses off", exc_info=True)
        return None


_TEMPLATES = _templates()
