"""Scenario 1: REST create throughput with 16 concurrent connections.

Gateway: POST {base}/workitems with distinct realistic workitems (``bench.workload``). Baseline, in
the same run: ``bench.baseline_rest`` (parse the same JSON, one SET) on its own redis-server with
the embedded Redis's AOF settings, on the standard event loop (the target's baseline) and, for
information, on uvloop like the gateway. The load generator is a separate process; the runs
alternate so that drift on the shared machine hits all alike.
"""

from __future__ import annotations

from bench.client import ClientProcess
from bench.context import Context, CpuMeter, Profiler
from bench.procs import Gateway, Module, RedisServer, free_port, wait_http
from bench.report import ScenarioResult
from bench.stats import median

CONCURRENCY = 16


def run(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(1, "REST create throughput, 16 connections")
    s = ctx.sizes
    base_port, uv_port = free_port(), free_port()
    with RedisServer(ctx.workdir, "s1-baseline-redis") as redis_server, \
            Gateway(ctx.workdir, name="s1-gateway") as gw, ClientProcess("s1-client") as client:
        baseline = Module("bench.baseline_rest", ["--port", str(base_port), "--redis",
                                                  redis_server.url], ctx.workdir).start()
        baseline_uv = Module("bench.baseline_rest", ["--port", str(uv_port), "--redis",
                                                     redis_server.url, "--loop", "uvloop"],
                             ctx.workdir).start()
        try:
            wait_http(f"http://127.0.0.1:{base_port}/health", baseline.proc, 30)
            wait_http(f"http://127.0.0.1:{uv_port}/health", baseline_uv.proc, 30)
            client.call("prepare", count=3000)
            targets = {
                "gateway": (f"{gw.base}/workitems", [gw.pid, gw.redis_pid()]),
                "baseline": (f"http://127.0.0.1:{base_port}/dicom-web/workitems",
                             [baseline.pid, redis_server.proc.pid]),
                "baseline-uvloop": (f"http://127.0.0.1:{uv_port}/dicom-web/workitems",
                                    [baseline_uv.pid, redis_server.proc.pid]),
            }
            runs: dict[str, list[dict]] = {name: [] for name in targets}
            for rep in range(ctx.repeat):
                order = ["baseline", "gateway", "baseline-uvloop"]
                order = order if rep % 2 == 0 else order[::-1]
                for name in order:
                    url, pids = targets[name]
                    with CpuMeter(*pids) as cpu:
                        res = client.call("create_burst", url=url, seconds=s.create_seconds,
                                          warmup=s.create_warmup, concurrency=CONCURRENCY)
                    gw.check_alive()
                    res["server_cpu_ms_per_op"] = (cpu.seconds * 1000 / res["ok"]
                                                   if res["ok"] else None)
                    runs[name].append(res)
                    ctx.log(f"s1 rep {rep + 1} {name}: {res['rate']:.0f} creates/s "
                            f"p99 {res['latency'].get('p99_ms', 0):.1f} ms, "
                            f"server CPU {res['server_cpu_ms_per_op'] or 0:.2f} ms/create, "
                            f"statuses {res['statuses']}")
            if ctx.profile_dir is not None:  # an extra, unmeasured run under py-spy
                with Profiler(ctx, gw.pid, "s1-gateway-create", s.create_seconds + s.create_warmup):
                    client.call("create_burst", url=targets["gateway"][0],
                                seconds=s.create_seconds, warmup=s.create_warmup,
                                concurrency=CONCURRENCY)
        finally:
            baseline.stop()
            baseline_uv.stop()

    g, b = runs["gateway"], runs["baseline"]
    rate = r.metric("creates/s", median(x["rate"] for x in g), "/s",
                    median(x["rate"] for x in b), "minimal aiohttp+SET",
                    [x["rate"] for x in g], [x["rate"] for x in b])
    r.metric("create latency p50", median(x["latency"].get("p50_ms") for x in g), "ms",
             median(x["latency"].get("p50_ms") for x in b))
    r.metric("create latency p99", median(x["latency"].get("p99_ms") for x in g), "ms",
             median(x["latency"].get("p99_ms") for x in b))
    r.metric("server CPU per create (app + its Redis)",
             median(x["server_cpu_ms_per_op"] for x in g), "ms",
             median(x["server_cpu_ms_per_op"] for x in b))
    uv = runs["baseline-uvloop"]
    r.metric("creates/s vs the baseline on uvloop (information)", rate.value, "/s",
             median(x["rate"] for x in uv), "minimal aiohttp+SET on uvloop",
             [x["rate"] for x in g], [x["rate"] for x in uv])
    r.target("creates/s vs baseline", "≥ 0.5 × baseline", rate.ratio,
             None if rate.ratio is None else rate.ratio >= 0.5)
    errors = {k: v for x in g for k, v in x["statuses"].items() if str(k) != "201"}
    if errors:
        r.notes.append(f"non-201 answers from the gateway: {errors}")
    r.details = {"runs": runs, "concurrency": CONCURRENCY, "seconds": s.create_seconds}
    ctx.shared["s1_creates_per_s"] = rate.value
    return r
