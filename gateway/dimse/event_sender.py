"""N-EVENT-REPORT delivery to DIMSE subscribers (the AEs listed in ``peers``).

For each peer, exactly one gateway process at a time — the holder of the peer's Redis lease —
reads the AE's event queue and sends each event on an association it opens to the peer (our own
asyncio requestor, ``requestor``: proposing the SCP role for UPS Event, SOP Class UID = UPS Push),
reused until idle. The lease is renewed by a task of its own, every ``RENEW_SECONDS`` whatever a
send is doing, so a slow peer never lets another process take over a live sender. A failed send
is retried with exponential back-off and the event stays queued until it is delivered or expires;
later events wait behind it, so per-workitem order holds. The UPS state machine never waits for
any of this.

Event information is encoded as N-GET and C-FIND responses are (``convert.encode``): character
set, DS formatting and the rest are the same on every DIMSE answer the gateway writes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from gateway.config import Dimse, Events, Peer
from gateway.dimse import convert
from gateway.dimse.requestor import AssociationError, Requestor, associate
from gateway.events.hub import EventHub
from gateway.events.queue import EventQueues, LeaseLost, QueuedEntry
from gateway.metrics import Metrics
from gateway.security import tls
from gateway.ups import events as ev

log = logging.getLogger("gateway.events.dimse")

TRANSPORT = "dimse"
LEASE_MS = 6000  # another process's crashed sender's peers are taken over within this
RENEW_SECONDS = 1.5
BATCH = 100
POLL_SECONDS = LEASE_MS / 4000  # the queue is read this often even without a notification


class DimseEventSender:
    """One ``PeerSender`` per configured peer, fed by the hub's notifications."""

    def __init__(self, ae_title: str, peers: dict[str, Peer], config: Events,
                 queues: EventQueues, hub: EventHub, instance: str = "",
                 metrics: Metrics | None = None, max_pdu: int = Dimse.max_pdu):
        """``instance``: this process's identity, the owner of its peers' leases (so a run
        restarted after a crash takes its previous run's leases at once); ``max_pdu``: the
        largest P-DATA we receive on an event association (``dimse.max_pdu``, as on the
        listener's)."""
        metrics = metrics or Metrics(process=False)
        self.senders = {ae: PeerSender(ae_title, ae, peer, config, queues, metrics, instance,
                                       max_pdu)
                        for ae, peer in peers.items()}
        hub.listen(self._notified)

    @property
    def workers(self) -> dict[str, "PeerSender"]:
        """The long-lived tasks to supervise, by name."""
        return {f"events-{ae}": sender for ae, sender in self.senders.items()}

    def _notified(self, by_ae: dict[str, list[QueuedEntry]] | None) -> None:
        if by_ae is None:
            for sender in self.senders.values():
                sender.wake()
            return
        for ae, entries in by_ae.items():
            sender = self.senders.get(ae)
            if sender is not None:
                sender.reader.offer(entries)
                sender.wake()

    def store_reset(self) -> None:
        """Redis came back empty: every sender reads its cursor again (it is gone with the
        queues) before it delivers anything more."""
        for sender in self.senders.values():
            sender.reread = True
            sender.wake()

    async def flush(self, timeout: float) -> None:
        """Give every sender up to ``timeout`` to deliver what is queued now (e.g. GOING DOWN at
        shutdown): each reports when it has found its queue empty."""
        drained = [sender.drained() for sender in self.senders.values()]
        if drained:
            await asyncio.wait([asyncio.ensure_future(d) for d in drained], timeout=timeout)

    async def close(self, timeout: float = 3.0) -> None:
        """Release every peer's association; one whose peer does not answer within ``timeout``
        is aborted (a stop never waits on a peer)."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(s.close() for s in self.senders.values()),
                                     return_exceptions=True)
        except TimeoutError:
            pass  # each unanswered release was aborted (PeerSender.close)


class PeerSender:
    def __init__(self, ae_title: str, ae: str, peer: Peer, config: Events, queues: EventQueues,
                 metrics: Metrics, instance: str = "", max_pdu: int = Dimse.max_pdu):
        self.ae_title = ae_title
        self.max_pdu = max_pdu
        self.metrics = metrics
        self.ae, self.peer, self.config = ae, peer, config
        # TLS to this peer (PS3.15 B.1); files are read now, so a bad one stops the start.
        self.ssl = tls.client_context(peer.ca_file, peer.cert_file, peer.key_file) \
            if peer.tls else None
        self.queues = queues
        self.reader = queues.reader(TRANSPORT, ae, LEASE_MS, owner=instance)
        self.assoc: Requestor | None = None
        self.last_used = 0.0
        self.backoff = config.retry_initial_seconds
        self.held = False
        self.reread = False  # forget the cursor before the next read (the store was reset)
        self._wake = asyncio.Event()
        self._drain_waiters: list[asyncio.Future] = []

    def wake(self) -> None:
        self._wake.set()

    def drained(self) -> asyncio.Future:
        """Done once the sender next finds its queue empty."""
        future = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(future)
        self.wake()
        return future

    async def run(self) -> None:
        """Deliver this peer's events until cancelled (a supervised task)."""
        keeper = asyncio.create_task(self._keep_lease(), name=f"lease-{self.ae}")
        try:
            while True:
                try:
                    if self.reread:
                        self.reread = False
                        self.reader.forget()
                    if not self.held:
                        self.reader.forget()
                        await self.close()
                        self._drained()  # another process delivers: nothing for us to do
                        await self._sleep(POLL_SECONDS)
                    else:
                        # Only who asked before this read began may learn "drained" from it.
                        # Offered events are no proof that nothing else is queued: then read.
                        asking = list(self._drain_waiters)
                        if await self._deliver_some(from_stream=bool(asking)):
                            continue
                        self._drained(asking)
                        if self.assoc is not None and \
                                time.monotonic() - self.last_used > self.config.association_idle_seconds:
                            await self.close()
                        await self._sleep(POLL_SECONDS)
                except LeaseLost:
                    self.held = False  # another process took over: the keeper notices too
                except RedisError as exc:
                    log.warning("event delivery paused: redis unavailable",
                                extra={"ae": self.ae, "error": str(exc)})
                    await asyncio.sleep(1.0)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            self.held = False
            try:
                await self.queues.release(self.reader.lease)
            except RedisError:
                pass  # it expires on its own

    async def _keep_lease(self) -> None:
        """Take the lease when it is free and keep it, on its own clock."""
        while True:
            try:
                held = await self.queues.hold(self.reader.lease)
            except RedisError:
                held = False
            if held and not self.held:
                self.wake()
            self.held = held
            await asyncio.sleep(RENEW_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set (the task then runs on, and shutdown waits for it forever).
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _drained(self, asking: list[asyncio.Future] | None = None) -> None:
        """Resolve the drain waiters that asked before the read that found the queue empty
        (all of them when ``asking`` is None)."""
        if asking is None:
            waiters, self._drain_waiters = self._drain_waiters, []
        else:
            waiters = asking
            self._drain_waiters = [f for f in self._drain_waiters if f not in asking]
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def _deliver_some(self, from_stream: bool = False) -> bool:
        """Deliver up to a batch of queued events; True when more may be queued."""
        entries, lost = await self.reader.pending(BATCH, from_stream)
        if lost:
            log.error("events dropped by the backlog bound before delivery",
                      extra={"ae": self.ae, "lost": lost})
            self.metrics.events_dropped.labels(TRANSPORT, "backlog").inc(lost)
        for entry in entries:
            if not self.held:
                return True
            age = time.time() - entry.ts_ms / 1000
            if age > self.config.delivery_expiry_seconds:
                log.error("event expired undelivered", extra={
                    "ae": self.ae, "uid": entry.uid, "event": ev.NAMES.get(entry.type),
                    "age_s": int(age)})
                self.metrics.events_expired.labels(TRANSPORT).inc()
            else:
                error = await self._send(entry)
                if error:
                    log.warning("N-EVENT-REPORT failed; will retry", extra={
                        "ae": self.ae, "uid": entry.uid, "event": ev.NAMES.get(entry.type),
                        "error": error, "retry_in_s": self.backoff})
                    self.metrics.events_failed.labels(TRANSPORT).inc()
                    await asyncio.sleep(self.backoff)
                    self.backoff = min(self.backoff * 2, self.config.retry_max_seconds)
                    return True
                self.backoff = self.config.retry_initial_seconds
            if not await self.reader.ack(entry):
                self.held = False
                return True  # lease lost meanwhile
        # A short batch emptied the queue: what is queued meanwhile comes with a notification.
        return len(entries) == BATCH

    async def _send(self, entry: QueuedEntry) -> str | None:
        """Send one N-EVENT-REPORT; the error text, or None when delivered (or refused by the
        receiver, which resending would not change)."""
        try:
            if self.assoc is None or not self.assoc.is_established:
                self.assoc = None
                self.assoc = await associate(
                    self.peer.host, self.peer.port, calling_ae=self.ae_title, called_ae=self.ae,
                    timeout=self.config.send_timeout, ssl=self.ssl, max_pdu=self.max_pdu)
            self.last_used = time.monotonic()
            try:
                dataset = convert.encode(entry.info, self.assoc.transfer_syntax)
                problem = "pydicom cannot write it" if dataset is None else ""
            except Exception as exc:  # noqa: BLE001 - whatever it is, resending will not help
                dataset, problem = None, f"{type(exc).__name__}: {exc}"[:200]
            if dataset is None:
                log.error("event cannot be encoded: dropped", extra={
                    "ae": self.ae, "uid": entry.uid, "event": ev.NAMES.get(entry.type),
                    "error": problem})
                self.metrics.events_dropped.labels(TRANSPORT, "unencodable").inc()
                return None
            status, comment = await self.assoc.send_event_report(entry.uid, entry.type, dataset)
        except AssociationError as exc:
            self._abort()
            return str(exc)
        if status != 0x0000 and not 0xB000 <= status <= 0xBFFF:
            log.warning("N-EVENT-REPORT refused by receiver", extra={
                "ae": self.ae, "uid": entry.uid, "status": f"0x{status:04X}",
                "comment": comment})
        self.metrics.events_delivered.labels(TRANSPORT).inc()
        log.debug("N-EVENT-REPORT delivered", extra={"ae": self.ae, "uid": entry.uid,
                                                     "event": ev.NAMES.get(entry.type)})
        return None

    def _abort(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            assoc.abort()

    async def close(self) -> None:
        """Release the association (idle, lease lost, stopping)."""
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            try:
                await assoc.release()
            except AssociationError:
                assoc.abort()
            except asyncio.CancelledError:  # a stop that no longer waits for the peer
                assoc.abort()
                raise
