"""DIMSE limits at their edges, over real TCP against a real gateway process (issue 18): the
largest message, the most fragments, the deadline per message, deflated datasets inflated only
up to the limit, connections still to associate counted against dimse.max_associations, and the
queue of pending requests (TCP back-pressure). Just under each limit: served; over it: A-ABORT
or a failure status, logged — and the process keeps answering others, its memory comes back."""

from __future__ import annotations

import asyncio
import io
import select
import socket
import struct
import threading
import time
import zlib

import pytest
from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ, N_CREATE_RQ
from pynetdicom.dimse_primitives import C_ECHO, N_CREATE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE

from gateway.dimse import negotiation
from tests import dimse_util as d
from tests.abuse import HealthSampler, rss_mb, settled_rss_mb
from tests.helpers import GatewayProcess, element, free_port, new_uid, workitem

MAX_PDU = 4096
MAX_MESSAGE = 12288
MAX_FRAGMENTS = 64
DEADLINE = 2.0
DIMSE_TIMEOUT = 1.0
RQ_TIMEOUT = 3.0
MAX_ASSOCIATIONS = 4
EXPLICIT, IMPLICIT, DEFLATED = negotiation.TRANSFER_SYNTAXES
MWL_FIND = "1.2.840.10008.5.1.4.31"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("dimse-limits"), extra={"dimse": {
        "max_pdu": MAX_PDU, "max_message_bytes": MAX_MESSAGE,
        "max_message_fragments": MAX_FRAGMENTS, "message_deadline_seconds": DEADLINE,
        "dimse_timeout": DIMSE_TIMEOUT, "network_timeout": 30.0, "acse_timeout": 30.0,
        "association_rq_timeout": RQ_TIMEOUT, "max_associations": MAX_ASSOCIATIONS}}).start()
    yield proc
    proc.stop()


# ---- a peer speaking PDUs by hand ----------------------------------------------------------------

class Peer(d.RawPeer):
    def __init__(self, gw, syntax: str = EXPLICIT, abstract: str = d.PUSH):
        super().__init__(gw, timeout=10)
        self.syntax, self.abstract = syntax, abstract

    def associate(self) -> None:
        self.sock.sendall(d.associate_rq([(1, self.abstract)], "LIMIT_SCU", syntax=self.syntax,
                                         max_pdu=MAX_PDU))
        assert self.pdu()[0] == 0x02, "association accepted"

    def response_status(self) -> int:
        """The Status of the next response (command set in one PDV, as the gateway sends)."""
        pdu_type, pdu = self.pdu()
        assert pdu_type == 0x04, f"PDU 0x{pdu_type:02X} instead of a response"
        return status_in(pdu)

    def aborted(self) -> bool:
        pdu_type, _ = self.pdu()
        return pdu_type == 0x07

    def got_something(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])


def status_in(pdu: bytes) -> int:
    """The Status of a response whose command set is the PDU's one PDV."""
    command, pos = pdu[12:], 0
    while pos < len(command):
        group, elem, length = struct.unpack_from("<HHI", command, pos)
        if (group, elem) == (0, 0x0900):
            return struct.unpack_from("<H", command, pos + 8)[0]
        pos += 8 + length
    raise AssertionError("no Status in the response")


def pdv_pdu(data: bytes, control: int, context_id: int = 1) -> bytes:
    item = struct.pack(">IB", len(data) + 2, context_id) + bytes((control,)) + data
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def n_create_parts(ds_json: dict, syntax: str = EXPLICIT) -> tuple[bytes, bytes]:
    """An N-CREATE-RQ as (command set, dataset) bytes, by pynetdicom's encoder."""
    primitive = N_CREATE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = d.PUSH
    primitive.AffectedSOPInstanceUID = new_uid()
    primitive.AttributeList = d.encoded(d.dataset(
        {k: v for k, v in ds_json.items() if k != "00080018"}), implicit=syntax == IMPLICIT)
    message = N_CREATE_RQ()
    message.primitive_to_message(primitive)
    wire = d.wire(message, 1, 0)
    command_pdu_length = struct.unpack(">I", wire[2:6])[0]
    command = wire[12:6 + command_pdu_length]
    dataset = wire[6 + command_pdu_length + 12:]
    return command, dataset


def fragments(data: bytes, count: int) -> list[bytes]:
    """``data`` in exactly ``count`` pieces."""
    cuts = [len(data) * n // count for n in range(count + 1)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def message_pdus(command: bytes, dataset: bytes, dataset_fragments: int) -> list[bytes]:
    out = [pdv_pdu(command, 0x03)]
    pieces = fragments(dataset, dataset_fragments)
    out += [pdv_pdu(p, 0x02 if n == len(pieces) - 1 else 0x00) for n, p in enumerate(pieces)]
    return out


def sized_workitem(dataset_bytes: int) -> tuple[bytes, bytes]:
    """A valid N-CREATE whose dataset is about ``dataset_bytes`` long (an LT comment pads it)."""
    base = len(n_create_parts(workitem())[1])
    pad = dataset_bytes - base - 8
    extra = {"00400400": element("LT", "x" * min(pad, 10240))}
    if pad > 10240:  # LT holds 10240 characters: Patient Comments takes the rest
        extra["00104000"] = element("LT", "y" * (pad - 10240 - 8))
    return n_create_parts(workitem(**extra))


still_serving = d.still_serving


# ---- message size and fragments --------------------------------------------------------------

def test_a_dataset_just_under_the_maximum_is_served_and_one_over_is_aborted(gw):
    command, dataset = sized_workitem(MAX_MESSAGE - 300)  # PDV headers count: 1 byte each
    peer = Peer(gw)
    peer.associate()
    peer.sock.sendall(b"".join(message_pdus(command, dataset, 4)))
    assert peer.response_status() == 0x0000
    peer.close()

    over = b"\x08\x00\x16\x00" + b"x" * (MAX_MESSAGE + 100)  # need not even parse
    peer = Peer(gw)
    peer.associate()
    peer.sock.sendall(b"".join(message_pdus(command, over, 4)))
    assert peer.aborted()
    peer.close()
    assert gw.records("association aborted: a DIMSE message's dataset exceeds "
                      f"{MAX_MESSAGE} bytes", ae="LIMIT_SCU")
    still_serving(gw)


def test_a_message_in_the_most_fragments_is_served_and_in_one_more_is_aborted(gw):
    command, dataset = sized_workitem(2000)
    peer = Peer(gw)
    peer.associate()
    pdus = message_pdus(command, dataset, MAX_FRAGMENTS - 1)  # + the command's own PDV
    assert len(pdus) == MAX_FRAGMENTS
    peer.sock.sendall(b"".join(pdus))
    assert peer.response_status() == 0x0000
    pdus = message_pdus(command, dataset, MAX_FRAGMENTS)
    assert len(pdus) == MAX_FRAGMENTS + 1
    peer.sock.sendall(b"".join(pdus))
    assert peer.aborted()
    peer.close()
    assert gw.records(f"association aborted: a DIMSE message in more than {MAX_FRAGMENTS} "
                      "fragments")
    still_serving(gw)


# ---- the deadline per message -------------------------------------------------------------------

def test_a_message_trickled_slower_than_its_deadline_is_aborted_though_never_silent(gw):
    """Every fragment comes well within dimse_timeout, so the idle timer never fires; the
    deadline from the first fragment does."""
    command, dataset = sized_workitem(3000)
    pdus = message_pdus(command, dataset, 40)  # 40 × 0.3 s: far longer than the deadline
    peer = Peer(gw)
    peer.associate()
    aborted = False
    with HealthSampler(gw) as health:
        for pdu in pdus:
            if peer.got_something():
                aborted = peer.aborted()
                break
            peer.sock.sendall(pdu)
            time.sleep(DIMSE_TIMEOUT * 0.3)
    assert aborted, "the trickle was aborted before it ended"
    peer.close()
    health.assert_responsive("a trickled DIMSE message")
    assert gw.records(f"association aborted: DIMSE message not complete within {DEADLINE:g} s "
                      "of its first fragment (dimse.message_deadline_seconds)")


def test_a_message_slow_but_within_its_deadline_is_served(gw):
    command, dataset = sized_workitem(3000)
    peer = Peer(gw)
    peer.associate()
    for pdu in message_pdus(command, dataset, 3):  # 4 PDUs 0.25 s apart: well inside 2 s
        peer.sock.sendall(pdu)
        time.sleep(0.25)
    assert peer.response_status() == 0x0000
    peer.close()


# ---- deflate -----------------------------------------------------------------------------------

def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def test_a_deflated_dataset_inflating_under_the_maximum_is_served(gw):
    command, dataset = sized_workitem(MAX_MESSAGE - 300)
    peer = Peer(gw, DEFLATED)
    peer.associate()
    peer.sock.sendall(b"".join(message_pdus(command, deflate(dataset), 1)))
    assert peer.response_status() == 0x0000
    peer.close()


def test_a_deflate_bomb_is_refused_with_0213_after_inflating_no_more_than_the_limit(gw):
    """Ten kilobytes that would inflate to 10 MiB: 0x0213 Resource limitation, the association
    lives on, /health answers throughout, and the memory does not grow by the bomb's size."""
    command, _ = n_create_parts(workitem())
    bomb = deflate(b"\x00" * (10 << 20))
    assert len(bomb) < MAX_MESSAGE  # within every limit on the wire
    before = rss_mb(gw.pid)
    peer = Peer(gw, DEFLATED)
    peer.associate()
    with HealthSampler(gw) as health:
        for _ in range(5):
            peer.sock.sendall(b"".join(message_pdus(command, bomb, 4)))
            assert peer.response_status() == 0x0213
    health.assert_responsive("deflate bombs")
    peer.sock.sendall(d_echo())
    assert peer.response_status() == 0x0000, "the association is still usable"
    peer.close()
    after = settled_rss_mb(gw.pid, above=before + 16)
    print(f"RSS before the bombs {before:.0f} MiB, after {after:.0f} MiB")
    assert after < before + 32, "the bombs were never inflated whole"
    assert gw.records("N-CREATE 0x0213: The deflated dataset inflates to more than "
                      f"{MAX_MESSAGE} bytes")


def test_a_deflate_bomb_as_an_mwl_identifier_is_refused_with_a700(gw):
    """The extensions (Modality Worklist here) inflate with the same cap: C-FIND → 0xA700."""
    from pynetdicom.dimse_messages import C_FIND_RQ
    from pynetdicom.dimse_primitives import C_FIND

    primitive = C_FIND()
    primitive.MessageID = 3
    primitive.AffectedSOPClassUID = MWL_FIND
    primitive.Priority = 2
    primitive.Identifier = io.BytesIO(b"\x08\x00\x05\x00")
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    wire = d.wire(message, 1, 0)
    command = wire[12:6 + struct.unpack(">I", wire[2:6])[0]]
    peer = Peer(gw, DEFLATED, MWL_FIND)
    peer.associate()
    peer.sock.sendall(b"".join(message_pdus(command, deflate(b"\x00" * (10 << 20)), 4)))
    assert peer.response_status() == 0xA700
    peer.close()
    still_serving(gw)


def d_echo() -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = d.PUSH
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return d.wire(message, 1, MAX_PDU)


# ---- connections before the association ------------------------------------------------------

def test_connections_still_to_associate_hold_slots_until_their_own_timeout(gw):
    silent = [socket.create_connection(("127.0.0.1", gw.dimse_port)) for _ in
              range(MAX_ASSOCIATIONS)]
    try:
        refused = None
        for _ in range(4):  # within the silent ones' 3 s: once the listener has them all
            time.sleep(0.3)
            attempt = d.associate(gw)
            if attempt.is_rejected:
                refused = attempt
                break
            if attempt.is_established:
                attempt.release()
        assert refused is not None, "rejected while the silent connections hold the slots"
        rj = refused.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)  # local limit
        for sock in silent:  # closed by association_rq_timeout (acse_timeout is 30 s)
            sock.settimeout(RQ_TIMEOUT + 10)
            assert sock.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
    still_serving(gw)


def test_an_a_associate_rq_trickled_in_is_closed_after_the_rq_timeout(gw):
    """One byte every 0.2 s: never silent, yet closed once association_rq_timeout has passed
    since it connected — not when the bytes stop."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = negotiation.APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = "TRICKLE", "UPS_GATEWAY"
    cx = build_context(d.PUSH, [EXPLICIT])
    cx.context_id = 1
    primitive.presentation_context_definition_list.append(cx)
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    raw = rq.encode()  # ~100 bytes: 20 s at this pace
    sock = socket.create_connection(("127.0.0.1", gw.dimse_port))
    closed = False
    try:
        for n in range(len(raw)):
            try:
                sock.sendall(raw[n:n + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if select.select([sock], [], [], 0.2)[0]:
                closed = sock.recv(1) == b""
                break
    finally:
        sock.close()
    assert closed, "closed before the request was complete"
    still_serving(gw)


def test_connections_far_beyond_the_limit_are_closed_unread(gw):
    crowd = [socket.create_connection(("127.0.0.1", gw.dimse_port)) for _ in
             range(MAX_ASSOCIATIONS + 8 + 3)]
    try:
        deadline = time.monotonic() + 10
        while not gw.records("connection refused: dimse.max_associations connections are "
                             "open") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.records("connection refused: dimse.max_associations connections are open")
    finally:
        for sock in crowd:
            sock.close()
    deadline = time.monotonic() + RQ_TIMEOUT + 10
    while time.monotonic() < deadline:  # the crowd's slots come back
        assoc = d.associate(gw)
        if assoc.is_established:
            assoc.release()
            break
        time.sleep(0.2)
    else:
        raise AssertionError("no association after the crowd left")


# ---- memory after never-ending messages ------------------------------------------------------

def test_never_ending_messages_are_cut_at_the_limit_and_their_memory_returns(gw):
    """Four peers each stream one message that never ends (16 MiB offered each): each is aborted
    at the limit, and the process's memory comes back to where it was."""
    command, _ = n_create_parts(workitem())
    chunk = pdv_pdu(b"\x00" * (MAX_PDU - 6), 0x00)
    before = rss_mb(gw.pid)

    def stream() -> bool:
        peer = Peer(gw)
        peer.associate()
        try:
            peer.sock.sendall(pdv_pdu(command, 0x03))
            for _ in range((16 << 20) // len(chunk)):
                if peer.got_something():
                    return peer.aborted()
                peer.sock.sendall(chunk)
            return False
        except (BrokenPipeError, ConnectionResetError):
            return True
        finally:
            peer.close()

    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(stream())) for _ in range(4)]
    with HealthSampler(gw) as health:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    health.assert_responsive("never-ending DIMSE messages")
    assert results == [True] * 4, "each stream was cut"
    after = settled_rss_mb(gw.pid, above=before + 8)
    print(f"RSS before the streams {before:.0f} MiB, after {after:.0f} MiB")
    assert after < before + 24
    still_serving(gw)


# ---- pending requests: a bounded queue, TCP back-pressure ------------------------------------

class SlowCore:
    """The real UPS service, with a create that takes a while: requests pile up behind it."""

    def __init__(self, service, delay: float):
        self.service, self.delay = service, delay
        self.settings = service.settings

    async def create(self, *args, **kw):
        await asyncio.sleep(self.delay)
        return await self.service.create(*args, **kw)


async def test_pipelined_requests_wait_in_a_bounded_queue_and_reading_pauses(service):
    """The listener in this process (so its queue can be watched), on the real UPS core: a peer
    that pipelines 12 N-CREATEs past the operations window gets them all answered, in order,
    while no more than dimse.max_pending_requests wait and the socket is not read meanwhile."""
    from gateway.config import Config
    from gateway.dimse.handlers import DimseHandlers
    from gateway.dimse.server import DimseServer

    config = Config()
    config.dimse.host, config.dimse.port = "127.0.0.1", free_port()
    config.dimse.max_pending_requests = 2
    server = DimseServer(config.dimse, config.ae_title,
                         DimseHandlers(SlowCore(service, 0.05), config.dimse.request_timeout))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", config.dimse.port)
        writer.write(d.associate_rq([(1, d.PUSH)], "PIPE_SCU", max_pdu=None))
        header = await reader.readexactly(6)
        await reader.readexactly(struct.unpack(">I", header[2:])[0])
        assert header[0] == 0x02
        (association,) = server.listener.connections
        messages = []
        for n in range(12):
            command, dataset = n_create_parts(workitem(patient_id=f"PIPE-{n}"))
            messages.append(b"".join(message_pdus(command, dataset, 1)))
        writer.write(b"".join(messages))  # all at once, no waiting for answers
        most_waiting, paused_seen, statuses = 0, False, []
        while len(statuses) < 12:
            most_waiting = max(most_waiting, association._queue.qsize())
            paused_seen |= not association.transport.is_reading()
            try:
                header = await asyncio.wait_for(reader.readexactly(6), 0.01)
            except asyncio.TimeoutError:
                continue
            body = await reader.readexactly(struct.unpack(">I", header[2:])[0])
            assert header[0] == 0x04
            statuses.append(status_in(header + body))
        assert most_waiting <= config.dimse.max_pending_requests
        assert paused_seen, "reading paused while requests waited"
        assert statuses == [0x0000] * 12, "every request answered, none dropped"
        writer.close()
    finally:
        await server.stop()


# ---- a closed association holds nothing ------------------------------------------------------

async def test_a_closed_association_holds_no_bytes_even_if_never_collected(service):
    """The gateway raises the collector's thresholds (gateway/app.py): an association object
    kept alive by a reference cycle may live long after its connection. Its bytes must not:
    closing releases them by itself. Checked with the collector off altogether."""
    import gc

    from gateway.config import Config
    from gateway.dimse.handlers import DimseHandlers
    from gateway.dimse.server import DimseServer

    config = Config()
    config.dimse.host, config.dimse.port = "127.0.0.1", free_port()
    server = DimseServer(config.dimse, config.ae_title,
                         DimseHandlers(service, config.dimse.request_timeout))
    await server.start()
    gc.disable()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", config.dimse.port)
        writer.write(d.associate_rq([(1, d.PUSH)], "GC_SCU", max_pdu=None))
        header = await reader.readexactly(6)
        await reader.readexactly(struct.unpack(">I", header[2:])[0])
        (association,) = server.listener.connections
        command, _ = n_create_parts(workitem())
        writer.write(pdv_pdu(command, 0x03) + pdv_pdu(b"\x00" * 60000, 0x00)
                     + b"\x04\x00\x00\x00\x40\x00")  # and half a PDU header's promise
        await writer.drain()
        for _ in range(500):
            if association.held_bytes >= 60000:
                break
            await asyncio.sleep(0.01)
        assert association.held_bytes >= 60000, "the message's fragments are held meanwhile"
        writer.close()
        await asyncio.wait_for(association.closed, 10)
        assert association.held_bytes == 0
    finally:
        gc.enable()
        await server.stop()
