"""Scenario 2 (search at scale) and scenario 6 (footprint), on one gateway.

The gateway's store is filled step by step to each size (1k, 10k, 100k; ``--quick``: 1k, 5k) with
``bench.workload`` data — 50 worklist labels, 200 stations, 30 days, 60/20/10/10 % SCHEDULED /
IN PROGRESS / COMPLETED / CANCELED — through the gateway's own UPS service (``bench.loader``, two
loader processes on the gateway's Redis socket). At each size, from a separate client process,
one query at a time over HTTP:

* performer query: SCHEDULED + one Worklist Label + a one-day SPS Start DateTime range, limit 50;
* patient query: PatientID of a stored patient;
* full page (information): SCHEDULED in a three-day window of any worklist, limit 50 — a full page
  at every size, unlike the performer query (0.4 results at 1k, 40 at 100k).

The baseline of a size is the same query at 1k (target: p99 at the largest size ≤ 1.5 × p99 at 1k).

Footprint (scenario 6): Redis ``INFO used_memory`` before loading and at each size, divided by the
number of workitems, with a per-key-kind breakdown (``MEMORY USAGE`` on sampled keys); the
gateway's RSS (psutil) at the largest size with 100 open WebSocket channels.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import psutil
import redis

from bench.client import ClientProcess
from bench.context import Context, Profiler
from bench.procs import Gateway
from bench.report import ScenarioResult
from bench.stats import median
from bench.workload import Workload
from gateway.ups.dataset import normalize

SEED = 1
LOADERS = 2
MiB = 1024 * 1024


def run(ctx: Context, wanted: list[int]) -> list[ScenarioResult]:
    s = ctx.sizes
    search = ScenarioResult(2, "Search at scale (performer and patient queries)")
    foot = ScenarioResult(6, "Footprint: Redis memory per workitem, gateway RSS")
    workload = Workload(SEED)
    per_size: dict[int, dict] = {}
    memory: dict[int, int] = {}
    with Gateway(ctx.workdir, name="s2-gateway") as gw, ClientProcess("s2-query") as client:
        r = redis.Redis.from_url(gw.redis_url)
        gw_proc = psutil.Process(gw.pid)
        rss_idle = gw_proc.memory_info().rss
        memory[0] = _used_memory(r)
        loaders = [ClientProcess(f"s2-loader-{k}").start() for k in range(LOADERS)]
        try:
            loaded = 0
            for size in s.search_sizes:
                t0 = time.monotonic()
                _load(loaders, gw, loaded, size)
                loaded = size
                stored = int(r.zcard("ups:ix:all"))
                if stored != size:
                    raise RuntimeError(f"expected {size} workitems in the store, found {stored}")
                memory[size] = _used_memory(r)
                ctx.log(f"s2 loaded {size} workitems in {time.monotonic() - t0:.0f}s; "
                        f"redis used_memory {(memory[size] - memory[0]) / size:.0f} B/workitem")
                per_size[size] = _measure(ctx, client, gw, workload, size)
            if ctx.profile_dir is not None:
                rng = random.Random(99)
                queries = [workload.performer_query(rng) if n % 2 else
                           workload.patient_query(rng, loaded) for n in range(1000)]
                with Profiler(ctx, gw.pid, f"s2-gateway-search-{loaded}", 8):
                    client.call("query_latency", base=gw.base, queries=queries, timeout=8)
            if 6 in wanted:
                _footprint(ctx, foot, gw, r, memory, rss_idle)
        finally:
            for loader in loaders:
                loader.stop()
            r.close()

    first, last = s.search_sizes[0], s.search_sizes[-1]
    for kind in ("performer", "patient"):
        base = per_size[first][kind]
        for size in s.search_sizes:
            m = per_size[size][kind]
            search.metric(f"{kind} p50 @ {size // 1000}k", m["p50"], "ms", base["p50"], "same @1k",
                          m["p50_reps"], base["p50_reps"])
            search.metric(f"{kind} p99 @ {size // 1000}k", m["p99"], "ms", base["p99"], "same @1k",
                          m["p99_reps"], base["p99_reps"])
        top = per_size[last][kind]
        ratio = top["p99"] / base["p99"] if base["p99"] else None
        search.target(f"{kind} p99@{last // 1000}k vs p99@{first // 1000}k",
                      "≤ 1.5 ×", ratio, None if ratio is None else ratio <= 1.5)
        search.target(f"{kind} p50@{last // 1000}k", "< 10 ms", top["p50"], top["p50"] < 10)
    page_base = per_size[first]["page"]
    for size in s.search_sizes:
        m = per_size[size]["page"]
        search.metric(f"full page (information) p50 @ {size // 1000}k", m["p50"], "ms",
                      page_base["p50"], "same @1k", m["p50_reps"], page_base["p50_reps"])
        search.metric(f"full page (information) p99 @ {size // 1000}k", m["p99"], "ms",
                      page_base["p99"], "same @1k", m["p99_reps"], page_base["p99_reps"])
    for size in s.search_sizes:
        search.notes.append(f"{size // 1000}k: performer queries returned "
                            f"{per_size[size]['performer']['mean_results']:.1f} workitems on "
                            f"average, patient queries "
                            f"{per_size[size]['patient']['mean_results']:.1f}, full-page queries "
                            f"{per_size[size]['page']['mean_results']:.1f}")
    if last < 100000:
        search.notes.append(f"--quick: largest size {last}, not 100k; targets are checked at it")
    search.details = {"per_size": per_size}
    results = [search] if 2 in wanted else []
    if 6 in wanted:
        results.append(foot)
    return results


def _used_memory(r: redis.Redis, timeout: float = 60.0) -> int:
    """used_memory once no AOF rewrite is running (its buffers would be counted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        persistence = r.info("persistence")
        if not (persistence.get("aof_rewrite_in_progress")
                or persistence.get("rdb_bgsave_in_progress")):
            break
        time.sleep(0.2)
    return int(r.info("memory")["used_memory"])


def _load(loaders: list[ClientProcess], gw: Gateway, start: int, end: int) -> None:
    bounds = [start + (end - start) * k // len(loaders) for k in range(len(loaders) + 1)]
    with ThreadPoolExecutor(len(loaders)) as pool:
        futures = [pool.submit(loader.call, "bench.loader:load_range", _timeout=1200,
                               redis_url=gw.redis_url, config_path=str(gw.config_path),
                               seed=SEED, start=bounds[k], end=bounds[k + 1])
                   for k, loader in enumerate(loaders)]
        for future in futures:
            future.result()


# The two queries of the targets, and a full page of SCHEDULED workitems of any worklist (the same
# answer size, 50, at every store size: information on how the search scales apart from that).
KINDS = ("performer", "patient", "page")


def _query(workload: Workload, kind: str, rng: random.Random, size: int) -> str:
    if kind == "performer":
        return workload.performer_query(rng)
    if kind == "patient":
        return workload.patient_query(rng, size)
    return workload.page_query(rng)


def _measure(ctx: Context, client: ClientProcess, gw: Gateway, workload: Workload,
             size: int) -> dict:
    s = ctx.sizes
    out: dict = {}
    for kind in KINDS:
        reps = []
        for rep in range(ctx.repeat):
            rng = random.Random(size * 1000 + rep * 10 + KINDS.index(kind))
            queries = [_query(workload, kind, rng, size) for _ in range(s.search_queries)]
            res = client.call("query_latency", base=gw.base, queries=queries)
            bad = {k: v for k, v in res["statuses"].items() if k not in ("200", "204")}
            if bad:
                raise RuntimeError(f"{kind} queries at {size} answered {bad}")
            reps.append(res)
            ctx.log(f"s2 {size} {kind} rep {rep + 1}: p50 {res['latency']['p50_ms']:.2f} ms "
                    f"p99 {res['latency']['p99_ms']:.2f} ms, {res['mean_results']:.1f} results")
        out[kind] = {
            "p50": median(x["latency"]["p50_ms"] for x in reps),
            "p99": median(x["latency"]["p99_ms"] for x in reps),
            "p50_reps": [x["latency"]["p50_ms"] for x in reps],
            "p99_reps": [x["latency"]["p99_ms"] for x in reps],
            "mean_results": median(x["mean_results"] for x in reps),
            "statuses": [x["statuses"] for x in reps],
        }
    return out


# ---- scenario 6 ----------------------------------------------------------------------------

def _category(key: str) -> str:
    body = key[4:] if key.startswith("ups:") else key
    if body.startswith("ix:"):
        name = body[3:]
        head = name.split(":", 1)[0]
        return f"ix:{head}"
    return body.split(":", 1)[0]


def _breakdown(r: redis.Redis, per_category_sample: int = 300) -> dict:
    """Keys per kind, and their memory estimated from ``MEMORY USAGE`` of a random sample."""
    rng = random.Random(5)
    counts: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    for raw in r.scan_iter(match="ups:*", count=5000):
        key = raw.decode()
        cat = _category(key)
        n = counts.get(cat, 0) + 1
        counts[cat] = n
        bucket = samples.setdefault(cat, [])
        if len(bucket) < per_category_sample:
            bucket.append(key)
        elif (j := rng.randrange(n)) < per_category_sample:
            bucket[j] = key
    out = {}
    for cat, keys in samples.items():
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0 if counts[cat] <= 100 else 5)
        sizes = [x or 0 for x in pipe.execute()]
        mean = sum(sizes) / len(sizes)
        out[cat] = {"keys": counts[cat], "mean_bytes": round(mean, 1),
                    "estimated_total": round(mean * counts[cat])}
    return out


def _footprint(ctx: Context, res: ScenarioResult, gw: Gateway, r: redis.Redis,
               memory: dict[int, int], rss_idle: int) -> None:
    sizes = sorted(k for k in memory if k)
    largest = sizes[-1]
    for size in sizes:
        per = (memory[size] - memory[0]) / size
        res.metric(f"Redis used_memory per workitem @ {size // 1000}k", per, "B")
    # Baseline: the stored dataset blob alone (msgpack of the canonical DICOM JSON).
    # Baseline: the workitem's canonical dataset as plain msgpack (computed from the workload, so
    # it does not depend on how the store encodes it), against what the store keeps for it.
    workload = Workload(SEED)
    sample = [normalize(workload.workitem(i)) for i in range(0, largest, max(1, largest // 300))]
    blob = sum(len(msgpack.packb(ds, use_bin_type=True)) for ds in sample) / len(sample)
    uids = [u.decode() for u in r.zrandmember("ups:ix:all", 300)]
    pipe = r.pipeline(transaction=False)
    for uid in uids:
        pipe.hstrlen(f"ups:wi:{uid}", "d")
    lengths = [n for n in pipe.execute() if n]
    stored_blob = sum(lengths) / len(lengths) if lengths else None
    res.notes.append(f"dataset as plain msgpack {blob:.0f} B" + (
        f"; the store's hash field 'd' holds {stored_blob:.0f} B" if stored_blob else ""))
    per_top = (memory[largest] - memory[0]) / largest
    res.metrics[-1].baseline = blob
    res.metrics[-1].baseline_name = "dataset blob (msgpack)"
    res.metrics[-1].ratio = per_top / blob
    res.target(f"Redis memory per workitem @ {largest // 1000}k", "≤ 4096 B", per_top,
               per_top <= 4096)
    breakdown = _breakdown(r)
    total = sum(v["estimated_total"] for v in breakdown.values())
    top = sorted(breakdown.items(), key=lambda kv: -kv[1]["estimated_total"])
    res.notes.append("per-workitem memory by key kind (MEMORY USAGE sample): " + ", ".join(
        f"{cat} {v['estimated_total'] / largest:.0f} B ({v['keys']} keys)" for cat, v in top[:8]))
    res.notes.append(f"MEMORY USAGE total ≈ {total / largest:.0f} B/workitem; used_memory delta "
                     f"{per_top:.0f} B/workitem (the rest: keyspace dictionary, allocator)")

    # Gateway RSS with open WebSocket channels.
    gw_proc = psutil.Process(gw.pid)
    rss_before = gw_proc.memory_info().rss
    rss_ws, opened = asyncio.run(_rss_with_websockets(gw, ctx.sizes.ws_for_rss, gw_proc))
    redis_pid = gw.redis_pid()
    redis_rss = psutil.Process(redis_pid).memory_info().rss if redis_pid else None
    res.metric("gateway RSS, idle right after start", rss_idle / MiB, "MiB")
    res.metric(f"gateway RSS @ {largest // 1000}k after the searches", rss_before / MiB, "MiB",
               rss_idle / MiB, "idle")
    res.metric(f"gateway RSS @ {largest // 1000}k + {opened} WebSockets", rss_ws / MiB, "MiB",
               rss_idle / MiB, "idle")
    if redis_rss:
        res.metric("embedded redis-server RSS (for information)", redis_rss / MiB, "MiB")
    res.target(f"gateway RSS @ {largest // 1000}k + {opened} WebSockets", "≤ 200 MiB",
               rss_ws / MiB, rss_ws <= 200 * MiB)
    res.details = {"used_memory": memory, "dataset_msgpack_bytes": blob,
                   "dataset_stored_bytes": stored_blob, "breakdown": breakdown,
                   "rss_idle": rss_idle, "rss_before_ws": rss_before, "rss_ws": rss_ws,
                   "websockets": opened}
    ctx.log(f"s6 {per_top:.0f} B/workitem, RSS {rss_ws / MiB:.0f} MiB with {opened} WebSockets")


async def _rss_with_websockets(gw: Gateway, count: int, proc: psutil.Process) -> tuple[int, int]:
    import aiohttp

    r = redis.Redis.from_url(gw.redis_url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        try:
            for n in range(count):
                sockets.append(await session.ws_connect(
                    f"{gw.ws_base}/ws/subscribers/RSS{n:03d}",
                    timeout=aiohttp.ClientWSTimeout(ws_close=5)))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # every channel registered in Redis
                if sum(r.zcard(f"ups:chan:RSS{n:03d}") for n in range(count)) >= count:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            rss = proc.memory_info().rss
            return rss, sum(1 for ws in sockets if not ws.closed)
        finally:
            for ws in sockets:
                await ws.close()
            r.close()
