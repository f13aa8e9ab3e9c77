"""WebSocket delivery for all event channels of one gateway process, in rounds.

A change seen by a hundred subscribers wakes a hundred channels with one notification. Served one
by one, each channel would cost its own script calls and task switches per event (≈300 redis-py
commands per event: the fan-out profile in docs/performance.md). Instead, one round serves every
channel woken in the same loop turn: the events the notification carried are sent as they are
when they follow each channel's cursor (``QueueReader.take_offered``), the queues of the others
are read in one round trip, each event's frame is encoded once (``FrameEncoder``) and written to
every socket, and one ``cursor.lua`` call acknowledges them all.

The same goes for the channels' upkeep: one ``keep_channels.lua`` call every couple of seconds
renews every channel's lease and registration, and a periodic round over all channels catches
events whose notification was missed.

Rounds run one at a time (``run``), so a channel is never served twice at once and its
acknowledgements reach Redis in order. A frame is written in the round only when the socket's
buffer can take it without waiting; a client that is not reading gets its frames from a task of
its own (``Channel.sending``) and is left out of the rounds until that is done, so it holds up
nobody else.

Delivered means confirmed by the client: after its frames a channel sends a WebSocket ping, and
the events before it count as delivered (the AE's cursor may move past them) only when the
client's pong for that ping comes back — its WebSocket stack has then read every frame before it.
Frames a client dropped unread (it closed, or never accepted the connection) are sent again on
its next channel. A channel holds at most ``ChannelLimits.send_buffer_bytes`` of unconfirmed
frames (then it gets nothing more until it confirms), and one whose client confirms nothing for
``ack_timeout_seconds`` is closed (``Channel.too_slow``): its events stay queued.

Several channels of one AE (performer replicas, two monitors) in one process share the AE's
lease and each get every event; the AE's stored cursor is the slowest of them: it advances when
every open channel of the AE has confirmed an event. A channel joining starts at that cursor. A
channel for the AE opened in another process takes the AE's delivery over (the lease), and this
process's channels of the AE are closed as replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.events.frames import FrameEncoder, overflow_notice
from gateway.events.hub import EventHub
from gateway.events.queue import (EventQueues, Lease, LeaseLapsed, LeaseLost, QueuedEntry,
                                  QueueReader)
from gateway.metrics import Metrics
from gateway.store import scripts
from gateway.store.codec import pack_for_lua

log = logging.getLogger("gateway.events")

TRANSPORT = "ws"
BATCH = 200  # events per channel per round; a longer backlog takes more rounds
LEASE_MS = 15000  # a channel's hold on its AE's delivery, renewed every REFRESH_SECONDS
REFRESH_SECONDS = 2.0
POLL_SECONDS = 5.0  # every channel's queue is read this often even without a notification
# Acknowledgements wait this long for those of the next rounds, and go to Redis together: one
# script call for a burst of changes rather than one per change. A channel that closes, and a
# connection that takes an AE over, write theirs first.
ACK_SECONDS = 0.02


@dataclass
class ChannelLimits:
    """Bounds on the channels of one process (``events.*`` in config.yaml)."""

    per_ae: int = 8
    total: int = 1000
    send_buffer_bytes: int = 1 << 20
    ack_timeout_seconds: float = 30.0


class ChannelRefused(Exception):
    """A channel cannot be opened now: ``status`` is the HTTP answer, ``reason`` says why."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Channel(Protocol):
    """What the fan-out needs of one open event channel (``gateway.rest.websocket``)."""

    ae: str
    id: str
    reader: QueueReader | None  # set by ``WebSocketFanout.open``
    sending: asyncio.Task | None  # frames to a slow client, outside the rounds
    unconfirmed_bytes: int  # sent, not yet confirmed by the client's pong

    @property
    def closed(self) -> bool: ...

    @property
    def closing(self) -> bool: ...

    def can_send_now(self, frames: list[bytes]) -> bool: ...

    async def send(self, frames: list[bytes], last: QueuedEntry) -> None:
        """Write ``frames`` (the last event in them: ``last``), then ask the client to confirm
        them; ``WebSocketFanout.confirmed`` is called when it does."""

    def stalled(self, now: float, timeout: float) -> bool:
        """Whether frames have waited for the client's confirmation longer than ``timeout``."""

    def replaced(self) -> None: ...

    def too_slow(self) -> None:
        """Close: the client confirms nothing (never reads); its events stay queued."""


@dataclass(eq=False)
class _AeChannels:
    """This process's open channels of one AE: one lease, one stored cursor for all of them."""

    lease: Lease
    members: set = field(default_factory=set)
    acked: int = -1  # the sequence number the stored cursor was last advanced to


class WebSocketFanout:
    def __init__(self, client: aioredis.Redis, queues: EventQueues, hub: EventHub,
                 limits: ChannelLimits | None = None, metrics: Metrics | None = None):
        self.metrics = metrics or Metrics(process=False)
        self.queues = queues
        self.keys = queues.keys
        self.limits = limits or ChannelLimits()
        self._channels: dict[str, set[Channel]] = {}  # AE → this process's served channels
        self._aes: dict[str, _AeChannels] = {}  # AE → its open channels here (served or not)
        self._wanted: dict[Channel, None] = {}  # channels to serve in the next round (ordered)
        self._waiting: dict[Channel, list[asyncio.Future]] = {}  # ``deliver`` calls per channel
        # Channels a round passed over because their send buffer was full: a confirmation that
        # makes room wants them again (any other confirmation leaves the channel alone, so a
        # pong does not cost a read of the stream).
        self._held_back: set[Channel] = set()
        self._wake = asyncio.Event()
        self._acks: dict[tuple[str, str], list] = {}  # (AE, lease owner) → its latest advance
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acking: set[asyncio.Task] = set()
        self._keep = scripts.on_lane(queues.lane, "keep_channels.lua")
        self.redis = client
        self.hub = hub
        hub.listen(self._notified)
        hub.listen_takeovers(self._taken_over)

    # ---- channels ---------------------------------------------------------------------------

    async def open(self, channel: Channel) -> None:
        """Admit ``channel`` (``ChannelRefused`` past the limits), give it a reader on its AE's
        lease — taken over from any other process — and register it (``channel_open``);
        ``serve`` it once its connection is ready."""
        ae = channel.ae
        group = self._aes.get(ae)
        if group is not None and len(group.members) >= self.limits.per_ae:
            raise ChannelRefused(429, f"AE {ae} already has {len(group.members)} open event "
                                 f"channels, the most allowed (events.max_channels_per_ae)")
        total = sum(len(g.members) for g in self._aes.values())
        if total >= self.limits.total:
            raise ChannelRefused(503, f"the gateway already holds {total} open event channels, "
                                 "the most allowed (events.max_channels); try again later")
        if group is None:
            group = self._aes[ae] = _AeChannels(Lease(self.keys.lease(TRANSPORT, ae), LEASE_MS))
        group.members.add(channel)  # counted from now on, before anything waits
        channel.reader = QueueReader(self.queues, TRANSPORT, ae, group.lease)
        try:
            await self.flush_acks()  # an older connection's, so that this one starts after them
            await self.queues.hold(group.lease, take=True)
            await self.redis.zadd(self.keys.channels(ae),
                                  {channel.id: time.time() + LEASE_MS / 1000})
            # other processes close their channels of the AE now, not at a lease check
            await self.hub.announce_takeover(ae, group.lease.owner)
        except BaseException:
            await self._leave(channel)
            raise

    def serve(self, channel: Channel) -> None:
        self._channels.setdefault(channel.ae, set()).add(channel)

    async def close(self, channel: Channel) -> None:
        channels = self._channels.get(channel.ae)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[channel.ae]
        self._wanted.pop(channel, None)
        self._held_back.discard(channel)
        self._resolve(self._waiting.pop(channel, ()))
        await self._leave(channel)

    async def _leave(self, channel: Channel) -> None:
        group = self._aes.get(channel.ae)
        if group is None or channel not in group.members:
            return
        group.members.discard(channel)
        if group.members:
            self._advance_group(channel.ae)  # it may have been the slowest
        else:
            del self._aes[channel.ae]
        await self.flush_acks()  # while the lease is still ours: after, they would be refused
        await self.redis.zrem(self.keys.channels(channel.ae), channel.id)
        if not group.members:
            await self.queues.release(group.lease)

    def _taken_over(self, ae: str, owner: str) -> None:
        group = self._aes.get(ae)
        if group is not None and group.lease.owner != owner:
            for channel in list(group.members):
                channel.replaced()

    # ---- confirmations ------------------------------------------------------------------------

    def confirmed(self, channel: Channel, entry: QueuedEntry) -> None:
        """The client of ``channel`` has read everything up to ``entry``."""
        reader = channel.reader
        if reader is None or (reader.confirmed and reader.confirmed[1] >= entry.n):
            return
        reader.confirmed = (entry.id, entry.n)
        self._advance_group(channel.ae)
        room = channel.unconfirmed_bytes < self.limits.send_buffer_bytes
        if room and channel in self._held_back:
            self._held_back.discard(channel)
            self._want(channel)  # room again for what it was not sent

    def _advance_group(self, ae: str) -> None:
        """Move the AE's stored cursor to what every open channel of the AE has confirmed."""
        group = self._aes.get(ae)
        if group is None:
            return
        positions = [ch.reader.confirmed for ch in group.members if ch.reader is not None]
        if not positions or any(p is None for p in positions):
            return  # a channel that has not read its starting point yet
        low = min(positions, key=lambda p: p[1])
        if low[1] > group.acked:
            group.acked = low[1]
            self._note_acks([[ae, group.lease.owner, f"{low[0]} {low[1]}"]])

    @property
    def channels(self) -> list[Channel]:
        return [channel for channels in self._channels.values() for channel in channels]

    # ---- waking -----------------------------------------------------------------------------

    def _notified(self, by_ae: dict[str, list[QueuedEntry]] | None) -> None:
        if by_ae is None:
            self.wake_all()
            return
        for ae, entries in by_ae.items():
            for channel in self._channels.get(ae, ()):
                channel.reader.offer(entries)
                self._want(channel)

    def wake_all(self) -> None:
        for channel in self.channels:
            self._want(channel)

    async def deliver(self, channel: Channel) -> None:
        """Serve ``channel`` in the next round and return once that round has served it."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, []).append(future)
        self._want(channel)
        await future

    def _want(self, channel: Channel) -> None:
        if channel not in self._channels.get(channel.ae, ()):
            self._resolve(self._waiting.pop(channel, ()))  # closed meanwhile
            return
        self._wanted[channel] = None
        self._wake.set()

    # ---- rounds -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the wanted channels, one round at a time, until cancelled (supervised)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._wanted:
                batch = []
                for channel in self._wanted:
                    if channel.closed:
                        self._resolve(self._waiting.pop(channel, ()))
                    elif channel.sending is None:  # a slow client's task wants it when done
                        batch.append(channel)
                self._wanted = {}
                if batch:
                    waiting = {channel: self._waiting.pop(channel, []) for channel in batch}
                    try:
                        await self._round(batch, waiting)
                    except BaseException as exc:
                        for futures in waiting.values():
                            self._resolve(futures, exc if isinstance(exc, Exception) else None)
                        raise

    async def _round(self, batch: list[Channel], waiting: dict) -> None:
        """Serve ``batch``; ``waiting`` (channel → ``deliver`` futures) is done when served."""
        got: dict[Channel, tuple[list[QueuedEntry], int]] = {}
        unread = []
        for channel in batch:
            offered = channel.reader.take_offered(BATCH)
            if offered is not None:
                got[channel] = (offered, 0)
            else:
                unread.append(channel)
        if unread:
            try:
                replies = await self.queues.read([ch.reader for ch in unread], BATCH)
            except RedisError as exc:
                log.warning("event delivery paused: redis unavailable", extra={"error": str(exc)})
                for channel in unread:
                    self._resolve(waiting.pop(channel), exc)
                replies = []  # each channel is read again at the next poll
            for channel, reply in zip(unread, replies):
                try:
                    got[channel] = channel.reader.take(reply)
                except LeaseLapsed:
                    pass  # nobody took it over: ``keep`` takes it again, the next poll serves
                except LeaseLost:
                    channel.replaced()
        encoder = FrameEncoder()
        budget = self.limits.send_buffer_bytes
        for channel, (entries, lost) in got.items():
            if not entries or channel.closing:
                continue  # (a closing connection's channel ends; its events stay queued)
            frames = [encoder.encode(entry) for entry in entries]
            if lost:
                frames.insert(0, overflow_notice(lost))
                log.warning("event backlog overflowed", extra={"ae": channel.ae, "lost": lost})
                self.metrics.events_dropped.labels(TRANSPORT, "backlog").inc(lost)
            size = sum(map(len, frames))
            if channel.unconfirmed_bytes and channel.unconfirmed_bytes + size > budget:
                # Its send buffer is full: nothing more until the client confirms (its pong
                # wants it again), or it is closed as too slow. The events stay queued.
                log.debug("event channel send buffer full", extra={
                    "ae": channel.ae, "unconfirmed": channel.unconfirmed_bytes})
                self._held_back.add(channel)
                continue
            self._held_back.discard(channel)  # (it has room: served now)
            if len(entries) == BATCH:
                self._want(channel)  # more may be queued: next round
            last = entries[-1]
            if channel.can_send_now(frames):
                try:
                    await channel.send(frames, last)  # does not wait: the buffer has room
                except (ConnectionError, RuntimeError) as exc:
                    log.debug("event channel send failed", extra={"ae": channel.ae,
                                                                  "error": str(exc)})
                    self.metrics.events_failed.labels(TRANSPORT).inc()
                    continue
                channel.reader.advance(last)  # sent; stored once its client confirms it
                self.metrics.events_delivered.labels(TRANSPORT).inc(len(entries))
            else:
                log.info("event channel sends outside the rounds: its client is slow or has a "
                         "backlog", extra={"ae": channel.ae, "frames": len(frames)})
                channel.reader.advance(last)
                channel.sending = asyncio.create_task(
                    self._send_slowly(channel, frames, entries, waiting.pop(channel)))
        for futures in waiting.values():
            self._resolve(futures)

    def _note_acks(self, acks: list[list]) -> None:
        """Note how far each channel got; ``flush_acks`` stores it (``ACK_SECONDS``)."""
        for advance in acks:
            self._acks[(advance[0], advance[1])] = advance  # cursors only move forward
        if acks and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_SECONDS,
                                                                    self._flush_acks_later)

    def _flush_acks_later(self) -> None:
        self._ack_timer = None
        task = asyncio.ensure_future(self.flush_acks())
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def flush_acks(self) -> None:
        acks, self._acks = list(self._acks.values()), {}
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if not acks:
            return
        try:  # a refused cursor means a lost lease: the keeper or the next read says so
            await self.queues.advance(TRANSPORT, acks)
        except RedisError as exc:
            # The frames went out; the stored cursor stays behind, so a reconnecting client may
            # get them again (at least once), and the next acknowledgement catches up.
            log.warning("event acknowledgement failed", extra={"error": str(exc)})

    async def _send_slowly(self, channel: Channel, frames: list[bytes],
                           entries: list[QueuedEntry], waiting: list[asyncio.Future]) -> None:
        sent = False
        try:
            await channel.send(frames, entries[-1])
            sent = True
            self.metrics.events_delivered.labels(TRANSPORT).inc(len(entries))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("event channel send failed", extra={"ae": channel.ae, "error": str(exc)})
            self.metrics.events_failed.labels(TRANSPORT).inc()
        finally:
            channel.sending = None
            self._resolve(waiting)
            if sent:  # (a failed send means the connection is going: its channel ends)
                self._want(channel)  # whatever was queued meanwhile

    # ---- upkeep -----------------------------------------------------------------------------

    async def keep(self) -> None:
        """Renew every channel's lease and registration, and poll every queue now and then,
        until cancelled (supervised)."""
        polled = time.monotonic()
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            channels = [channel for channel in self.channels if not channel.closed]
            if channels:
                try:
                    kept = await self._keep(args=[
                        self.keys.prefix, LEASE_MS, time.time() + LEASE_MS / 1000,
                        pack_for_lua([[ch.ae, ch.reader.lease.owner, ch.id] for ch in channels])])
                except RedisError as exc:
                    log.warning("event channels not renewed: redis unavailable",
                                extra={"error": str(exc)})
                    continue
                for channel, ok in zip(channels, kept):
                    if not ok:
                        channel.replaced()
            now = time.monotonic()
            for channel in channels:
                if channel.stalled(now, self.limits.ack_timeout_seconds):
                    log.warning("event channel closed: its client confirms nothing", extra={
                        "ae": channel.ae, "unconfirmed": channel.unconfirmed_bytes})
                    channel.too_slow()
            if time.monotonic() - polled > POLL_SECONDS:
                polled = time.monotonic()
                self.wake_all()  # in case a notification was missed

    @staticmethod
    def _resolve(futures, exc: Exception | None = None) -> None:
        for future in futures:
            if not future.done():
                if exc is None:
                    future.set_result(None)
                else:
                    future.set_exception(exc)
