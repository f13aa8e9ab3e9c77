"""The fuzz tier (issue 18): property-based input from hypothesis, deterministic
(``derandomize``, no example database) so CI sees the same examples every run, bounded to well
under 3 minutes in all.

* the fast binary reader (``gateway.dimse.binary``) against pydicom as the oracle, on generated
  datasets, and on garbage and mutated bytes (it returns a dataset or None, never raises);
* DIMSE: generated datasets in N-CREATE, and generated command sets and PDUs, against a real
  gateway: an answer or an A-ABORT, never silence; a refused N-CREATE stores nothing;
* REST: generated bodies and query parameters: never a 5xx; a refused create stores nothing.

After each tier the gateway still serves everyone.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s
from pydicom import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from gateway.dimse import binary, convert
from gateway.ups.dataset import normalize
from gateway.ups.errors import InvalidDataset
from tests import dimse_util as d
from tests.helpers import GatewayProcess, new_uid, workitem
from tests.test_limits_dimse import Peer, message_pdus, pdv_pdu, status_in


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd values


def fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("fuzz"), extra={"dimse": {
        "dimse_timeout": 2.0, "message_deadline_seconds": 4.0}}).start()
    yield proc
    proc.stop()


# ---- datasets ----------------------------------------------------------------------------------

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "\\")
_LATIN = _PRINTABLE + "äöüßéèçñÅØ"
_WIDE = _LATIN + "山田太郎ΑΒΓ"
_TEXT = {  # VR → strategy for one value (what pydicom can encode)
    "CS": s.text("ABCXYZ019 _", max_size=16),
    "LO": None, "SH": None, "PN": None, "LT": None, "ST": None, "UT": None,
    "UI": s.from_regex(r"\A[12](\.[1-9][0-9]{0,5}){1,6}\Z"),
    "DA": s.dates().map(lambda x: x.strftime("%Y%m%d")),
    "TM": s.times().map(lambda x: x.strftime("%H%M%S")),
    "DT": s.datetimes().map(lambda x: x.strftime("%Y%m%d%H%M%S")),
    "IS": s.integers(-(2 ** 31), 2 ** 31 - 1).map(str),
    "DS": s.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.6g}"),
    "AE": s.text("ABCDE_123", min_size=1, max_size=16),
}
# (keyword, VR, may hold several values) among the attributes a UPS dataset carries.
_ELEMENTS = [
    ("PatientName", "PN", False), ("PatientID", "LO", False), ("OtherPatientIDs", "LO", True),
    ("ProcedureStepLabel", "LO", False), ("WorklistLabel", "LO", False),
    ("ScheduledProcedureStepPriority", "CS", False), ("InputReadinessState", "CS", False),
    ("ScheduledProcedureStepStartDateTime", "DT", False), ("PatientBirthDate", "DA", False),
    ("PatientBirthTime", "TM", False), ("StudyInstanceUID", "UI", False),
    ("CommentsOnTheScheduledProcedureStep", "LT", False), ("PatientComments", "LT", False),
    ("AdmissionID", "LO", False), ("PatientWeight", "DS", False), ("PatientSize", "DS", False),
    ("PregnancyStatus", "US", False), ("MedicalAlerts", "LO", True),
    ("ReasonForCancellation", "LT", False), ("ContactDisplayName", "LO", False),
    ("ScheduledStationNameCodeSequence", "SQ", False), ("ScheduledWorkitemCodeSequence", "SQ", False),
]
_CODE_ITEM = [("CodeValue", "SH"), ("CodingSchemeDesignator", "SH"), ("CodeMeaning", "LO")]


def _value(vr: str, alphabet: str):
    if vr == "US":
        return s.integers(0, 65535)
    if vr == "PN":
        return s.text(alphabet.replace("=", ""), max_size=20)
    strategy = _TEXT.get(vr)
    if strategy is None:
        limit = {"SH": 16, "LO": 64, "LT": 200, "ST": 200, "UT": 200}[vr]
        return s.text(alphabet, max_size=limit)
    return strategy


@s.composite
def datasets(draw, depth: int = 0) -> Dataset:
    charset = draw(s.sampled_from(["", "ISO_IR 100", "ISO_IR 192"]))
    alphabet = {"": _PRINTABLE, "ISO_IR 100": _LATIN, "ISO_IR 192": _WIDE}[charset]
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, vr, multi in draw(s.lists(s.sampled_from(_ELEMENTS), max_size=10,
                                           unique=True)):
        if vr == "SQ":
            items = []
            for _ in range(draw(s.integers(0, 2))):
                item = Dataset()
                for key, item_vr in _CODE_ITEM:
                    if draw(s.booleans()):
                        setattr(item, key, draw(_value(item_vr, alphabet)))
                items.append(item)
            setattr(ds, keyword, Sequence(items))
        elif multi:
            setattr(ds, keyword, draw(s.lists(_value(vr, alphabet), max_size=3)))
        else:
            setattr(ds, keyword, draw(s.one_of(s.none(), _value(vr, alphabet))))
    return ds


def _outcome(read):
    try:
        return "ok", read()
    except InvalidDataset:
        return "invalid", None


# ---- the fast binary reader, pydicom the oracle ------------------------------------------------

@fuzz(300)
@given(ds=datasets(), implicit=s.booleans())
def test_binary_reader_agrees_with_pydicom(ds, implicit):
    try:
        raw = encode(ds, implicit, True)
    except Exception:  # noqa: BLE001 - pydicom cannot write this one: nothing to compare
        return
    if raw is None:
        return
    fast = binary.read(raw, binary.IMPLICIT_LE if implicit else binary.EXPLICIT_LE)
    if fast is None:
        return  # left to pydicom, which is then the path taken
    reference = _outcome(lambda: convert.to_canonical(decode(io.BytesIO(raw), implicit, True)))
    assert _outcome(lambda: normalize(fast)) == reference


_SEED = encode(Dataset.from_json({k: v for k, v in workitem(new_uid()).items()}), False, True)


@fuzz(400)
@given(data=s.one_of(
    s.binary(max_size=600),
    s.tuples(s.integers(0, len(_SEED) - 1), s.binary(min_size=1, max_size=8)).map(
        lambda m: _SEED[:m[0]] + m[1] + _SEED[m[0] + len(m[1]):]),
    s.integers(0, len(_SEED)).map(lambda n: _SEED[:n])),
    syntax=s.sampled_from([binary.EXPLICIT_LE, binary.IMPLICIT_LE, binary.DEFLATED_LE]))
def test_binary_reader_never_raises_on_garbage(data, syntax):
    result = binary.read(data, syntax)
    assert result is None or isinstance(result, dict)
    if result is not None:
        _outcome(lambda: normalize(result))  # only InvalidDataset may come out of it


# ---- DIMSE --------------------------------------------------------------------------------------

def _count(gw) -> int:
    """How many workitems the gateway's search sees (the fuzz gateway's own worklist)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.rest_port, timeout=10)
    conn.request("GET", f"{gw.base}/workitems?limit=1")
    rsp = conn.getresponse()
    rsp.read()
    conn.close()
    warning = rsp.getheader("Warning") or ""
    more = int(warning.split("There are ")[1].split()[0]) if "There are " in warning else 0
    return 0 if rsp.status == 204 else 1 + more


def _uid_stored(gw, uid: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.rest_port, timeout=10)
    conn.request("GET", f"{gw.base}/workitems/{urllib.parse.quote(uid)}")
    rsp = conn.getresponse()
    rsp.read()
    conn.close()
    return rsp.status


@pytest.fixture(scope="module")
def peer(gw):
    holder = {"peer": None}

    def get() -> Peer:
        if holder["peer"] is None:
            holder["peer"] = Peer(gw)
            holder["peer"].associate()
        return holder["peer"]

    def drop() -> None:
        if holder["peer"] is not None:
            holder["peer"].close()
        holder["peer"] = None

    get.drop = drop
    yield get
    drop()


@fuzz(150)
@given(ds=datasets())
def test_n_create_of_generated_datasets_is_answered_and_refusals_store_nothing(gw, peer, ds):
    ds.ProcedureStepState = "SCHEDULED"  # often valid enough to reach the core
    try:
        raw = encode(ds, False, True)
    except Exception:  # noqa: BLE001
        return
    uid = new_uid()
    connection = peer()
    connection.sock.sendall(b"".join(message_pdus(_n_create_command(uid), raw or b"", 1)))
    pdu_type, pdu = connection.pdu()
    assert pdu_type == 0x04, "answered, not aborted"
    status = status_in(pdu)
    if status not in (0x0000, 0xB300):
        assert _uid_stored(gw, uid) == 404, f"refused with 0x{status:04X} yet stored"


def _n_create_command(uid: str) -> bytes:
    """An N-CREATE-RQ command set (a dataset follows) for ``uid``, by pynetdicom's encoder."""
    from pynetdicom.dimse_messages import N_CREATE_RQ
    from pynetdicom.dimse_primitives import N_CREATE

    primitive = N_CREATE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = d.PUSH
    primitive.AffectedSOPInstanceUID = uid
    primitive.AttributeList = io.BytesIO(b"\x08\x00\x05\x00")  # replaced: only the command is used
    message = N_CREATE_RQ()
    message.primitive_to_message(primitive)
    wire = d.wire(message, 1, 0)
    length = struct.unpack(">I", wire[2:6])[0]
    return wire[12:6 + length]


_COMMAND_FIELDS = [0x0001, 0x0010, 0x0020, 0x0021, 0x0030, 0x0100, 0x0110, 0x0120, 0x0130,
                   0x0140, 0x0150, 0x0FFF, 0x8030, 0x8140, 0xFFFF]


@s.composite
def command_sets(draw) -> bytes:
    elements = {0x0100: struct.pack("<H", draw(s.sampled_from(_COMMAND_FIELDS))),
                0x0110: struct.pack("<H", draw(s.integers(0, 65535))),
                0x0800: struct.pack("<H", 0x0101)}
    for element in draw(s.lists(s.sampled_from([0x0002, 0x0003, 0x1000, 0x1001, 0x1005, 0x1008,
                                                0x1002, 0x0120, 0x0900, 0x0700]), max_size=5)):
        elements[element] = draw(s.binary(max_size=70))
    if draw(s.booleans()):
        elements[0x0002] = (d.PUSH + "\x00").encode()
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in sorted(elements.items()))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


@fuzz(150)
@given(command=command_sets())
def test_generated_command_sets_are_answered_or_aborted(gw, peer, command):
    """Each generated command set, then a C-ECHO: the gateway answers what it serves (or aborts
    the association), ignores what is not a request (responses, C-CANCEL), and the C-ECHO
    behind it is answered — never silence."""
    connection = peer()
    connection.sock.sendall(pdv_pdu(command, 0x03) + _ECHO)
    connection.sock.settimeout(10)
    while True:
        try:
            pdu_type, pdu = connection.pdu()
        except (EOFError, ConnectionResetError):
            peer.drop()
            return
        if pdu_type == 0x07:
            peer.drop()
            return
        assert pdu_type == 0x04, f"PDU 0x{pdu_type:02X}"
        answer = _command_of(pdu)
        if answer.get(0x0120) == struct.pack("<H", _ECHO_ID) and \
                answer.get(0x0100) == struct.pack("<H", 0x8030):
            return


_ECHO_ID = 54321


def _echo() -> bytes:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    primitive = C_ECHO()
    primitive.MessageID = _ECHO_ID
    primitive.AffectedSOPClassUID = d.PUSH
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return d.wire(message, 1, 16384)


_ECHO = _echo()


def _command_of(pdu: bytes) -> dict[int, bytes]:
    command, pos, out = pdu[12:], 0, {}
    while pos + 8 <= len(command):
        _, element, length = struct.unpack_from("<HHI", command, pos)
        out[element] = command[pos + 8:pos + 8 + length]
        pos += 8 + length
    return out


@fuzz(120)
@given(pdu=s.one_of(
    s.binary(min_size=1, max_size=300),
    s.tuples(s.sampled_from([1, 2, 3, 4, 5, 6, 7, 9, 0xFF]), s.binary(max_size=200)).map(
        lambda t: struct.pack(">BBI", t[0], 0, len(t[1])) + t[1])))
def test_generated_pdus_after_association_are_aborted_or_answered(gw, pdu):
    connection = Peer(gw)
    connection.associate()
    try:
        connection.sock.sendall(pdu)
        connection.sock.settimeout(0.3)
        try:
            pdu_type, _ = connection.pdu()
            assert pdu_type in (0x04, 0x06, 0x07)
        except (socket.timeout, TimeoutError):
            pass  # a PDU still incomplete: the gateway waits for the rest, within its timeouts
        except (EOFError, ConnectionResetError):
            pass
    finally:
        connection.close()


def test_after_the_dimse_fuzz_the_gateway_serves_everyone(gw):
    with d.association(gw) as assoc:
        assert assoc.send_c_echo().Status == 0x0000
    gw.check_alive()


# ---- REST ----------------------------------------------------------------------------------------

_json = s.recursive(
    s.none() | s.booleans() | s.integers() | s.floats(allow_nan=False) | s.text(max_size=20),
    lambda children: s.lists(children, max_size=4) | s.dictionaries(s.text(max_size=10), children,
                                                                     max_size=4),
    max_leaves=20)
_KEYS = ["00100010", "00100020", "00741000", "00741200", "00404005", "00404025", "00081195",
         "00080018", "0040A370", "00741202", "7FE00010", "00000000", "ZZZZZZZZ", "00100010X"]
_VRS = ["PN", "LO", "CS", "DT", "SQ", "UI", "IS", "DS", "US", "FD", "OB", "XX", ""]


@s.composite
def dicom_json(draw) -> object:
    base = workitem() if draw(s.booleans()) else {}
    for key in draw(s.lists(s.sampled_from(_KEYS), max_size=4)):
        element = {"vr": draw(s.sampled_from(_VRS))}
        if draw(s.booleans()):
            element["Value"] = draw(s.lists(_json, max_size=3))
        if draw(s.booleans()):
            element["InlineBinary"] = draw(s.text(max_size=12))
        base[key] = element if draw(s.integers(0, 5)) else draw(_json)
    return base if draw(s.integers(0, 6)) else draw(_json)


@pytest.fixture(scope="module")
def rest(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.rest_port, timeout=10)
    yield conn
    conn.close()


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None) -> int:
    for attempt in (1, 2):
        try:
            conn.request(method, path, body=body, headers=headers or {})
            rsp = conn.getresponse()
            rsp.read()
            if rsp.getheader("Connection", "").lower() == "close":
                conn.close()
            return rsp.status
        except (http.client.HTTPException, ConnectionError):
            conn.close()  # reconnects on the next request
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@fuzz(250)
@given(payload=dicom_json(), raw=s.one_of(s.none(), s.binary(max_size=80)),
       media=s.sampled_from(["application/dicom+json", "application/json", "text/plain", ""]))
def test_generated_create_bodies_never_5xx_and_refusals_store_nothing(gw, rest, payload, raw,
                                                                      media):
    uid = new_uid()
    body = raw if raw is not None else json.dumps(payload).encode()
    status = _request(rest, "POST", f"{gw.base}/workitems?workitem={uid}", body,
                      {"Content-Type": media} if media else {})
    assert status < 500
    if status >= 400:
        assert _request(rest, "GET", f"{gw.base}/workitems/{uid}") == 404


_PARAMS = ["PatientName", "PatientID", "ProcedureStepState", "WorklistLabel", "limit", "offset",
           "includefield", "fuzzymatching", "ScheduledProcedureStepStartDateTime", "00100020",
           "ScheduledStationNameCodeSequence.CodeValue", "0040A370.00080050", "filter", "x"]


@fuzz(250)
@given(params=s.lists(s.tuples(s.sampled_from(_PARAMS), s.text(max_size=30)), max_size=5),
       raw_tail=s.text(max_size=40))
def test_generated_search_parameters_never_5xx(gw, rest, params, raw_tail):
    query = urllib.parse.urlencode(params)
    if raw_tail:
        query += "&" + urllib.parse.quote(raw_tail, safe="=&*,-")
    before = _count(gw)
    assert _request(rest, "GET", f"{gw.base}/workitems?{query}") < 500
    assert _count(gw) == before, "a search changes nothing"


def test_after_the_rest_fuzz_the_gateway_serves_everyone(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.rest_port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    gw.check_alive()
