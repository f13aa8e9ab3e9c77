"""pynetdicom 3.0.4's requestor can lose a response to its own reactor thread (see
gateway.dimse.net.guard_responses). Thousands of N-EVENT-REPORTs over parallel associations must
all get their response: a lost one would show up as an empty status after the DIMSE timeout."""

import threading

from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import UnifiedProcedureStepEvent

from gateway.dimse.net import NODELAY_HANDLER, guard_responses
from tests.helpers import PUSH, free_port, new_uid

ASSOCIATIONS = 8
REPORTS_EACH = 400


def test_thousands_of_reports_over_parallel_associations_all_answered():
    received = []
    lock = threading.Lock()

    def on_report(event):
        with lock:
            received.append(event.request.MessageID)
        return 0x0000, None

    port = free_port()
    receiver = AE(ae_title="RECEIVER")
    receiver.maximum_associations = ASSOCIATIONS
    receiver.add_supported_context(UnifiedProcedureStepEvent, scu_role=True, scp_role=True)
    server = receiver.start_server(("127.0.0.1", port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report),
                                                 NODELAY_HANDLER])
    failures = []

    def sender(index: int) -> None:
        ae = AE(ae_title=f"SENDER{index}")
        ae.add_requested_context(UnifiedProcedureStepEvent)
        ae.dimse_timeout = 2  # a stolen response would cost this, and return no status
        assoc = ae.associate("127.0.0.1", port, ae_title="RECEIVER",
                             ext_neg=[build_role(UnifiedProcedureStepEvent, scp_role=True)],
                             evt_handlers=[NODELAY_HANDLER])
        assert assoc.is_established
        guard_responses(assoc)
        info = Dataset()
        info.ProcedureStepState = "SCHEDULED"
        info.InputReadinessState = "READY"
        uid = new_uid()
        for _ in range(REPORTS_EACH):
            status, _ = assoc.send_n_event_report(info, 1, PUSH, uid)
            if not status or status.Status != 0:
                failures.append((index, status))
                break
        assoc.release()

    try:
        threads = [threading.Thread(target=sender, args=(i,)) for i in range(ASSOCIATIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        server.shutdown()
    assert failures == []
    assert len(received) == ASSOCIATIONS * REPORTS_EACH
