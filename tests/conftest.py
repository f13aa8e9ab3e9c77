"""Fixtures: a real embedded Redis, the UPS service on it, and real gateway processes."""

from __future__ import annotations

import itertools
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from gateway.store.client import connect
from gateway.store.embedded import EmbeddedRedis
from gateway.store.keys import Keys
from gateway.store.subscriptions import RedisSubscriptionStore
from gateway.store.workitems import RedisWorkitemStore
from gateway.ups.service import Settings, UPSService
from tests.helpers import GatewayProcess
from tests.memory_store import MemoryStores

_prefixes = itertools.count()


@pytest_asyncio.fixture(scope="session")
async def redis_url(tmp_path_factory):
    """One real redis-server (the embedded one) for core-level tests."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    await server.start()
    yield server.url
    await server.stop()


@pytest_asyncio.fixture
async def redis_client(redis_url):
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def keys():
    """A key prefix of the test's own, so tests never see each other's workitems."""
    return Keys(f"t{next(_prefixes)}:")


@pytest_asyncio.fixture
async def store(redis_client, keys):
    return RedisWorkitemStore(redis_client, keys)


@pytest_asyncio.fixture
async def subscriptions(redis_client, keys):
    return RedisSubscriptionStore(redis_client, keys)


@pytest_asyncio.fixture
async def redis_service(store, subscriptions):
    """The UPS service on the Redis stores only: for what only they do (rendered-results
    cache, script batching, the stored byte form)."""
    return UPSService(store, subscriptions, Settings())


@pytest.fixture(params=["redis", "memory"])
def service(request):
    """The UPS service on the Redis stores (what production runs) and on the in-memory ports
    (``tests/memory_store.py``, no Redis at all): every core test runs on both, so the two
    implementations of the ports are held to the same behaviour. ``-k memory`` runs the unit
    tier alone."""
    if request.param == "memory":
        db = MemoryStores()
        return UPSService(db.workitems, db.subscriptions, Settings())
    return request.getfixturevalue("redis_service")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """A gateway process started as the README starts it, on its embedded Redis."""
    proc = GatewayProcess(tmp_path_factory.mktemp("gateway")).start()
    yield proc
    proc.stop()


@pytest_asyncio.fixture(scope="session")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path
