"""Redis Sentinel: the gateway on a real replicated Redis — a master, two replicas and three
Sentinels, each with a password (Debian's ``redis-server``/``redis-sentinel``, installed by
``.ci/run``) — with ``min_replicas_ack: 1``. The master is killed under a light load of creates and claims; the
gateway carries on on the promoted replica:

- no acknowledged change is lost (every create answered 201 exists, every claim answered 200 is
  IN PROGRESS, on the new master);
- REST and DIMSE answer again within the failover time plus a few seconds;
- events resume: a WebSocket subscriber and a DIMSE peer (N-EVENT-REPORT) hear of workitems
  created after the failover, and of every acknowledged one before it.

Two replicas, because with ``min_replicas_ack: 1`` the promoted master needs a replica of its own
to confirm changes to (docs/operations.md, Redis Sentinel). And ``replica_ack_timeout`` (WAIT's
timeout) in the unit tests below, on a Redis that has no replica at all; they run without the
Debian packages.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as sync_redis
from pydicom.dataset import Dataset
from pynetdicom import AE

from gateway.testing import PACKAGE_ROOT, child_env
from gateway.store.replication import Replication, ReplicationUnconfirmed
from gateway.store.subscriptions import RedisSubscriptionStore
from gateway.store.workitems import RedisWorkitemStore
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import normalize
from gateway.ups.ports import MppsRecord
from gateway.ups.service import Settings, UPSService
from tests.event_receiver import (GLOBAL, STATE_REPORT, EventReceiver, Ups, WsListener,
                                  frame_type, frame_uid)
from tests.helpers import PUSH, GatewayProcess, free_port, new_uid, workitem
from gateway.testing_peers import guard_responses

MASTER = "upsmaster"
SERVER_PASSWORD = "server-secret"  # the servers' requirepass (and masterauth)
SENTINEL_PASSWORD = "sentinel-secret"  # the Sentinels' own
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
AFTER_FAILOVER_SECONDS = 10.0  # "a few seconds" after the Sentinels promoted the replica
HANG_GUARD = 90.0


def _binary(name: str) -> str | None:
    for candidate in (f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


REDIS_SERVER = _binary("redis-server")
REDIS_SENTINEL = _binary("redis-sentinel")

needs_sentinel = pytest.mark.skipif(
    not (REDIS_SERVER and REDIS_SENTINEL),
    reason="redis-server and redis-sentinel (Debian packages redis-server, redis-sentinel) are "
           "not installed; .ci/run installs them")


class Node:
    """One redis-server or redis-sentinel process on a loopback port."""

    def __init__(self, workdir: Path, name: str, lines: list[str], sentinel: bool = False):
        self.port = free_port()
        self.password = SENTINEL_PASSWORD if sentinel else SERVER_PASSWORD
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "redis.conf"
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
            f"logfile {self.dir / 'log'}", "daemonize no", f"requirepass {self.password}",
            *lines, ""]).replace(
            "{port}", str(self.port)))
        self.binary = REDIS_SENTINEL if sentinel else REDIS_SERVER
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Node":
        self.proc = subprocess.Popen([self.binary, str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        client = self.client()
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return self
            except sync_redis.ConnectionError:
                assert self.proc.poll() is None, (self.dir / "log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"{self.dir.name} did not start"
                time.sleep(0.05)

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                                password=self.password)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def wait_until(predicate, what: str, timeout: float = HANG_GUARD, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (sync_redis.RedisError, OSError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(every)


@pytest.fixture
def cluster(tmp_path):
    """A master, two replicas and three Sentinels that agree on them."""
    nodes: list[Node] = []
    try:
        master = Node(tmp_path, "master", ["appendonly yes", "save \"\"",
                                           f"masterauth {SERVER_PASSWORD}"]).start()
        nodes.append(master)
        replicas = []
        for i in (1, 2):
            replica = Node(tmp_path, f"replica{i}", [
                "appendonly yes", "save \"\"", f"replicaof 127.0.0.1 {master.port}",
                f"masterauth {SERVER_PASSWORD}",
                "replica-priority 100"]).start()
            nodes.append(replica)
            replicas.append(replica)
        sentinels = []
        for i in (1, 2, 3):
            sentinel = Node(tmp_path, f"sentinel{i}", [
                f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER} 1",
                f"sentinel auth-pass {MASTER} {SERVER_PASSWORD}",
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}"], sentinel=True).start()
            nodes.append(sentinel)
            sentinels.append(sentinel)
        for replica in replicas:
            wait_until(lambda: replica.client().info("replication").get("master_link_status")
                       == "up", f"{replica.dir.name} in sync")
        for sentinel in sentinels:
            wait_until(lambda: len(sentinel.client().sentinel_slaves(MASTER)) == 2
                       and len(sentinel.client().sentinel_sentinels(MASTER)) == 2,
                       f"{sentinel.dir.name} knows the replicas and the other Sentinels")
        yield master, replicas, sentinels
    finally:
        for node in reversed(nodes):
            node.kill()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, cwd=PACKAGE_ROOT, env=child_env())


def current_master(sentinels: list[Node]) -> int | None:
    host, port = sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)
    return int(port)


def dimse_get(port: int, uid: str) -> tuple[int, str | None]:
    """An N-GET of the workitem's state over a fresh association: (status, state)."""
    ae = AE(ae_title="SENTINEL_TEST")
    ae.add_requested_context(PUSH)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="UPS_GATEWAY")
    if not assoc.is_established:
        return -1, None
    try:
        guard_responses(assoc)
        status, ds = assoc.send_n_get([0x00741000, 0x00080018], PUSH, uid)
        code = status.Status if status else -1
        return code, ds.ProcedureStepState if code == 0 and ds is not None else None
    finally:
        assoc.release()


class Load:
    """Creates, each followed by a claim, one after another; what was acknowledged."""

    def __init__(self, ups: Ups):
        self.ups = ups
        self.created: list[str] = []  # answered 201
        self.claimed: list[str] = []  # answered 200
        self.failed: list[tuple[str, int, str]] = []  # (operation, HTTP status, Warning)
        self.running = True

    async def run(self) -> None:
        http, base = self.ups.http, self.ups.base
        while self.running:
            uid = new_uid()
            try:
                async with http.post(f"{base}/workitems?{uid}", json=workitem(label="SENT"),
                                     headers={"Content-Type": "application/dicom+json"}) as r:
                    await r.read()
                    if r.status != 201:
                        self.failed.append(("create", r.status, r.headers.get("Warning", "")))
                        await asyncio.sleep(0.05)
                        continue
                self.created.append(uid)
                tx = new_uid()
                async with http.put(f"{base}/workitems/{uid}/state", headers={
                        "Content-Type": "application/dicom+json"}, json={
                        "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
                        "00081195": {"vr": "UI", "Value": [tx]}}) as r:
                    await r.read()
                    if r.status == 200:
                        self.claimed.append(uid)
                    else:
                        self.failed.append(("claim", r.status, r.headers.get("Warning", "")))
            except OSError as exc:  # the gateway itself must never drop a request
                self.failed.append(("connection", 0, str(exc)))
            await asyncio.sleep(0.02)


@pytest.fixture
def receiver():
    with EventReceiver("SRECEIVER") as r:
        yield r


@needs_sentinel
async def test_failover_loses_no_acknowledged_change_and_the_gateway_carries_on(
        cluster, tmp_path, http, receiver):
    master, replicas, sentinels = cluster
    gw = GatewayProcess(tmp_path / "gw", extra={"peers": {"SRECEIVER": receiver.peer()},
                                                "events": {"retry_initial_seconds": 0.2,
                                                           "retry_max_seconds": 1.0},
                                                "redis": {
        # (replicas on this busy machine may take a while to acknowledge: a generous timeout)
        "url": None, "min_replicas_ack": 1, "replica_ack_timeout": 3.0, "connect_timeout": 1.0,
        "sentinel": {"master": MASTER, "hosts": [f"127.0.0.1:{s.port}" for s in sentinels],
                     "password": SERVER_PASSWORD,
                     "sentinel_password": SENTINEL_PASSWORD}}}).start()
    try:
        # The operator's check reaches the master through the Sentinels and counts its replicas.
        check = await asyncio.to_thread(cli, "check-config", "--config", str(gw.config_path),
                                        "--connect")
        assert check.returncode == 0, check.stderr
        assert f"master '{MASTER}' of the Sentinels" in check.stderr
        assert "role master, 2 connected replica(s)" in check.stderr
        ups = Ups(http, gw.base)
        watcher = f"SW{new_uid()[-6:]}"
        listener = await WsListener.open(http, ups.ws_url(watcher))
        await ups.subscribe(GLOBAL, watcher)
        await ups.subscribe(GLOBAL, receiver.ae_title)  # a DIMSE peer: N-EVENT-REPORTs
        load = Load(ups)
        task = asyncio.create_task(load.run())
        try:
            deadline = time.monotonic() + HANG_GUARD
            while len(load.claimed) < 20:  # the load is running on the master
                assert time.monotonic() < deadline, (load.failed[-5:], gw.log())
                await asyncio.sleep(0.05)
            assert not load.failed, load.failed
            master.kill()
            killed_at = time.monotonic()
            # Meanwhile a DIMSE request gets an answer — served, or refused with a processing
            # failure saying the store is away — never a hang or a dropped association.
            code, _ = await asyncio.to_thread(dimse_get, gw.dimse_port, load.claimed[0])
            assert code in (0x0000, 0x0110), hex(code)
            promoted = await asyncio.to_thread(
                wait_until, lambda: (current_master(sentinels) in {r.port for r in replicas}
                                     and current_master(sentinels)), "a replica promoted")
            promoted_at = time.monotonic()
            # REST answers again: the load's changes are acknowledged again.
            acknowledged_before = len(load.claimed)
            while len(load.claimed) < acknowledged_before + 5:
                assert time.monotonic() - promoted_at < AFTER_FAILOVER_SECONDS, (
                    f"no REST change acknowledged {AFTER_FAILOVER_SECONDS}s after the "
                    f"promotion; failures: {load.failed[-5:]}\n{gw.log()}")
                await asyncio.sleep(0.05)
        finally:
            load.running = False
            await task
        # DIMSE answers again too.
        code, state = await asyncio.to_thread(dimse_get, gw.dimse_port, load.claimed[-1])
        assert (code, state) == (0, "IN PROGRESS")
        assert time.monotonic() - promoted_at < AFTER_FAILOVER_SECONDS + 10

        # The failures meanwhile were clear answers, never a 500: 503 with a Warning (not sent:
        # not applied) or, for a commit cut off in flight, 504 "outcome unknown" (issue 16).
        assert all(status in (503, 504) and warning for _, status, warning in load.failed), \
            load.failed

        # No acknowledged change lost: on the promoted master, every create is there and every
        # claim holds.
        new_master = next(r for r in replicas if r.port == promoted)
        assert new_master.client().info("replication")["role"] == "master"
        for uid in load.created:
            async with http.get(f"{gw.base}/workitems/{uid}") as r:
                assert r.status == 200, (uid, r.status)
                state = (await r.json())[0]["00741000"]["Value"][0]
            # (a claim that failed may still have been applied before the master died)
            assert (state == "IN PROGRESS") if uid in load.claimed else \
                (state in ("SCHEDULED", "IN PROGRESS")), (uid, state)
        assert set(load.claimed) <= set(load.created)
        # …and the command line, through the Sentinels, lists them all from the new master.
        listed = await asyncio.to_thread(cli, "workitems", "list", "--label", "SENT", "--json",
                                         "--config", str(gw.config_path))
        assert listed.returncode == 0, listed.stderr
        assert set(load.created) <= {ds["00080018"]["Value"][0]
                                     for ds in json.loads(listed.stdout)}

        # Events resumed: the subscriber hears of every acknowledged workitem, those created
        # after the failover included.
        def unheard() -> set[str]:
            return set(load.created) - {frame_uid(f) for f in listener.frames
                                        if frame_type(f) == STATE_REPORT}

        deadline = time.monotonic() + HANG_GUARD
        while unheard() and time.monotonic() < deadline and not listener.closed:
            await asyncio.sleep(0.1)
        assert not unheard(), (f"{len(unheard())} of {len(load.created)} workitems unheard "
                               f"(closed={listener.closed}); the last "
                               f"{[u in unheard() for u in load.created[-8:]]}\n{gw.log()}")
        # …over DIMSE too: the peer gets an N-EVENT-REPORT for each of them.
        for uid in load.created:
            await receiver.wait(1, uid=uid, event_type=STATE_REPORT)
        await listener.close()
        records = gw.records()
        assert any(r.get("msg") == "event hub lost Redis; reconnecting" for r in records)
        assert killed_at < promoted_at
    finally:
        gw.stop()


async def test_a_change_no_replica_confirms_is_refused_saying_so(redis_client, keys):
    """``min_replicas_ack`` on a Redis without replicas: WAIT times out, the change is not
    acknowledged — a processing failure that says what happened (it was applied on the master
    but may not survive it)."""
    replication = Replication(replicas=1, timeout_s=0.05)
    service = UPSService(
        RedisWorkitemStore(redis_client, keys, replication=replication),
        RedisSubscriptionStore(redis_client, keys, replication=replication), Settings())
    uid = new_uid()
    with pytest.raises(ReplicationUnconfirmed) as refused:
        await service.create(normalize(workitem()), uid)
    assert refused.value.status == st.PROCESSING_FAILURE
    assert "only 0 of the 1 replicas" in refused.value.message
    assert "applied on the Redis master" in refused.value.message
    # It was applied on the master (what WAIT cannot undo) — and the next read says so.
    assert (await service.retrieve(uid))[t.SOPInstanceUID]["Value"] == [uid]
    with pytest.raises(ReplicationUnconfirmed):
        await service.subscribe(GLOBAL, "NOREPLICA", False)
    # Without the requirement the same Redis acknowledges at once.
    plain = UPSService(RedisWorkitemStore(redis_client, keys),
                       RedisSubscriptionStore(redis_client, keys), Settings())
    await plain.create(normalize(workitem()), new_uid())


async def test_an_mpps_save_no_replica_confirms_is_refused_saying_so(redis_client, keys):
    """An MPPS instance written alone (not linked to a workitem) is held to min_replicas_ack
    like a workitem change: applied on the master, refused as unconfirmed."""
    store = RedisWorkitemStore(redis_client, keys,
                               replication=Replication(replicas=1, timeout_s=0.05))
    uid = new_uid()
    record = MppsRecord(uid, 0, {t.SOPInstanceUID: {"vr": "UI", "Value": [uid]}},
                        note="not linked")
    with pytest.raises(ReplicationUnconfirmed) as refused:
        await store.save_mpps(record)
    assert f"The MPPS instance {uid} was applied on the Redis master" in refused.value.message
    assert (await store.load_mpps(uid)).version == 1
    plain = RedisWorkitemStore(redis_client, keys)  # without the requirement: acknowledged
    assert await plain.save_mpps(MppsRecord(new_uid(), 0, {}, note="not linked")) == 1


async def test_a_change_waiting_for_replicas_holds_up_no_read(redis_client, keys):
    """While a commit's WAIT waits for replicas, Redis holds that connection's later commands:
    reads (which go on the process's pipelined lane) must not be behind it. A read made while a
    change waits is answered before the change is refused."""
    replication = Replication(replicas=1, timeout_s=2.0)
    store = RedisWorkitemStore(redis_client, keys, replication=replication)
    service = UPSService(store, RedisSubscriptionStore(redis_client, keys), Settings())
    existing = (await UPSService(RedisWorkitemStore(redis_client, keys),
                                 RedisSubscriptionStore(redis_client, keys), Settings()
                                 ).create(normalize(workitem()), new_uid())).uid
    finished: list[str] = []

    async def change() -> None:
        with pytest.raises(ReplicationUnconfirmed):
            await service.create(normalize(workitem()), new_uid())
        finished.append("change")

    async def read() -> None:
        while not any(c.get("cmd") == "wait" for c in await redis_client.client_list()):
            await asyncio.sleep(0.01)  # until the change's WAIT is waiting in Redis
        assert (await service.retrieve(existing))[t.SOPInstanceUID]["Value"] == [existing]
        finished.append("read")

    await asyncio.gather(change(), read())
    assert finished == ["read", "change"]
