"""Calls of one Lua script made in the same turn of the event loop, sent to Redis together.

Under load many requests reach their commit in the same turn of the loop (16 concurrent creates:
several per turn). Sent one by one, each costs a socket write that wakes Redis, a read of its
reply, and redis-py's per-command bookkeeping: the write alone was ≈8 % of the gateway's CPU per
REST create. Queued until the end of the turn and sent as one pipeline (not a transaction: each
script is atomic on its own and decides on its own), they share one write and one read. A call
alone in its turn goes straight through, with no pipeline around it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


class ScriptBatch:
    def __init__(self, script: AsyncScript):
        self.script = script
        self.client = script.registered_client
        self._pending: list[tuple[Sequence, Sequence, asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def __call__(self, keys: Sequence, args: Sequence) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)  # after the callbacks already due in this turn
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Sequence, Sequence, asyncio.Future]]) -> None:
        try:
            if len(batch) == 1:
                keys, args, _ = batch[0]
                results = [await self.script(keys=keys, args=args)]
            else:
                results = await self._pipeline(batch)
        except BaseException as exc:  # noqa: BLE001 - every caller hears of it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results):
            if future.done():  # the caller was cancelled; the script ran (or not) all the same
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, batch) -> list:
        results = await self._execute(batch)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis lost its script cache (a restart, SCRIPT FLUSH): load it and run those again.
            await self.client.script_load(self.script.script)
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            for i, result in zip(again, await self._execute([batch[i] for i in again])):
                results[i] = result
        return results

    async def _execute(self, batch) -> list:
        sha = self.script.sha
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)
