"""Where one REST change's time goes: the stages of a claim, from the request to its event.

    python -m bench.timeline [--changes 2000]

Starts a gateway (its embedded Redis, one WebSocket subscriber ``WSSUB`` subscribed globally) in
a process of its own with a timestamp taken at each stage of a request, then claims workitems one
at a time from this process and prints, per stage, the p50 of its time since the request was
sent (``time.perf_counter_ns`` is the system's monotonic clock, the same in both processes).

The stages are marked by wrapping the functions that begin them — aiohttp's request reader, the
route dispatcher, the store's commit, the lane's write and reply, the WebSocket channel's send,
aiohttp's response write — so the figures carry the wrappers' own small cost. It measures, it
does not judge: there is no baseline and no target (``docs/performance.md``, fifth round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.procs import free_port, wait_http
from bench.workload import Workload, new_uid

GLOBAL = "1.2.840.10008.5.1.4.34.5"
JSON = {"Content-Type": "application/dicom+json"}
WARMUP = 50
STAGES = {  # mark → what has happened by then
    "recv": "aiohttp reads the request",
    "dispatch": "the route's handler starts",
    "commit_call": "the commit is called",
    "lane_write": "the lane writes",
    "lane_reply": "Redis's reply is read",
    "commit_back": "the commit returns",
    "handler_done": "the handler returns",
    "resp_written": "HTTP response written",
    "ws_send": "the fan-out sends the frame",
    "client_resp": "the client has the response",
    "client_ws": "the client has the event",
}


# ---- the instrumented gateway (its own process) --------------------------------------------

def _serve(config_path: str, marks_path: str) -> None:
    import aiohttp.http_writer as http_writer
    import aiohttp.web_protocol as web_protocol
    import uvloop

    from gateway.app import Gateway
    from gateway.config import load
    from gateway.rest import app as rest_app
    from gateway.rest import websocket
    from gateway.store import lane, workitems

    marks: list[tuple[str, int]] = []

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter_ns()))

    def before(owner, name: str, label: str, *, when=None) -> None:
        original = getattr(owner, name)
        if asyncio.iscoroutinefunction(original):
            async def wrapped(*args, **kwargs):
                mark(label)
                return await original(*args, **kwargs)
        else:
            def wrapped(*args, **kwargs):
                if when is None or when(*args):
                    mark(label)
                return original(*args, **kwargs)
        setattr(owner, name, wrapped)

    def around(owner, name: str, start: str | None, end: str) -> None:
        original = getattr(owner, name)

        async def wrapped(*args, **kwargs):
            if start:
                mark(start)
            result = await original(*args, **kwargs)
            mark(end)
            return result
        setattr(owner, name, wrapped)

    before(web_protocol.RequestHandler, "data_received", "recv",
           when=lambda _self, data: data[:4] == b"PUT ")
    around(rest_app, "dispatch", "dispatch", "handler_done")  # (create_app takes it after this)
    around(workitems.RedisWorkitemStore, "commit", "commit_call", "commit_back")
    before(lane.Lane, "_write", "lane_write")
    before(lane, "_settle", "lane_reply")
    before(websocket.Channel, "send", "ws_send")
    around(http_writer.StreamWriter, "write_eof", None, "resp_written")

    async def main() -> None:
        gateway = Gateway(load(config_path))
        await gateway.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, marks.clear)
        loop.add_signal_handler(signal.SIGUSR2, lambda: Path(marks_path).write_text(
            json.dumps(marks)))
        loop.add_signal_handler(signal.SIGTERM, gateway.request_stop)  # (stops its Redis too)
        await gateway.run_until_stopped()
        await gateway.stop()

    uvloop.run(main())


# ---- the client ------------------------------------------------------------------------------

async def _claims(base: str, ws_url: str, pid: int, marks_path: Path, changes: int) -> dict:
    import aiohttp
    workload = Workload()
    async with aiohttp.ClientSession() as http:
        uids = []
        for i in range(changes + WARMUP):
            uid = new_uid()
            async with http.post(f"{base}/workitems?{uid}", headers=JSON,
                                 data=json.dumps(workload.workitem(i, uid))) as r:
                if r.status != 201:
                    raise RuntimeError(f"create answered {r.status}: {await r.text()}")
            uids.append(uid)
        async with http.post(f"{base}/workitems/{GLOBAL}/subscribers/WSSUB") as r:
            if r.status != 201:
                raise RuntimeError(f"subscribe answered {r.status}: {await r.text()}")
        ws = await http.ws_connect(ws_url)
        events: asyncio.Queue[int] = asyncio.Queue()

        async def read() -> None:
            async for _ in ws:
                events.put_nowait(time.perf_counter_ns())
        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        while not events.empty():
            events.get_nowait()
        timed = []
        for k, uid in enumerate(uids):
            if k == WARMUP:
                os.kill(pid, signal.SIGUSR1)  # the stages from here on
                await asyncio.sleep(0.2)
            body = json.dumps({"00081195": {"vr": "UI", "Value": [new_uid()]},
                               "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]}})
            sent = time.perf_counter_ns()
            async with http.put(f"{base}/workitems/{uid}/state", data=body, headers=JSON) as r:
                if r.status != 200:
                    raise RuntimeError(f"claim answered {r.status}: {await r.text()}")
                answered = time.perf_counter_ns()
            arrived = await asyncio.wait_for(events.get(), 5)
            if k >= WARMUP:
                timed.append((sent, answered, arrived))
        os.kill(pid, signal.SIGUSR2)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if marks_path.exists():
                break
        reader.cancel()
        await ws.close()
    groups: list[dict[str, int]] = []  # the server's marks, per request (each begins at recv)
    for name, ns in json.loads(marks_path.read_text()):
        if name == "recv":
            groups.append({})
        if groups and name not in groups[-1]:
            groups[-1][name] = ns
    if len(groups) != len(timed):
        raise RuntimeError(f"{len(timed)} claims but {len(groups)} requests marked")
    since: dict[str, list[float]] = {}
    for (sent, answered, arrived), group in zip(timed, groups):
        group.update(client_resp=answered, client_ws=arrived)
        for name, ns in group.items():
            since.setdefault(name, []).append((ns - sent) / 1000)
    return {name: statistics.median(values) for name, values in since.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "MARKS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(*args.serve)
        return 0
    with tempfile.TemporaryDirectory(prefix="ups-timeline-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = {"ae_title": "UPS_GATEWAY", "data_dir": str(work / "data"),
                  "rest": {"host": "127.0.0.1", "port": port},
                  "dimse": {"host": "127.0.0.1", "port": free_port()},
                  "redis": {"url": None}, "peers": {}}
        (work / "gateway.yaml").write_text(yaml.safe_dump(config))
        marks = work / "marks.json"
        with open(work / "gateway.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.timeline", "--serve",
                                     str(work / "gateway.yaml"), str(marks)],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc, 60, work / "gateway.log")
            p50 = asyncio.run(_claims(f"http://127.0.0.1:{port}/dicom-web",
                                      f"ws://127.0.0.1:{port}/dicom-web/ws/subscribers/WSSUB",
                                      proc.pid, marks, args.changes))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.changes} REST claims one at a time, one WebSocket subscriber; p50 per stage")
    print(f"{'stage':34s} {'since the request':>18s} {'step':>8s}")
    last = 0.0
    for name, label in sorted(STAGES.items(), key=lambda item: p50.get(item[0], 1e12)):
        if name in p50:
            print(f"{label:34s} {p50[name]:15.0f} µs {p50[name] - last:6.0f}")
            last = p50[name]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
