"""Scenario 7: Modality Worklist C-FIND against the UPS C-FIND of the same query.

A modality asks the worklist for its station's SCHEDULED steps of one day. Over MWL that is
Scheduled Station AE Title + Scheduled Procedure Step Start Date in the Scheduled Procedure Step
Sequence; over UPS the same question is Procedure Step State SCHEDULED + Scheduled Station Name
Code Sequence + the day's Scheduled Procedure Step Start DateTime range. Both are answered from
the same index (the station code's) on the same stored workitems; MWL adds the projection
(``gateway.ups.mwl``). The target: MWL costs the same order as UPS (p50 ratio ≤ 2).

The workitems are loaded as scenario 2 loads them (``bench.loader``, the gateway's own service;
60 % SCHEDULED, 200 stations, 30 days); one client process sends the two kinds of query
alternately on one association (UPS Pull and MWL contexts) and times each until its final
response.
"""

from __future__ import annotations

import random
import time

from bench.client import ClientProcess
from bench.context import Context
from bench.procs import Gateway
from bench.report import ScenarioResult
from bench.s2_search import SEED, _load
from bench.stats import median, summary
from bench.workload import Workload

MWL_FIND = "1.2.840.10008.5.1.4.31"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"


def run(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(7, "MWL C-FIND vs UPS C-FIND of the same query")
    size = ctx.sizes.search_sizes[1] if len(ctx.sizes.search_sizes) > 1 else 1000
    workload = Workload(SEED)
    rng = random.Random(7)
    queries = [(rng.choice(workload.stations), f"{rng.choice(workload.days):%Y%m%d}")
               for _ in range(ctx.sizes.search_queries)]
    reps: dict[str, list] = {"mwl": [], "ups": []}
    counts: dict[str, int] = {}
    with Gateway(ctx.workdir, name="s7-gateway") as gw, ClientProcess("s7-query") as client:
        loaders = [ClientProcess(f"s7-loader-{k}").start() for k in range(2)]
        try:
            _load(loaders, gw, 0, size)
        finally:
            for loader in loaders:
                loader.stop()
        for _ in range(ctx.repeat):
            out = client.call("bench.s7_mwl:find_latency", port=gw.dimse_port, queries=queries)
            for kind in reps:
                reps[kind].append(summary(out[kind]))
            counts = out["counts"]
    mwl_p50 = median(x["p50_ms"] for x in reps["mwl"])
    ups_p50 = median(x["p50_ms"] for x in reps["ups"])
    r.metric(f"MWL C-FIND p50 @ {size // 1000}k", mwl_p50, "ms", ups_p50, "UPS C-FIND p50",
             [x["p50_ms"] for x in reps["mwl"]], [x["p50_ms"] for x in reps["ups"]])
    r.metric(f"MWL C-FIND p99 @ {size // 1000}k", median(x["p99_ms"] for x in reps["mwl"]), "ms",
             median(x["p99_ms"] for x in reps["ups"]), "UPS C-FIND p99")
    ratio = mwl_p50 / ups_p50 if mwl_p50 and ups_p50 else None
    r.target("MWL p50 vs UPS p50 (same query, same index)", "≤ 2 ×", ratio,
             None if ratio is None else ratio <= 2)
    r.notes.append(f"{len(queries)} queries of each kind per repetition; matches in all: "
                   f"MWL {counts.get('mwl')}, UPS {counts.get('ups')}")
    r.details = {"reps": reps, "counts": counts, "size": size}
    return r


def find_latency(port: int, queries: list[tuple[str, str]]) -> dict:
    """Runs in the client process: each query over UPS and over MWL, alternately."""
    from pynetdicom import AE

    from gateway.testing_peers import NODELAY_HANDLER, guard_responses

    ae = AE(ae_title="BENCH_MODALITY")
    for sop_class in (UPS_PULL, MWL_FIND):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="UPS_GATEWAY",
                         evt_handlers=[NODELAY_HANDLER])
    if not assoc.is_established:
        raise RuntimeError("the gateway refused the association")
    guard_responses(assoc)
    times: dict[str, list[float]] = {"mwl": [], "ups": []}
    counts = {"mwl": 0, "ups": 0}
    try:
        for station, day in queries:
            for kind, identifier, model in (("ups", _ups(station, day), UPS_PULL),
                                            ("mwl", _mwl(station, day), MWL_FIND)):
                t0 = time.perf_counter()
                final = None
                for status, _ in assoc.send_c_find(identifier, model):
                    if status is None or "Status" not in status:
                        raise RuntimeError("no C-FIND response")
                    if status.Status in (0xFF00, 0xFF01):
                        counts[kind] += 1
                    else:
                        final = int(status.Status)
                times[kind].append(time.perf_counter() - t0)
                if final != 0:
                    raise RuntimeError(f"{kind} C-FIND ended with 0x{final or 0:04X}")
    finally:
        assoc.release()
    return {**times, "counts": counts}


def _ups(station: str, day: str):
    from pydicom import Dataset

    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    code = Dataset()
    code.CodeValue = station
    ds.ScheduledStationNameCodeSequence = [code]
    ds.ScheduledProcedureStepStartDateTime = f"{day}-{day}"
    ds.SOPInstanceUID = ds.PatientName = ds.PatientID = ""
    return ds


def _mwl(station: str, day: str):
    from pydicom import Dataset

    ds = Dataset()
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = day
    step.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [step]
    ds.PatientName = ds.PatientID = ""
    return ds
