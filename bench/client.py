"""Load generators that run in their own process (so their CPU does not share the server's GIL).

``ClientProcess`` starts a spawned child and calls functions of this module in it by name; the
child keeps generated payloads between calls, so generation never falls inside a measurement.
Every loop here is bounded by a deadline and a count.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing as mp
import os
import random
import re
import time
import traceback
from collections import Counter
from typing import Any

import orjson

from bench.stats import summary
from bench.workload import Workload, fill, new_uid, template

# ---- parent side ---------------------------------------------------------------------------


class ClientProcess:
    def __init__(self, name: str = "client"):
        self.name = name
        self._conn = None
        self._proc = None

    def start(self) -> "ClientProcess":
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), name=self.name, daemon=True)
        self._proc.start()
        self._conn = parent
        return self

    @property
    def pid(self) -> int:
        return self._proc.pid

    def call(self, func: str, _timeout: float = 900.0, **kwargs) -> Any:
        self._conn.send((func, kwargs))
        if not self._conn.poll(_timeout):
            raise TimeoutError(f"client call {func} did not finish within {_timeout:.0f}s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"client call {func} failed:\n{value}")
        return value

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

    def __enter__(self) -> "ClientProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve(conn) -> None:
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        func, kwargs = message
        try:
            if ":" in func:
                module, name = func.split(":")
                result = getattr(importlib.import_module(module), name)(**kwargs)
            else:
                result = globals()[func](**kwargs)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


# ---- child side: payloads ------------------------------------------------------------------

_TEMPLATES: list[bytes] = []


def prepare(seed: int = 7, count: int = 2000) -> int:
    """Distinct realistic workitem contents as JSON templates (a fresh UID goes in per request)."""
    workload = Workload(seed)
    _TEMPLATES[:] = [template(workload.workitem(i)) for i in range(count)]
    return len(_TEMPLATES)


def _labelled(tpl: bytes, label: str) -> bytes:
    # Worklist Label is "00741202":{"vr":"LO","Value":["WLnn"]}
    head, sep, rest = tpl.partition(b'"00741202":{"vr":"LO","Value":["')
    return head + sep + label.encode() + rest[rest.index(b'"'):]


# ---- child side: HTTP -----------------------------------------------------------------------

def _session(concurrency: int):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=30))


async def create_burst(url: str, seconds: float, warmup: float, concurrency: int) -> dict:
    """POST distinct workitems with ``concurrency`` connections for warmup + seconds; the rate
    counts the creates that completed inside the measured window."""
    headers = {"Content-Type": "application/dicom+json"}
    statuses: Counter = Counter()
    latencies: list[float] = []
    done = 0
    seq = random.randrange(len(_TEMPLATES))
    cpu0 = time.process_time()
    async with _session(concurrency) as session:
        start = time.perf_counter()
        window_start, window_end = start + warmup, start + warmup + seconds

        async def worker() -> None:
            nonlocal done, seq
            while True:
                t0 = time.perf_counter()
                if t0 >= window_end:
                    return
                seq += 1
                body = fill(_TEMPLATES[seq % len(_TEMPLATES)], new_uid())
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except Exception as exc:  # counted, not fatal
                    status = type(exc).__name__
                t1 = time.perf_counter()
                if window_start <= t1 <= window_end:
                    statuses[status] += 1
                    if status == 201:
                        done += 1
                        latencies.append(t1 - t0)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                               warmup + seconds + 60)
    return {"ok": done, "rate": done / seconds, "statuses": dict(statuses),
            "latency": summary(latencies), "client_cpu_s": time.process_time() - cpu0}


async def create_fixed(url: str, count: int, concurrency: int, label: str,
                       timeout: float = 300.0) -> list[str]:
    """Create exactly ``count`` workitems on worklist ``label``; returns their UIDs."""
    headers = {"Content-Type": "application/dicom+json"}
    uids = [new_uid() for _ in range(count)]
    queue = list(enumerate(uids))
    failures: Counter = Counter()

    async with _session(concurrency) as session:
        async def worker() -> None:
            while queue:
                i, uid = queue.pop()
                body = fill(_labelled(_TEMPLATES[i % len(_TEMPLATES)], label), uid)
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 201:
                        failures[r.status] += 1

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
    if failures:
        raise RuntimeError(f"creating the claim worklist failed: {dict(failures)}")
    return uids


_UID_MEMBER = re.compile(rb'"00080018":\{"vr":"UI","Value":\["([^"]+)"\]')


def workitem_uids(body: bytes) -> list[str]:
    """The SOP Instance UIDs of a search answer: all a performer needs from it. Decoding 50 whole
    workitems per search (≈8 ms in this busy process) would make the load generator, not the
    gateway, the bottleneck of scenario 3; other spellings of the answer are decoded."""
    found = [uid.decode() for uid in _UID_MEMBER.findall(body)]
    if found:
        return found
    return [ds["00080018"]["Value"][0] for ds in orjson.loads(body)]


async def claim(base: str, label: str, performers: int, page: int, timeout: float) -> dict:
    """``performers`` concurrent performers each loop: search SCHEDULED workitems of ``label``,
    try to claim one of the page (random order) with its own Transaction UID, until the search
    comes back empty. Returns every 200 answer (the winners) and every refused attempt."""
    headers = {"Content-Type": "application/dicom+json"}
    search = (f"{base}/workitems?ProcedureStepState=SCHEDULED&WorklistLabel={label}"
              f"&limit={page}&includefield=00080018")
    wins: list[tuple[str, str, str]] = []  # (uid, performer, tx)
    refused: list[tuple[str, str, int]] = []  # (uid, tx, status)
    errors: Counter = Counter()
    searches = 0
    deadline = time.perf_counter() + timeout
    latencies: list[float] = []

    async with _session(performers) as session:
        async def performer(n: int) -> None:
            nonlocal searches
            me = f"PERF{n:02d}"
            rng = random.Random(n)
            while time.perf_counter() < deadline:
                async with session.get(search) as r:
                    searches += 1
                    if r.status == 204:
                        return
                    if r.status != 200:
                        errors[f"search {r.status}"] += 1
                        await asyncio.sleep(0.01)
                        continue
                    found = workitem_uids(await r.read())
                rng.shuffle(found)
                for uid in found:
                    tx = new_uid()
                    body = ('{"00081195":{"vr":"UI","Value":["%s"]},'
                            '"00741000":{"vr":"CS","Value":["IN PROGRESS"]}}' % tx).encode()
                    t0 = time.perf_counter()
                    async with session.put(f"{base}/workitems/{uid}/state/{me}", data=body,
                                           headers=headers) as r:
                        await r.read()
                        status = r.status
                    if status == 200:
                        latencies.append(time.perf_counter() - t0)
                        wins.append((uid, me, tx))
                        break  # one claim per search, as a performer does
                    refused.append((uid, tx, status))
                    if status not in (409,):
                        errors[f"claim {status}"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(performer(n) for n in range(performers)))
        elapsed = time.perf_counter() - start
    return {"wins": wins, "refused": refused, "errors": dict(errors), "searches": searches,
            "elapsed": elapsed, "claim_latency": summary(latencies),
            "timed_out": time.perf_counter() >= deadline}


async def verify_claims(base: str, wins: list, refused: list, sample_losers: int = 100) -> dict:
    """The gateway must accept each winner's Transaction UID and refuse a loser's."""
    headers = {"Content-Type": "application/dicom+json"}
    bad: list[str] = []
    losers = [(uid, tx) for uid, tx, status in refused if status == 409][:sample_losers]
    sem = asyncio.Semaphore(16)
    async with _session(16) as session:
        async def update(uid: str, tx: str, expect: int) -> None:
            body = b'{"00741204":{"vr":"LO","Value":["claimed"]}}'
            async with sem:
                async with session.post(f"{base}/workitems/{uid}?transaction-uid={tx}",
                                        data=body, headers=headers) as r:
                    await r.read()
                    if r.status != expect:
                        bad.append(f"{uid} tx {tx}: update answered {r.status}, expected {expect}")

        await asyncio.gather(*(update(uid, tx, 200) for uid, _, tx in wins),
                             *(update(uid, tx, 400) for uid, tx in losers))
    return {"checked_winners": len(wins), "checked_losers": len(losers), "bad": bad[:20],
            "bad_count": len(bad)}


# ---- child side: DIMSE ----------------------------------------------------------------------

_DATASETS: list = []


def _cache_encoding() -> None:
    """pydicom encodes a 40-attribute workitem in ~3.5 ms; the load generator sends the same
    prepared datasets over and over, so it encodes each once (keyed by object identity — they are
    never modified) and the client's CPU stays out of the server's measurement."""
    import pynetdicom.association as association

    if getattr(association.encode, "_bench_cached", False):
        return
    original = association.encode
    cache: dict = {}

    def encode(ds, *args):
        key = (id(ds), *args)
        if key not in cache:
            cache[key] = (ds, original(ds, *args))
        return cache[key][1]

    encode._bench_cached = True
    association.encode = encode


def prepare_dimse(seed: int = 11, count: int = 300) -> int:
    from pydicom import Dataset

    _cache_encoding()

    workload = Workload(seed)
    _DATASETS.clear()
    for i in range(count):
        ds = workload.workitem(i)
        ds.pop("00080018")  # the UID travels as Affected SOP Instance UID
        _DATASETS.append(Dataset.from_json(ds))
    return len(_DATASETS)


def _scu():
    from pynetdicom import AE
    from pynetdicom.sop_class import (UnifiedProcedureStepPull, UnifiedProcedureStepPush,
                                      UnifiedProcedureStepWatch)

    ae = AE(ae_title="BENCH_SCU")
    for cls in (UnifiedProcedureStepPush, UnifiedProcedureStepPull, UnifiedProcedureStepWatch):
        ae.add_requested_context(cls, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _associate(ae, port: int, called: str):
    from gateway.testing_peers import NODELAY_HANDLER, guard_responses

    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[NODELAY_HANDLER])
    if not assoc.is_established:
        raise RuntimeError(f"association to 127.0.0.1:{port} was not established")
    return guard_responses(assoc)


def dimse_probe(port: int, called: str) -> dict:
    """One N-CREATE and one N-GET: what the SCP answers (to tell whether handlers exist)."""
    from pynetdicom.sop_class import UnifiedProcedureStepPush

    if not _DATASETS:
        prepare_dimse()
    ae = _scu()
    assoc = _associate(ae, port, called)
    uid = new_uid()
    try:
        status, _ = assoc.send_n_create(_DATASETS[0], UnifiedProcedureStepPush, uid)
        create = int(status.Status) if status and "Status" in status else None
        status, attrs = assoc.send_n_get([0x00741000, 0x00100020], UnifiedProcedureStepPush, uid)
        get = int(status.Status) if status and "Status" in status else None
        state = str(attrs.get("ProcedureStepState", "")) if attrs is not None else ""
    finally:
        assoc.release()
    return {"uid": uid, "n_create": create, "n_get": get, "state": state}


def dimse_ncreate(port: int, called: str, seconds: float, warmup: float, associations: int) -> dict:
    """N-CREATEs on ``associations`` parallel associations (one thread each)."""
    import threading

    from pynetdicom.sop_class import UnifiedProcedureStepPush

    if not _DATASETS:
        prepare_dimse()
    ae = _scu()
    assocs = [_associate(ae, port, called) for _ in range(associations)]
    counts = [0] * associations
    statuses: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + seconds
    cpu0 = time.process_time()

    def run(k: int) -> None:
        assoc = assocs[k]
        n = k
        while True:
            t0 = time.perf_counter()
            if t0 >= window_end or not assoc.is_established:
                return
            n += associations
            status, _ = assoc.send_n_create(_DATASETS[n % len(_DATASETS)],
                                            UnifiedProcedureStepPush, new_uid())
            t1 = time.perf_counter()
            code = int(status.Status) if status and "Status" in status else None
            if window_start <= t1 <= window_end:
                with lock:
                    statuses[code] += 1
                    if code == 0:
                        counts[k] += 1
                        latencies.append(t1 - t0)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(associations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(warmup + seconds + 60)
    for assoc in assocs:
        assoc.release()
    done = sum(counts)
    return {"ok": done, "rate": done / seconds,
            "statuses": {str(k): v for k, v in statuses.items()},
            "latency": summary(latencies), "client_cpu_s": time.process_time() - cpu0,
            "raw_s": latencies}


def dimse_associations(port: int, called: str, seconds: float, warmup: float, uid: str) -> dict:
    """associate, one N-GET of ``uid``, release — as many times as fit in the window."""
    from pynetdicom.sop_class import UnifiedProcedureStepPush

    ae = _scu()
    done = 0
    statuses: Counter = Counter()
    latencies: list[float] = []
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + seconds
    cpu0 = time.process_time()
    while True:
        t0 = time.perf_counter()
        if t0 >= window_end:
            break
        try:
            assoc = _associate(ae, port, called)
        except RuntimeError:  # refused or timed out: counted, not fatal
            code = "no association"
            time.sleep(0.01)
        else:
            status, _ = assoc.send_n_get([0x00741000, 0x00100020], UnifiedProcedureStepPush, uid)
            assoc.release()
            code = int(status.Status) if status and "Status" in status else None
        t1 = time.perf_counter()
        if window_start <= t1 <= window_end:
            statuses[code] += 1
            if code == 0:
                done += 1
                latencies.append(t1 - t0)
    return {"ok": done, "rate": done / seconds,
            "statuses": {str(k): v for k, v in statuses.items()},
            "latency": summary(latencies), "client_cpu_s": time.process_time() - cpu0}


def pid() -> int:
    return os.getpid()


# ---- child side: search latency ---------------------------------------------------------------

async def query_latency(base: str, queries: list[str], warmup: int = 20,
                        timeout: float = 300.0) -> dict:
    """Issue ``queries`` one at a time (after ``warmup`` unmeasured ones); latency of each,
    answers by status and the number of results returned."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    returned: list[int] = []
    deadline = time.perf_counter() + timeout
    async with _session(1) as session:
        for n, query in enumerate(queries[:warmup] + queries):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            async with session.get(f"{base}/workitems?{query}") as r:
                body = await r.read()
                status = r.status
            t1 = time.perf_counter()
            if n < warmup:
                continue
            latencies.append(t1 - t0)
            statuses[status] += 1
            returned.append(len(json.loads(body)) if status == 200 else 0)
    return {"latency": summary(latencies), "statuses": {str(k): v for k, v in statuses.items()},
            "mean_results": (sum(returned) / len(returned)) if returned else 0,
            "raw_ms": [round(x * 1000, 3) for x in latencies]}
