"""The gateway's Redis client: redis-py's asyncio client, with commands packed by hiredis.

redis-py's asyncio connections build every command in Python, argument by argument (its blocking
connections use hiredis for this). A workitem commit sends ~16 arguments: packing them was a
tenth of the gateway's CPU per REST create (docs/performance.md). hiredis packs the same bytes
in one C call; anything it does not take (a memoryview, a multi-word command name such as
"SCRIPT LOAD", a type redis-py refuses with its own message) goes through redis-py's packer.
"""

from __future__ import annotations

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import (Connection, ConnectionPool, SSLConnection,
                                      UnixDomainSocketConnection, parse_url)
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection


class _HiredisPacking:
    def pack_command(self, *args):
        name = args[0]
        if type(name) is str and " " not in name:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)


class TCPConnection(_HiredisPacking, Connection):
    pass


class TLSConnection(_HiredisPacking, SSLConnection):
    pass


class UnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_PACKING = {Connection: TCPConnection, SSLConnection: TLSConnection,
            UnixDomainSocketConnection: UnixConnection}


def connect(url: str, **options) -> aioredis.Redis:
    """A client for ``url`` (redis://, rediss:// or unix://) with ``options`` as for
    ``redis.asyncio.Redis.from_url``."""
    settings = {**options, **parse_url(url)}
    settings["connection_class"] = _PACKING[settings.get("connection_class", Connection)]
    return aioredis.Redis(connection_pool=ConnectionPool(**settings))


class SentinelTCPConnection(_HiredisPacking, SentinelManagedConnection):
    pass


def connect_sentinel(master: str, hosts: list[tuple[str, int]], *, password: str | None = None,
                     sentinel_password: str | None = None, db: int = 0,
                     **options) -> aioredis.Redis:
    """A client for the master that the Sentinels at ``hosts`` name ``master``. Every new
    connection asks them where the master is now, so after a failover — a broken connection, or
    a demoted master answering READONLY (which redis-py turns into a ConnectionError) — the next
    connection goes to the promoted replica. ``password`` is the servers', ``sentinel_password``
    the Sentinels' own."""
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, "password": sentinel_password},
                        password=password, db=db, **options)
    return sentinel.master_for(master, redis_class=aioredis.Redis,
                               connection_class=SentinelTCPConnection)
