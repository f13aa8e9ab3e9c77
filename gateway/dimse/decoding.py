"""Reading a DIMSE request: its dataset in canonical form and its UID parameters, shared by
every SCP of the listener (``handlers`` for UPS, ``mwl``, ``mpps``). A request the adapter
itself refuses raises ``Refused`` with the status to answer."""

from __future__ import annotations

from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset as PydicomDataset
from pynetdicom.dsutils import decode

from gateway.dimse import binary, convert
from gateway.dimse import messages as m
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, is_uid, normalize
from gateway.ups.errors import InvalidDataset

UNRECOGNIZED_OPERATION = 0x0211
INVALID_OBJECT_INSTANCE = 0x0117


class Refused(Exception):
    """A request the adapter itself refuses (wrong context, bad action type …)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Request(Protocol):
    """What reading needs of a request (``handlers.Request``)."""

    message: m.Message
    syntax: str
    decoder: str | None
    assoc: Any


def canonical(req: Request, what: str) -> Dataset:
    """A request dataset in canonical form: read straight from its bytes when it is plain
    little-endian (``binary``), else decoded by pydicom."""
    raw = req.message.dataset
    if not raw:
        return {}
    fast = binary.read(raw, dataset_syntax(req))
    if fast is not None:
        req.decoder = "binary"
        return noting_charsets(req, normalize(fast))
    return noting_charsets(req, convert.to_canonical(decoded(req, what), what))


def noting_charsets(req: Request, ds: Dataset) -> Dataset:
    """``ds``, after noting the character set it declares as the requester's: its replies on
    this association are written in it when they can be (``convert.reply_charset``)."""
    declared = [v or "" for v in (ds.get(t.SpecificCharacterSet) or {}).get("Value") or ()]
    if any(declared) and req.assoc is not None:  # an empty first value: the default repertoire
        req.assoc.charsets = declared
    return ds


def decoded(req: Request, what: str) -> PydicomDataset | None:
    """The request's dataset, decoded by pydicom; a byte stream that does not parse is the
    requester's error, not ours."""
    raw = req.message.dataset
    if not raw:
        return None
    req.decoder = "pydicom"
    try:
        syntax = dataset_syntax(req)
        return decode(BytesIO(raw), syntax == binary.IMPLICIT_LE, True,
                      syntax == binary.DEFLATED_LE)
    except Exception as exc:  # noqa: BLE001
        raise InvalidDataset(f"cannot decode the {what}: "
                             f"{str(exc)[:100] or type(exc).__name__}") from None


def dataset_syntax(req: Request) -> str:
    """The transfer syntax of the request's dataset bytes (a deflated one once inflated)."""
    return binary.EXPLICIT_LE if req.message.inflated else req.syntax


def requested_uid(req: Request) -> str:
    return uid_param(req.message.text(m.REQUESTED_SOP_INSTANCE), "Requested SOP Instance UID",
                     required=True)


def uid_param(value: Any, name: str, required: bool = False) -> str | None:
    if value is None or str(value) == "":
        if required:
            raise Refused(st.INVALID_ARGUMENT_VALUE if name.startswith("Requested")
                          else st.MISSING_ATTRIBUTE, f"{name} is required")
        return None
    uid = str(value).strip().rstrip("\x00")
    if not is_uid(uid):
        raise Refused(INVALID_OBJECT_INSTANCE, f"{name} {uid[:40]!r} is not a valid UID")
    return uid
