"""WebSocket delivery for all channels of one gateway process, in rounds.

A change seen by a hundred subscribers wakes a hundred channels with one notification. Served one
by one, each channel would cost its own script calls and task switches per event (≈300 redis-py
commands per event: the fan-out profile in docs/performance.md). Instead, one round serves every
channel woken in the same loop turn: one round trip reads all their queues (``read_queues``), the
frames are encoded once per event (``FrameEncoder``) and written to each socket, and one
``cursor.lua`` call acknowledges them all.

The same goes for the channels' upkeep: one ``keep_channels.lua`` call every couple of seconds
renews every channel's lease and registration, and a periodic round over all channels catches
events whose notification was missed.

Rounds run one at a time, so a channel is never served twice at once and its acknowledgements
reach Redis in order. A frame is written in the round only when the socket's buffer can take it
without waiting; a client that is not reading gets its frames from a task of its own
(``Channel.sending``) and is left out of the rounds until that is done, so it holds up nobody else.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from redis.exceptions import RedisError

from gateway.events.frames import FrameEncoder
from gateway.events.queue import LeaseLost, QueuedEntry, advance_cursors, read_queues
from gateway.store.redis_store import lua, pack, pack_for_lua
from gateway.ups import events as ev
from gateway.ups.uids import GLOBAL_SUBSCRIPTION

log = logging.getLogger("gateway.events")

TRANSPORT = "ws"
BATCH = 200  # events per channel per round; a longer backlog takes more rounds
LEASE_MS = 15000  # a channel's hold on its AE's delivery, renewed every REFRESH_SECONDS
REFRESH_SECONDS = 2.0
POLL_SECONDS = 5.0  # every channel's queue is read this often even without a notification


class WebSocketFanout:
    def __init__(self, store, hub):
        self.store = store
        self._channels: dict[str, set] = {}  # AE → this process's open channels for it
        self._wanted: dict = {}  # channels to serve in the next round (an ordered set)
        self._waiting: dict = {}  # channel → futures of ``deliver`` calls, done after its round
        self._runner: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None
        self._keep = store.redis.register_script(lua("keep_channels.lua"))
        hub.listen(self.wake)

    def add(self, channel) -> None:
        self._channels.setdefault(channel.ae, set()).add(channel)
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_channels(), name="websocket-upkeep")

    def remove(self, channel) -> None:
        channels = self._channels.get(channel.ae)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[channel.ae]
        self._wanted.pop(channel, None)
        self._resolve(self._waiting.pop(channel, ()))

    def wake(self, aes: list[str] | None) -> None:
        """A notification: serve the local channels of these AEs (None: all of them)."""
        if aes is None:
            aes = list(self._channels)
        for ae in aes:
            for channel in self._channels.get(ae, ()):
                self._want(channel)

    async def deliver(self, channel) -> None:
        """Serve ``channel`` in the next round and return once that round has served it."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, []).append(future)
        self._want(channel)
        await future

    def _want(self, channel) -> None:
        if channel not in self._channels.get(channel.ae, ()):
            self._resolve(self._waiting.pop(channel, ()))  # closed meanwhile
            return
        self._wanted[channel] = None
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="websocket-fanout")

    async def _run(self) -> None:
        while self._wanted:
            batch = []
            for channel in self._wanted:
                if channel.ws.closed:
                    self._resolve(self._waiting.pop(channel, ()))
                elif channel.sending is None:  # a slow client's task wants it again when done
                    batch.append(channel)
            self._wanted = {}
            if not batch:
                continue
            waiting = {channel: self._waiting.pop(channel, ()) for channel in batch}
            try:
                await self._round(batch, waiting)
            except Exception as exc:  # a failed round must not stall the process's channels
                log.exception("event delivery round failed")
                for futures in waiting.values():
                    self._resolve(futures, exc)

    async def _round(self, batch: list, waiting: dict) -> None:
        """Serve ``batch``; ``waiting`` (channel → ``deliver`` futures) is done when served."""
        try:
            replies = await read_queues(self.store, [ch.reader for ch in batch], BATCH)
        except RedisError as exc:
            log.warning("event delivery paused: redis unavailable", extra={"error": str(exc)})
            for futures in waiting.values():
                self._resolve(futures, exc)
            return  # each channel polls again within a few seconds
        encoder = FrameEncoder()
        acks = []
        for channel, reply in zip(batch, replies):
            try:
                entries, lost = channel.reader.take(reply)
            except LeaseLost:
                channel.replaced()
                continue
            if not entries or channel.closing:
                continue  # (a closing connection's channel ends; its events stay queued)
            frames = [encoder.encode(entry) for entry in entries]
            if lost:
                frames.insert(0, overflow_notice(lost))
                log.warning("event backlog overflowed", extra={"ae": channel.ae, "lost": lost})
            if len(entries) == BATCH:
                self._wanted[channel] = None  # more queued: next round
            if channel.can_send_now(frames):
                try:
                    await channel.send(frames)  # does not wait: the socket buffer has room
                except (ConnectionError, RuntimeError) as exc:
                    log.debug("event channel send failed", extra={"ae": channel.ae,
                                                                  "error": str(exc)})
                    continue
                acks.append(channel.reader.advance(entries[-1]))
            else:
                log.info("event channel sends outside the rounds: its client is slow or has a "
                         "backlog", extra={"ae": channel.ae, "frames": len(frames)})
                channel.sending = asyncio.create_task(
                    self._send_slowly(channel, frames, entries[-1], waiting.pop(channel)))
        try:
            if acks:  # a refused cursor means a lost lease: the channel's next read says so
                await advance_cursors(self.store, TRANSPORT, acks)
        except RedisError as exc:
            # The frames went out; the stored cursor stays behind, so a reconnecting client may
            # get them again (at least once), and the next acknowledgement catches up.
            log.warning("event acknowledgement failed", extra={"error": str(exc)})
        for futures in waiting.values():
            self._resolve(futures)

    async def _send_slowly(self, channel, frames: list[bytes], last: QueuedEntry,
                           waiting) -> None:
        sent = False
        try:
            await channel.send(frames)
            sent = True
            await advance_cursors(self.store, TRANSPORT, [channel.reader.advance(last)])
        except (ConnectionError, RuntimeError, RedisError) as exc:
            log.debug("event channel send failed", extra={"ae": channel.ae, "error": str(exc)})
        finally:
            channel.sending = None
            self._resolve(waiting)
            if sent:  # (a failed send means the connection is going: its channel ends)
                self._want(channel)  # whatever was queued meanwhile

    async def _keep_channels(self) -> None:
        polled = time.monotonic()
        while self._channels:
            await asyncio.sleep(REFRESH_SECONDS)
            channels = [ch for chs in self._channels.values() for ch in chs if not ch.ws.closed]
            args = [self.store.p, LEASE_MS, time.time() + LEASE_MS / 1000,
                    pack_for_lua([[ch.ae, ch.lease.owner, ch.id] for ch in channels])]
            try:
                kept = await self._keep(args=args) if channels else []
            except RedisError as exc:
                log.warning("event channels not renewed: redis unavailable",
                            extra={"error": str(exc)})
                continue
            for channel, ok in zip(channels, kept):
                if not ok:
                    channel.replaced()
            if time.monotonic() - polled > POLL_SECONDS:
                polled = time.monotonic()
                self.wake(None)  # in case a notification was missed

    @staticmethod
    def _resolve(futures, exc: Exception | None = None) -> None:
        for future in futures:
            if not future.done():
                if exc is None:
                    future.set_result(None)
                else:
                    future.set_exception(exc)


def overflow_notice(lost: int) -> bytes:
    """An SCP Status Change frame telling a subscriber that ``lost`` events were dropped for it."""
    info = ev.scp_status("RESTARTED")
    info.update({"00741244": {"vr": "CS", "Value": ["WARM START"]},
                 "00741246": {"vr": "CS", "Value": ["COLD START"]}})
    frame = QueuedEntry("0-0", 0, ev.SCP_STATUS_CHANGE, GLOBAL_SUBSCRIPTION, pack(info), 0).frame()
    frame["00000902"] = {"vr": "LO", "Value": [f"{lost} events were dropped; query again"[:64]]}
    return orjson.dumps(frame)
