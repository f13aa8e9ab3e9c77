"""One supervisor for every long-lived task of the process.

A background task that dies takes its work with it — event delivery, heartbeats, the retention
purge — while requests still succeed and nothing looks wrong. So no long-lived task is started
with a bare ``create_task``: the supervisor runs each, logs a crash with its traceback, starts it
again after a back-off (doubling up to ``MAX_BACKOFF``), and reports it in ``/health`` as down
(naming it) from the crash until it has run ``STABLE_SECONDS`` again without crashing. Errors a
task expects (Redis away for a while) are the task's own to handle and log; what reaches the
supervisor is a bug or a surprise, and is treated as one.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

log = logging.getLogger("gateway.supervisor")

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_SECONDS = 5.0
STOP_SECONDS = 5.0  # how long ``stop`` waits for cancelled tasks to end


@dataclass
class _Supervised:
    name: str
    factory: Callable[[], Awaitable[None]]
    task: asyncio.Task | None = None
    crashes: int = 0
    last_crash: float | None = None  # monotonic time of the latest crash
    last_error: str = ""
    started_at: float = field(default_factory=time.monotonic)

    def up(self, now: float) -> bool:
        if self.last_crash is None:
            return True
        return self.started_at > self.last_crash and now - self.started_at >= STABLE_SECONDS


class Supervisor:
    def __init__(self):
        self._tasks: dict[str, _Supervised] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as the task ``name`` for as long as the process runs."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        entry = self._tasks[name] = _Supervised(name, factory)
        entry.task = asyncio.create_task(self._keep(entry), name=name)

    async def _keep(self, entry: _Supervised) -> None:
        backoff = INITIAL_BACKOFF
        while True:
            entry.started_at = time.monotonic()
            try:
                await entry.factory()
                reason = "returned"  # a long-lived task never should
                log.error("supervised task ended; restarting it", extra={
                    "task": entry.name, "restart_in_s": backoff})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - that is what a supervisor is for
                reason = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("supervised task crashed; restarting it", extra={
                    "task": entry.name, "restart_in_s": backoff})
            if asyncio.current_task().cancelling():  # it swallowed a stop: not restarted
                raise asyncio.CancelledError
            entry.crashes += 1
            entry.last_crash = time.monotonic()
            entry.last_error = reason
            if entry.last_crash - entry.started_at > MAX_BACKOFF:
                backoff = INITIAL_BACKOFF  # it had been running fine for a while
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def health(self) -> dict[str, dict]:
        """Per task: up or down, and since a crash, how many and the latest error."""
        now = time.monotonic()
        report = {}
        for name, entry in self._tasks.items():
            state = {"status": "up" if entry.up(now) else "down"}
            if entry.crashes:
                state.update(crashes=entry.crashes, error=entry.last_error)
            report[name] = state
        return report

    async def stop(self, *names: str, timeout: float | None = None) -> list[str]:
        """Cancel the named tasks (all when none is named) and wait for them to end, at most
        ``timeout`` seconds (``STOP_SECONDS``): a task still running then — it swallowed its
        cancellation, or is stuck in a ``finally`` — is logged with where it is, and left (a
        stop never hangs on one). Returns the names of those left running."""
        entries = [self._tasks.pop(n) for n in (names or list(self._tasks)) if n in self._tasks]
        for entry in entries:
            entry.task.cancel()
        if not entries:
            return []
        _, pending = await asyncio.wait([entry.task for entry in entries],
                                        timeout=STOP_SECONDS if timeout is None else timeout)
        stuck = [entry for entry in entries if entry.task in pending]
        for entry in stuck:
            where = io.StringIO()
            entry.task.print_stack(limit=12, file=where)
            log.error("supervised task did not end when cancelled; stopping without it",
                      extra={"task": entry.name, "where": where.getvalue()[-2000:]})
        return [entry.name for entry in stuck]
