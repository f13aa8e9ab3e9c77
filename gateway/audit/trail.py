"""The audit trail: ``record`` never blocks and never fails a request. Each sink has its own
bounded buffer (``audit.buffer`` messages) and its own task (supervised); a sink that is down is
retried with back-off while its buffer fills, and what no longer fits is dropped, counted and
logged (``dropped`` per sink, also in /health's log line each time a loss starts)."""

from __future__ import annotations

import asyncio
import collections
import logging

from gateway.audit.messages import AuditEvent, to_xml

log = logging.getLogger("gateway.audit")

RETRY_INITIAL, RETRY_MAX = 0.5, 30.0


class SinkBuffer:
    def __init__(self, sink, size: int):
        self.sink = sink
        self.queue: collections.deque[bytes] = collections.deque()
        self.size = size
        self.dropped = 0
        self.sent = 0
        self._wake = asyncio.Event()
        self._losing = False

    def put(self, message: bytes) -> None:
        if len(self.queue) >= self.size:
            self.dropped += 1
            if not self._losing:
                self._losing = True
                log.error("audit messages lost: the buffer is full",
                          extra={"sink": self.sink.name, "buffer": self.size,
                                 "dropped": self.dropped})
            return
        self.queue.append(message)
        self._wake.set()

    async def run(self) -> None:
        delay = RETRY_INITIAL
        try:
            while True:
                while not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                try:
                    await self.sink.send(self.queue[0])
                except (OSError, asyncio.TimeoutError) as exc:
                    log.warning("audit sink unavailable; will retry",
                                extra={"sink": self.sink.name, "error": str(exc) or
                                       type(exc).__name__, "queued": len(self.queue),
                                       "retry_s": delay})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                self.queue.popleft()
                self.sent += 1
                delay = RETRY_INITIAL
                if self._losing and len(self.queue) < self.size:
                    self._losing = False
                    log.warning("audit messages were lost", extra={
                        "sink": self.sink.name, "dropped": self.dropped})
        finally:
            await self.sink.close()

    async def drain(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while self.queue:
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pass


class AuditTrail:
    def __init__(self, sinks: list, size: int, source_id: str, gateway_ae: str,
                 gateway_address: str):
        self.buffers = [SinkBuffer(sink, size) for sink in sinks]
        self.source_id, self.gateway_ae, self.gateway_address = \
            source_id, gateway_ae, gateway_address

    def record(self, event: AuditEvent) -> None:
        if not self.buffers:
            return
        try:
            message = to_xml(event, self.source_id, self.gateway_ae, self.gateway_address)
        except (ValueError, TypeError) as exc:  # e.g. a control character in a value
            log.error("audit message not built", extra={"error": str(exc)})
            return
        for buffer in self.buffers:
            buffer.put(message)

    @property
    def dropped(self) -> int:
        return sum(b.dropped for b in self.buffers)
