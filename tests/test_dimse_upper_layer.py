"""The gateway's own DICOM upper layer (gateway.dimse.upper_layer) over real TCP, against a real
gateway process: negotiation, every rejection, release, aborts either way, the ARTIM, network
and DIMSE timeouts, maximum PDU sizes both ways, and broken PDUs sent from raw sockets — after
each of which the listener must keep serving everyone else. pynetdicom is the well-behaved
client; raw sockets are the badly behaved ones."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import N_CREATE_RQ
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE, N_CREATE
from pynetdicom.sop_class import CTImageStorage, Verification

from gateway.dimse import negotiation
from tests import dimse_util as d
from tests.helpers import GatewayProcess, free_port, new_uid, workitem

MAX_PDU = 4096
ACSE_TIMEOUT = 1.0
NETWORK_TIMEOUT = 2.0
DIMSE_TIMEOUT = 1.0
ALLOWED = ["TEST_SCU", "RAW_SCU", "TINY_SCU", "ROLE_SCU", "IDLE_SCU"]
EXPLICIT, IMPLICIT, DEFLATED = negotiation.TRANSFER_SYNTAXES
BIG_ENDIAN = "1.2.840.10008.1.2.2"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("upper"), extra={"dimse": {
        "max_pdu": MAX_PDU, "acse_timeout": ACSE_TIMEOUT, "network_timeout": NETWORK_TIMEOUT,
        "dimse_timeout": DIMSE_TIMEOUT, "max_associations": 10,
        "allowed_calling_aes": ALLOWED}}).start()
    yield proc
    proc.stop()


def assert_found(assoc, label: str, uids: list[str]) -> None:
    """C-FIND by Worklist Label finds exactly ``uids``."""
    identifier = Dataset()
    identifier.WorklistLabel = label
    identifier.SOPInstanceUID = ""
    code, results, _ = d.c_find(assoc, identifier)
    assert code == 0x0000
    assert sorted(r.SOPInstanceUID for r in results) == sorted(uids)


still_serving = d.still_serving


# ---- raw sockets -----------------------------------------------------------------------------

class Raw(d.RawPeer):
    """A TCP connection that speaks PDUs by hand."""

    def associate(self, contexts=((1, d.PUSH),), calling: str = "RAW_SCU",
                  application_context: str = negotiation.APPLICATION_CONTEXT) -> tuple[int, bytes]:
        self.send(associate_rq(contexts, calling, application_context))
        return self.pdu()

    def aborted(self) -> bool:
        """The gateway answered with A-ABORT, then the connection ended."""
        pdu_type, _ = self.pdu()
        return pdu_type == 0x07 and self.closed_by_peer()


def associate_rq(contexts, calling: str, application_context: str) -> bytes:
    return d.associate_rq(contexts, calling, application_context=application_context,
                          max_pdu=MAX_PDU, implementation_uid="1.2.3.4")


def n_create_pdus(context_id: int, max_pdu: int = MAX_PDU) -> bytes:
    """An N-CREATE-RQ (workitem in Explicit VR LE) as P-DATA-TF PDUs, by pynetdicom's encoder."""
    primitive = N_CREATE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = d.PUSH
    primitive.AffectedSOPInstanceUID = new_uid()
    primitive.AttributeList = d.encoded(d.dataset(
        {k: v for k, v in workitem().items() if k != "00080018"}))
    message = N_CREATE_RQ()
    message.primitive_to_message(primitive)
    return d.wire(message, context_id, max_pdu)


def p_data(context_id: int, pdv: bytes) -> bytes:
    item = struct.pack(">IB", len(pdv) + 1, context_id) + pdv
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
ABORT_RQ = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"


# ---- negotiation -----------------------------------------------------------------------------

def test_contexts_are_accepted_or_refused_per_abstract_and_transfer_syntax(gw):
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(d.PUSH, [EXPLICIT, IMPLICIT])
    ae.add_requested_context(d.PULL, [BIG_ENDIAN])  # no transfer syntax we take
    ae.add_requested_context(CTImageStorage, [EXPLICIT])  # not an abstract syntax we serve
    ae.add_requested_context(d.QUERY, [DEFLATED])
    ae.add_requested_context(Verification, [IMPLICIT])
    assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY")
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax): str(cx.transfer_syntax[0])
                    for cx in assoc.accepted_contexts}
        assert accepted == {d.PUSH: EXPLICIT, d.QUERY: DEFLATED, str(Verification): IMPLICIT}
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        assert rejected == {d.PULL: 0x04, str(CTImageStorage): 0x03}
        acceptor = assoc.acceptor
        assert acceptor.maximum_length == MAX_PDU
        assert acceptor.implementation_class_uid == negotiation.IMPLEMENTATION_CLASS_UID
        assert acceptor.implementation_version_name == negotiation.IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released


def test_ups_event_is_accepted_with_both_roles(gw):
    ae = AE(ae_title="ROLE_SCU")
    ae.add_requested_context(d.EVENT, [EXPLICIT])
    ae.add_requested_context(d.PUSH, [EXPLICIT])
    roles = [build_role(d.EVENT, scu_role=True, scp_role=True)]
    assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY", ext_neg=roles)
    try:
        assert assoc.is_established
        event = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == d.EVENT]
        assert len(event) == 1 and event[0].as_scu and event[0].as_scp
    finally:
        assoc.release()


def test_rejections_say_why(gw):
    ae = d.make_ae(ae_title="STRANGER")
    stranger = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY")
    d.assert_rejected(stranger, gw, (1, 1, 3), "calling AE title not recognised", "STRANGER")

    raw = Raw(gw)
    pdu_type, pdu = raw.associate(application_context="1.2.3.4.5")
    assert pdu_type == 0x03 and pdu[7:10] == bytes((1, 1, 2))  # application context
    assert raw.closed_by_peer(), "the gateway waits for the requestor to close, then closes"
    raw.close()

    held = [d.associate(gw) for _ in range(10)]
    try:
        assert all(a.is_established for a in held)
        eleventh = d.associate(gw)
        d.assert_rejected(eleventh, gw, (2, 3, 2), "local limit exceeded", "TEST_SCU")
    finally:
        for a in held:
            a.release()
    still_serving(gw)


# ---- PDU sizes ---------------------------------------------------------------------------------

def test_a_tiny_peer_maximum_fragments_replies_and_our_maximum_reassembles_requests(gw):
    sizes: list[int] = []

    def on_pdu(event):
        if event.data[0] == 0x04:
            sizes.append(len(event.data) - 6)

    ae = d.make_ae(ae_title="TINY_SCU")
    assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY", max_pdu=512,
                         evt_handlers=[(evt.EVT_DATA_RECV, on_pdu)])
    d.guard_responses(assoc)
    label = f"TINY-{new_uid()[-8:]}"
    long_text = "x" * 9000  # the request spans several of our 4 KiB PDUs
    try:
        uids = []
        for n in range(3):
            uid = new_uid()
            ds = workitem(label=label, patient_id=f"PID-{n}",
                          **{"00400400": {"vr": "LT", "Value": [long_text]}})
            status, _ = d.n_create(assoc, ds, uid)
            assert d.status_of(status) == 0x0000, d.comment_of(status)
            uids.append(uid)
        status, ds = d.n_get(assoc, uids[0])
        assert d.status_of(status) == 0x0000
        assert ds.CommentsOnTheScheduledProcedureStep == long_text
        assert_found(assoc, label, uids)
    finally:
        assoc.release()
    assert sizes and max(sizes) <= 512, "every P-DATA-TF within the peer's maximum"
    assert len(sizes) > 9000 / 512, "the N-GET reply came in fragments"


def test_a_pdu_above_our_maximum_is_aborted(gw):
    raw = Raw(gw)
    assert raw.associate()[0] == 0x02
    raw.send(struct.pack(">BBI", 0x04, 0, MAX_PDU + 1))  # the header alone is enough
    pdu_type, pdu = raw.pdu()
    assert pdu_type == 0x07 and pdu[8:10] == bytes((2, 6))  # provider, invalid parameter
    assert raw.closed_by_peer()
    raw.close()
    still_serving(gw)


# ---- broken peers ------------------------------------------------------------------------------

# What a broken peer sends, and whether it associated first.
BROKEN = {
    "unknown PDU type": (True, b"\x09\x00\x00\x00\x00\x02\x00\x00"),
    "P-DATA on a context that was not accepted": (True, p_data(3, b"\x03" + b"\x00" * 8)),
    "PDV item longer than its PDU": (True, b"\x04\x00\x00\x00\x00\x06"
                                            b"\x00\x00\x01\x00\x01\x03"),
    "command set that is not one": (True, p_data(1, b"\x03" + b"\xff" * 9)),
    "dataset fragment before any command": (True, p_data(1, b"\x02" + b"\x00" * 8)),
    "A-ASSOCIATE-RQ once established": (True, associate_rq(((1, d.PUSH),), "RAW_SCU",
                                                          negotiation.APPLICATION_CONTEXT)),
    "HTTP instead of an A-ASSOCIATE-RQ": (False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "an A-ASSOCIATE-RQ that does not decode": (False,
                                               b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_pdu_is_answered_with_a_abort_and_others_are_served(gw, name):
    associate_first, data = BROKEN[name]
    with d.association(gw) as bystander:
        raw = Raw(gw)
        if associate_first:
            assert raw.associate()[0] == 0x02
        raw.send(data)
        assert raw.aborted()
        raw.close()
        assert bystander.send_c_echo().Status == 0x0000
    still_serving(gw)


def test_the_peer_aborting_mid_message_leaves_nothing_behind(gw):
    raw = Raw(gw)
    assert raw.associate()[0] == 0x02
    wire = n_create_pdus(1, max_pdu=256)
    raw.send(wire[:300])  # a few fragments of the N-CREATE, not all
    raw.send(ABORT_RQ)
    assert raw.closed_by_peer()
    raw.close()
    still_serving(gw)


# ---- release and timeouts ------------------------------------------------------------------------

def test_release_is_answered_after_the_request_in_flight(gw):
    raw = Raw(gw)
    assert raw.associate()[0] == 0x02
    raw.send(n_create_pdus(1) + RELEASE_RQ)  # one write: the release right behind the request
    kinds = []
    while True:
        pdu_type, pdu = raw.pdu()
        kinds.append(pdu_type)
        if pdu_type != 0x04:
            break
    assert kinds[0] == 0x04 and kinds[-1] == 0x06, kinds
    raw.close()


def test_a_silent_connection_is_closed_after_the_acse_timeout(gw):
    raw = Raw(gw)
    started = time.monotonic()
    assert raw.closed_by_peer(within=ACSE_TIMEOUT + 3)
    assert ACSE_TIMEOUT * 0.8 <= time.monotonic() - started < ACSE_TIMEOUT + 3
    raw.close()


def test_an_idle_association_is_aborted_after_the_network_timeout(gw):
    aborted = threading.Event()
    ae = d.make_ae(ae_title="IDLE_SCU", timeout=30)
    assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY",
                         evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set())])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    started = time.monotonic()
    assert aborted.wait(NETWORK_TIMEOUT + 3)
    assert time.monotonic() - started >= NETWORK_TIMEOUT * 0.8


def test_a_message_whose_fragments_stop_is_aborted_after_the_dimse_timeout(gw):
    raw = Raw(gw)
    assert raw.associate()[0] == 0x02
    raw.send(p_data(1, b"\x01" + b"\x00" * 8))  # a command fragment, not the last one
    started = time.monotonic()
    pdu_type, _ = raw.pdu()
    assert pdu_type == 0x07
    assert DIMSE_TIMEOUT * 0.8 <= time.monotonic() - started < NETWORK_TIMEOUT
    raw.close()


# ---- DIMSE operations this SCP does not serve --------------------------------------------------

def test_unserved_operations_are_0211_and_the_association_lives(gw):
    with d.association(gw) as assoc:
        uid = new_uid()
        status = assoc.send_n_delete(d.PUSH, uid)
        assert d.status_of(status) == 0x0211 and "N-DELETE" in d.comment_of(status)
        store = C_STORE()
        store.MessageID, store.Priority = 3, 2
        store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = d.PUSH, uid
        store.DataSet = d.encoded(d.dataset({"00100020": {"vr": "LO", "Value": ["X"]}}))
        rsp = d.raw_request(assoc, store, d.PUSH)
        assert rsp.Status == 0x0211 and rsp.AffectedSOPInstanceUID == uid
        for cls in (C_GET, C_MOVE):
            request = cls()
            request.MessageID, request.Priority = 4, 2
            request.AffectedSOPClassUID = d.PULL
            if cls is C_MOVE:
                request.MoveDestination = "ELSEWHERE"
            request.Identifier = d.encoded(d.dataset({"00100020": {"vr": "LO", "Value": ["X"]}}))
            rsp = d.raw_request(assoc, request, d.PULL)
            assert rsp.Status == 0x0211
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000


# ---- many associations at once -----------------------------------------------------------------

def test_eight_associations_interleave_their_requests_correctly(gw):
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def client(k: int) -> None:
        try:
            label = f"PAR{k}-{new_uid()[-6:]}"
            with d.association(gw) as assoc:
                barrier.wait(10)
                uids = []
                for n in range(6):
                    uid = new_uid()
                    status, _ = d.n_create(assoc, workitem(label=label, patient_id=f"P{k}-{n}"),
                                           uid)
                    assert d.status_of(status) == 0x0000, d.comment_of(status)
                    uids.append(uid)
                    status, ds = d.n_get(assoc, uid, [0x00100020, 0x00741202])
                    assert d.status_of(status) == 0x0000
                    assert (ds.PatientID, ds.WorklistLabel) == (f"P{k}-{n}", label)
                    assert_found(assoc, label, uids)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"client {k}: {exc!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


# ---- stopping the gateway ------------------------------------------------------------------------

class SlowCore:
    """The real UPS service, with a retrieve that takes a while: a request in flight to stop on."""

    def __init__(self, service, delay: float):
        self.service, self.delay = service, delay
        self.settings = service.settings

    async def create(self, *args, **kw):
        return await self.service.create(*args, **kw)

    async def retrieve(self, *args, **kw):
        await asyncio.sleep(self.delay)
        return await self.service.retrieve(*args, **kw)


async def test_stopping_answers_the_request_in_flight_then_aborts(service):
    """The listener in this process, on the real UPS core and Redis, stopped mid-request."""
    from gateway.config import Config
    from gateway.dimse.handlers import DimseHandlers
    from gateway.dimse.server import DimseServer

    config = Config()
    config.dimse.host, config.dimse.port = "127.0.0.1", free_port()
    handlers = DimseHandlers(SlowCore(service, delay=0.5), config.dimse.request_timeout)
    server = DimseServer(config.dimse, config.ae_title, handlers)
    await server.start()
    aborted = {name: threading.Event() for name in ("idle", "busy")}
    assocs = {name: await asyncio.to_thread(  # pynetdicom blocks: never on this loop
        d.make_ae().associate, "127.0.0.1", config.dimse.port, ae_title="UPS_GATEWAY",
        evt_handlers=[(evt.EVT_ABORTED, lambda e, flag=flag: flag.set())])
        for name, flag in aborted.items()}
    busy = assocs["busy"]
    d.guard_responses(busy)
    uid = new_uid()
    status, _ = await asyncio.to_thread(d.n_create, busy, workitem(), uid)
    assert d.status_of(status) == 0x0000
    getter = asyncio.create_task(asyncio.to_thread(d.n_get, busy, uid))
    await asyncio.sleep(0.2)  # the N-GET is in the core now
    assert not getter.done()
    await server.stop()
    assert not server.is_running()
    status, ds = await getter
    assert d.status_of(status) == 0x0000 and ds.SOPInstanceUID == uid, "answered, not dropped"
    assert await asyncio.to_thread(aborted["idle"].wait, 5)
    assert await asyncio.to_thread(aborted["busy"].wait, 5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", config.dimse.port), timeout=2).close()
