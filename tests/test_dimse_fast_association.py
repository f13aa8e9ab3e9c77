"""The listener's per-association hook (gateway.dimse.responses: response command sets written
without pydicom) over real TCP: a pynetdicom acceptor with exactly the gateway's EVT_CONN_OPEN
hooks, pynetdicom requestors as peers. Every way an association can carry messages or end must
behave as with pynetdicom's own response path; the gateway-level suites (test_dimse …) run the same
hook in the real gateway."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (UnifiedProcedureStepEvent, UnifiedProcedureStepPull,
                                  UnifiedProcedureStepPush, Verification)

from gateway.dimse.net import NODELAY_HANDLER, guard_responses
from gateway.dimse.server import FAST_ASSOCIATION
from tests.helpers import free_port, new_uid

PUSH, PULL, EVENT = UnifiedProcedureStepPush, UnifiedProcedureStepPull, UnifiedProcedureStepEvent


class Server:
    """A pynetdicom UPS acceptor with the gateway's hooks; records what its handlers saw."""

    def __init__(self, network_timeout: float = 30.0, hooks=FAST_ASSOCIATION):
        self.port = free_port()
        self.hooked: list[bool] = []
        self.action_assocs: list = []
        self.released = threading.Event()
        self.aborted = threading.Event()
        ae = AE(ae_title="FAST_SCP")
        ae.network_timeout = network_timeout
        ae.acse_timeout = ae.dimse_timeout = 15
        for cls in (PUSH, PULL, EVENT):
            ae.add_supported_context(cls, scu_role=True, scp_role=True)
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            NODELAY_HANDLER, *hooks,
            (evt.EVT_N_CREATE, self.on_create), (evt.EVT_N_GET, self.on_get),
            (evt.EVT_N_ACTION, self.on_action), (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_RELEASED, lambda e: self.released.set()),
            (evt.EVT_ABORTED, lambda e: self.aborted.set())])

    def on_create(self, event):
        assoc = event.assoc
        self.hooked.append("send_msg" in vars(assoc.dimse))
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid.endswith(".7"):
            status = Dataset()
            status.Status = 0x0111
            status.ErrorComment = "A workitem with this UID already exists"
            return status, None
        return 0x0000, None

    def on_get(self, event):
        ds = Dataset()
        ds.PatientName = "Doe^Jane"
        ds.ProcedureStepState = "SCHEDULED"
        ds.ScheduledProcedureStepPriority = "HIGH"
        return 0x0000, ds

    def on_find(self, event):
        for n in range(3):
            ds = Dataset()
            ds.PatientID = f"PID-{n}"
            yield 0xFF00, ds
        yield 0x0000, None

    def on_action(self, event):
        self.action_assocs.append(event.assoc)
        return 0x0000, None

    def report(self, uid: str) -> int | None:
        """An N-EVENT-REPORT request on the acceptor association of the last N-ACTION, sent
        from the calling thread while that association waits for activity."""
        info = Dataset()
        info.ProcedureStepState = "IN PROGRESS"
        status, _ = self.action_assocs[-1].send_n_event_report(info, 1, EVENT, uid)
        return status.Status if status else None

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.stop()


def requestor(port: int, reports: list | None = None):
    ae = AE(ae_title="PEER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for cls in (PUSH, PULL, EVENT):
        ae.add_requested_context(cls)
    ae.add_requested_context(Verification)
    handlers = [NODELAY_HANDLER]
    if reports is not None:
        handlers.append((evt.EVT_N_EVENT_REPORT,
                         lambda e: (reports.append(e.event_information.ProcedureStepState),
                                    (0x0000, None))[1]))
    assoc = ae.associate("127.0.0.1", port, ae_title="FAST_SCP", evt_handlers=handlers,
                         ext_neg=[build_role(EVENT, scp_role=True)])
    assert assoc.is_established
    guard_responses(assoc)  # pynetdicom 3.0.4 requestor race (gateway.dimse.net)
    return assoc


def wait_for(condition, seconds: float = 10.0) -> bool:
    """Poll ``condition`` until true; the bound only keeps a broken run from hanging."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def workitem() -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.PatientName = "Doe^Jane"
    return ds


def test_every_message_kind_round_trips(server):
    assoc = requestor(server.port)
    try:
        assert assoc.send_c_echo().Status == 0x0000
        status, _ = assoc.send_n_create(workitem(), PUSH, new_uid())
        assert status.Status == 0x0000
        status, _ = assoc.send_n_create(workitem(), PUSH, "2.25.7")
        assert status.Status == 0x0111
        assert status.ErrorComment == "A workitem with this UID already exists"
        status, ds = assoc.send_n_get([0x00100010], PUSH, new_uid())
        assert status.Status == 0x0000 and ds.PatientName == "Doe^Jane"
        query = Dataset()
        query.PatientID = ""
        answers = [(s.Status, ds.PatientID if ds else None)
                   for s, ds in assoc.send_c_find(query, PULL)]
        assert answers == [(0xFF00, "PID-0"), (0xFF00, "PID-1"), (0xFF00, "PID-2"),
                           (0x0000, None)]
    finally:
        assoc.release()
    assert server.hooked and all(server.hooked)
    assert wait_for(server.released.is_set)


def test_parallel_associations_get_every_response(server):
    failures: list = []

    def run(k: int) -> None:
        assoc = requestor(server.port)
        try:
            for _ in range(150):
                status, _ = assoc.send_n_create(workitem(), PUSH, new_uid())
                if status is None or status.Status != 0x0000:
                    failures.append((k, status))
        finally:
            assoc.release()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    assert len(server.hooked) == 8 * 150


def test_acceptor_can_send_requests_between_responses(server):
    """A request sent on the acceptor association by another thread (pynetdicom's path) between
    responses written by the hook is delivered and answered; the association goes on."""
    reports: list = []
    assoc = requestor(server.port, reports)
    try:
        for _ in range(20):
            uid = new_uid()
            status, _ = assoc.send_n_action(_claim(), 1, PUSH, uid, meta_uid=PULL)
            assert status.Status == 0x0000
            assert server.report(uid) == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert reports == ["IN PROGRESS"] * 20


def _claim() -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = "IN PROGRESS"
    ds.TransactionUID = new_uid()
    return ds


def test_peer_abort_and_dropped_connection_end_the_association(server):
    assoc = requestor(server.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.abort()
    assert wait_for(server.aborted.is_set)
    assert wait_for(lambda: not server.server.active_associations)

    # A peer that vanishes without A-RELEASE or A-ABORT: only the socket closes.
    assoc = requestor(server.port)
    assert assoc.send_c_echo().Status == 0x0000
    raw = assoc.dul.socket.socket
    raw.shutdown(socket.SHUT_RDWR)
    assert wait_for(lambda: not server.server.active_associations)
    assoc.abort()


def test_idle_association_is_ended_by_the_network_timeout():
    srv = Server(network_timeout=0.5)
    try:
        assoc = requestor(srv.port)
        assert assoc.send_c_echo().Status == 0x0000
        assert wait_for(lambda: not assoc.is_established), "the network timeout never fired"
        assert wait_for(lambda: not srv.server.active_associations)
    finally:
        srv.stop()
