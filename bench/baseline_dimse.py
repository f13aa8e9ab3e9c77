"""Scenario 4's baseline: a stock pynetdicom UPS SCP that answers success without storing.

Same presentation contexts, timeouts, PDU size and TCP_NODELAY as the gateway's listener; N-CREATE
answers Success with no attribute list, N-GET answers a canned realistic workitem.

    python -m bench.baseline_dimse --port PORT
"""

from __future__ import annotations

import argparse
import signal
import threading

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (UnifiedProcedureStepEvent, UnifiedProcedureStepPull,
                                  UnifiedProcedureStepPush, UnifiedProcedureStepQuery,
                                  UnifiedProcedureStepWatch, Verification)

from gateway.testing_peers import NODELAY_HANDLER
from bench.workload import Workload

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    canned = Dataset.from_json(Workload(3).workitem(0))

    def on_create(event):
        return 0x0000, None

    def on_get(event):
        return 0x0000, canned

    ae = AE(ae_title="UPS_GATEWAY")
    ae.maximum_associations = 64
    ae.acse_timeout = 30.0
    ae.dimse_timeout = 30.0
    ae.network_timeout = 60.0
    ae.maximum_pdu_size = 262144
    for cls in (UnifiedProcedureStepPush, UnifiedProcedureStepPull, UnifiedProcedureStepWatch,
                UnifiedProcedureStepEvent, UnifiedProcedureStepQuery):
        ae.add_supported_context(cls, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=[
        NODELAY_HANDLER, (evt.EVT_N_CREATE, on_create), (evt.EVT_N_GET, on_get)])
    while not stop.wait(0.5):
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
