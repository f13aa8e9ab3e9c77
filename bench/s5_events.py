"""Scenario 5: event latency — from a state change's request to the event's arrival.

Every change is timed from the moment its request is sent (what the targets use: an event may
arrive before the change's response has been read, and time spent before the response is the
server's too) and, for continuity with earlier figures, from the moment its response was read.

* REST change → WebSocket: ``WSSUB`` subscribed globally, its WebSocket open; each change a REST
  claim (PUT …/state, IN PROGRESS), one at a time. Measured on the gateway and, the same way by
  the same client, on ``bench.reference_ups`` (an in-memory UPS-RS server on aiohttp and uvloop,
  in its own process); the runs alternate.
* Fan-out: 100 AEs subscribed globally with 100 WebSockets open, on each server; one REST change
  at a time, time until the last of the 100 has the event. Alternating likewise.
* REST change → DIMSE receiver: ``bench.event_receiver`` (asyncio, on this process's loop) is
  the gateway peer ``RECEIVER``, subscribed globally over REST; the arrival is the moment the
  last fragment of the N-EVENT-REPORT-RQ is read.
* DIMSE change → WebSocket: N-ACTION Change UPS State (UPS Pull context) on one pynetdicom
  association; from the response (the send call returning), as before.

Workitems are created before anyone subscribes, so no creation events are in flight while
measuring; each series is preceded by a few unmeasured changes (connections and associations
opened), and each subscriber is unsubscribed when its part is done. REST → DIMSE comes last: the
gateway keeps its association to the DIMSE peer open while idle (``association_idle_seconds``),
and pynetdicom's reactor threads poll on it, taking CPU and the GIL from the event loop (14 % of
the gateway's samples while REST → WebSocket was profiled after REST → DIMSE). Measured first,
each WebSocket path has the gateway to itself.

Baselines, same run: the reference for the figures from the request; a raw Redis pub/sub round
trip (publish → subscriber has it) on a bare redis-server, to 1 and to 100 subscriber
connections, for the figures from the response; for information, a pynetdicom N-EVENT-REPORT
(as the gateway's sender proposes it) to the same receiver with nothing else involved.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis

from bench.client import ClientProcess
from bench.context import Context, CpuMeter, Profiler
from bench.event_receiver import EventReceiver
from bench.procs import Gateway, Module, RedisServer, free_port, wait_http
from bench.report import ScenarioResult
from bench.stats import median, ratio, summary
from bench.workload import new_uid

GLOBAL = "1.2.840.10008.5.1.4.34.5"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
JSON = {"Content-Type": "application/dicom+json"}
WAIT = 5.0  # seconds one event may take before it counts as missed
WARMUP = 5  # unmeasured changes before each series
# The in-memory references (bench/reference_ups.py), by model, and their results' key prefix:
# py-ups-rs's way (pydicom datasets; the peer the targets compare with) and the floor (plain
# DICOM JSON, orjson frames; for information).
REFERENCES = {"pydicom": "pyd", "json": "ref"}
PROFILE_SECONDS = 6
PROFILE_CHANGES = 1500  # at most, per profiled series


class Arrivals:
    """(uid, state) → arrival times, with waiters; fed on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.times: dict[tuple[str, str], list[float]] = {}
        self.waiters: dict[tuple[str, str], tuple[int, asyncio.Future]] = {}

    def add(self, uid: str, state: str, at: float) -> None:
        key = (uid, state)
        self.times.setdefault(key, []).append(at)
        waiter = self.waiters.get(key)
        if waiter and len(self.times[key]) >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)

    async def wait(self, uid: str, state: str, count: int = 1,
                   timeout: float = WAIT) -> list[float] | None:
        key = (uid, state)
        if len(self.times.get(key, ())) < count:
            future = self.loop.create_future()
            self.waiters[key] = (count, future)
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                return None
            finally:
                self.waiters.pop(key, None)
        return self.times[key]


@dataclass
class Server:
    """A UPS-RS server under measurement: the gateway or the reference."""
    name: str
    base: str
    ws_base: str
    pids: list[int | None]


async def _ws_reader(ws: aiohttp.ClientWebSocketResponse, arrivals: Arrivals) -> None:
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        at = time.perf_counter()
        frame = json.loads(message.data)
        uid = (frame.get("00001000", {}).get("Value") or [""])[0]
        state = (frame.get("00741000", {}).get("Value") or [""])[0]
        arrivals.add(uid, state, at)


async def _subscribe(http: aiohttp.ClientSession, server: Server, ae: str) -> None:
    async with http.post(f"{server.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
        if r.status != 201:
            raise RuntimeError(f"{server.name}: global subscription of {ae} answered {r.status}: "
                               f"{await r.text()}")


async def _unsubscribe(http: aiohttp.ClientSession, server: Server, ae: str) -> None:
    async with http.delete(f"{server.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
        await r.read()


async def _rest_claim(http: aiohttp.ClientSession, server: Server,
                      uid: str) -> tuple[float, float]:
    """Claim ``uid``; (request sent, response read) times."""
    body = ('{"00081195":{"vr":"UI","Value":["%s"]},"00741000":{"vr":"CS","Value":["IN PROGRESS"]}}'
            % new_uid())
    sent = time.perf_counter()
    async with http.put(f"{server.base}/workitems/{uid}/state", data=body, headers=JSON) as r:
        await r.read()
        done = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"{server.name}: claim of {uid} answered {r.status}")
    return sent, done


async def _latencies(change, uids: list[str], arrivals: Arrivals, count: int = 1) -> dict:
    """Run ``change(uid)`` (returns the request and response times) for each uid, one at a time,
    and wait for ``count`` arrivals of its IN PROGRESS event. Per reference point (``request``,
    ``response``): the latency of the last and of the first arrival."""
    since: dict[str, tuple[list[float], list[float]]] = {"request": ([], []),
                                                         "response": ([], [])}
    missed = 0
    for uid in uids:
        sent, responded = await change(uid)
        times = await arrivals.wait(uid, "IN PROGRESS", count)
        if times is None:
            missed += 1
            continue
        for point, start in (("request", sent), ("response", responded)):
            since[point][0].append(max(times[:count]) - start)
            since[point][1].append(min(times[:count]) - start)
    out: dict = {point: {"last": summary(last), "first": summary(first)}
                 for point, (last, first) in since.items()}
    out["missed"] = missed
    out["raw_ms"] = [round(x * 1000, 3) for x in since["request"][0]]
    return out


async def _series(ctx: Context, label: str, change, uids: list[str], arrivals: Arrivals,
                  count: int = 1, cpu_pids: list | None = None) -> dict:
    """One measured series after WARMUP unmeasured changes (``uids`` includes them)."""
    await _latencies(change, uids[:WARMUP], arrivals, count)
    with CpuMeter(*(cpu_pids or [])) as cpu:
        res = await _latencies(change, uids[WARMUP:], arrivals, count)
    done = len(uids) - WARMUP - res["missed"]
    res["server_cpu_ms_per_change"] = cpu.seconds * 1000 / done if cpu_pids and done else None
    req, rsp = res["request"]["last"], res["response"]["last"]
    ctx.log(f"s5 {label}: from the request p50 {req.get('p50_ms', 0):.2f} "
            f"p99 {req.get('p99_ms', 0):.2f} ms; from the response p50 "
            f"{rsp.get('p50_ms', 0):.2f} p99 {rsp.get('p99_ms', 0):.2f} ms; missed {res['missed']}")
    return res


async def _profiled(ctx: Context, gw: Gateway, name: str, change, uids: list[str],
                    arrivals: Arrivals, count: int = 1) -> None:
    """``--profile``: changes one at a time under py-spy for PROFILE_SECONDS (unmeasured)."""
    with Profiler(ctx, gw.pid, name, PROFILE_SECONDS):
        deadline = time.perf_counter() + PROFILE_SECONDS
        for uid in uids:
            if time.perf_counter() > deadline:
                break
            await change(uid)
            await arrivals.wait(uid, "IN PROGRESS", count)


def _split(uids: list[str], rep: int, n: int) -> list[str]:
    """Repetition ``rep``'s share of a group made by ``_group``: warm-up changes, then n."""
    size = WARMUP + n
    return uids[rep * size:(rep + 1) * size]


# ---- DIMSE ----------------------------------------------------------------------------------

class DimseChanger:
    """One association to the gateway; N-ACTION Change UPS State on the UPS Pull context."""

    def __init__(self, gw: Gateway):
        from pynetdicom import AE

        from gateway.testing_peers import NODELAY_HANDLER, guard_responses

        ae = AE(ae_title="BENCH_SCU")
        for cls in (UPS_PUSH, UPS_PULL):
            ae.add_requested_context(cls, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        self.assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY",
                                  evt_handlers=[NODELAY_HANDLER])
        if not self.assoc.is_established:
            raise RuntimeError("association with the gateway's DIMSE listener failed")
        guard_responses(self.assoc)

    def claim(self, uid: str) -> tuple[int | None, float, float]:
        """(status, request sent, response read)."""
        from pydicom import Dataset

        ds = Dataset()
        ds.TransactionUID = new_uid()
        ds.ProcedureStepState = "IN PROGRESS"
        sent = time.perf_counter()
        status, _ = self.assoc.send_n_action(ds, 1, UPS_PUSH, uid, meta_uid=UPS_PULL)
        done = time.perf_counter()
        return (int(status.Status) if status and "Status" in status else None), sent, done

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


class PynetdicomSender:
    """Information: N-EVENT-REPORTs from a bare pynetdicom requestor, as the gateway's sender
    proposes them (UPS Event, SCP role), to the bench receiver."""

    def __init__(self, port: int):
        from pydicom import Dataset
        from pynetdicom import AE, build_role
        from pynetdicom.sop_class import UnifiedProcedureStepEvent

        from gateway.testing_peers import NODELAY_HANDLER, guard_responses

        ae = AE(ae_title="UPS_GATEWAY")
        ae.add_requested_context(UnifiedProcedureStepEvent,
                                 ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.dimse_timeout = ae.acse_timeout = 10
        self.assoc = ae.associate("127.0.0.1", port, ae_title="RECEIVER",
                                  evt_handlers=[NODELAY_HANDLER],
                                  ext_neg=[build_role(UnifiedProcedureStepEvent, scp_role=True)])
        if not self.assoc.is_established:
            raise RuntimeError("the bench receiver refused the pynetdicom sender")
        guard_responses(self.assoc)
        self.info = Dataset()
        self.info.ProcedureStepState = "IN PROGRESS"
        self.info.InputReadinessState = "READY"

    def send(self, uid: str) -> float:
        """Send one report; the time just before the send call."""
        sent = time.perf_counter()
        self.assoc.send_n_event_report(self.info, 1, UPS_PUSH, uid)
        return sent

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


async def _dimse_transport_baseline(port: int, arrivals: Arrivals, events: int) -> dict:
    sender = await asyncio.to_thread(PynetdicomSender, port)
    latencies = []
    try:
        for n in range(WARMUP + events):
            uid = f"2.25.{time.time_ns()}{n}"
            sent = await asyncio.to_thread(sender.send, uid)
            times = await arrivals.wait(uid, "IN PROGRESS")
            if times is not None and n >= WARMUP:
                latencies.append(times[0] - sent)
            await asyncio.sleep(0.002)
    finally:
        await asyncio.to_thread(sender.close)
    return summary(latencies)


# ---- pub/sub baseline -----------------------------------------------------------------------

async def _pubsub_baseline(url: str, events: int, subscribers: int) -> dict:
    publisher = aioredis.Redis.from_url(url)
    clients = [aioredis.Redis.from_url(url) for _ in range(subscribers)]
    pubsubs = [c.pubsub() for c in clients]
    arrivals: dict[int, list[float]] = {}
    done: dict[int, asyncio.Future] = {}
    loop = asyncio.get_running_loop()

    async def reader(ps) -> None:
        async for message in ps.listen():
            if message["type"] != "message":
                continue
            at = time.perf_counter()
            n = int(message["data"])
            got = arrivals.setdefault(n, [])
            got.append(at)
            if len(got) == subscribers and n in done and not done[n].done():
                done[n].set_result(None)

    for ps in pubsubs:
        await ps.subscribe("bench")
    tasks = [asyncio.create_task(reader(ps)) for ps in pubsubs]
    latencies: list[float] = []
    try:
        for n in range(events):
            done[n] = loop.create_future()
            t0 = time.perf_counter()
            await publisher.publish("bench", str(n))
            try:
                await asyncio.wait_for(done[n], WAIT)
            except asyncio.TimeoutError:
                continue
            latencies.append(max(arrivals[n]) - t0)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ps, c in zip(pubsubs, clients):
            await ps.aclose()
            await c.aclose()
        await publisher.aclose()
    return summary(latencies)


async def _redis_round_trip_baseline(socket_path: str, events: int) -> dict:
    """One Redis command's round trip — PING over the unix socket, raw RESP, on the bare
    redis-server — one at a time: what a durable commit adds to a change at the least (the
    gateway's commit is one such round trip, with its Lua step between)."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    latencies: list[float] = []
    try:
        for _ in range(events):
            t0 = time.perf_counter()
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()
        await writer.wait_closed()
    return summary(latencies)


# ---- the scenario ---------------------------------------------------------------------------

def run(ctx: Context) -> ScenarioResult:
    return asyncio.run(_run(ctx))


async def _run(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(5, "Event latency (change request → event arrival)")
    arrivals = Arrivals(asyncio.get_running_loop())
    receiver = await EventReceiver(arrivals.add).start()
    ports = {model: free_port() for model in REFERENCES}
    results: dict[str, list[dict]] = {key: [] for key in (
        "rest_dimse", "dimse_ws", "rest_ws", "fanout", "pubsub", "pubsub_fanout",
        "redis_rtt", "dimse_transport", *(f"{prefix}_{what}" for prefix in REFERENCES.values()
                             for what in ("rest_ws", "fanout")))}
    notes: list[str] = []
    references = {model: Module("bench.reference_ups", ["--port", str(port), "--model", model],
                                ctx.workdir).start()
                  for model, port in ports.items()}
    try:
        with RedisServer(ctx.workdir, "s5-baseline-redis") as bare, \
                Gateway(ctx.workdir, name="s5-gateway", peers={"RECEIVER": {
                    "host": "127.0.0.1", "port": receiver.port}}) as gw, \
                ClientProcess("s5-client") as client:
            servers = {"gateway": Server("gateway", gw.base, gw.ws_base,
                                         [gw.pid, gw.redis_pid()])}
            for model, module in references.items():
                port = ports[model]
                wait_http(f"http://127.0.0.1:{port}/health", module.proc, 30)
                servers[REFERENCES[model]] = Server(
                    f"reference ({model})", f"http://127.0.0.1:{port}/dicom-web",
                    f"ws://127.0.0.1:{port}/dicom-web", [module.pid])
            await _measure(ctx, servers, gw, client, arrivals, receiver, bare, results, notes)
    finally:
        for module in references.values():
            module.stop()
        await receiver.stop()
    if receiver.failures:
        notes.append(f"{receiver.failures} N-EVENT-REPORTs had undecodable event information")
    _report(r, ctx, results, notes)
    return r


async def _measure(ctx: Context, servers: dict[str, Server], gw: Gateway, client: ClientProcess,
                   arrivals: Arrivals, receiver: EventReceiver, bare: RedisServer,
                   results: dict, notes: list[str]) -> None:
    s = ctx.sizes
    n, m, reps, fan = s.events, s.fanout_changes, ctx.repeat, s.fanout_subscribers
    gateway = servers["gateway"]
    refs = [(prefix, servers[prefix]) for prefix in REFERENCES.values()]
    client.call("prepare", count=500)
    profiling = ctx.profile_dir is not None

    async def group(server: Server, name: str, count: int) -> list[str]:
        return await asyncio.to_thread(
            client.call, "create_fixed", url=f"{server.base}/workitems", count=count,
            concurrency=8, label=f"EV{name.upper()[:10]}")

    groups = {
        "rest_dimse": await group(gateway, "rest_dimse", (WARMUP + n) * reps),
        "dimse_ws": await group(gateway, "dimse_ws", (WARMUP + n) * reps + 1),
        "rest_ws": await group(gateway, "rest_ws", (WARMUP + n) * reps),
        "fanout": await group(gateway, "fanout", (WARMUP + m) * reps),
    }
    for prefix, ref in refs:
        groups[f"{prefix}_rest_ws"] = await group(ref, "rest_ws", (WARMUP + n) * reps)
        groups[f"{prefix}_fanout"] = await group(ref, "fanout", (WARMUP + m) * reps)
    if profiling:
        for name in ("profile_dimse", "profile_ws"):
            groups[name] = await group(gateway, name, PROFILE_CHANGES)
        groups["profile_fanout"] = await group(gateway, "profile_fanout", PROFILE_CHANGES // 10)
    ctx.log(f"s5 created {sum(len(v) for v in groups.values())} workitems")

    # limit=0: the 2 × 100 WebSockets must not exhaust the connection pool the PUTs need
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        def rest(server: Server):
            return lambda uid: _rest_claim(http, server, uid)

        # DIMSE change → WebSocket; REST change → WebSocket, gateway and reference alternating
        everyone = [gateway, *(ref for _, ref in refs)]
        sockets = []
        for server in everyone:
            await _subscribe(http, server, "WSSUB")
            sockets.append(await http.ws_connect(f"{server.ws_base}/ws/subscribers/WSSUB"))
        readers = [asyncio.create_task(_ws_reader(ws, arrivals)) for ws in sockets]
        await asyncio.sleep(0.5)
        await _dimse_ws(ctx, gw, groups["dimse_ws"], arrivals, results, notes)
        for rep in range(reps):
            order = [("rest_ws", gateway), *((f"{p}_rest_ws", ref) for p, ref in refs)]
            for key, server in order if rep % 2 == 0 else order[::-1]:
                results[key].append(await _series(
                    ctx, f"rep {rep + 1} REST→WS {server.name}", rest(server),
                    _split(groups[key], rep, n), arrivals, cpu_pids=server.pids))
                gw.check_alive()
        if profiling:
            await _profiled(ctx, gw, "s5-gateway-rest-ws", rest(gateway), groups["profile_ws"],
                            arrivals)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
        for server in everyone:
            await _unsubscribe(http, server, "WSSUB")

        # Fan-out to 100 WebSocket subscribers on each server, alternating
        aes = [f"FAN{k:03d}" for k in range(fan)]
        sockets = []
        for server in everyone:
            for ae in aes:
                await _subscribe(http, server, ae)
                sockets.append(await http.ws_connect(f"{server.ws_base}/ws/subscribers/{ae}"))
        readers = [asyncio.create_task(_ws_reader(ws, arrivals)) for ws in sockets]
        await asyncio.sleep(1.0)
        for rep in range(reps):
            order = [("fanout", gateway), *((f"{p}_fanout", ref) for p, ref in refs)]
            for key, server in order if rep % 2 == 0 else order[::-1]:
                results[key].append(await _series(
                    ctx, f"rep {rep + 1} fan-out {fan} {server.name}", rest(server),
                    _split(groups[key], rep, m), arrivals, count=fan))
                gw.check_alive()
        if profiling:
            await _profiled(ctx, gw, "s5-gateway-fanout", rest(gateway), groups["profile_fanout"],
                            arrivals, count=fan)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
        for server in everyone:
            for ae in aes:  # or every later change would queue 100 events on the gateway
                await _unsubscribe(http, server, ae)

        # REST change → DIMSE receiver, last: see the module docstring
        await _subscribe(http, gateway, "RECEIVER")
        for rep in range(reps):
            results["rest_dimse"].append(await _series(
                ctx, f"rep {rep + 1} REST→DIMSE", rest(gateway),
                _split(groups["rest_dimse"], rep, n), arrivals))
            gw.check_alive()
        if profiling:
            await _profiled(ctx, gw, "s5-gateway-rest-dimse", rest(gateway),
                            groups["profile_dimse"], arrivals)
        await _unsubscribe(http, gateway, "RECEIVER")

    # Baselines: raw Redis pub/sub on a bare redis-server; pynetdicom → the bench receiver.
    for rep in range(reps):
        results["pubsub"].append(await _pubsub_baseline(bare.url, n, 1))
        results["pubsub_fanout"].append(await _pubsub_baseline(bare.url, m, fan))
        results["redis_rtt"].append(await _redis_round_trip_baseline(str(bare.socket), n))
        results["dimse_transport"].append(
            await _dimse_transport_baseline(receiver.port, arrivals, n))
    ctx.log(f"s5 pub/sub baseline p50 {results['pubsub'][0].get('p50_ms', 0):.3f} ms, "
            f"fan-out {fan} p99 {results['pubsub_fanout'][0].get('p99_ms', 0):.2f} ms, "
            f"Redis round trip p50 {results['redis_rtt'][0].get('p50_ms', 0):.3f} ms; "
            f"pynetdicom → receiver p50 {results['dimse_transport'][0].get('p50_ms', 0):.2f} ms")


async def _dimse_ws(ctx: Context, gw: Gateway, uids: list[str], arrivals: Arrivals,
                    results: dict, notes: list[str]) -> None:
    """DIMSE change → WebSocket (WSSUB's socket is open); its first change probes the handlers."""
    try:
        changer = await asyncio.to_thread(DimseChanger, gw)
    except Exception as exc:
        notes.append(f"DIMSE → WebSocket not measured: {exc}")
        return

    async def dimse(uid: str) -> tuple[float, float]:
        status, sent, done = await asyncio.to_thread(changer.claim, uid)
        if status != 0:
            raise RuntimeError(f"N-ACTION on {uid} answered 0x{status or 0:04X}")
        return sent, done

    try:
        status, _, _ = await asyncio.to_thread(changer.claim, uids[0])
        if status != 0:
            notes.append(f"DIMSE → WebSocket not measured: N-ACTION Change UPS State answered "
                         f"0x{status or 0:04X} (handlers not ready)")
            return
        for rep in range(ctx.repeat):
            results["dimse_ws"].append(await _series(
                ctx, f"rep {rep + 1} DIMSE→WS", dimse,
                _split(uids[1:], rep, ctx.sizes.events), arrivals))
            gw.check_alive()
    finally:
        await asyncio.to_thread(changer.close)


# ---- the figures ----------------------------------------------------------------------------

def _report(r: ScenarioResult, ctx: Context, results: dict, notes: list[str]) -> None:
    fan = ctx.sizes.fanout_subscribers

    def reps(key: str, q: str, since: str = "request") -> list:
        return [(x[since]["last"] if since in x else x).get(q) for x in results[key]]

    def med(key: str, q: str, since: str = "request") -> float | None:
        return median(reps(key, q, since))

    def row(label: str, key: str, since: str, base_key: str | None, base_name: str,
            base_since: str = "request") -> None:
        for q in ("p50_ms", "p99_ms"):
            r.metric(f"{label} {q[:3]}", med(key, q, since), "ms",
                     med(base_key, q, base_since) if base_key else None, base_name,
                     reps(key, q, since), reps(base_key, q, base_since) if base_key else [])

    reference = "in-memory UPS-RS, py-ups-rs's way (pydicom)"
    floor = "in-memory UPS-RS floor (plain JSON)"
    row("REST → WebSocket, from the request", "rest_ws", "request", "pyd_rest_ws", reference)
    row(f"fan-out to {fan} WebSockets (last), from the request", "fanout", "request",
        "pyd_fanout", reference)
    row("REST → WebSocket, from the request (vs the floor)", "rest_ws", "request",
        "ref_rest_ws", floor)
    row(f"fan-out to {fan} WebSockets (last), from the request (vs the floor)", "fanout",
        "request", "ref_fanout", floor)
    row("REST → DIMSE receiver, from the request", "rest_dimse", "request", "rest_ws",
        "gateway REST → WebSocket")
    pubsub, pubsub_fan = "Redis pub/sub round trip", f"pub/sub to {fan} connections"
    row("REST → WebSocket, from the response", "rest_ws", "response", "pubsub", pubsub)
    row(f"fan-out to {fan} WebSockets (last), from the response", "fanout", "response",
        "pubsub_fanout", pubsub_fan)
    row("REST → DIMSE receiver, from the response", "rest_dimse", "response", "pubsub", pubsub)
    row("DIMSE change → WebSocket, from the response", "dimse_ws", "response", "pubsub", pubsub)
    row("pynetdicom N-EVENT-REPORT → receiver (info)", "dimse_transport", "request", "pubsub",
        pubsub)
    # What the targets leave out: the gateway answers and notifies only once the change is in
    # Redis, which takes one round trip to another process at the least; the reference keeps
    # it in memory. Its p50 plus one bare Redis round trip of the same run is that floor.
    durable = [None if a is None or b is None else a + b
               for a, b in zip(reps("pyd_rest_ws", "p50_ms"), reps("redis_rtt", "p50_ms"))]
    r.metric("REST → WebSocket, from the request p50 (vs reference + one Redis round trip, "
             "info)", med("rest_ws", "p50_ms"), "ms", median(durable),
             "in-memory reference p50 + Redis PING round trip p50", reps("rest_ws", "p50_ms"),
             durable)
    row("Redis PING round trip, bare redis-server (info)", "redis_rtt", "request", None, "")
    for key, name in (("pyd_rest_ws", reference), ("ref_rest_ws", floor)):
        r.metric("server CPU per change, REST → WebSocket (info)",
                 median(x.get("server_cpu_ms_per_change") for x in results["rest_ws"]), "ms",
                 median(x.get("server_cpu_ms_per_change") for x in results[key]),
                 name + " (its process)")

    missed = {key: sum(x.get("missed", 0) for x in results[key]) for key in (
        "rest_dimse", "dimse_ws", "rest_ws", "fanout", "pyd_rest_ws", "pyd_fanout",
        "ref_rest_ws", "ref_fanout")}

    def complete(*keys: str) -> bool:
        return all(missed[key] == 0 for key in keys)

    for label, key, base_key, limit, rule in (
            ("REST → WebSocket p50 vs reference", "rest_ws", "pyd_rest_ws", 1.0,
             "≤ 1.0 × in-memory reference (py-ups-rs's way), from the request"),
            (f"fan-out {fan} p50 vs reference", "fanout", "pyd_fanout", 1.0,
             "≤ 1.0 × in-memory reference (py-ups-rs's way), from the request"),
            ("REST → DIMSE p50 vs REST → WebSocket", "rest_dimse", "rest_ws", 2.0,
             "≤ 2.0 × gateway REST → WebSocket p50, from the request, same run")):
        value = ratio(med(key, "p50_ms"), med(base_key, "p50_ms"))
        r.target(label, f"{rule} (no event missed)", value,
                 None if value is None else value <= limit and complete(key, base_key))
    for label, key, since, limit in (("REST → DIMSE p99", "rest_dimse", "request", 20.0),
                                     ("DIMSE → WebSocket p99", "dimse_ws", "response", 20.0),
                                     (f"fan-out {fan} p99", "fanout", "request", 50.0)):
        value = med(key, "p99_ms", since)
        r.target(label, f"< {limit:.0f} ms from the {since} (no event missed)", value,
                 None if value is None else value < limit and complete(key))
    if any(missed.values()):
        notes.append(f"events not arrived within {WAIT:.0f}s: {missed}")
    r.notes.extend(notes)
    r.details = {"results": results, "events": ctx.sizes.events,
                 "fanout_changes": ctx.sizes.fanout_changes, "warmup_changes": WARMUP}
