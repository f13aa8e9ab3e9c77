"""Running UPS core coroutines from pynetdicom's association threads.

pynetdicom serves each association in its own thread; the UPS core lives on the gateway's asyncio
loop. A handler submits the coroutine to the loop and waits for it with a timeout, so the loop
never blocks on a DIMSE thread and a slow Redis never wedges an association forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Coroutine


class LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self.loop = loop
        self.timeout = timeout

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(self.timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the UPS core did not answer in time") from None
