"""The gateway's asyncio DIMSE requestor (gateway.dimse.requestor) sending N-EVENT-REPORTs over
real TCP to independent receivers: a pynetdicom UPS Event SCU (tests.event_receiver), a
dcmjs-dimse one on Node.js (tests/interop/event_receiver.js), and raw sockets for the peers
that misbehave. Every failure must be an ``AssociationError`` of the right kind, never a hang."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import struct
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.valuerep import DSfloat
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom import build_role
from pynetdicom import dimse_messages as dm
from pynetdicom import dimse_primitives as dp
from pynetdicom.pdu_primitives import (A_ASSOCIATE, MaximumLengthNotification,
                                       SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import UnifiedProcedureStepEvent

from gateway.dimse import convert, negotiation
from gateway.dimse import requestor as rq
from gateway.dimse.messages import Assembler
from tests.dimse_util import EVENT, NODELAY_HANDLER, PUSH, guard_responses, wire
from tests.event_receiver import EventReceiver
from tests.helpers import free_port, new_uid

INTEROP = Path(__file__).parent / "interop"
GATEWAY_AE = "UPS_GATEWAY"
TIMEOUT = 5.0
SHORT = 0.5  # for the peers that never answer
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"

MULLER = "Müller^Jürgen"
YAMADA = {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}


def event_information(progress: float = 0.1 + 0.2, text: str = "Ünïcode progress") -> dict:
    """A canonical Event Information of a UPS Progress event, with what pydicom gets wrong on
    its own: non-ASCII text and a DS whose repr is longer than 16 characters."""
    return {
        "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00741002": {"vr": "SQ", "Value": [{
            "00741004": {"vr": "DS", "Value": [progress]},
            "00741006": {"vr": "ST", "Value": [text]},
        }]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": MULLER}, YAMADA]},
    }


async def associate(port: int, called: str = "RECEIVER", **kw) -> rq.Requestor:
    kw.setdefault("timeout", TIMEOUT)
    return await rq.associate("127.0.0.1", port, calling_ae=GATEWAY_AE, called_ae=called, **kw)


async def send(assoc: rq.Requestor, uid: str, event_type: int, ds: dict) -> tuple[int, str | None]:
    return await assoc.send_event_report(uid, event_type, convert.encode(ds, assoc.transfer_syntax))


@pytest.fixture
def receiver():
    with EventReceiver() as rx:
        yield rx


def test_message_ids_run_from_1_to_ffff_and_wrap_past_0():
    assert rq.next_message_id(1) == 2
    assert rq.next_message_id(0xFFFE) == 0xFFFF
    assert rq.next_message_id(0xFFFF) == 1


# ---- pynetdicom receiver ---------------------------------------------------------------------

async def test_a_report_arrives_as_sent(receiver):
    uid = new_uid()
    requestors = []
    receiver.before_answer = lambda event: requestors.append(event.assoc.requestor)
    async with await associate(receiver.port) as assoc:
        assert assoc.is_established
        assert assoc.agreement.contexts == {1: EVENT}
        assert assoc.transfer_syntax in (EXPLICIT, IMPLICIT)
        assert assoc.agreement.roles[EVENT] == (False, True)  # the SCP role, accepted
        assert await send(assoc, uid, 3, event_information()) == (0x0000, None)
    assert not assoc.is_established
    [report] = receiver.reports
    assert (report.event_type, report.uid, report.sop_class) == (3, uid, PUSH)
    assert report.calling_ae == GATEWAY_AE and report.message_id == 1
    [requestor] = requestors  # who we said we are: as the listener says it
    assert requestor.implementation_class_uid == negotiation.IMPLEMENTATION_CLASS_UID
    assert requestor.implementation_version_name == negotiation.IMPLEMENTATION_VERSION_NAME
    assert requestor.maximum_length == rq.Dimse.max_pdu
    ds = report.dataset
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.ProcedureStepState == "IN PROGRESS"
    assert [str(name) for name in ds.PatientName] == [MULLER,
                                                      "Yamada^Tarou=山田^太郎=やまだ^たろう"]
    [progress] = ds.ProcedureStepProgressInformationSequence
    assert progress.ProcedureStepProgressDescription == "Ünïcode progress"
    value = progress["ProcedureStepProgress"].value
    assert isinstance(value, DSfloat) and len(str(value)) <= 16, str(value)
    assert abs(float(value) - 0.3) < 1e-12


async def test_the_receivers_answer_is_returned(receiver):
    receiver.status = 0xC123
    async with await associate(receiver.port) as assoc:
        status, comment = await send(assoc, new_uid(), 1, event_information())
    assert status == 0xC123 and comment is None


async def test_message_ids_increase_over_many_reports_on_one_association(receiver):
    uids = [new_uid() for _ in range(300)]
    async with await associate(receiver.port) as assoc:
        for n, uid in enumerate(uids):
            assert (await send(assoc, uid, 1, event_information(progress=n / 3)))[0] == 0
        # … and wrap from 0xFFFF to 1, not 0 (set where 65 535 reports would have left it).
        assoc._message_id = 0xFFFE
        for uid in ("2.25.65534", "2.25.65535", "2.25.1"):
            assert (await send(assoc, uid, 1, event_information()))[0] == 0
    reports = receiver.reports
    assert [r.uid for r in reports[:300]] == uids
    assert [r.message_id for r in reports] == [*range(1, 301), 0xFFFE, 0xFFFF, 1]
    assert receiver.associations == 1


async def test_a_small_peer_maximum_fragments_a_large_dataset():
    text = " ".join(["Schritt für Schritt — 手順"] * 4000)  # ≈ 120 kB in UTF-8, as UT
    ds = {**event_information(), "0040A160": {"vr": "UT", "Value": [text]}}
    with EventReceiver(max_pdu=1024) as rx:
        async with await associate(rx.port) as assoc:
            assert assoc.agreement.peer_max_pdu == 1024
            assert (await send(assoc, new_uid(), 3, ds))[0] == 0
            assert (await send(assoc, new_uid(), 3, event_information()))[0] == 0
        first, second = rx.reports
    assert first.dataset.TextValue == text
    assert str(first.dataset.PatientName[0]) == MULLER
    assert second.message_id == 2


async def test_a_calling_ae_the_peer_does_not_know_is_rejected_clearly():
    with EventReceiver(calling_aes=["SOMEONE_ELSE"]) as rx:
        with pytest.raises(rq.Rejected) as caught:
            await associate(rx.port)
    rejection = caught.value.rejection
    assert (rejection.result, rejection.source, rejection.diagnostic) == (1, 1, 3)
    assert caught.value.permanent
    assert "RECEIVER rejected" in str(caught.value) and "Calling AE" in str(caught.value)


async def test_a_peer_that_does_not_take_the_scp_role_is_not_used():
    with EventReceiver(scp_role=False) as rx:  # pynetdicom then refuses the whole context
        with pytest.raises(rq.NotAccepted, match="UPS Event") as caught:
            await associate(rx.port)
        assert caught.value.permanent
        assert not rx.reports


# pynetdicom's abort() may close the socket before its DUL thread sent the A-ABORT: either way
# the association must be noticed gone (the raw peers below send a real A-ABORT every time).
GONE = (rq.Aborted, rq.Closed)


async def test_a_peer_aborting_mid_report_fails_the_report():
    with EventReceiver(before_answer=lambda event: event.assoc.abort()) as rx:
        assoc = await associate(rx.port)
        with pytest.raises(GONE, match="RECEIVER (aborted|closed)"):
            await send(assoc, new_uid(), 1, event_information())
        assert not assoc.is_established
        with pytest.raises(rq.Closed, match="is closed"):
            await send(assoc, new_uid(), 1, event_information())
        await asyncio.wait_for(assoc.closed, TIMEOUT)


async def test_a_peer_aborting_while_idle_is_noticed_before_the_next_report(receiver):
    assoc = await associate(receiver.port)
    [theirs] = receiver.active_associations
    theirs.abort()
    await asyncio.wait_for(assoc.closed, TIMEOUT)
    assert not assoc.is_established
    assert isinstance(assoc.error, GONE)
    with pytest.raises(rq.Closed):
        await send(assoc, new_uid(), 1, event_information())


async def test_a_peer_releasing_is_answered_and_the_association_closed(receiver):
    assoc = await associate(receiver.port)
    [theirs] = receiver.active_associations
    await asyncio.to_thread(theirs.release)  # returns once our A-RELEASE-RP arrived
    assert theirs.is_released
    await asyncio.wait_for(assoc.closed, TIMEOUT)
    assert isinstance(assoc.error, rq.Closed) and "released" in str(assoc.error)
    with pytest.raises(rq.Closed, match="released"):
        await send(assoc, new_uid(), 1, event_information())


async def test_a_peer_that_never_answers_times_out_and_is_aborted():
    gate = threading.Event()
    with EventReceiver(before_answer=lambda event: gate.wait(10)) as rx:
        try:
            assoc = await associate(rx.port, timeout=SHORT)
            with pytest.raises(rq.TimedOut, match="sent no N-EVENT-REPORT-RSP"):
                await send(assoc, new_uid(), 1, event_information())
            assert not assoc.is_established
            await asyncio.wait_for(assoc.closed, TIMEOUT)
        finally:
            gate.set()
        assert len(rx.reports) == 1


async def test_release_then_the_receiver_has_no_association_left(receiver):
    assoc = await associate(receiver.port)
    assert await assoc.release()
    assert not assoc.is_established and assoc.closed.done()
    deadline = time.monotonic() + TIMEOUT
    while receiver.active_associations and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not receiver.active_associations
    assert not await assoc.release()  # already closed: nothing to do


async def test_an_ae_title_that_is_not_one_fails_before_connecting():
    with pytest.raises(ValueError, match="Called AE Title"):
        await associate(free_port(), called="A_CALLED_AE_TOO_LONG")


async def test_nobody_listening_is_a_connect_failure():
    with pytest.raises(rq.ConnectFailed, match="cannot connect"):
        await associate(free_port())


# ---- dcmjs-dimse receiver -------------------------------------------------------------------

class DcmjsReceiver:
    """tests/interop/event_receiver.js: one JSON line per report it received."""

    def __init__(self, node: str, max_pdu: int | None = None):
        self.port = free_port()
        args = [node, str(INTEROP / "event_receiver.js"), str(self.port), "DCMJS_EVENTS"]
        self.proc = subprocess.Popen(args + ([str(max_pdu)] if max_pdu else []),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert json.loads(line)["type"] == "listening", (line, self.proc.stderr.read())
        deadline = time.monotonic() + TIMEOUT
        while socket.socket().connect_ex(("127.0.0.1", self.port)) != 0:
            assert time.monotonic() < deadline, "dcmjs-dimse receiver is not listening"
            time.sleep(0.02)

    def entries(self, count: int) -> list[dict]:
        out = []
        while len(out) < count:
            line = self.proc.stdout.readline()
            assert line, f"receiver ended after {out}: {self.proc.stderr.read()}"
            out.append(json.loads(line))
        return out

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT)


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None or not (INTEROP / "node_modules" / "dcmjs-dimse").is_dir():
        pytest.skip("Node.js or dcmjs-dimse (tests/interop) is not installed")
    return node


async def test_dcmjs_dimse_receives_the_reports(node):
    # Non-ASCII text at the top level only: dcmjs decodes text inside sequence items as Latin-1
    # whatever the Specific Character Set (dcmjs-org/dcmjs#503, #508); pydicom reads it right
    # (test_a_report_arrives_as_sent).
    reason = " ".join(["Gerät defekt — 装置故障, Müller^Jürgen"] * 60)  # LT, spans PDUs
    ds = {**event_information(text="progress"), "00741238": {"vr": "LT", "Value": [reason]}}
    rx = DcmjsReceiver(node, max_pdu=1024)
    try:
        uids = [new_uid() for _ in range(3)]
        async with await associate(rx.port, called="DCMJS_EVENTS") as assoc:
            assert assoc.transfer_syntax == EXPLICIT  # its first choice of ours
            assert assoc.agreement.peer_max_pdu == 1024
            for n, uid in enumerate(uids):
                assert await send(assoc, uid, n + 1, ds) == (0x0000, None)
        *reports, released = await asyncio.to_thread(rx.entries, 4)
    finally:
        rx.stop()
    assert released["type"] == "released"
    assert [(r["messageId"], r["sopInstance"], r["eventTypeId"]) for r in reports] == [
        (1, uids[0], 1), (2, uids[1], 2), (3, uids[2], 3)]
    for report in reports:
        assert report["sopClass"] == PUSH
        assert (report["callingAe"], report["calledAe"]) == (GATEWAY_AE, "DCMJS_EVENTS")
        received = report["dataset"]
        assert received["SpecificCharacterSet"] == "ISO_IR 192"
        assert received["PatientName"] == [{"Alphabetic": MULLER}, YAMADA]
        assert received["ReasonForCancellation"] == reason
        [progress] = received["ProcedureStepProgressInformationSequence"]
        assert progress["ProcedureStepProgressDescription"] == "progress"
        assert progress["ProcedureStepProgress"] == pytest.approx(0.3)


# ---- raw peers: the misbehaving ones --------------------------------------------------------

def read_pdu(conn: socket.socket) -> tuple[int, bytes]:
    header = _exactly(conn, 6)
    return header[0], header + _exactly(conn, int.from_bytes(header[2:6], "big"))


def _exactly(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def accept_pdu(rq_pdu: bytes, max_pdu: int = 16384, syntax: str = EXPLICIT,
               role: tuple[bool, bool] | None = (False, True)) -> bytes:
    """An A-ASSOCIATE-AC built with pynetdicom's primitives: context 1 accepted in ``syntax``,
    ``role`` the role selection reply (None: none)."""
    request = A_ASSOCIATE_RQ()
    request.decode(rq_pdu)
    proposed = request.to_primitive()
    ac = A_ASSOCIATE()
    ac.called_ae_title, ac.calling_ae_title = proposed.called_ae_title, proposed.calling_ae_title
    ac.application_context_name = "1.2.840.10008.3.1.1.1"
    ac.result = 0x00
    cx = PresentationContext()
    cx.context_id, cx.result, cx.transfer_syntax = 1, 0x00, [syntax]
    ac.presentation_context_definition_results_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    items: list = [max_length]
    if role is not None:
        reply = SCP_SCU_RoleSelectionNegotiation()
        reply.sop_class_uid = EVENT
        reply.scu_role, reply.scp_role = role
        items.append(reply)
    ac.user_information = items
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    return pdu.encode()


def pynetdicom_message(message, primitive) -> bytes:
    """A DIMSE message as the P-DATA-TF PDUs pynetdicom's own encoder writes, on context 1."""
    message.primitive_to_message(primitive)
    return wire(message, 1, 0)


def event_response(msg_id: int, status: int = 0, dataset: bytes | None = None) -> bytes:
    primitive = dp.N_EVENT_REPORT()
    primitive.MessageIDBeingRespondedTo = msg_id
    primitive.AffectedSOPClassUID = PUSH
    primitive.Status = status
    if dataset is not None:
        primitive.EventReply = BytesIO(dataset)
    return pynetdicom_message(dm.N_EVENT_REPORT_RSP(), primitive)


def echo_request(msg_id: int) -> bytes:
    primitive = dp.C_ECHO()
    primitive.MessageID = msg_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return pynetdicom_message(dm.C_ECHO_RQ(), primitive)


class RawPeer:
    """One connection, served in a thread by ``script(conn)``; what it read is kept."""

    def __init__(self, script):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.script = script
        self.pdus: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def read(self, conn) -> tuple[int, bytes]:
        pdu = read_pdu(conn)
        self.pdus.append(pdu)
        return pdu

    def read_message(self, conn) -> list[int] | None:
        """One DIMSE message (a report) into ``message``: the lengths of its P-DATA PDUs; None
        when an A-RELEASE-RQ came instead (answered)."""
        assembler, lengths = Assembler(), []
        while True:
            kind, pdu = self.read(conn)
            if kind == 0x05:
                conn.sendall(A_RELEASE_RP().encode())
                return None
            assert kind == 0x04, f"PDU type {kind} instead of P-DATA"
            lengths.append(len(pdu) - 6)
            decoded = P_DATA_TF()
            decoded.decode(pdu)
            for item in decoded.presentation_data_value_items:
                message = assembler.feed(item.presentation_context_id,
                                         item.presentation_data_value)
                if message is not None:
                    self.message = message
                    return lengths

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        try:
            self.script(conn)
        except (ConnectionError, OSError):
            pass  # the requestor closed first
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc
        finally:
            conn.close()

    def close(self) -> None:
        self.thread.join(TIMEOUT)
        self.server.close()
        if self.error is not None:
            raise self.error

    def aborts(self) -> list[tuple[int, int]]:
        """(source, reason) of each A-ABORT it received."""
        return [(pdu[8], pdu[9]) for kind, pdu in self.pdus if kind == 0x07]


def after_accepting(then, **ac):
    """A raw peer's script: accept the association, then ``then(peer, conn)``."""
    def script(conn):
        kind, pdu = read_pdu(conn)
        assert kind == 0x01
        conn.sendall(accept_pdu(pdu, **ac))
        then(peer, conn)
    peer = RawPeer(script)
    return peer


async def raw_report(peer: RawPeer, **kw) -> rq.Requestor:
    assoc = await associate(peer.port, called="RAW", **kw)
    try:
        await assoc.send_event_report(new_uid(), 1, convert.encode(event_information(),
                                                                   assoc.transfer_syntax))
    finally:
        await asyncio.wait_for(assoc.closed, TIMEOUT)
        await asyncio.to_thread(peer.close)
    return assoc


def answer_reports(peer: RawPeer, conn) -> None:
    while peer.read_message(conn) is not None:
        conn.sendall(event_response(peer.message.msg_id))


def until_closed(peer: RawPeer, conn) -> None:
    while True:
        peer.read(conn)


async def test_every_pdu_we_send_is_within_the_peers_maximum():
    def script(peer, conn):
        peer.lengths = peer.read_message(conn)
        conn.sendall(event_response(peer.message.msg_id))
        answer_reports(peer, conn)  # the release

    peer = after_accepting(script, max_pdu=512)
    assoc = await associate(peer.port, called="RAW")
    big = {**event_information(), "0040A160": {"vr": "UT", "Value": ["x" * 20000]}}
    assert (await send(assoc, new_uid(), 1, big))[0] == 0
    assert await assoc.release()
    await asyncio.to_thread(peer.close)
    assert len(peer.lengths) > 40 and max(peer.lengths) <= 512
    assert peer.pdus[-1][0] == 0x05  # then A-RELEASE-RQ


async def test_a_peer_request_is_answered_unrecognised_and_the_report_goes_on():
    def script(peer, conn):
        conn.sendall(echo_request(7))
        # The echo's answer and the report may come in either order: answer reports, keep the
        # echo's answer, until the release.
        while peer.read_message(conn) is not None:
            if peer.message.command_field & 0x8000:
                peer.echo_answer = peer.message
            else:
                conn.sendall(event_response(peer.message.msg_id))

    peer = after_accepting(script)
    assoc = await associate(peer.port, called="RAW")
    assert (await send(assoc, new_uid(), 1, event_information()))[0] == 0
    assert await assoc.release()
    await asyncio.to_thread(peer.close)
    answer = peer.echo_answer
    assert answer.command_field == 0x8030 and answer.us(0x0120) == 7
    assert answer.us(0x0900) == 0x0211


async def test_a_peer_abort_mid_report_says_who_and_why():
    def abort_on_report(peer, conn):
        peer.read_message(conn)
        conn.sendall(bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x01)))  # provider: unrecognized
        until_closed(peer, conn)

    with pytest.raises(rq.Aborted, match="RAW aborted the association") as caught:
        await raw_report(after_accepting(abort_on_report))
    assert caught.value.by_peer and (caught.value.source, caught.value.reason) == (2, 1)


async def test_a_peer_closing_the_socket_fails_the_report():
    def close_on_report(peer, conn):
        peer.read_message(conn)
        conn.shutdown(socket.SHUT_RDWR)

    with pytest.raises(rq.Closed, match="RAW closed the connection"):
        await raw_report(after_accepting(close_on_report))


@pytest.mark.parametrize("case, answer, reason", [
    ("larger than our maximum", lambda msg_id: b"\x04\x00" + struct.pack(">I", 4097) + b"\0" * 64,
     0x06),
    ("an unknown PDU type", lambda msg_id: b"\x0A\x00\x00\x00\x00\x04abcd", 0x01),
    ("an unexpected A-ASSOCIATE-AC", lambda msg_id: b"\x02\x00\x00\x00\x00\x04abcd", 0x02),
    ("undecodable P-DATA", lambda msg_id: b"\x04\x00\x00\x00\x00\x04\x00\x00\x00\x09", None),
    ("a response to another message", lambda msg_id: event_response(msg_id + 1), 0x06),
    ("a response dataset over the bound",
     lambda msg_id: event_response(msg_id, 0, b"\x10\x00\x10\x00\x08\x00\x00\x00Doe^Jane" * 10),
     0x06),
])
async def test_a_peer_breaking_the_protocol_is_aborted_with_a_reason(case, answer, reason):
    def script(peer, conn):
        peer.read_message(conn)
        conn.sendall(answer(peer.message.msg_id))
        until_closed(peer, conn)

    peer = after_accepting(script)
    with pytest.raises(rq.Aborted) as caught:
        await raw_report(peer, max_pdu=4096, max_response_dataset=64)
    assert not caught.value.by_peer
    [(source, sent_reason)] = peer.aborts()
    assert source == 0x02  # from the service provider
    if reason is not None:
        assert sent_reason == reason, (case, caught.value)


async def test_a_peer_refusing_the_scp_role_in_its_reply_is_not_used():
    peer = after_accepting(until_closed, role=(True, False))
    with pytest.raises(rq.NotAccepted, match="refused the SCP role"):
        await associate(peer.port, called="RAW")
    await asyncio.to_thread(peer.close)
    assert peer.aborts() == [(0x00, 0x00)]  # aborted as the service user


async def test_a_peer_ignoring_role_selection_still_gets_reports():
    peer = after_accepting(answer_reports, role=None, syntax=IMPLICIT)
    async with await associate(peer.port, called="RAW") as assoc:
        assert assoc.transfer_syntax == IMPLICIT and assoc.agreement.roles == {}
        assert (await send(assoc, new_uid(), 1, event_information()))[0] == 0
    await asyncio.to_thread(peer.close)


async def test_a_transfer_syntax_we_did_not_propose_is_not_used():
    peer = after_accepting(until_closed, syntax="1.2.840.10008.1.2.2")
    with pytest.raises(rq.NotAccepted, match="not proposed"):
        await associate(peer.port, called="RAW")
    await asyncio.to_thread(peer.close)


async def test_a_peer_that_stops_reading_times_the_report_out():
    stop = threading.Event()

    def script(peer, conn):
        stop.wait(TIMEOUT * 2)  # reads nothing more

    peer = after_accepting(script)
    assoc = await associate(peer.port, called="RAW", timeout=SHORT)
    huge = {"0040A160": {"vr": "UT", "Value": ["x" * (32 << 20)]}}  # more than any buffer
    try:
        with pytest.raises(rq.TimedOut, match="stopped reading the report"):
            await send(assoc, new_uid(), 1, huge)
        await asyncio.wait_for(assoc.closed, TIMEOUT)  # closed anyway, unflushed
    finally:
        stop.set()
        await asyncio.to_thread(peer.close)


async def test_no_answer_to_the_associate_request_times_out():
    peer = RawPeer(lambda conn: until_closed(peer, conn))
    started = time.monotonic()
    with pytest.raises(rq.TimedOut, match="A-ASSOCIATE-RQ"):
        await associate(peer.port, called="RAW", timeout=SHORT)
    assert time.monotonic() - started < TIMEOUT  # bounded, not a hang
    await asyncio.to_thread(peer.close)
    assert [kind for kind, _ in peer.pdus] == [0x01, 0x07]


async def test_no_release_reply_times_out_and_aborts():
    def script(peer, conn):
        until_closed(peer, conn)

    peer = after_accepting(script)
    assoc = await associate(peer.port, called="RAW", timeout=SHORT)
    assert not await assoc.release()
    await asyncio.to_thread(peer.close)
    assert [kind for kind, _ in peer.pdus] == [0x05, 0x07]
    assert isinstance(assoc.error, rq.TimedOut)


# ---- latency, for information ----------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Failed to encode value")  # pynetdicom's path, not ours
async def test_latency_send_to_handler_vs_pynetdicoms_requestor(receiver):
    """p50 of send (dataset encoding included) → receiver's handler for 200 reports, ours and
    pynetdicom's requestor (threaded, as the sender used it), against the same pynetdicom
    receiver. Printed, not asserted."""
    count = 200
    dataset = event_information()

    async with await associate(receiver.port) as assoc:
        sent = []
        for n in range(count):
            sent.append(time.monotonic())
            await send(assoc, f"2.25.{n + 1}", 1, dataset)
    ours = [r.received_at - t for r, t in zip(receiver.reports, sent, strict=True)]
    receiver.clear()

    def theirs() -> list[float]:
        from pydicom import Dataset

        ae = AE(ae_title=GATEWAY_AE)
        ae.add_requested_context(UnifiedProcedureStepEvent, [EXPLICIT, IMPLICIT])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="RECEIVER",
                             ext_neg=[build_role(UnifiedProcedureStepEvent, scp_role=True)],
                             evt_handlers=[NODELAY_HANDLER])
        assert assoc.is_established
        guard_responses(assoc)
        times = []
        for n in range(count):
            ds = Dataset.from_json(dataset)
            times.append(time.monotonic())
            status, _ = assoc.send_n_event_report(ds, 1, PUSH, f"2.25.{n + 1}")
            assert status.Status == 0
        assoc.release()
        return times

    sent = await asyncio.to_thread(theirs)
    stock = [r.received_at - t for r, t in zip(receiver.reports, sent, strict=True)]
    assert len(ours) == len(stock) == count
    print(f"\nsend → handler p50 over {count} reports: asyncio requestor "
          f"{statistics.median(ours) * 1000:.2f} ms, pynetdicom requestor "
          f"{statistics.median(stock) * 1000:.2f} ms")
