"""One Redis connection for the commands every change makes, pipelined.

Each change costs a few script calls (load, commit, the event channels' acknowledgement). Through
the redis-py client each one takes a connection from the pool, wraps the call in its retry and
timeout machinery and gives the connection back: ≈150 µs of Python per call, more than the script
itself (docs/performance.md, scenario 5). A lane keeps one connection of the client's pool (so the
URL's TLS, password and database apply unchanged) and uses it directly: the commands of one loop
turn go out in one write, and one reader takes the replies in order, each to its caller.

Failure: a reply that is an error goes to its caller alone (a script cache lost to a restart or
SCRIPT FLUSH is reloaded and the call made again); a connection that breaks fails every call
still waiting with the connection's error — a Redis error, as through the client — and the next
call opens a new one. A call that never reached Redis (no connection) fails with ``NotSent``:
only then is it certain that Redis did not run it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any, Sequence

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError


class NotSent(RedisConnectionError):
    """The command never reached Redis (no connection could be made): it was not applied.
    Any other connection error of a call leaves open whether Redis ran it."""


class Lane:
    def __init__(self, client: aioredis.Redis):
        self.client = client
        self._conn: AbstractConnection | None = None
        self._queued: list[tuple[bytes, asyncio.Future]] = []  # to write in this loop turn
        self._waiting: deque[asyncio.Future] = deque()  # written, in order of their replies
        self._reader: asyncio.Task | None = None
        self._writing: set[asyncio.Task] = set()  # the loop keeps only weak references
        self._write_lock = asyncio.Lock()  # one write at a time: replies come in write order

    async def call(self, *args: Any) -> Any:
        """Run one command; its reply as the client's connection parses it (an error reply is
        raised, as the client raises it)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((args, future))
        if len(self._queued) == 1:
            loop.call_soon(self._flush)  # after the callbacks already due in this turn
        return await future

    async def call_together(self, *commands: Sequence) -> list[Any]:
        """Run several commands written together, in order, on one connection (so a WAIT after
        a write waits for that very write); their replies. The first error reply is raised,
        after every command has had its reply."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        was_empty = not self._queued
        self._queued.extend(zip(commands, futures))
        if was_empty:
            loop.call_soon(self._flush)
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    def script(self, source: str) -> "LaneScript":
        return LaneScript(self, source)

    async def close(self) -> None:
        for task in (self._reader, *self._writing):
            if task is not None:
                task.cancel()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.disconnect(nowait=True)
        self._fail_all(RedisError("the connection was closed"))

    # ---- writing and reading ------------------------------------------------------------------

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._write(batch))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, batch: list[tuple[Sequence, asyncio.Future]]) -> None:
        sending = False
        try:
            async with self._write_lock:
                conn = await self._connection()
                packed = [part for args, _ in batch for part in conn.pack_command(*args)]
                self._waiting.extend(future for _, future in batch)
                sending = True  # from here on Redis may get (some of) the batch
                await conn.send_packed_command(packed, check_health=False)
        except BaseException as exc:  # noqa: BLE001 - every caller hears of it
            error = exc if isinstance(exc, Exception) else RedisError("cancelled")
            self._broken(error)
            unsent = error if sending else NotSent(f"not sent to Redis: {error}")
            for _, future in batch:
                _settle(future, exc=unsent)
            if not isinstance(exc, Exception):
                raise
            return
        if self._reader is None or self._reader.done():
            # This task reads the replies now (one task per write rather than two): the write
            # lock is free again, so later batches go out meanwhile; their replies come after.
            self._reader = asyncio.current_task()
            await self._read()

    async def _connection(self) -> AbstractConnection:
        if self._conn is None:
            conn = self.client.connection_pool.make_connection()
            await conn.connect()
            self._conn = conn
        return self._conn

    async def _read(self) -> None:
        conn = self._conn
        try:
            while self._waiting:
                try:
                    reply = await conn.read_response()
                except ResponseError as error:  # an error reply: the connection is fine
                    _settle(self._waiting.popleft(), exc=error)
                else:
                    _settle(self._waiting.popleft(), reply)
        except Exception as exc:  # noqa: BLE001 - the connection is broken: fail the rest
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            asyncio.ensure_future(conn.disconnect(nowait=True))
        self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        while self._waiting:
            _settle(self._waiting.popleft(), exc=exc)


class LaneScript:
    """A Lua script called on a lane by its SHA1, loaded again when Redis has lost it."""

    def __init__(self, lane: Lane, source: str):
        self.lane = lane
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence = (), args: Sequence = ()) -> Any:
        try:
            return await self._run(keys, args)
        except NoScriptError:
            await self.lane.call("SCRIPT", "LOAD", self.source)
            return await self._run(keys, args)

    async def _run(self, keys: Sequence, args: Sequence) -> Any:
        return await self.lane.call("EVALSHA", self.sha, len(keys), *keys, *args)


def _settle(future: asyncio.Future, reply: Any = None, exc: BaseException | None = None) -> None:
    if future.done():  # its caller was cancelled; the reply (or error) is dropped
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(reply)
