"""What the operator's commands (``ups-gateway workitems|subscriptions|events …``) do: they act
through the same core as the servers — the UPS service on its Redis stores, made by the
composition root (``app.make_core``) — so a cancel is a UPS cancel (events and all) and a purge
is the retention purge; nothing here writes to Redis by itself. Reads of what the core does not
serve (subscriptions, event backlogs) go through the stores and the event queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import redis.asyncio as aioredis

from gateway.app import Core, make_core, open_redis, redis_location
from gateway.config import Config, ConfigError, sentinel_target
from gateway.events.queue import EventQueues
from gateway.store.embedded import EmbeddedRedis
from gateway.ups import matching
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, element, first
from gateway.ups.dicomtime import parse_offset
from gateway.ups.errors import UPSError as Refused  # what the worklist refused: status, message
from gateway.ups.service import Outcome

__all__ = ["Admin", "Refused", "summary"]

PAGE = 500  # workitems read per search page


@dataclass
class Admin:
    config: Config
    redis: aioredis.Redis
    core: Core
    url: str | None = None  # None: through the Sentinels

    @classmethod
    async def open(cls, config: Config) -> "Admin":
        """Connect to the configured Redis — with no ``redis.url``, the embedded Redis of the
        gateway running on ``data_dir`` (it is never started from here)."""
        url = config.redis.url
        if url is None and sentinel_target(config.redis) is None:
            embedded = EmbeddedRedis(config.data_dir)
            if not embedded.socket.exists():
                raise ConfigError(f"data_dir: no gateway's embedded Redis at {embedded.socket}; "
                                  "start the gateway on this data_dir, or set redis.url")
            url = embedded.url
        redis = await open_redis(config, url)
        return cls(config, redis, make_core(config, redis), url)

    @staticmethod
    async def reach(config: Config) -> str:
        """Reach the configured Redis (``check-config --connect``): what answered. The embedded
        Redis is reached only when a gateway runs it; otherwise there is nothing to reach yet."""
        if config.redis.url is None and sentinel_target(config.redis) is None:
            if not EmbeddedRedis(config.data_dir).socket.exists():
                return ("embedded: started by the gateway under data_dir "
                        f"({config.data_dir}); none is running now")
        admin = await Admin.open(config)
        try:
            info = await admin.redis.info("server")
            replication = await admin.redis.info("replication")
        finally:
            await admin.close()
        replicas = int(replication.get("connected_slaves", 0))
        if config.redis.min_replicas_ack > replicas:
            raise ConfigError(f"redis.min_replicas_ack: {config.redis.min_replicas_ack} replicas "
                              f"must confirm every change, but the master has {replicas}")
        return (f"reached {redis_location(config, admin.url)}: Redis {info.get('redis_version')}, "
                f"role {replication.get('role')}, "
                f"{replication.get('connected_slaves', 0)} connected replica(s)")

    async def close(self) -> None:
        await self.core.close()
        await self.redis.aclose()

    # ---- workitems ---------------------------------------------------------------------------

    async def workitems(self, state: str | None = None, label: str | None = None,
                        limit: int | None = None) -> AsyncIterator[Dataset]:
        """Every workitem (or those in ``state`` / on worklist ``label``), whole, in search
        order — the order of every search answer — read a page at a time."""
        tz = parse_offset(self.config.ups.timezone_offset)
        done = 0
        while limit is None or done < limit:
            query = matching.Query(include_all=True, offset=done, store_tz=tz,
                                   limit=PAGE if limit is None else min(PAGE, limit - done))
            for tag, value in ((t.ProcedureStepState, state), (t.WorklistLabel, label)):
                if value is not None:
                    matching.add_term(query, [tag], value, tz, tag)
            page = await self.core.service.search(query)
            for ds in page.items:
                yield ds
            done += len(page.rendered)
            if not page.remaining or not page.rendered:
                break

    async def workitem(self, uid: str) -> Dataset:
        return await self.core.service.retrieve(uid)

    async def cancel(self, uid: str, reason: str | None = None) -> tuple[Outcome, Dataset]:
        """Request UPS Cancel as any client does: a SCHEDULED workitem becomes CANCELED; for
        one IN PROGRESS its performer (and every subscriber) is asked to cancel it. The
        outcome and the workitem afterwards."""
        request = {t.ReasonForCancellation: element("LT", reason)} if reason else {}
        outcome = await self.core.service.request_cancel(uid, request,
                                                         requester=self.config.ae_title)
        return outcome, await self.core.service.retrieve(uid)

    async def purge(self, retention_hours: float | None = None) -> list[str]:
        """The retention purge, now: COMPLETED/CANCELED workitems older than the retention
        (``ups.retention_hours`` unless given) and not held by a deletion lock."""
        hours = self.config.ups.retention_hours if retention_hours is None else retention_hours
        return await self.core.service.purge_expired(hours * 3600)

    # ---- subscriptions and events ------------------------------------------------------------

    async def subscriptions(self) -> list[dict]:
        return await self.core.subscriptions.overview()

    async def backlog(self) -> list[dict]:
        return await EventQueues(self.redis, self.core.keys, self.core.lane).backlog()


def summary(ds: Dataset) -> dict:
    """The columns of a workitem in ``workitems list``."""
    name = first(ds, t.PatientName)
    return {"uid": first(ds, t.SOPInstanceUID, ""), "state": first(ds, t.ProcedureStepState, ""),
            "label": first(ds, t.WorklistLabel, ""),
            "priority": first(ds, t.ScheduledProcedureStepPriority, ""),
            "start": first(ds, t.ScheduledProcedureStepStartDateTime, ""),
            "step": first(ds, t.ProcedureStepLabel, ""),
            "patient": (name or {}).get("Alphabetic", "") if isinstance(name, dict) else "",
            "patient_id": first(ds, t.PatientID, "")}
