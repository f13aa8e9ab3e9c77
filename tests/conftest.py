"""Fixtures: a real embedded Redis, the UPS service on it, and real gateway processes."""

from __future__ import annotations

import itertools
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from gateway.store.client import connect
from gateway.store.embedded import EmbeddedRedis
from gateway.store.redis_store import RedisStore
from gateway.ups.service import Settings, UPSService
from tests.helpers import GatewayProcess

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
async def store(redis_client):
    """A store with its own key prefix, so tests never see each other's workitems."""
    return RedisStore(redis_client, prefix=f"t{next(_prefixes)}:")


@pytest_asyncio.fixture
async def service(store):
    return UPSService(store, Settings())


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
