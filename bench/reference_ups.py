"""Scenario 5's references: an in-memory UPS-RS server, in two forms.

    python -m bench.reference_ups --port PORT [--model json|pydicom] [--loop uvloop|asyncio]

``--model json`` (the floor): the least a UPS-RS server written in Python on aiohttp has to do
between a state change and its WebSocket event — workitems kept as the parsed DICOM JSON, frames
built with orjson. ``--model pydicom`` (py-ups-rs's way): what the in-memory UPS-RS server the
issue names as the peer, py-ups-rs (github sjswerdloff/py-ups-rs, not installable here), does
with the same requests — every payload read into a pydicom ``Dataset`` (``Dataset.from_json``)
and the workitem kept as one, its attributes changed on the Dataset, each event report built as
a pydicom ``Dataset`` and written with ``Dataset.to_json``. Both share everything else below.

It runs as its own process on the gateway's default event loop (uvloop), and scenario 5 measures
it exactly as it measures the gateway: same client, same requests, same WebSocket readers. The
ratio "gateway / reference" is therefore what the gateway's change → event path costs beyond
keeping the worklist in one process's memory and writing each event to each subscriber's socket.

What it does — what scenario 5 uses, written as a careful developer would for a worklist that
lives in one process:

* Create Workitem, ``POST /dicom-web/workitems[?workitem=UID]``: parses the DICOM JSON (orjson)
  and keeps the parsed object, by SOP Instance UID, in a dict. The UID comes from the payload or
  the parameter; the state must be SCHEDULED or absent (then it is set). 201 with Location; 409
  for a UID that exists; 400 for a body that is not a JSON object with a UID. Global subscribers
  get a UPS State Report (SCHEDULED), as UPS-RS requires.
* Change State, ``PUT /dicom-web/workitems/{uid}/state[/{requester}]``: the claim only. IN
  PROGRESS with a Transaction UID on a SCHEDULED workitem sets the state, keeps the Transaction
  UID and answers 200; a second claim answers 409 (the workitem is IN PROGRESS already); 404 for
  an unknown workitem; 400 without a state or a Transaction UID. Other target states answer 400
  (not implemented here).
* Global Subscribe and Unsubscribe, ``POST``/``DELETE
  /dicom-web/workitems/1.2.840.10008.5.1.4.34.5/subscribers/{AE}``: 201 / 200 (404 when the AE
  was not subscribed). Other subscription UIDs answer 400 (not implemented here).
* The event channel, ``GET /dicom-web/ws/subscribers/{AE}``: a WebSocket per AE (a newer one
  replaces the older, which is closed with 4000). For each change, in the handler of the change
  and so in the order of the changes, every globally subscribed AE with an open WebSocket gets
  a UPS State Report as one DICOM JSON text frame, encoded by orjson with the command fields
  and in the field order the gateway sends: Affected SOP Class UID (UPS Push), Message ID (the
  AE's own event count, 1..65535 wrapping), Affected SOP Instance UID, Event Type ID (1), then
  the event information — Input Readiness State, Procedure Step State. The frame goes into the
  subscriber's bounded queue (1,000 frames); one writer task per WebSocket sends from it, so a
  slow subscriber never holds up a change or another subscriber. A subscriber whose queue is
  full is disconnected (1008), not waited for.

What it does not do, and the gateway does (so the ratio compares the event path only, not two
servers of equal function): no persistence and no durability (a restart forgets everything); no
event queueing or replay (the events of an AE without an open WebSocket are dropped); no
validation of workitem attributes beyond the above; no other UPS-RS transaction (search,
retrieve, update, cancel, completion), no per-workitem, filtered or locked subscriptions, no
DIMSE; one process, no Redis, no sharing of state with another instance.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import WSMsgType, web
from pydicom import Dataset
from pydicom.tag import Tag

GLOBAL = "1.2.840.10008.5.1.4.34.5"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
SOP_INSTANCE_UID, TRANSACTION_UID = "00080018", "00081195"
INPUT_READINESS_STATE, PROCEDURE_STEP_STATE = "00404041", "00741000"
STATE_REPORT = 1
QUEUE_FRAMES = 1000
REPLACED, TOO_SLOW = 4000, 1008


def _value(ds: dict, tag: str) -> str | None:
    element = ds.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if values and isinstance(values[0], str) else None


class JsonModel:
    """Workitems as parsed DICOM JSON; frames by orjson, in the gateway's field order."""

    def parse(self, body: dict):
        return body

    def value(self, ds, tag: str) -> str | None:
        return _value(ds, tag)

    def put(self, ds, tag: str, vr: str, value: str) -> None:
        ds[tag] = {"vr": vr, "Value": [value]}

    def frame(self, uid: str, ds, message_id: int) -> bytes:
        return orjson.dumps({
            "00000002": {"vr": "UI", "Value": [UPS_PUSH]},
            "00000110": {"vr": "US", "Value": [message_id]},
            "00001000": {"vr": "UI", "Value": [uid]},
            "00001002": {"vr": "US", "Value": [STATE_REPORT]},
            INPUT_READINESS_STATE: ds.get(INPUT_READINESS_STATE, {"vr": "CS"}),
            PROCEDURE_STEP_STATE: ds[PROCEDURE_STEP_STATE]})


class PydicomModel:
    """Workitems as pydicom Datasets; each event report a Dataset written by ``to_json``."""

    def parse(self, body: dict):
        return Dataset.from_json(body)

    def value(self, ds, tag: str) -> str | None:
        element = ds.get(Tag(tag))
        value = element.value if element is not None else None
        return str(value) if value not in (None, "") else None

    def put(self, ds, tag: str, vr: str, value: str) -> None:
        ds.add_new(Tag(tag), vr, value)

    def frame(self, uid: str, ds, message_id: int) -> bytes:
        report = Dataset()
        report.AffectedSOPClassUID = UPS_PUSH
        report.MessageID = message_id
        report.AffectedSOPInstanceUID = uid
        report.EventTypeID = STATE_REPORT
        report.InputReadinessState = ds.get("InputReadinessState", "")
        report.ProcedureStepState = ds.ProcedureStepState
        return report.to_json().encode()


MODELS = {"json": JsonModel, "pydicom": PydicomModel}


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, headers={"Warning": f'299 reference "{text}"'})


async def _read_object(request: web.Request) -> dict | web.Response:
    """The body as one DICOM JSON object, or the 400 answer saying why it is not."""
    try:
        ds = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _refuse(400, "the body is not JSON")
    return ds if isinstance(ds, dict) else _refuse(400, "the body is not one DICOM JSON object")


class Channel:
    """One subscriber's WebSocket with its frame queue and the task that writes from it."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_FRAMES)
        self.writer = asyncio.create_task(self._write())

    def put(self, frame: bytes) -> None:
        try:
            self.frames.put_nowait(frame)
        except asyncio.QueueFull:
            self.close(TOO_SLOW, b"event queue full: too slow a reader")

    def close(self, code: int, message: bytes) -> None:
        self.writer.cancel()
        asyncio.create_task(self.ws.close(code=code, message=message))

    async def _write(self) -> None:
        try:
            while True:
                frame = await self.frames.get()
                await self.ws.send_frame(frame, WSMsgType.TEXT)
        except ConnectionResetError:
            pass  # the subscriber left; its handler removes the channel


class Worklist:
    """The workitems, the global subscribers (AE → events sent) and the open channels."""

    def __init__(self, model):
        self.model = model
        self.workitems: dict[str, object] = {}
        self.subscribers: dict[str, int] = {}
        self.channels: dict[str, Channel] = {}

    def report(self, uid: str, ds: dict) -> None:
        """A UPS State Report of ``ds`` to every global subscriber with an open channel."""
        for ae, sent in self.subscribers.items():
            channel = self.channels.get(ae)
            if channel is None:
                continue
            self.subscribers[ae] = sent + 1
            channel.put(self.model.frame(uid, ds, sent % 0xFFFF + 1))


def make_app(model_name: str = "json") -> web.Application:
    app = web.Application(client_max_size=1048576)
    model = MODELS[model_name]()
    worklist = Worklist(model)

    async def read(request: web.Request):
        body = await _read_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            return model.parse(body)
        except Exception as exc:  # noqa: BLE001 - pydicom says what is wrong
            return _refuse(400, f"the body is not a DICOM JSON dataset: {exc}"[:200])

    async def create(request: web.Request) -> web.Response:
        ds = await read(request)
        if isinstance(ds, web.Response):
            return ds
        uid = model.value(ds, SOP_INSTANCE_UID) or request.query.get("workitem")
        if not uid:
            return _refuse(400, "no SOP Instance UID in the payload or the workitem parameter")
        if uid in worklist.workitems:
            return _refuse(409, f"workitem {uid} exists")
        state = model.value(ds, PROCEDURE_STEP_STATE)
        if state not in (None, "SCHEDULED"):
            return _refuse(400, f"a new workitem is SCHEDULED, not {state}")
        model.put(ds, PROCEDURE_STEP_STATE, "CS", "SCHEDULED")
        worklist.workitems[uid] = ds
        worklist.report(uid, ds)
        location = f"http://{request.host}/dicom-web/workitems/{uid}"
        return web.Response(status=201, headers={"Location": location})

    async def change_state(request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        change = await read(request)
        if isinstance(change, web.Response):
            return change
        state = model.value(change, PROCEDURE_STEP_STATE)
        tx = model.value(change, TRANSACTION_UID)
        ds = worklist.workitems.get(uid)
        if ds is None:
            return _refuse(404, f"no workitem {uid}")
        if state is None or tx is None:
            return _refuse(400, "the payload needs ProcedureStepState and TransactionUID")
        if state != "IN PROGRESS":
            return _refuse(400, f"only the claim (IN PROGRESS) is implemented, not {state}")
        if model.value(ds, PROCEDURE_STEP_STATE) != "SCHEDULED":
            return _refuse(409, f"workitem {uid} is {model.value(ds, PROCEDURE_STEP_STATE)}")
        model.put(ds, PROCEDURE_STEP_STATE, "CS", "IN PROGRESS")
        model.put(ds, TRANSACTION_UID, "UI", tx)
        worklist.report(uid, ds)
        return web.Response(status=200)

    async def subscribe(request: web.Request) -> web.Response:
        if request.match_info["uid"] != GLOBAL:
            return _refuse(400, "only the global subscription is implemented")
        worklist.subscribers.setdefault(request.match_info["ae"], 0)
        return web.Response(status=201)

    async def unsubscribe(request: web.Request) -> web.Response:
        if request.match_info["uid"] != GLOBAL:
            return _refuse(400, "only the global subscription is implemented")
        if worklist.subscribers.pop(request.match_info["ae"], None) is None:
            return _refuse(404, "no such subscription")
        return web.Response(status=200)

    async def channel(request: web.Request) -> web.StreamResponse:
        ae = request.match_info["ae"]
        ws = web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        mine = Channel(ws)
        older = worklist.channels.get(ae)
        worklist.channels[ae] = mine
        if older is not None:
            older.close(REPLACED, b"replaced by a newer connection for this AE")
        try:
            async for message in ws:  # clients send nothing; reading keeps the close handshake
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if worklist.channels.get(ae) is mine:
                del worklist.channels[ae]
            mine.writer.cancel()
        return ws

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workitems": len(worklist.workitems)})

    base = "/dicom-web"
    app.router.add_post(f"{base}/workitems", create)
    app.router.add_put(f"{base}/workitems/{{uid}}/state", change_state)
    app.router.add_put(f"{base}/workitems/{{uid}}/state/{{requester}}", change_state)
    app.router.add_post(f"{base}/workitems/{{uid}}/subscribers/{{ae}}", subscribe)
    app.router.add_delete(f"{base}/workitems/{{uid}}/subscribers/{{ae}}", unsubscribe)
    app.router.add_get(f"{base}/ws/subscribers/{{ae}}", channel)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=sorted(MODELS), default="json",
                        help="how workitems and event reports are held (see the docstring)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop",
                        help="the event loop (default uvloop, as the gateway's default)")
    args = parser.parse_args()
    loop = None
    if args.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(make_app(args.model), host="127.0.0.1", port=args.port, access_log=None, print=None,
                loop=loop)


if __name__ == "__main__":
    main()
