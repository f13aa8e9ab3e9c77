"""Bulk loading through the gateway's own UPS service (not over HTTP: 100k REST creates would not
fit the time budget on two cores).

Each workitem goes through exactly the code path a REST create takes after the HTTP layer —
``normalize`` (the edge validation), ``UPSService.create`` (rules, Lua commit, indexes, global
subscriptions) — and then through the real state transitions to reach its share of the state mix
(claim → IN PROGRESS; update + COMPLETED; CANCELED by its performer). So Redis holds exactly what
the gateway would have stored, indexes and all. Runs in client processes (``ClientProcess``) on
the gateway's own Redis socket, with the settings read from the gateway's config file.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from bench.workload import Workload, completion_payload, new_uid
from gateway.app import make_core
from gateway.config import load as load_config
from gateway.ups.dataset import normalize


async def load_range(redis_url: str, config_path: str, seed: int, start: int, end: int,
                     concurrency: int = 32, timeout: float = 900.0) -> dict:
    """Store workitems ``start``..``end``-1 of ``Workload(seed)`` with their final states."""
    client = aioredis.Redis.from_url(redis_url, max_connections=concurrency + 4)
    service = make_core(load_config(config_path), client).service
    workload = Workload(seed)
    next_i = start
    states: dict[str, int] = {}
    completion = normalize(completion_payload())
    always_normalize = False
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        nonlocal always_normalize
        ds = workload.workitem(i)
        # The generator emits canonical DICOM JSON; normalize (the REST edge) is checked to be a
        # no-op on every 25th workitem and then skipped, which halves the loading time.
        if always_normalize or i % 25 == 0:
            canonical = normalize(ds)
            if canonical != ds:
                always_normalize = True
            ds = canonical
        uid = ds["00080018"]["Value"][0]
        await service.create(ds, uid, requester="BENCH_LOADER")
        state = workload.state_for(i)
        if state != "SCHEDULED":
            tx = new_uid()
            await service.change_state(uid, "IN PROGRESS", tx, requester="BENCH_PERFORMER")
            if state == "COMPLETED":
                await service.update(uid, completion, tx)
                await service.change_state(uid, "COMPLETED", tx)
            elif state == "CANCELED":
                await service.change_state(uid, "CANCELED", tx)
        states[state] = states.get(state, 0) + 1

    async def worker() -> None:
        nonlocal next_i
        while next_i < end:
            i = next_i
            next_i += 1
            await one(i)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
    finally:
        await client.aclose()
    return {"count": end - start, "states": states, "seconds": time.perf_counter() - t0,
            "normalize_skipped": not always_normalize}
