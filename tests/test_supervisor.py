"""Every long-lived task runs under one supervisor (gateway/supervisor.py): a crash is logged with
its traceback, the task is started again after a back-off, and it counts as down — named, with
its error — from the crash until it has run a while again; the gateway's /health says so."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from gateway import supervisor as sv
from gateway.app import Gateway
from gateway.config import Config
from tests.helpers import free_port


@pytest.fixture
def quick(monkeypatch):
    """Seconds of back-off and stability shortened, so the test takes a moment, not a minute."""
    monkeypatch.setattr(sv, "INITIAL_BACKOFF", 0.05)
    monkeypatch.setattr(sv, "STABLE_SECONDS", 0.3)


async def test_a_crashed_task_is_logged_restarted_and_down_until_stable(quick, caplog):
    runs = []
    healthy = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise KeyError(f"bad entry {len(runs)}")
        healthy.set()
        await asyncio.Event().wait()  # then runs for good

    supervisor = sv.Supervisor()
    with caplog.at_level(logging.ERROR, logger="gateway.supervisor"):
        supervisor.start("flaky", flaky)
        await asyncio.wait_for(healthy.wait(), 5)
    try:
        crashes = [r for r in caplog.records if r.getMessage().startswith("supervised task crashed")]
        assert len(crashes) == 2 and all(r.exc_info for r in crashes)  # with the traceback
        assert crashes[0].task == "flaky"
        report = supervisor.health()["flaky"]
        assert report["status"] == "down" and report["crashes"] == 2
        assert "KeyError" in report["error"] and "bad entry 2" in report["error"]
        await asyncio.sleep(sv.STABLE_SECONDS + 0.1)
        assert supervisor.health()["flaky"]["status"] == "up"
        assert len(runs) == 3
    finally:
        await supervisor.stop()


async def test_a_task_that_returns_is_started_again(quick):
    runs = []
    done = asyncio.Event()

    async def returns() -> None:
        runs.append(1)
        if len(runs) == 3:
            done.set()

    supervisor = sv.Supervisor()
    supervisor.start("returns", returns)
    await asyncio.wait_for(done.wait(), 5)
    assert supervisor.health()["returns"]["error"] == "returned"
    await supervisor.stop()


async def test_stop_cancels_and_waits(quick):
    stopped = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    supervisor = sv.Supervisor()
    supervisor.start("forever", forever)
    await asyncio.sleep(0)
    await supervisor.stop()
    assert stopped.is_set() and supervisor.health() == {}


async def test_health_answers_503_naming_a_crashed_component(quick, tmp_path):
    """The gateway's own /health, in this process on a real embedded Redis, while one of its
    supervised tasks is crashing."""
    config = Config()
    config.data_dir = str(tmp_path)
    config.rest.host, config.rest.port = "127.0.0.1", free_port()
    config.dimse.enabled = False
    gateway = Gateway(config)
    await gateway.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{config.rest.port}/health"
            async with http.get(url) as r:
                body = await r.json()
                assert r.status == 200, body
            assert {"event-hub", "websocket-fanout", "heartbeat", "purge"} <= \
                set(body["components"])

            async def broken() -> None:
                raise RuntimeError("the queue holds garbage")

            gateway.supervisor.start("broken-component", broken)
            await asyncio.sleep(0.1)
            async with http.get(url) as r:
                body = await r.json()
                assert r.status == 503
                assert body["components"]["broken-component"] == "down"
                assert "the queue holds garbage" in body["errors"]["broken-component"]
                assert body["components"]["redis"] == "up"
            await gateway.supervisor.stop("broken-component")
            async with http.get(url) as r:
                assert r.status == 200
    finally:
        await gateway.stop()


async def test_a_task_that_ignores_its_cancellation_does_not_hold_up_the_stop(caplog):
    """A stop waits a bounded time for each task, names the one still running and where it is,
    and returns without it."""
    started, released = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                pass  # the bug the bound is for

    async def polite() -> None:
        await asyncio.Event().wait()

    supervisor = sv.Supervisor()
    supervisor.start("stubborn", stubborn)
    supervisor.start("polite", polite)
    await asyncio.wait_for(started.wait(), 5)
    with caplog.at_level(logging.ERROR, logger="gateway.supervisor"):
        left = await supervisor.stop(timeout=0.2)
    assert left == ["stubborn"]
    [record] = [r for r in caplog.records if "did not end when cancelled" in r.getMessage()]
    assert record.task == "stubborn" and "stubborn" in record.where
    released.set()  # (so that the test's loop can end)
