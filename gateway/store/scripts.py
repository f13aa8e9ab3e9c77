"""The store's Lua scripts, each loaded with the shared prelude: the key names (``keys``) and the
event queueing every changing script does (``prelude.lua``)."""

from __future__ import annotations

import functools
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from gateway.store import keys
from gateway.store.lane import Lane, LaneScript


@functools.cache
def source(name: str) -> str:
    files = resources.files("gateway.store")
    return (keys.lua_functions() + files.joinpath("prelude.lua").read_text()
            + files.joinpath(name).read_text())


def script(client: aioredis.Redis, name: str) -> AsyncScript:
    return client.register_script(source(name))


def on_lane(lane: Lane, name: str) -> LaneScript:
    """A script for the hot path: called on the process's lane (``lane``), its calls of one
    loop turn go to Redis together with the lane's other commands."""
    return lane.script(source(name))
