"""Scenario 5: event latency — from a state change's response to the event's arrival.

* REST change → DIMSE receiver: a pynetdicom N-EVENT-REPORT receiver (in this process) is the
  gateway peer ``RECEIVER`` and subscribed globally over REST; each change is a REST claim
  (PUT …/state, IN PROGRESS), one at a time, and the latency is the receiver's arrival time minus
  the moment the PUT's response was read.
* DIMSE change → WebSocket subscriber: ``WSSUB`` subscribed globally, its WebSocket open; each
  change is an N-ACTION Change UPS State (UPS Pull context) on one association.
* REST change → WebSocket (for information; it isolates the WebSocket path from the DIMSE side).
* Fan-out: 100 AEs subscribed globally, 100 WebSockets open; one REST change at a time, time until
  the last of the 100 has the event.

Workitems are created before anyone subscribes, so no creation events are in flight while
measuring. Baselines, same run: a raw Redis pub/sub round trip (publish → subscriber has it) on a
bare redis-server, and the same to 100 subscriber connections.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import redis.asyncio as aioredis

from bench.client import ClientProcess, guard_responses
from bench.context import Context, Profiler
from bench.procs import Gateway, RedisServer, free_port
from bench.report import ScenarioResult
from bench.stats import median, summary
from bench.workload import new_uid

GLOBAL = "1.2.840.10008.5.1.4.34.5"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
JSON = {"Content-Type": "application/dicom+json"}
WAIT = 5.0  # seconds one event may take before it counts as missed


class Arrivals:
    """(uid, state) → arrival times, with waiters; fed from any thread."""

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

    def add_threadsafe(self, uid: str, state: str, at: float) -> None:
        self.loop.call_soon_threadsafe(self.add, uid, state, at)

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


class Receiver:
    """A pynetdicom UPS Event SCP recording each N-EVENT-REPORT's arrival."""

    def __init__(self, arrivals: Arrivals):
        self.arrivals = arrivals
        self.port = free_port()
        self.server = None
        self.count = 0

    def start(self) -> "Receiver":
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import UnifiedProcedureStepEvent

        from gateway.dimse.net import NODELAY_HANDLER

        ae = AE(ae_title="RECEIVER")
        ae.add_supported_context(UnifiedProcedureStepEvent, scu_role=True, scp_role=True)
        ae.network_timeout = 60
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            NODELAY_HANDLER, (evt.EVT_N_EVENT_REPORT, self._on_report)])
        return self

    def _on_report(self, event):
        at = time.perf_counter()
        uid = str(event.request.AffectedSOPInstanceUID)
        info = event.event_information
        state = str(info.get("ProcedureStepState", "")) if info is not None else ""
        self.count += 1
        self.arrivals.add_threadsafe(uid, state, at)
        return 0x0000, None

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


async def _ws_reader(ws: aiohttp.ClientWebSocketResponse, arrivals: Arrivals) -> None:
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            break
        at = time.perf_counter()
        frame = json.loads(message.data)
        uid = (frame.get("00001000", {}).get("Value") or [""])[0]
        state = (frame.get("00741000", {}).get("Value") or [""])[0]
        arrivals.add(uid, state, at)


async def _subscribe(http: aiohttp.ClientSession, gw: Gateway, ae: str) -> None:
    async with http.post(f"{gw.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
        if r.status != 201:
            raise RuntimeError(f"global subscription of {ae} answered {r.status}: {await r.text()}")


async def _unsubscribe(http: aiohttp.ClientSession, gw: Gateway, ae: str) -> None:
    async with http.delete(f"{gw.base}/workitems/{GLOBAL}/subscribers/{ae}") as r:
        await r.read()


async def _rest_claim(http: aiohttp.ClientSession, gw: Gateway, uid: str) -> float:
    body = ('{"00081195":{"vr":"UI","Value":["%s"]},"00741000":{"vr":"CS","Value":["IN PROGRESS"]}}'
            % new_uid())
    async with http.put(f"{gw.base}/workitems/{uid}/state", data=body, headers=JSON) as r:
        await r.read()
        done = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"claim of {uid} answered {r.status}")
    return done


async def _latencies(change, uids: list[str], arrivals: Arrivals, count: int = 1) -> dict:
    """Run ``change(uid)`` (returns the response time) for each uid, one at a time, and wait for
    ``count`` arrivals of its IN PROGRESS event."""
    last: list[float] = []
    first: list[float] = []
    missed = 0
    for uid in uids:
        responded = await change(uid)
        times = await arrivals.wait(uid, "IN PROGRESS", count)
        if times is None:
            missed += 1
            continue
        last.append(max(times[:count]) - responded)
        first.append(min(times[:count]) - responded)
    return {"last": summary(last), "first": summary(first), "missed": missed,
            "raw_ms": [round(x * 1000, 3) for x in last]}


# ---- DIMSE change ---------------------------------------------------------------------------

class DimseChanger:
    """One association to the gateway; N-ACTION Change UPS State on the UPS Pull context."""

    def __init__(self, gw: Gateway):
        from pynetdicom import AE

        from gateway.dimse.net import NODELAY_HANDLER

        ae = AE(ae_title="BENCH_SCU")
        for cls in (UPS_PUSH, UPS_PULL):
            ae.add_requested_context(cls, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        self.assoc = ae.associate("127.0.0.1", gw.dimse_port, ae_title="UPS_GATEWAY",
                                  evt_handlers=[NODELAY_HANDLER])
        if not self.assoc.is_established:
            raise RuntimeError("association with the gateway's DIMSE listener failed")
        guard_responses(self.assoc)

    def claim(self, uid: str) -> tuple[int | None, float]:
        from pydicom import Dataset

        ds = Dataset()
        ds.TransactionUID = new_uid()
        ds.ProcedureStepState = "IN PROGRESS"
        status, _ = self.assoc.send_n_action(ds, 1, UPS_PUSH, uid, meta_uid=UPS_PULL)
        done = time.perf_counter()
        return (int(status.Status) if status and "Status" in status else None), done

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


# ---- baselines ------------------------------------------------------------------------------

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


def _dimse_baseline(events: int) -> dict:
    """Information: a bare pynetdicom N-EVENT-REPORT (one association, idle between messages)
    from the send call to the receiver's handler — the transport's own share of REST → DIMSE."""
    from pydicom import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import UnifiedProcedureStepEvent

    from gateway.dimse.net import NODELAY_HANDLER

    arrived: dict[str, float] = {}
    got = threading.Condition()

    def on_report(event):
        at = time.perf_counter()
        _ = event.event_information  # decoded, as the bench receiver does
        with got:
            arrived[str(event.request.AffectedSOPInstanceUID)] = at
            got.notify_all()
        return 0x0000, None

    port = free_port()
    receiver = AE(ae_title="RECEIVER")
    receiver.add_supported_context(UnifiedProcedureStepEvent, scu_role=True, scp_role=True)
    server = receiver.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        NODELAY_HANDLER, (evt.EVT_N_EVENT_REPORT, on_report)])
    sender = AE(ae_title="UPS_GATEWAY")
    sender.add_requested_context(UnifiedProcedureStepEvent)
    sender.dimse_timeout = sender.acse_timeout = 10
    assoc = sender.associate("127.0.0.1", port, ae_title="RECEIVER", evt_handlers=[NODELAY_HANDLER],
                             ext_neg=[build_role(UnifiedProcedureStepEvent, scp_role=True)])
    latencies = []
    try:
        guard_responses(assoc)
        info = Dataset()
        info.ProcedureStepState = "IN PROGRESS"
        info.InputReadinessState = "READY"
        for n in range(events):
            uid = f"1.2.826.0.1.3680043.10.9.{n + 1}"
            t0 = time.perf_counter()
            assoc.send_n_event_report(info, 1, UPS_PUSH, uid)
            with got:
                got.wait_for(lambda: uid in arrived, WAIT)
            if uid in arrived:
                latencies.append(arrived[uid] - t0)
            time.sleep(0.002)
    finally:
        if assoc.is_established:
            assoc.release()
        server.shutdown()
    return summary(latencies)


# ---- the scenario ---------------------------------------------------------------------------

def run(ctx: Context) -> ScenarioResult:
    return asyncio.run(_run(ctx))


async def _run(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(5, "Event latency (change response → event arrival)")
    s = ctx.sizes
    loop = asyncio.get_running_loop()
    arrivals = Arrivals(loop)
    receiver = Receiver(arrivals).start()
    results: dict[str, list[dict]] = {"rest_dimse": [], "dimse_ws": [], "rest_ws": [],
                                      "fanout": [], "pubsub": [], "pubsub_fanout": [],
                                      "dimse_transport": []}
    notes: list[str] = []
    try:
        with RedisServer(ctx.workdir, "s5-baseline-redis") as bare, \
                Gateway(ctx.workdir, name="s5-gateway", peers={"RECEIVER": {
                    "host": "127.0.0.1", "port": receiver.port}}) as gw, \
                ClientProcess("s5-client") as client:
            n, reps, fan = s.events, ctx.repeat, s.fanout_subscribers
            client.call("prepare", count=500)
            groups = {}
            for name, count in (("rest_dimse", n * reps), ("dimse_ws", n * reps),
                                ("rest_ws", n * reps), ("fanout", s.fanout_changes * reps)):
                groups[name] = await asyncio.to_thread(
                    client.call, "create_fixed", url=f"{gw.base}/workitems", count=count,
                    concurrency=8, label=f"EV{name.upper()[:10]}")
            ctx.log(f"s5 created {sum(len(v) for v in groups.values())} workitems")
            # limit=0: the 100 WebSockets must not exhaust the connection pool the PUTs need
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                             connector=aiohttp.TCPConnector(limit=0)) as http:
                async def rest(uid: str) -> float:
                    return await _rest_claim(http, gw, uid)

                # REST change → DIMSE receiver
                await _subscribe(http, gw, "RECEIVER")
                for rep in range(reps):
                    res = await _latencies(rest, groups["rest_dimse"][rep * n:(rep + 1) * n],
                                           arrivals)
                    results["rest_dimse"].append(res)
                    ctx.log(f"s5 rep {rep + 1} REST→DIMSE: p50 {res['last'].get('p50_ms', 0):.2f} "
                            f"p99 {res['last'].get('p99_ms', 0):.2f} ms, missed {res['missed']}")
                await _unsubscribe(http, gw, "RECEIVER")

                # DIMSE change → WebSocket, and REST change → WebSocket
                await _subscribe(http, gw, "WSSUB")
                ws = await http.ws_connect(f"{gw.ws_base}/ws/subscribers/WSSUB")
                reader = asyncio.create_task(_ws_reader(ws, arrivals))
                await asyncio.sleep(0.5)
                changer = None
                try:
                    changer = await asyncio.to_thread(DimseChanger, gw)
                    status, _ = await asyncio.to_thread(changer.claim, groups["dimse_ws"][0])
                    dimse_ready = status == 0
                    if not dimse_ready:
                        notes.append(f"DIMSE → WebSocket not measured: N-ACTION Change UPS State "
                                     f"answered 0x{status or 0:04X} (handlers not ready)")
                except Exception as exc:
                    dimse_ready = False
                    notes.append(f"DIMSE → WebSocket not measured: {exc}")
                if dimse_ready:
                    async def dimse(uid: str) -> float:
                        status, done = await asyncio.to_thread(changer.claim, uid)
                        if status != 0:
                            raise RuntimeError(f"N-ACTION on {uid} answered 0x{status or 0:04X}")
                        return done

                    for rep in range(reps):
                        chunk = groups["dimse_ws"][rep * n:(rep + 1) * n]
                        res = await _latencies(dimse, chunk[1:] if rep == 0 else chunk, arrivals)
                        results["dimse_ws"].append(res)
                        ctx.log(f"s5 rep {rep + 1} DIMSE→WS: p50 "
                                f"{res['last'].get('p50_ms', 0):.2f} p99 "
                                f"{res['last'].get('p99_ms', 0):.2f} ms, missed {res['missed']}")
                if changer is not None:
                    await asyncio.to_thread(changer.close)
                for rep in range(reps):
                    res = await _latencies(rest, groups["rest_ws"][rep * n:(rep + 1) * n], arrivals)
                    results["rest_ws"].append(res)
                    ctx.log(f"s5 rep {rep + 1} REST→WS: p50 {res['last'].get('p50_ms', 0):.2f} "
                            f"p99 {res['last'].get('p99_ms', 0):.2f} ms, missed {res['missed']}")
                await ws.close()
                reader.cancel()
                await _unsubscribe(http, gw, "WSSUB")

                # Fan-out to 100 WebSocket subscribers
                aes = [f"FAN{k:03d}" for k in range(fan)]
                for ae in aes:
                    await _subscribe(http, gw, ae)
                sockets = [await http.ws_connect(f"{gw.ws_base}/ws/subscribers/{ae}") for ae in aes]
                readers = [asyncio.create_task(_ws_reader(w, arrivals)) for w in sockets]
                await asyncio.sleep(1.0)
                m = s.fanout_changes
                for rep in range(reps):
                    res = await _latencies(rest, groups["fanout"][rep * m:(rep + 1) * m], arrivals,
                                           count=fan)
                    results["fanout"].append(res)
                    ctx.log(f"s5 rep {rep + 1} fan-out {fan}: last p50 "
                            f"{res['last'].get('p50_ms', 0):.1f} p99 "
                            f"{res['last'].get('p99_ms', 0):.1f} ms, missed {res['missed']}")
                if ctx.profile_dir is not None:
                    extra = await asyncio.to_thread(
                        client.call, "create_fixed", url=f"{gw.base}/workitems", count=m,
                        concurrency=8, label="EVPROFILE")
                    await asyncio.sleep(3)  # creation events to 100 subscribers drain first
                    with Profiler(ctx, gw.pid, "s5-gateway-fanout", 8):
                        await asyncio.wait_for(_latencies(rest, extra, arrivals, count=fan), 30)
                for w in sockets:
                    await w.close()
                for t in readers:
                    t.cancel()

            # Baselines: raw Redis pub/sub on a bare redis-server.
            for rep in range(reps):
                results["pubsub"].append(await _pubsub_baseline(bare.url, n, 1))
                results["pubsub_fanout"].append(
                    await _pubsub_baseline(bare.url, s.fanout_changes, fan))
                results["dimse_transport"].append(await asyncio.to_thread(_dimse_baseline, n))
            ctx.log(f"s5 pub/sub baseline p50 {results['pubsub'][0].get('p50_ms', 0):.3f} ms, "
                    f"fan-out {fan} p99 {results['pubsub_fanout'][0].get('p99_ms', 0):.2f} ms")
    finally:
        receiver.stop()

    def med(key: str, q: str, part: str = "last") -> float | None:
        rows = results[key]
        return median((x[part] if part in x else x).get(q) for x in rows) if rows else None

    pub50, pub99 = med("pubsub", "p50_ms"), med("pubsub", "p99_ms")
    fpub50, fpub99 = med("pubsub_fanout", "p50_ms"), med("pubsub_fanout", "p99_ms")
    rows = (("REST change → DIMSE receiver", "rest_dimse", pub50, pub99,
             "Redis pub/sub round trip"),
            ("DIMSE change → WebSocket", "dimse_ws", pub50, pub99, "Redis pub/sub round trip"),
            ("REST change → WebSocket (information)", "rest_ws", pub50, pub99,
             "Redis pub/sub round trip"),
            (f"fan-out to {s.fanout_subscribers} WebSockets, last arrival", "fanout", fpub50,
             fpub99, f"pub/sub to {s.fanout_subscribers} connections"))
    for label, key, b50, b99, bname in rows:
        r.metric(f"{label} p50", med(key, "p50_ms"), "ms", b50, bname,
                 [x["last"].get("p50_ms") for x in results[key]])
        r.metric(f"{label} p99", med(key, "p99_ms"), "ms", b99, bname,
                 [x["last"].get("p99_ms") for x in results[key]])
    r.metric("bare pynetdicom N-EVENT-REPORT p50 (info)",
             med("dimse_transport", "p50_ms"), "ms", pub50, "Redis pub/sub round trip")
    r.metric("bare pynetdicom N-EVENT-REPORT p99 (info)",
             med("dimse_transport", "p99_ms"), "ms", pub99, "Redis pub/sub round trip")
    missed = {k: sum(x.get("missed", 0) for x in results[k]) for k in ("rest_dimse", "dimse_ws",
                                                                        "rest_ws", "fanout")}
    for label, key, limit in (("REST → DIMSE p99", "rest_dimse", 20.0),
                              ("DIMSE → WebSocket p99", "dimse_ws", 20.0),
                              (f"fan-out {s.fanout_subscribers} p99", "fanout", 50.0)):
        value = med(key, "p99_ms")
        ok = None if value is None else (value < limit and missed[key] == 0)
        r.target(label, f"< {limit:.0f} ms (no event missed)", value, ok)
    if any(missed.values()):
        notes.append(f"events not arrived within {WAIT:.0f}s: {missed}")
    r.notes.extend(notes)
    r.details = {"results": results, "events": s.events, "fanout_changes": s.fanout_changes}
    return r
