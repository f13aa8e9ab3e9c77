"""Scenario 4: DIMSE throughput.

* N-CREATE/s on one association, and on 8 parallel associations (one client thread each, from
  two client processes);
* associations/s: associate, one N-GET, release, in a loop.

N-CREATE carries a realistic workitem (``bench.workload``) with its UID as Affected SOP Instance
UID on the UPS Push context. The client is a separate process with TCP_NODELAY on its sockets
(``gateway.testing_peers.NODELAY_HANDLER``). Baseline, same run: ``bench.baseline_dimse``, a stock
pynetdicom UPS SCP answering success without storing, same contexts and TCP_NODELAY.

The gateway is probed first (one N-CREATE, then a REST GET of that workitem): if its DIMSE UPS
handlers do not store workitems yet, the gateway side is reported as not measured.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import redis

from bench.client import ClientProcess
from bench.context import Context, CpuMeter, Profiler
from bench.procs import Gateway, Module, free_port, wait_tcp
from bench.report import ScenarioResult
from bench.stats import median, summary

PARALLEL = 8
# The parallel associations come from two client processes (4 each). One pynetdicom process
# driving all 8 spent a whole core of its own (4.9 s of CPU in a 5 s window) and capped the stock
# SCP and the gateway at the same rate: it measured the client, not the servers.
CLIENT_PROCESSES = 2


def _stored(gw: Gateway, uid: str) -> bool:
    try:
        with urllib.request.urlopen(f"{gw.base}/workitems/{uid}", timeout=5) as r:
            return r.status == 200 and bool(json.loads(r.read()))
    except urllib.error.HTTPError:
        return False


def _parallel_ncreate(clients: list[ClientProcess], port: int, sizes) -> dict:
    """N-CREATEs on PARALLEL associations shared out among the client processes, together."""
    share = PARALLEL // len(clients)
    with ThreadPoolExecutor(len(clients)) as pool:
        parts = list(pool.map(lambda c: c.call(
            "dimse_ncreate", port=port, called="UPS_GATEWAY", seconds=sizes.dimse_seconds,
            warmup=sizes.dimse_warmup, associations=share), clients))
    statuses: Counter = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    latencies = [x for part in parts for x in part.pop("raw_s")]
    return {"ok": sum(p["ok"] for p in parts), "rate": sum(p["rate"] for p in parts),
            "statuses": dict(statuses), "latency": summary(latencies),
            "client_cpu_s": sum(p["client_cpu_s"] for p in parts), "processes": len(parts)}


def run(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(4, "DIMSE: N-CREATE/s (1 and 8 associations), associations/s")
    s = ctx.sizes
    port = free_port()
    runs: dict[str, dict[str, list]] = {"gateway": {}, "baseline": {}}
    gateway_ready = False
    probe: dict = {}
    with Gateway(ctx.workdir, name="s4-gateway") as gw, ClientProcess("s4-client") as client, \
            ClientProcess("s4-client-2") as client2:
        baseline = Module("bench.baseline_dimse", ["--port", str(port)], ctx.workdir).start()
        try:
            wait_tcp(port, baseline.proc, 30)
            for c in (client, client2):
                c.call("prepare_dimse", count=300)
            try:
                probe = client.call("dimse_probe", port=gw.dimse_port, called="UPS_GATEWAY")
                gateway_ready = probe["n_create"] == 0 and _stored(gw, probe["uid"])
            except RuntimeError as exc:
                probe = {"error": str(exc).strip().splitlines()[-1]}
            ctx.log(f"s4 gateway probe: {probe} → {'ready' if gateway_ready else 'NOT READY'}")
            get_uid = probe.get("uid") if gateway_ready else None
            servers = {"baseline": (port, [baseline.pid], "1.2.826.0.1.3680043.10.1.1")}
            if gateway_ready:
                servers["gateway"] = (gw.dimse_port, [gw.pid, gw.redis_pid()], get_uid)
            rc = redis.Redis.from_url(gw.redis_url)
            for rep in range(ctx.repeat):
                order = sorted(servers, reverse=rep % 2 == 1)
                for name in order:
                    p, pids, uid = servers[name]
                    for mode in ("1 assoc", f"{PARALLEL} assoc", "associations"):
                        before = int(rc.zcard("ups:ix:all"))
                        with CpuMeter(*pids) as cpu:
                            if mode == "associations":
                                res = client.call("dimse_associations", port=p,
                                                  called="UPS_GATEWAY", seconds=s.dimse_seconds,
                                                  warmup=s.dimse_warmup, uid=uid)
                            elif mode == "1 assoc":
                                res = client.call("dimse_ncreate", port=p, called="UPS_GATEWAY",
                                                  seconds=s.dimse_seconds, warmup=s.dimse_warmup,
                                                  associations=1)
                            else:
                                res = _parallel_ncreate([client, client2], p, s)
                        gw.check_alive()
                        res["server_cpu_ms_per_op"] = (cpu.seconds * 1000 / res["ok"]
                                                       if res["ok"] else None)
                        if name == "gateway" and mode != "associations":
                            stored = int(rc.zcard("ups:ix:all")) - before
                            res["stored"] = stored
                            if stored < res["ok"]:
                                raise AssertionError(f"gateway answered {res['ok']} N-CREATE "
                                                     f"successes but stored only {stored}")
                        runs[name].setdefault(mode, []).append(res)
                        ctx.log(f"s4 rep {rep + 1} {name} {mode}: {res['rate']:.0f}/s, p50 "
                                f"{res['latency'].get('p50_ms', 0):.2f} ms, statuses "
                                f"{res['statuses']}")
            if gateway_ready and ctx.profile_dir is not None:
                with Profiler(ctx, gw.pid, "s4-gateway-ncreate-8",
                              s.dimse_seconds + s.dimse_warmup):
                    client.call("dimse_ncreate", port=gw.dimse_port, called="UPS_GATEWAY",
                                seconds=s.dimse_seconds, warmup=s.dimse_warmup,
                                associations=PARALLEL)
            rc.close()
        finally:
            baseline.stop()

    labels = {"1 assoc": "N-CREATE/s, 1 association",
              f"{PARALLEL} assoc": f"N-CREATE/s, {PARALLEL} associations",
              "associations": "associations/s (assoc + N-GET + release)"}
    ratios = {}
    for mode, label in labels.items():
        g = [x["rate"] for x in runs["gateway"].get(mode, [])]
        b = [x["rate"] for x in runs["baseline"].get(mode, [])]
        m = r.metric(label, median(g), "/s", median(b), "stock pynetdicom SCP", g, b)
        ratios[mode] = m.ratio
    for mode in ("1 assoc", f"{PARALLEL} assoc"):
        g = [x["server_cpu_ms_per_op"] for x in runs["gateway"].get(mode, [])]
        b = [x["server_cpu_ms_per_op"] for x in runs["baseline"].get(mode, [])]
        r.metric(f"server CPU per N-CREATE ({mode})", median(g), "ms", median(b))
    one, eight = ratios["1 assoc"], ratios[f"{PARALLEL} assoc"]
    r.target("N-CREATE/s, 1 association", "≥ 0.8 × baseline", one,
             None if one is None else one >= 0.8)
    r.target(f"N-CREATE/s, {PARALLEL} associations", "≥ 1.0 × baseline", eight,
             None if eight is None else eight >= 1.0)
    if not gateway_ready:
        r.notes.append("gateway not measured: its DIMSE UPS handlers did not store an N-CREATE "
                       f"(probe: {probe}); the baseline was measured")
    r.details = {"runs": runs, "probe": probe, "gateway_ready": gateway_ready}
    return r
