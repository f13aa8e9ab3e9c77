"""A pynetdicom SCU for the DIMSE tests: associations with TCP_NODELAY and UPS helpers.

UPS messages carry the UPS Push SOP Class UID whatever context they travel on (PS3.4 CC.3.1);
``meta_uid`` picks the presentation context (Pull for N-SET / change state, Watch for
subscriptions …), as a real UPS SCU does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from io import BytesIO
from typing import Iterator

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from gateway.testing_peers import NODELAY_HANDLER, guard_responses

PUSH = "1.2.840.10008.5.1.4.34.6.1"
WATCH = "1.2.840.10008.5.1.4.34.6.2"
PULL = "1.2.840.10008.5.1.4.34.6.3"
EVENT = "1.2.840.10008.5.1.4.34.6.4"
QUERY = "1.2.840.10008.5.1.4.34.6.5"
ALL_UPS = (PUSH, PULL, WATCH, QUERY, EVENT)
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def make_ae(contexts=ALL_UPS, ae_title: str = "TEST_SCU", syntaxes=SYNTAXES,
            timeout: float = 15.0) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    ae.add_requested_context(Verification)
    return ae


def associate(gateway, contexts=ALL_UPS, ae_title: str = "TEST_SCU", syntaxes=SYNTAXES,
              called: str = "UPS_GATEWAY"):
    """An association (established or not) with the gateway's DIMSE listener."""
    ae = make_ae(contexts, ae_title, syntaxes)
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title=called,
                         evt_handlers=[NODELAY_HANDLER])
    if assoc.is_established:
        guard_responses(assoc)  # pynetdicom 3.0.4 requestor race (gateway.testing_peers)
    return assoc


@contextlib.contextmanager
def association(gateway, contexts=ALL_UPS, ae_title: str = "TEST_SCU",
                syntaxes=SYNTAXES) -> Iterator:
    assoc = associate(gateway, contexts, ae_title, syntaxes)
    assert assoc.is_established, "association with the gateway failed"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def dataset(json_ds: dict) -> Dataset:
    return Dataset.from_json(json_ds)


def status_of(status: Dataset) -> int:
    assert status is not None and "Status" in status, "no response from the gateway"
    return int(status.Status)


def comment_of(status: Dataset) -> str:
    return str(status.get("ErrorComment", "") or "")


def n_create(assoc, json_ds: dict, uid: str | None):
    ds = dataset({k: v for k, v in json_ds.items() if k != "00080018"})
    return assoc.send_n_create(ds, PUSH, uid)


def n_get(assoc, uid: str, tags=None, meta_uid: str = PULL):
    return assoc.send_n_get(tags or [], PUSH, uid, meta_uid=meta_uid)


def n_set(assoc, uid: str, json_ds: dict, tx: str | None = None, meta_uid: str = PULL):
    mods = dict(json_ds)
    if tx:
        mods["00081195"] = {"vr": "UI", "Value": [tx]}
    return assoc.send_n_set(dataset(mods), PUSH, uid, meta_uid=meta_uid)


def change_state(assoc, uid: str, state: str, tx: str | None, meta_uid: str = PULL):
    info = Dataset()
    info.ProcedureStepState = state
    if tx:
        info.TransactionUID = tx
    return assoc.send_n_action(info, 1, PUSH, uid, meta_uid=meta_uid)


def request_cancel(assoc, uid: str, info: Dataset | None = None, meta_uid: str = PUSH):
    # No Action Information at all when there is none: an empty dataset would be announced
    # in the command set but never sent.
    return assoc.send_n_action(info if info else None, 2, PUSH, uid, meta_uid=meta_uid)


def c_find(assoc, identifier: Dataset, model: str = PULL) -> tuple[int, list[Dataset], Dataset]:
    """(final status, pending identifiers, final status dataset)."""
    results = []
    final = None
    for status, ds in assoc.send_c_find(identifier, model):
        assert status is not None and "Status" in status, "no C-FIND response"
        if status.Status in (0xFF00, 0xFF01):
            results.append(ds)
        else:
            final = status
    assert final is not None
    return int(final.Status), results, final


# ---- the usual steps, each checked to succeed ----------------------------------------------------

def create(assoc, **kw) -> str:
    """N-CREATE a workitem (``tests.helpers.workitem(**kw)``); its UID."""
    from tests.helpers import new_uid, workitem
    uid = new_uid()
    status, _ = n_create(assoc, workitem(**kw), uid)
    assert status_of(status) == 0x0000, comment_of(status)
    return uid


def claim(assoc, uid: str) -> str:
    """N-ACTION to IN PROGRESS with a new Transaction UID; that UID."""
    from tests.helpers import new_uid
    tx = new_uid()
    status, _ = change_state(assoc, uid, "IN PROGRESS", tx)
    assert status_of(status) == 0x0000, comment_of(status)
    return tx


def get(assoc, uid: str, tags=None) -> Dataset:
    status, ds = n_get(assoc, uid, tags)
    assert status_of(status) == 0x0000, comment_of(status)
    return ds


def raw_request(assoc, primitive, abstract_syntax: str):
    """Send a hand-built DIMSE request primitive on the context of ``abstract_syntax`` and
    return the response primitive (for what pynetdicom's send_* methods won't send)."""
    context = assoc._get_valid_context(abstract_syntax, "", "scu")
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(primitive, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp is not None, "no response from the gateway"
    return rsp


def encoded(ds: Dataset, implicit: bool = False) -> BytesIO:
    from pynetdicom.dsutils import encode

    return BytesIO(encode(ds, implicit, True))


def wire(message, context_id: int, max_pdu: int) -> bytes:
    """A pynetdicom DIMSE message (``dimse_messages`` class, primitive already converted) as the
    P-DATA-TF PDUs pynetdicom itself would send: the reference for what goes on the wire."""
    from pynetdicom.pdu import P_DATA_TF

    out = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return b"".join(out)


# ---- a peer that speaks PDUs by hand -------------------------------------------------------------

class RawPeer:
    """A TCP connection to the gateway's DIMSE port that reads and writes PDUs itself."""

    def __init__(self, gateway, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", gateway.dimse_port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def pdu(self) -> tuple[int, bytes]:
        """The next PDU: (type, the whole PDU)."""
        header = self._exactly(6)
        return header[0], header + self._exactly(struct.unpack(">I", header[2:])[0])

    def closed_by_peer(self, within: float = 5.0) -> bool:
        from tests.helpers import peer_closed
        return peer_closed(self.sock, within)

    def close(self) -> None:
        self.sock.close()


def still_serving(gateway) -> None:
    """The gateway still accepts an association and answers a C-ECHO."""
    with association(gateway) as assoc:
        assert assoc.send_c_echo().Status == 0x0000


def assert_rejected(assoc, gateway, expected: tuple[int, int, int], reason: str, ae: str) -> None:
    """``assoc`` was refused with A-ASSOCIATE-RJ (result, source, diagnostic) = ``expected``.

    pynetdicom 3.0.4, on a busy machine, sometimes aborts its side after an A-ASSOCIATE-RJ
    instead of flagging ``is_rejected``; then the gateway's own log says what it sent."""
    assert not assoc.is_established
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == expected
        return
    deadline = time.monotonic() + 10
    while not gateway.records(f"association rejected: {reason}", ae=ae):
        assert time.monotonic() < deadline, f"no 'association rejected: {reason}' for {ae}"
        time.sleep(0.05)


def associate_rq(contexts, calling: str, *, syntax: str = ExplicitVRLittleEndian,
                 application_context: str | None = None, max_pdu: int | None = 4096,
                 implementation_uid: str | None = None) -> bytes:
    """The bytes of an A-ASSOCIATE-RQ to the gateway: ``contexts`` are (context ID, abstract
    syntax) pairs, each proposing ``syntax``."""
    from pynetdicom import build_context
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                           MaximumLengthNotification)

    from gateway.dimse import negotiation
    primitive = A_ASSOCIATE()
    primitive.application_context_name = application_context or negotiation.APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = calling, "UPS_GATEWAY"
    items = []
    if max_pdu is not None:
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = max_pdu
        items.append(max_length)
    if implementation_uid is not None:
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = implementation_uid
        items.append(implementation)
    primitive.user_information = items
    for context_id, abstract in contexts:
        cx = build_context(abstract, [syntax])
        cx.context_id = context_id
        primitive.presentation_context_definition_list.append(cx)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()
