"""The composition root: every component of a gateway process is made here, and each is given
exactly what it uses — a configuration section, the UPS service, a store, the hub — so that none
reaches through another. Start and stop happen here too, in order.

    Redis ─┬─ RedisWorkitemStore ─┬─ UPSService ─┬─ REST app (UPS-RS, event channels, /health)
           ├─ RedisSubscriptionStore┘             └─ DIMSE listener (handlers)
           ├─ EventQueues ─┬─ WebSocketFanout (rounds, upkeep)
           └─ EventHub ────┴─ DimseEventSender (one worker per peer)
    ServiceStatus (RESTARTED / GOING DOWN, heartbeat) · retention purge · Supervisor (all tasks)
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import logging
import platform
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from gateway.config import Config, ConfigError
from gateway.dimse.event_sender import DimseEventSender
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.server import DimseServer
from gateway.events.fanout import WebSocketFanout
from gateway.events.hub import EventHub
from gateway.events.queue import EventQueues
from gateway.events.status import ServiceStatus
from gateway.rest import websocket
from gateway.rest.app import create_app
from gateway.rest.server import Runner
from gateway.store import client
from gateway.store.embedded import EmbeddedRedis
from gateway.store.keys import Keys
from gateway.store.lane import Lane
from gateway.store.subscriptions import RedisSubscriptionStore
from gateway.store.workitems import RedisWorkitemStore
from gateway.supervisor import Supervisor
from gateway.ups.dicomtime import parse_offset
from gateway.ups.service import Settings, UPSService

log = logging.getLogger("gateway")

# The cyclic collector's young generation: a request allocates a few hundred containers (its
# DICOM JSON) that reference counting frees at once; at the default threshold of 700 a young
# collection ran every other create, scanning objects that were about to go anyway.
GC_THRESHOLDS = (20000, 20, 10)
# glibc's allocator raises its mmap threshold to the size of each large block freed (up to
# 32 MiB), so after one burst of large buffers (request bodies, DIMSE messages) later ones come
# from the heap, which fragments and is rarely given back: 100 slow bodies kept 86 MB after they
# closed. Fixed thresholds keep large blocks in their own mappings, returned when freed.
MALLOC_THRESHOLD_BYTES = 128 * 1024
HUB_READY_SECONDS = 10.0
SHUTDOWN_DELIVERY_SECONDS = 2.0


@dataclass
class Core:
    keys: Keys
    lane: Lane
    workitems: RedisWorkitemStore
    subscriptions: RedisSubscriptionStore
    service: UPSService


def make_core(cfg: Config, redis: aioredis.Redis) -> Core:
    """The UPS service on its Redis stores, as configured (also what bench/loader.py loads
    through)."""
    keys = Keys(cfg.redis.key_prefix)
    tz = parse_offset(cfg.ups.timezone_offset)
    lane = Lane(redis)
    workitems = RedisWorkitemStore(redis, keys, lane=lane, backlog=cfg.events.backlog,
                                   timezone_=tz,
                                   search_cache_bytes=int(cfg.ups.search_cache_mb * 2**20))
    subscriptions = RedisSubscriptionStore(redis, keys, backlog=cfg.events.backlog)
    service = UPSService(workitems, subscriptions, Settings(
        default_worklist_label=cfg.ups.default_worklist_label, timezone=tz,
        search_default_limit=cfg.ups.search_default_limit,
        search_max_limit=cfg.ups.search_max_limit, direct_event_aes=frozenset(cfg.peers),
        max_subscriber_aes=cfg.events.max_subscriber_aes))
    return Core(keys, lane, workitems, subscriptions, service)


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.supervisor = Supervisor()
        self.embedded: EmbeddedRedis | None = None
        self.redis: aioredis.Redis | None = None
        self.service: UPSService | None = None
        self.lane: Lane | None = None
        self.fanout: WebSocketFanout | None = None
        self.status: ServiceStatus | None = None
        self.sender: DimseEventSender | None = None
        self.dimse: DimseServer | None = None
        self.runner: web.AppRunner | None = None
        self._started = False
        self._stopping = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        _fix_malloc_thresholds()
        self.redis = await self._connect_redis()
        core = make_core(cfg, self.redis)
        keys, workitems, subscriptions = core.keys, core.workitems, core.subscriptions
        self.service = service = core.service
        self.lane = core.lane

        queues = EventQueues(self.redis, keys, core.lane)
        hub = EventHub(self.redis, keys)
        self.supervisor.start("event-hub", hub.run)
        try:  # what is published from here on must be heard
            await asyncio.wait_for(hub.ready.wait(), HUB_READY_SECONDS)
        except asyncio.TimeoutError:
            raise ConfigError("redis: the event notification channel cannot be subscribed") from None
        self.fanout = WebSocketFanout(self.redis, queues, hub)
        self.supervisor.start("websocket-fanout", self.fanout.run)
        self.supervisor.start("websocket-upkeep", self.fanout.keep)

        await self._start_rest(create_app(cfg.rest, service, self.fanout, self.health))
        if cfg.dimse.enabled:
            self.dimse = DimseServer(cfg.dimse, cfg.ae_title,
                                     DimseHandlers(service, cfg.dimse.request_timeout,
                                                   cfg.dimse.max_message_bytes))
            await self.dimse.start()
        self.sender = DimseEventSender(cfg.ae_title, cfg.peers, cfg.events, queues, hub)
        for name, worker in self.sender.workers.items():
            self.supervisor.start(name, worker.run)

        self.status = ServiceStatus(self.redis, keys, workitems, subscriptions)
        await self.status.started()
        self.supervisor.start("heartbeat", self.status.heartbeat)
        self.supervisor.start("purge", self._purge)
        # Everything allocated so far (modules, dictionaries, configuration) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it cost 80-90 ms.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._started = True
        log.info("gateway started", extra={
            "ae": cfg.ae_title, "rest": f"{cfg.rest.host}:{cfg.rest.port}{cfg.rest.base_path}",
            "dimse": f"{cfg.dimse.host}:{cfg.dimse.port}" if cfg.dimse.enabled else "disabled",
            "redis": "embedded" if self.embedded else _redact(cfg.redis.url)})

    async def stop(self) -> None:
        log.info("gateway stopping")
        if self.status:
            await self.status.stopping()  # GOING DOWN to every subscriber
        if self.sender:
            await self.sender.flush(timeout=SHUTDOWN_DELIVERY_SECONDS)
        if self.dimse:
            await self.dimse.stop()
        if self.fanout:  # deliver what is queued (GOING DOWN included), then say goodbye
            await websocket.close_all(self.fanout, SHUTDOWN_DELIVERY_SECONDS)
        if self.runner:
            await self.runner.cleanup()
        await self.supervisor.stop()
        if self.sender:
            await self.sender.close()
        if self.lane:
            await self.lane.close()
        if self.redis:
            await self.redis.aclose()
        if self.embedded:
            await self.embedded.stop()
        log.info("gateway stopped")

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    async def health(self) -> dict:
        """Up or down per component (REST, DIMSE, Redis, start-up, every supervised task):
        ``/health`` answers 503 while any is down, naming it."""
        components = {"rest": self.runner is not None, "startup": self._started}
        if self.config.dimse.enabled:
            components["dimse"] = self.dimse is not None and self.dimse.is_running()
        try:
            components["redis"] = bool(await asyncio.wait_for(self.redis.ping(), 2.0))
        except (RedisError, OSError, asyncio.TimeoutError):
            components["redis"] = False
        tasks = self.supervisor.health()
        report = {name: "up" if ok else "down" for name, ok in components.items()}
        report.update((name, task["status"]) for name, task in tasks.items())
        ok = all(state == "up" for state in report.values())
        body = {"status": "ok" if ok else "unavailable", "ae_title": self.config.ae_title,
                "components": report}
        errors = {name: task["error"] for name, task in tasks.items() if task["status"] == "down"}
        if errors:
            body["errors"] = errors
        return body

    # ---- parts -------------------------------------------------------------------------------

    async def _connect_redis(self) -> aioredis.Redis:
        cfg = self.config
        url = cfg.redis.url
        if url is None:
            self.embedded = EmbeddedRedis(cfg.data_dir)
            try:
                await self.embedded.start()
            except (RuntimeError, OSError) as exc:
                raise ConfigError(f"data_dir: cannot start the embedded Redis: {exc}") from None
            url = self.embedded.url
        redis = client.connect(url, socket_connect_timeout=cfg.redis.connect_timeout,
                               health_check_interval=30, max_connections=512)
        try:
            await asyncio.wait_for(redis.ping(), cfg.redis.connect_timeout + 1)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            await redis.aclose()
            raise ConfigError(f"redis.url: cannot reach Redis at {_redact(url)}: "
                              f"{exc or type(exc).__name__}") from None
        await _check_redis_settings(redis)
        return redis

    async def _start_rest(self, app: web.Application) -> None:
        cfg = self.config.rest
        runner = Runner(app, cfg)  # with the connection, header and keep-alive limits
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = ("is in use" if exc.errno == errno.EADDRINUSE
                      else f"cannot be bound ({exc.strerror})")
            raise ConfigError(f"rest.port: {cfg.host}:{cfg.port} {reason}") from None
        self.runner = runner

    async def _purge(self) -> None:
        """Delete COMPLETED/CANCELED workitems after their retention (decisions.md, Retention)."""
        ups = self.config.ups
        while True:
            try:
                await self.service.purge_expired(ups.retention_hours * 3600)
            except RedisError as exc:
                log.warning("purge skipped: redis unavailable", extra={"error": str(exc)})
            await asyncio.sleep(ups.purge_interval_seconds)


def _fix_malloc_thresholds() -> None:
    """Fixed glibc trim and mmap thresholds (``MALLOC_THRESHOLD_BYTES``); elsewhere nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    for option in (m_trim_threshold, m_mmap_threshold):
        if libc.mallopt(option, MALLOC_THRESHOLD_BYTES) != 1:
            log.warning("malloc thresholds not set: memory may not return after bursts")
            return


async def _check_redis_settings(redis: aioredis.Redis) -> None:
    """Workitem hashes hold one 1-2 KB field; Redis's default 64-byte compact-encoding limit
    doubles their memory. Advise (managed Redis may forbid CONFIG GET: then stay quiet)."""
    try:
        reply = await redis.config_get("hash-max-ziplist-value")
        value = int(next(iter(reply.values())))
    except (RedisError, StopIteration, ValueError):
        return
    if value < 4096:
        log.warning("redis hash-max-ziplist-value is small: workitems take about twice the "
                    "memory; set it to 16384", extra={"current": value})


def _redact(url: str | None) -> str:
    if url and "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url or ""
