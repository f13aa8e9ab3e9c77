"""The gateway process: Redis (embedded or external), the UPS service, the REST front end and
the background tasks, started and stopped in order."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import time
from typing import Callable

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from gateway.config import Config, ConfigError
from gateway.events.dimse_sender import DimseEventSender
from gateway.events.hub import EventHub
from gateway.events.status import ServiceStatus
from gateway.rest.app import create_app
from gateway.store import client
from gateway.store.embedded import EmbeddedRedis
from gateway.store.redis_store import RedisStore
from gateway.ups.dicomtime import parse_offset
from gateway.ups.service import Settings, UPSService

log = logging.getLogger("gateway")

# The cyclic collector's young generation: a request allocates a few hundred containers (its
# DICOM JSON) that reference counting frees at once; at the default threshold of 700 a young
# collection ran every other create, scanning objects that were about to go anyway.
GC_THRESHOLDS = (20000, 20, 10)


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.embedded: EmbeddedRedis | None = None
        self.redis: aioredis.Redis | None = None
        self.store: RedisStore | None = None
        self.service: UPSService | None = None
        self.runner: web.AppRunner | None = None
        self.dimse = None
        self.hub: EventHub | None = None
        self.event_sender: DimseEventSender | None = None
        self.status: ServiceStatus | None = None
        self.channels: set = set()  # open WebSocket event channels of this process
        self.components: dict[str, Callable[[], bool]] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._started = False

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        await self._start_redis()
        self.store = RedisStore(self.redis, cfg.redis.key_prefix, cfg.events.backlog)
        self.service = UPSService(self.store, Settings(
            default_worklist_label=cfg.ups.default_worklist_label,
            timezone=parse_offset(cfg.ups.timezone_offset),
            search_default_limit=cfg.ups.search_default_limit,
            search_max_limit=cfg.ups.search_max_limit,
            search_cache_bytes=int(cfg.ups.search_cache_mb * 2**20),
            direct_event_aes=frozenset(cfg.peers)))
        self.hub = EventHub(self.redis, cfg.redis.key_prefix)
        await self.hub.start()
        if cfg.dimse.enabled:  # /health says 503 until the listener is up
            self.components["dimse"] = lambda: self.dimse is not None and self.dimse.is_running()
        # ... and until start-up is over: a client that subscribes as soon as /health says ok must
        # not be sent this start's SCP Status Change (RESTARTED), which belongs to earlier ones.
        self.components["startup"] = lambda: self._started
        await self._start_rest()
        if cfg.dimse.enabled:
            from gateway.dimse.server import DimseServer

            self.dimse = DimseServer(self)
            await self.dimse.start()
        self.event_sender = DimseEventSender(self)
        self.event_sender.start()
        self.status = ServiceStatus(self)
        await self.status.started()
        self._tasks.append(asyncio.create_task(self._purge_loop(), name="purge"))
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
        if self.event_sender:
            await self.event_sender.flush(timeout=2.0)
        if self.dimse:
            await self.dimse.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.channels:  # deliver what is queued (GOING DOWN included), then say goodbye
            await asyncio.wait([asyncio.create_task(ch.close_after_delivery())
                                for ch in list(self.channels)], timeout=2.0)
        if self.runner:
            await self.runner.cleanup()
        if self.event_sender:
            await self.event_sender.stop()
        if self.hub:
            await self.hub.stop()
        if self.redis:
            await self.redis.aclose()
        if self.embedded:
            await self.embedded.stop()
        log.info("gateway stopped")

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    # ---- parts ---------------------------------------------------------------------------

    async def _start_redis(self) -> None:
        cfg = self.config
        url = cfg.redis.url
        if url is None:
            self.embedded = EmbeddedRedis(cfg.data_dir)
            try:
                await self.embedded.start()
            except (RuntimeError, OSError) as exc:
                raise ConfigError(f"data_dir: cannot start the embedded Redis: {exc}") from None
            url = self.embedded.url
        self.redis = client.connect(
            url, socket_connect_timeout=cfg.redis.connect_timeout, health_check_interval=30,
            max_connections=512)
        try:
            await asyncio.wait_for(self.redis.ping(), cfg.redis.connect_timeout + 1)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise ConfigError(f"redis.url: cannot reach Redis at {_redact(url)}: "
                              f"{exc or type(exc).__name__}") from None
        self.components["redis"] = lambda: True
        await self._check_redis_settings()

    async def _check_redis_settings(self) -> None:
        """Workitem hashes hold one 1-2 KB field; Redis's default 64-byte compact-encoding limit
        doubles their memory. Advise (managed Redis may forbid CONFIG GET: then stay quiet)."""
        try:
            reply = await self.redis.config_get("hash-max-ziplist-value")
            value = int(next(iter(reply.values())))
        except (RedisError, StopIteration, ValueError):
            return
        if value < 4096:
            log.warning("redis hash-max-ziplist-value is small: workitems take about twice the "
                        "memory; set it to 16384", extra={"current": value})

    async def _start_rest(self) -> None:
        cfg = self.config.rest
        self.runner = web.AppRunner(create_app(self), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise ConfigError(f"rest.port: {cfg.host}:{cfg.port} {reason}") from None
        self.components["rest"] = lambda: True

    async def _purge_loop(self) -> None:
        """Delete COMPLETED/CANCELED workitems after their retention (decisions.md, Retention)."""
        ups = self.config.ups
        retention_ms = int(ups.retention_hours * 3600 * 1000)
        while True:
            try:
                cutoff = int(time.time() * 1000) - retention_ms
                while purged := await self.store.purge(cutoff, int(ups.retention_hours * 3600)):
                    log.info("purged workitems", extra={"count": len(purged), "uids": purged[:20]})
                    if len(purged) < 200:
                        break
            except RedisError as exc:
                log.warning("purge skipped: redis unavailable", extra={"error": str(exc)})
            await asyncio.sleep(ups.purge_interval_seconds)

    async def health(self) -> dict:
        checks = {name: check() for name, check in self.components.items()}
        try:
            checks["redis"] = bool(await asyncio.wait_for(self.redis.ping(), 2.0))
        except (RedisError, OSError, asyncio.TimeoutError):
            checks["redis"] = False
        ok = all(checks.values())
        return {"status": "ok" if ok else "unavailable", "ae_title": self.config.ae_title,
                "components": {k: "up" if v else "down" for k, v in checks.items()}}


def _redact(url: str | None) -> str:
    if url and "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url or ""
