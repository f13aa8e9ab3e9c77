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
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from gateway.audit import messages as audit_messages
from gateway.audit.sinks import FileSink, SyslogSink
from gateway.audit.trail import AuditTrail
from gateway.config import Config, ConfigError, sentinel_target
from gateway.dimse import audit_hook as dimse_audit
from gateway.dimse.event_sender import DimseEventSender
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.mpps import MppsScp
from gateway.dimse.mwl import MwlFind
from gateway.dimse.server import DimseServer
from gateway.events.fanout import ChannelLimits, WebSocketFanout
from gateway.events.hub import EventHub
from gateway.events.queue import EventQueues
from gateway.events.status import ServiceStatus
from gateway.metrics import Metrics, Sample
from gateway.rest import mpps as rest_mpps
from gateway.rest import mwl as rest_mwl
from gateway.events.store_watch import StoreWatch
from gateway.instance import identity, remember_store, remembered_store
from gateway.rest import websocket
from gateway.rest.app import create_app
from gateway.rest.audit_hook import Record
from gateway.rest.origin import allowed_origins
from gateway.rest.server import Runner
from gateway.rest.state import Security
from gateway.security import tls
from gateway.security.associations import AssociationAccess
from gateway.security.credentials import Authenticator
from gateway.store import client
from gateway.store.embedded import EmbeddedRedis
from gateway.store.keys import Keys
from gateway.store.lane import Lane
from gateway.store.replication import Replication
from gateway.store.stats import WorklistStats
from gateway.store.subscriptions import RedisSubscriptionStore
from gateway.store.tickets import RedisTickets
from gateway.store.workitems import RedisWorkitemStore
from gateway.supervisor import Supervisor
from gateway.ups import mpps, mwl
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
# The most any one step of a stop may take (the embedded Redis's own bound, saving its AOF, is
# the longest); a stop of a healthy process takes well under a second in all.
STOP_STEP_SECONDS = 12.0


@dataclass
class Core:
    keys: Keys
    lane: Lane
    workitems: RedisWorkitemStore
    subscriptions: RedisSubscriptionStore
    service: UPSService
    worklist: mwl.ModalityWorklist
    mpps: mpps.MppsService

    async def close(self) -> None:
        """Close the connections the stores hold besides the client's pool."""
        await self.lane.close()
        await self.subscriptions.close()


def make_core(cfg: Config, redis: aioredis.Redis) -> Core:
    """The UPS service on its Redis stores, as configured (also what bench/loader.py loads
    through)."""
    keys = Keys(cfg.redis.key_prefix)
    tz = parse_offset(cfg.ups.timezone_offset)
    lane = Lane(redis)
    replication = Replication(cfg.redis.min_replicas_ack, cfg.redis.replica_ack_timeout)
    workitems = RedisWorkitemStore(redis, keys, lane=lane, backlog=cfg.events.backlog,
                                   timezone_=tz,
                                   search_cache_bytes=int(cfg.ups.search_cache_mb * 2**20),
                                   replication=replication)
    subscriptions = RedisSubscriptionStore(redis, keys, backlog=cfg.events.backlog,
                                           replication=replication)
    service = UPSService(workitems, subscriptions, Settings(
        default_worklist_label=cfg.ups.default_worklist_label, timezone=tz,
        search_default_limit=cfg.ups.search_default_limit,
        search_max_limit=cfg.ups.search_max_limit, direct_event_aes=frozenset(cfg.peers),
        commit_wait_seconds=cfg.ups.commit_wait_seconds,
        max_subscriber_aes=cfg.events.max_subscriber_aes))
    worklist = mwl.ModalityWorklist(workitems.search_stream, mwl.Settings(
        default_modality=cfg.mwl.default_modality, rules=cfg.mwl.rules, timezone=tz))
    performed = mpps.MppsService(workitems, worklist, mpps.Settings(
        retention_seconds=int(cfg.ups.retention_hours * 3600),
        open_retention_seconds=int(cfg.mpps.open_retention_hours * 3600)))
    return Core(keys, lane, workitems, subscriptions, service, worklist, performed)


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.supervisor = Supervisor()
        self.embedded: EmbeddedRedis | None = None
        self.redis: aioredis.Redis | None = None
        self.service: UPSService | None = None
        self.lane: Lane | None = None
        self.core: Core | None = None
        self.fanout: WebSocketFanout | None = None
        self.status: ServiceStatus | None = None
        self.store_watch: StoreWatch | None = None
        self.sender: DimseEventSender | None = None
        self.dimse: DimseServer | None = None
        self.runner: web.AppRunner | None = None
        # The process's metrics registry, handed to everything that records (none reaches it
        # any other way); /metrics serves it when metrics.enabled.
        self.metrics = Metrics()
        self.authenticator: Authenticator | None = None
        self.audit: AuditTrail | None = None
        self.instance = ""
        self._started = False
        self._stopping = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.instance = identity(cfg)
        _fix_malloc_thresholds()
        self.redis = await self._connect_redis()
        core = make_core(cfg, self.redis)
        keys, workitems, subscriptions = core.keys, core.workitems, core.subscriptions
        self.service = service = core.service
        self.lane = core.lane
        self.core = core

        queues = EventQueues(self.redis, keys, core.lane)
        hub = EventHub(self.redis, keys)
        workitems.on_published = hub.published_here
        self.supervisor.start("event-hub", hub.run)
        try:  # what is published from here on must be heard
            await asyncio.wait_for(hub.ready.wait(), HUB_READY_SECONDS)
        except asyncio.TimeoutError:
            raise ConfigError("redis: the event notification channel cannot be subscribed") from None
        metrics = self.metrics
        events = cfg.events
        self.fanout = WebSocketFanout(self.redis, queues, hub, ChannelLimits(
            per_ae=events.max_channels_per_ae, total=events.max_channels,
            send_buffer_bytes=events.channel_send_buffer_bytes,
            ack_timeout_seconds=events.channel_ack_timeout_seconds), metrics)
        self.supervisor.start("websocket-fanout", self.fanout.run)
        self.supervisor.start("websocket-upkeep", self.fanout.keep)

        await self._watch_worklist(keys, queues)
        self.audit = self._audit_trail()
        record = self.audit.record if self.audit else None
        self.authenticator = self._authenticator()
        await self.authenticator.tokens.refresh()
        security = Security(self.authenticator, RedisTickets(self.redis, keys),
                            cfg.auth.ticket_ttl_seconds,
                            allowed_origins(cfg.rest.cors_allow_origins, cfg.rest.public_url))
        await self._start_rest(create_app(
            cfg.rest, service, self.fanout, self.health, security, record,
            [rest_mwl.installer(core.worklist), rest_mpps.installer(core.mpps)],
            metrics=metrics if cfg.metrics.enabled else None,
            metrics_need_auth=cfg.metrics.require_auth,
            subprotocols=events.websocket_subprotocols))
        if cfg.dimse.enabled:
            access = AssociationAccess(self.authenticator, cfg.dimse.ae_scopes,
                                       cfg.dimse.require_identity)
            extensions = ([MwlFind(core.worklist)] if cfg.mwl.enabled else []) + (
                [MppsScp(core.mpps)] if cfg.mpps.enabled else [])
            handlers = DimseHandlers(service, cfg.dimse.request_timeout, extensions, metrics,
                                     cfg.dimse.max_message_bytes)
            associated = None
            if record is not None:
                handlers.audit = _dimse_request_audit(record)
                associated = _association_audit(record)
            self.dimse = DimseServer(cfg.dimse, cfg.ae_title, handlers, access, associated)
            await self.dimse.start()
        try:
            self.sender = DimseEventSender(cfg.ae_title, cfg.peers, cfg.events, queues, hub,
                                           self.instance, metrics, max_pdu=cfg.dimse.max_pdu)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"peers: a TLS file cannot be read: {exc}") from None
        for name, worker in self.sender.workers.items():
            self.supervisor.start(name, worker.run)

        self.store_watch = StoreWatch(self.redis, keys, subscriptions, list(cfg.peers),
                                      self._store_reset, lambda seen: remember_store(cfg, seen))
        await self.store_watch.started(remembered_store(cfg))
        hub.listen(self.store_watch.hub_notified)
        self.status = ServiceStatus(self.redis, keys, workitems, subscriptions, self.instance)
        await self.status.started()
        self.supervisor.start("heartbeat", self.status.heartbeat)
        self.supervisor.start("store-watch", self.store_watch.run)
        self.supervisor.start("purge", self._purge)
        # Everything allocated so far (modules, dictionaries, configuration) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it cost 80-90 ms.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._started = True
        self._application_activity(audit_messages.APPLICATION_START)
        log.info("gateway started", extra={
            "ae": cfg.ae_title, "instance": self.instance,
            "rest": f"{cfg.rest.host}:{cfg.rest.port}{cfg.rest.base_path}",
            "dimse": f"{cfg.dimse.host}:{cfg.dimse.port}" if cfg.dimse.enabled else "disabled",
            "redis": "embedded" if self.embedded else redis_location(cfg)})

    async def stop(self) -> None:
        """Stop in order, each step bounded (``STOP_STEP_SECONDS``, or its own shorter bound):
        a step that overruns or fails is logged, naming it, and the stop goes on."""
        log.info("gateway stopping")
        steps = []
        if self.status:
            steps.append(("GOING DOWN", self.status.stopping))  # to every subscriber
        if self.sender:
            steps.append(("event flush", lambda: self.sender.flush(
                timeout=SHUTDOWN_DELIVERY_SECONDS)))
        if self.dimse:
            steps.append(("DIMSE listener", self.dimse.stop))
        if self.fanout:  # deliver what is queued (GOING DOWN included), then say goodbye
            steps.append(("event channels", lambda: websocket.close_all(
                self.fanout, SHUTDOWN_DELIVERY_SECONDS)))
        if self.runner:
            steps.append(("REST", self.runner.cleanup))
        if self.audit:
            steps.append(("audit trail", self._stop_audit))
        steps.append(("supervised tasks", self.supervisor.stop))
        if self.sender:
            steps.append(("event associations", lambda: self.sender.close(
                SHUTDOWN_DELIVERY_SECONDS)))
        if self.lane:
            steps.append(("lane", self.lane.close))
        if self.core:
            steps.append(("subscription store", self.core.subscriptions.close))
        if self.redis:
            steps.append(("redis client", self.redis.aclose))
        if self.embedded:
            steps.append(("embedded redis", self.embedded.stop))
        for name, step in steps:
            await _stop_step(name, step)
        log.info("gateway stopped")

    async def _stop_audit(self) -> None:
        self._application_activity(audit_messages.APPLICATION_STOP)
        for buffer in self.audit.buffers:
            await buffer.drain(SHUTDOWN_DELIVERY_SECONDS)

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
        shared = self.status.shared_identity if self.status else None
        if shared:
            report["instance"] = "down"
        ok = all(state == "up" for state in report.values())
        body = {"status": "ok" if ok else "unavailable", "ae_title": self.config.ae_title,
                "instance": self.instance, "components": report}
        errors = {name: task["error"] for name, task in tasks.items() if task["status"] == "down"}
        if shared:
            errors["instance"] = shared
        if self.store_watch is not None:
            body["store"] = self.store_watch.report()
        if errors:
            body["errors"] = errors
        return body

    # ---- parts -------------------------------------------------------------------------------

    async def _connect_redis(self) -> aioredis.Redis:
        cfg = self.config
        url = cfg.redis.url
        if url is None and sentinel_target(cfg.redis) is None:
            self.embedded = EmbeddedRedis(cfg.data_dir)
            try:
                await self.embedded.start()
            except (RuntimeError, OSError) as exc:
                raise ConfigError(f"data_dir: cannot start the embedded Redis: {exc}") from None
            url = self.embedded.url
        redis = await open_redis(cfg, url)
        await _check_redis_settings(redis)
        return redis

    async def _watch_worklist(self, keys: Keys, queues: EventQueues) -> None:
        """What /metrics reads when scraped: this process's channels and associations, and the
        worklist's figures from Redis (``store.stats``; the event backlogs as ``ups-gateway
        events backlog`` reads them, ``EventQueues.backlog``)."""
        metrics, peers = self.metrics, self.config.peers
        stats = WorklistStats(self.redis, keys)
        await stats.seed_labels()
        metrics.watch("upsgw_websocket_channels", "Open WebSocket event channels (this process)",
                      lambda: len(self.fanout.channels))
        metrics.watch("upsgw_dimse_associations", "Established DIMSE associations (this process)",
                      lambda: self.dimse.open_associations() if self.dimse else 0)
        metrics.ping_with(self.redis.ping)

        async def figures() -> list[Sample]:
            found = await stats.read()
            samples = [Sample("upsgw_workitems", key, n) for key, n in found.workitems.items()]
            samples += [Sample("upsgw_transitions", key, n)
                        for key, n in found.transitions.items()]
            for queue in await queues.backlog():
                ae = queue["ae"]
                transport = "dimse" if ae in peers else "ws"  # where its events go
                waiting = queue[transport]["pending"] if transport in queue else queue["queued"]
                samples.append(Sample("upsgw_events_queued", (ae,), queue["latest"]))
                samples.append(Sample("upsgw_events_backlog", (ae, transport), waiting))
            return samples

        metrics.source(figures)

    def _audit_trail(self) -> AuditTrail | None:
        cfg = self.config
        sinks: list = []
        if cfg.audit.file:
            sinks.append(FileSink(cfg.audit.file))
        syslog = cfg.audit.syslog
        if syslog is not None:
            try:
                context = tls.client_context(syslog.ca_file, syslog.cert_file, syslog.key_file) \
                    if syslog.transport == "tls" else None
            except (OSError, ValueError) as exc:
                raise ConfigError(f"audit.syslog: {exc}") from None
            sinks.append(SyslogSink(syslog.host, syslog.port, syslog.transport, context))
        if not sinks:
            return None
        trail = AuditTrail(sinks, cfg.audit.buffer, cfg.audit.source_id or cfg.ae_title,
                           cfg.ae_title, cfg.dimse.host)
        for buffer in trail.buffers:
            self.supervisor.start(f"audit-{buffer.sink.name}", buffer.run)
        return trail

    def _application_activity(self, type_code) -> None:
        if self.audit:
            self.audit.record(audit_messages.AuditEvent(
                audit_messages.APPLICATION_ACTIVITY, "E", user=self.config.ae_title,
                ae=self.config.ae_title, type_code=type_code))

    def _authenticator(self) -> Authenticator:
        try:
            return Authenticator(self.config.auth)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"auth.jwt: the keys cannot be read: {exc}") from None

    async def _start_rest(self, app: web.Application) -> None:
        cfg = self.config.rest
        context = None
        if cfg.tls.cert_file:
            try:
                context = tls.server_context(cfg.tls.cert_file, cfg.tls.key_file,
                                             cfg.tls.client_ca_file,
                                             require_client_cert=bool(cfg.tls.client_ca_file))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"rest.tls: {exc}") from None
        runner = Runner(app, cfg)  # with the connection, header and keep-alive limits
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = ("is in use" if exc.errno == errno.EADDRINUSE
                      else f"cannot be bound ({exc.strerror})")
            raise ConfigError(f"rest.port: {cfg.host}:{cfg.port} {reason}") from None
        self.runner = runner

    async def _store_reset(self) -> None:
        """Redis came back empty (``StoreWatch``): the channels' subscriptions are gone, so the
        channels end, telling their clients to subscribe again; the DIMSE senders' cursors
        went with the queues."""
        closed = websocket.close_for_resubscribe(self.fanout) if self.fanout else 0
        if self.sender is not None:
            self.sender.store_reset()
        log.info("event channels closed: subscribe again", extra={"channels": closed})

    async def _purge(self) -> None:
        """Delete COMPLETED/CANCELED workitems after their retention (decisions.md, Retention)."""
        ups = self.config.ups
        while True:
            try:
                await self.service.purge_expired(ups.retention_hours * 3600)
            except RedisError as exc:
                log.warning("purge skipped: redis unavailable", extra={"error": str(exc)})
            await asyncio.sleep(ups.purge_interval_seconds)


async def _stop_step(name: str, step: Callable[[], Awaitable[object]]) -> None:
    started = time.monotonic()
    try:
        async with asyncio.timeout(STOP_STEP_SECONDS):
            await step()
    except TimeoutError:
        log.error("stop step did not finish in time; going on", extra={
            "step": name, "timeout_s": STOP_STEP_SECONDS})
    except Exception:  # noqa: BLE001 - a stop goes on: the next steps still free what they hold
        log.exception("stop step failed; going on", extra={"step": name})
    else:
        log.debug("stopped", extra={"step": name,
                                    "ms": round((time.monotonic() - started) * 1000, 1)})


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


def _dimse_request_audit(record: Record):
    def audit(req, code: int, message: str) -> None:
        event = dimse_audit.request_event(req, code, message)
        if event is not None:
            record(event)
    return audit


def _association_audit(record: Record):
    def audit(calling_ae: str, address: str, outcome) -> None:
        record(dimse_audit.association_event(calling_ae, address, outcome))
    return audit


def redis_client(cfg: Config, url: str | None = None) -> aioredis.Redis:
    """The Redis client of ``cfg``: through its Sentinels when it has them, else at ``url``
    (``cfg.redis.url``, or the embedded Redis's socket)."""
    options = dict(socket_connect_timeout=cfg.redis.connect_timeout, health_check_interval=30,
                   max_connections=512)
    target = sentinel_target(cfg.redis)
    if target is not None:
        return client.connect_sentinel(target.master, target.hosts, password=target.password,
                                       sentinel_password=target.sentinel_password,
                                       db=target.db, **options)
    return client.connect(url or cfg.redis.url, **options)


def redis_location(cfg: Config, url: str | None = None) -> str:
    """Where ``cfg``'s Redis is, for messages (credentials masked)."""
    target = sentinel_target(cfg.redis)
    if target is not None:
        hosts = ",".join(f"{host}:{port}" for host, port in target.hosts)
        return f"master {target.master!r} of the Sentinels at {hosts}"
    return _redact(url or cfg.redis.url)


async def open_redis(cfg: Config, url: str | None = None) -> aioredis.Redis:
    """A client of ``cfg``'s Redis that has answered a PING; ConfigError (naming the key) when
    it cannot be reached."""
    redis = redis_client(cfg, url)
    try:
        await asyncio.wait_for(redis.ping(), cfg.redis.connect_timeout + 1)
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        await redis.aclose()
        key = "redis.sentinel" if cfg.redis.sentinel.master else "redis.url"
        raise ConfigError(f"{key}: cannot reach Redis at {redis_location(cfg, url)}: "
                          f"{exc or type(exc).__name__}") from None
    return redis


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
