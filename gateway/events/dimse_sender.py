"""N-EVENT-REPORT delivery to DIMSE subscribers (the AEs listed in ``peers``).

For each peer, exactly one gateway process at a time (the holder of a Redis lease) reads the AE's
event queue and sends each event on an association it opens to the peer — proposing the SCP role
for UPS Event, SOP Class UID = UPS Push — reused until idle. A failed send is retried with
exponential back-off and the event stays queued until it is delivered or expires; later events
wait behind it, so per-workitem order holds. The UPS state machine never waits for any of this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from pydicom import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import UnifiedProcedureStepEvent
from redis.exceptions import RedisError

from gateway.dimse.net import NODELAY_HANDLER, guard_responses
from gateway.events.hub import wait_for
from gateway.events.queue import Lease, LeaseLost, QueuedEntry, QueueReader
from gateway.ups import events as ev
from gateway.ups.uids import UPS_PUSH

log = logging.getLogger("gateway.events.dimse")

_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
_LEASE_MS = 6000  # a crashed sender's peers are taken over within this
_BATCH = 100
_RENEW_SECONDS = 1.5  # the lease is renewed this often, not per event: the queue read checks it


class DimseEventSender:
    """One delivery worker per configured peer, in this process."""

    def __init__(self, gateway):
        self.gateway = gateway
        peers = gateway.config.peers
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(32, len(peers))),
                                       thread_name_prefix="event-sender")
        self.workers = [PeerWorker(gateway, ae, peer.host, peer.port, self.pool)
                        for ae, peer in peers.items()]
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=f"events-{w.ae}") for w in self.workers]

    async def flush(self, timeout: float) -> None:
        """Give workers a moment to deliver what is queued (e.g. GOING DOWN at shutdown)."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            self.gateway.hub.wake(worker.ae)
        await asyncio.sleep(0.2)  # let the workers pick up what was just queued
        while time.monotonic() < deadline and any(w.busy for w in self.workers):
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)


class PeerWorker:
    def __init__(self, gateway, ae: str, host: str, port: int, pool: ThreadPoolExecutor):
        self.gateway = gateway
        self.ae, self.host, self.port = ae, host, port
        self.cfg = gateway.config.events
        self.pool = pool
        self.lease = Lease(gateway.store, "dimse", ae, _LEASE_MS)
        self.reader = QueueReader(gateway.store, "dimse", ae, self.lease)
        self.requestor = _requestor(gateway.config.ae_title, self.cfg.send_timeout)
        self.assoc = None
        self.last_used = 0.0
        self.backoff = self.cfg.retry_initial_seconds
        self.busy = False
        self._held_at = 0.0  # when the lease was last taken or renewed (monotonic)

    async def run(self) -> None:
        hub = self.gateway.hub
        wake = hub.waiter(self.ae)
        try:
            while True:
                try:
                    if not await self._hold_lease():
                        self.reader.forget()
                        await self.close()
                        await wait_for(hub, wake, _LEASE_MS / 4000)
                        continue
                    if not await self._deliver_some():
                        if self.assoc and time.monotonic() - self.last_used > self.cfg.association_idle_seconds:
                            await self.close()
                        await wait_for(hub, wake, _LEASE_MS / 4000)
                except LeaseLost:
                    self._held_at = 0.0
                    continue  # another process took over: the next turn notices
                except RedisError as exc:
                    log.warning("event delivery paused: redis unavailable",
                                extra={"ae": self.ae, "error": str(exc)})
                    await asyncio.sleep(1.0)
        finally:
            hub.drop(self.ae, wake)
            await self.lease.release()

    async def _hold_lease(self) -> bool:
        if time.monotonic() - self._held_at < _RENEW_SECONDS:
            return True
        held = await self.lease.hold()
        self._held_at = time.monotonic() if held else 0.0
        return held

    async def _deliver_some(self) -> bool:
        """Deliver up to a batch of queued events; True when more may be queued."""
        entries, lost = await self.reader.pending(_BATCH)
        self.busy = bool(entries)
        if lost:
            log.error("events dropped by the backlog bound before delivery",
                      extra={"ae": self.ae, "lost": lost})
        loop = asyncio.get_running_loop()
        for entry in entries:
            age = time.time() - entry.ts_ms / 1000
            if age > self.cfg.delivery_expiry_seconds:
                log.error("event expired undelivered", extra={
                    "ae": self.ae, "uid": entry.uid, "event": ev.NAMES.get(entry.type), "age_s": int(age)})
            else:
                error = await loop.run_in_executor(self.pool, self._send, entry)
                if error:
                    log.warning("N-EVENT-REPORT failed; will retry", extra={
                        "ae": self.ae, "uid": entry.uid, "event": ev.NAMES.get(entry.type),
                        "error": error, "retry_in_s": self.backoff})
                    await asyncio.sleep(self.backoff)
                    self.backoff = min(self.backoff * 2, self.cfg.retry_max_seconds)
                    return True
                self.backoff = self.cfg.retry_initial_seconds
            if not await self.reader.ack(entry):
                return True  # lease lost meanwhile
        self.busy = False
        # A short batch emptied the queue: what is queued meanwhile comes with a notification.
        return len(entries) == _BATCH

    def _send(self, entry: QueuedEntry) -> str | None:
        """Send one N-EVENT-REPORT (in a worker thread); the error text, or None when delivered."""
        if self.assoc is not None and not (self.assoc.is_established and self.assoc.is_alive()):
            self._abort()
        if self.assoc is None:
            self.assoc = self.requestor.associate(
                self.host, self.port, ae_title=self.ae,
                ext_neg=[build_role(UnifiedProcedureStepEvent, scp_role=True)],
                evt_handlers=[NODELAY_HANDLER])
            if not self.assoc.is_established:
                self.assoc = None
                return f"cannot associate with {self.ae} at {self.host}:{self.port}"
            guard_responses(self.assoc)
        self.last_used = time.monotonic()
        try:
            status, _ = self.assoc.send_n_event_report(Dataset.from_json(entry.info), entry.type,
                                                       UPS_PUSH, entry.uid)
        except (RuntimeError, ValueError, OSError) as exc:
            self._abort()
            return f"send failed: {exc}"
        if not status or "Status" not in status:
            self._abort()  # no answer within send_timeout: resend on a fresh association
            return f"no response within {self.cfg.send_timeout}s"
        code = int(status.Status)
        if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
            # The receiver got it and refused it: resending would not help.
            log.warning("N-EVENT-REPORT refused by receiver", extra={
                "ae": self.ae, "uid": entry.uid, "status": f"0x{code:04X}"})
        log.debug("N-EVENT-REPORT delivered", extra={"ae": self.ae, "uid": entry.uid,
                                                     "event": ev.NAMES.get(entry.type)})
        return None

    def _abort(self) -> None:
        if self.assoc is not None:
            self.assoc.abort()
            self.assoc = None

    async def close(self) -> None:
        if self.assoc is not None:
            assoc, self.assoc = self.assoc, None
            await asyncio.get_running_loop().run_in_executor(self.pool, assoc.release)


def _requestor(ae_title: str, timeout: float) -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(UnifiedProcedureStepEvent, _TRANSFER_SYNTAXES)
    ae.dimse_timeout = timeout
    ae.acse_timeout = timeout
    ae.network_timeout = 60
    ae.connection_timeout = timeout
    return ae
