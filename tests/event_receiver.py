"""Real event subscribers for the event tests: a pynetdicom N-EVENT-REPORT receiver and a
WebSocket listener.

``EventReceiver`` is a UPS Event SCP on a free TCP port (accepting the SCP role the gateway
proposes when it opens the association), recording every N-EVENT-REPORT it is sent. It can be
stopped (its listening socket closed and its open associations aborted, as if the peer had died)
and started again on the same port.

``WsListener`` holds one WebSocket event channel (aiohttp) and records its text frames as parsed
DICOM JSON objects.

Both keep what they received in order and let a test wait until enough has arrived; the
deadline (``HANG_GUARD``) only stops a test that would otherwise hang, it is never what a test
asserts. To show that something did *not* arrive, a test drains the subscriber first
(``Ups.drain``): a marker event queued after the change in question, and waited for, proves that
anything the change produced would have arrived by now.

``Ups`` is the small UPS-RS client the event tests drive the gateway with.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import aiohttp
from pydicom import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt
from pynetdicom.sop_class import UnifiedProcedureStepEvent

from gateway.testing_peers import NODELAY_HANDLER
from tests.helpers import completion_payload, free_port, new_uid, state_payload, workitem

STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS_CHANGE, ASSIGNED = 1, 2, 3, 4, 5

# How long a wait may take before the test is declared hung: generous, so that a slow or busy
# machine never fails a test; a passing test waits only as long as delivery takes.
HANG_GUARD = 60.0


@dataclass
class Report:
    """One N-EVENT-REPORT as received; unpacks as ``(event_type, uid, dataset)``."""

    event_type: int
    uid: str
    dataset: Dataset
    sop_class: str = ""
    message_id: int = 0
    calling_ae: str = ""
    received_at: float = field(default_factory=time.monotonic)

    def __iter__(self) -> Iterator:
        return iter((self.event_type, self.uid, self.dataset))

    def value(self, keyword: str):
        """The (first) value of ``keyword`` in the Event Information, or None."""
        value = self.dataset.get(keyword)
        if isinstance(value, (MultiValue, list)):
            return value[0] if value else None
        return value


Predicate = Callable[[Report], bool]


def _select(uid: str | Iterable[str] | None, event_type: int | Iterable[int] | None) -> Predicate:
    uids = {uid} if isinstance(uid, str) else (set(uid) if uid is not None else None)
    types = ({event_type} if isinstance(event_type, int)
             else (set(event_type) if event_type is not None else None))
    return lambda r: (uids is None or r.uid in uids) and (types is None or r.event_type in types)


class EventReceiver:
    """A pynetdicom UPS Event SCP that records the N-EVENT-REPORTs it receives."""

    def __init__(self, ae_title: str = "RECEIVER", port: int | None = None,
                 status: int = 0x0000, *, max_pdu: int | None = None,
                 calling_aes: list[str] | None = None, scp_role: bool = True,
                 before_answer: Callable[[object], None] | None = None,
                 ssl_context=None):
        self.ae_title = ae_title
        self.ssl_context = ssl_context  # an ssl.SSLContext: the receiver serves only TLS
        self.port = port or free_port()
        self.status = status  # what the receiver answers
        self.max_pdu = max_pdu  # its Maximum Length Received (None: pynetdicom's default)
        self.calling_aes = calling_aes  # the only calling AE titles accepted (None: any)
        self.scp_role = scp_role  # whether it accepts the gateway's proposal of the SCP role
        self.before_answer = before_answer  # called with each report's event before answering
        self._reports: list[Report] = []
        self._cond = threading.Condition()
        self._server = None
        self.associations = 0  # associations accepted so far
        self.requestor_max_pdus: list[int] = []  # each one's Maximum Length the gateway sent

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "EventReceiver":
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(UnifiedProcedureStepEvent, scu_role=True,
                                 scp_role=self.scp_role)
        ae.maximum_associations = 32
        if self.max_pdu is not None:
            ae.maximum_pdu_size = self.max_pdu
        if self.calling_aes is not None:
            ae.require_calling_aet = self.calling_aes
        ae.network_timeout = 30
        handlers = [NODELAY_HANDLER, (evt.EVT_N_EVENT_REPORT, self._on_report),
                    (evt.EVT_ACCEPTED, self._on_accepted)]
        deadline = time.monotonic() + timeout
        while True:  # the port may still be held by a closing socket for a moment
            try:
                self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                               evt_handlers=handlers,
                                               ssl_context=self.ssl_context)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Go away like a crashed peer: stop listening and abort open associations."""
        server, self._server = self._server, None
        if server is None:
            return
        active = list(server.active_associations)
        server.shutdown()
        for assoc in active:
            assoc.abort()

    def restart(self) -> "EventReceiver":
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def active_associations(self) -> list:
        """The receiver's side of each open association (pynetdicom ``Association``)."""
        return list(self._server.active_associations) if self._server is not None else []

    def __enter__(self) -> "EventReceiver":
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def peer(self) -> dict:
        """This receiver as an entry of the gateway's ``peers`` configuration."""
        return {"host": "127.0.0.1", "port": self.port}

    # ---- handlers (pynetdicom association threads) -----------------------------------

    def _on_accepted(self, event) -> None:
        with self._cond:
            self.associations += 1
            self.requestor_max_pdus.append(event.assoc.requestor.maximum_length)

    def _on_report(self, event):
        request = event.request
        report = Report(int(event.event_type), str(request.AffectedSOPInstanceUID),
                        event.event_information, str(request.AffectedSOPClassUID),
                        int(request.MessageID), event.assoc.requestor.ae_title)
        with self._cond:
            self._reports.append(report)
            self._cond.notify_all()
        if self.before_answer is not None:
            self.before_answer(event)
        return self.status, None

    # ---- reading -----------------------------------------------------------------------

    @property
    def reports(self) -> list[Report]:
        with self._cond:
            return list(self._reports)

    def clear(self) -> None:
        with self._cond:
            self._reports.clear()

    def received(self, uid=None, event_type=None) -> list[Report]:
        """Reports received so far, optionally only for ``uid``(s) and ``event_type``(s)."""
        keep = _select(uid, event_type)
        return [r for r in self.reports if keep(r)]

    def wait_for(self, count: int, timeout: float = HANG_GUARD, uid=None,
                 event_type=None) -> list[Report]:
        """Block until at least ``count`` matching reports arrived; returns them (all of them,
        in arrival order). Fails the test on timeout, saying what did arrive."""
        keep = _select(uid, event_type)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self._reports if keep(r)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.ae_title}: {len(found)} of {count} expected reports within "
                        f"{timeout}s; received {_describe(self._reports)}")
                self._cond.wait(left)

    async def wait(self, count: int, timeout: float = HANG_GUARD, uid=None,
                   event_type=None) -> list[Report]:
        """``wait_for`` for async tests: polls without blocking the event loop."""
        keep = _select(uid, event_type)
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.reports if keep(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.ae_title}: {len(found)} of {count} expected reports within "
                    f"{timeout}s; received {_describe(self.reports)}")
            await asyncio.sleep(0.01)


def _describe(reports: list[Report]) -> str:
    return "[" + ", ".join(f"({r.event_type}, …{r.uid[-6:]})" for r in reports[-40:]) + "]"


# ---- WebSocket -------------------------------------------------------------------------

# Frame keys (DICOM JSON tags)
AFFECTED_SOP_CLASS, MESSAGE_ID, AFFECTED_INSTANCE, EVENT_TYPE = (
    "00000002", "00000110", "00001000", "00001002")


def frame_value(frame: dict, tag: str):
    values = frame.get(tag, {}).get("Value")
    return values[0] if values else None


def frame_type(frame: dict) -> int | None:
    return frame_value(frame, EVENT_TYPE)


def frame_uid(frame: dict) -> str | None:
    return frame_value(frame, AFFECTED_INSTANCE)


class WsListener:
    """One open WebSocket event channel, collecting its frames in the background."""

    def __init__(self, session: aiohttp.ClientSession, url: str):
        self.session = session
        self.url = url
        self.frames: list[dict] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.close_code: int | None = None
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, url: str, **kw) -> "WsListener":
        listener = cls(session, url)
        await listener.connect(**kw)
        return listener

    async def connect(self, **kw) -> None:
        self.ws = await self.session.ws_connect(self.url, **kw)
        self.close_code = None
        self._task = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(message.data))
                self._changed.set()
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
        self.close_code = ws.close_code
        self._changed.set()

    async def close_confirmed(self, proc, ae: str, timeout: float = HANG_GUARD) -> None:
        """Close once the gateway (``proc``, default key prefix) has stored ``ae``'s delivery
        as far as the last frame received: a channel counts frames as delivered only when its
        client's pong confirms them, so a client that closes right after reading may get the
        last ones again (at least once) — unless it waits for this."""
        from gateway.store.client import connect
        wanted = frame_value(self.frames[-1], MESSAGE_ID)
        client = connect(proc.redis_url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                raw = await client.get(f"ups:cur:ws:{ae}")
                if raw and (int(raw.split()[1]) - 1) % 0xFFFF + 1 == wanted:
                    break
                assert time.monotonic() < deadline, f"{ae}: delivery never confirmed"
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
        await self.close()

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def closed(self) -> bool:
        return self._task is None or self._task.done()

    def received(self, uid=None, event_type=None) -> list[dict]:
        uids = {uid} if isinstance(uid, str) else (set(uid) if uid is not None else None)
        types = ({event_type} if isinstance(event_type, int)
                 else (set(event_type) if event_type is not None else None))
        return [f for f in self.frames
                if (uids is None or frame_uid(f) in uids)
                and (types is None or frame_type(f) in types)]

    async def wait(self, count: int, timeout: float = HANG_GUARD, uid=None,
                   event_type=None) -> list[dict]:
        """Wait until at least ``count`` matching frames arrived; returns them in order."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received(uid, event_type)
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(
                    f"WebSocket {self.url}: {len(found)} of {count} expected frames within "
                    f"{timeout}s (closed={self.closed}, code={self.close_code}); received "
                    f"{[(frame_type(f), (frame_uid(f) or '')[-6:]) for f in self.frames[-40:]]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass


# ---- UPS-RS calls the event tests make ---------------------------------------------------

def unassigned(**kw) -> dict:
    """A workitem without Scheduled Station Name: its creation raises one State Report only."""
    ds = workitem(**kw)
    ds.pop("00404025")
    return ds


GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
JSON = {"Content-Type": "application/dicom+json"}


class Ups:
    """Thin UPS-RS client over one gateway's base URL; asserts the expected success codes."""

    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http = http
        self.base = base

    def ws_url(self, ae: str) -> str:
        return "ws" + self.base[self.base.index(":"):] + f"/ws/subscribers/{ae}"

    async def create(self, ds: dict | None = None, uid: str | None = None, **kw) -> str:
        uid = uid or new_uid()
        ds = ds if ds is not None else workitem(**kw)
        async with self.http.post(f"{self.base}/workitems?{uid}", json=ds, headers=JSON) as r:
            assert r.status == 201, (r.status, await r.text(), r.headers.get("Warning"))
        return uid

    async def claim(self, uid: str, requester: str | None = None) -> str:
        tx = new_uid()
        suffix = f"/{requester}" if requester else ""
        async with self.http.put(f"{self.base}/workitems/{uid}/state{suffix}",
                                 json=state_payload("IN PROGRESS", tx), headers=JSON) as r:
            assert r.status == 200, (r.status, await r.text(), r.headers.get("Warning"))
        return tx

    async def update(self, uid: str, payload: dict, tx: str | None = None) -> None:
        query = f"?transaction-uid={tx}" if tx else ""
        async with self.http.post(f"{self.base}/workitems/{uid}{query}", json=payload,
                                  headers=JSON) as r:
            assert r.status == 200, (r.status, await r.text(), r.headers.get("Warning"))

    async def progress(self, uid: str, tx: str, percent: float, text: str = "") -> None:
        item = {"00741004": {"vr": "DS", "Value": [percent]}}
        if text:
            item["00741006"] = {"vr": "ST", "Value": [text]}
        await self.update(uid, {"00741002": {"vr": "SQ", "Value": [item]}}, tx)

    async def set_state(self, uid: str, state: str, tx: str | None) -> None:
        async with self.http.put(f"{self.base}/workitems/{uid}/state",
                                 json=state_payload(state, tx), headers=JSON) as r:
            assert r.status == 200, (r.status, await r.text(), r.headers.get("Warning"))

    async def complete(self, uid: str, tx: str) -> None:
        await self.update(uid, completion_payload(), tx)
        await self.set_state(uid, "COMPLETED", tx)

    async def cancel_request(self, uid: str, requester: str | None = None,
                             reason: str | None = None, contact: str | None = None,
                             expect: int | None = 202) -> aiohttp.ClientResponse:
        payload: dict = {}
        if reason:
            payload["00741238"] = {"vr": "LT", "Value": [reason]}
        if contact:
            payload["0074100A"] = {"vr": "UR", "Value": [contact]}
            payload["0074100C"] = {"vr": "LO", "Value": ["Requester desk"]}
        suffix = f"/{requester}" if requester else ""
        async with self.http.post(f"{self.base}/workitems/{uid}/cancelrequest{suffix}",
                                  json=payload or None, headers=JSON) as r:
            await r.read()
            if expect is not None:
                assert r.status == expect, (r.status, await r.text(), r.headers.get("Warning"))
            return r

    async def subscribe(self, uid: str, ae: str, lock: bool = False, query: str = "",
                        expect: int | None = 201) -> aiohttp.ClientResponse:
        params = "deletionlock=true" if lock else ""
        if query:
            params = f"{params}&{query}" if params else query
        url = f"{self.base}/workitems/{uid}/subscribers/{ae}" + (f"?{params}" if params else "")
        async with self.http.post(url) as r:
            await r.read()
            if expect is not None:
                assert r.status == expect, (r.status, await r.text(), r.headers.get("Warning"))
            return r

    async def unsubscribe(self, uid: str, ae: str,
                          expect: int | None = 200) -> aiohttp.ClientResponse:
        async with self.http.delete(f"{self.base}/workitems/{uid}/subscribers/{ae}") as r:
            await r.read()
            if expect is not None:
                assert r.status == expect, (r.status, await r.text(), r.headers.get("Warning"))
            return r

    async def suspend(self, ae: str, uid: str = GLOBAL,
                      expect: int | None = 200) -> aiohttp.ClientResponse:
        async with self.http.post(f"{self.base}/workitems/{uid}/subscribers/{ae}/suspend") as r:
            await r.read()
            if expect is not None:
                assert r.status == expect, (r.status, await r.text(), r.headers.get("Warning"))
            return r

    async def drain(self, subscriber: EventReceiver | WsListener, ae: str) -> str:
        """Return once everything the gateway queued for ``ae`` so far has reached
        ``subscriber`` (``ae``'s receiver or open WebSocket channel); the marker's UID.

        The gateway queues events per subscriber AE and delivers each AE's events in the order
        they were queued (conformance statement §7: later events wait, per-AE order holds). A
        marker queued now for ``ae`` — the initial State Report of a subscription to a fresh
        workitem — therefore arrives after every event queued before it, duplicates and strays
        included: once the marker is there, an earlier event that has not arrived never will.
        The marker subscription is removed again; the marker's own events stay in
        ``subscriber``'s record (under the returned UID)."""
        marker = await self.create(unassigned())
        await self.subscribe(marker, ae)
        await subscriber.wait(1, uid=marker)
        await self.unsubscribe(marker, ae)
        return marker

    async def status_of(self, uid: str) -> int:
        async with self.http.get(f"{self.base}/workitems/{uid}") as r:
            await r.read()
            return r.status

    async def retrieve(self, uid: str) -> dict:
        async with self.http.get(f"{self.base}/workitems/{uid}") as r:
            assert r.status == 200, (r.status, await r.text())
            [ds] = await r.json()
            return ds
