"""A real browser for the CORS tests: headless Chromium (Debian's ``chromium``), driven over the
DevTools protocol with aiohttp, and a page server on an origin of its own.

``Browser.evaluate(url, script)`` opens a tab on ``url`` and runs ``script`` (an async function
body) there, returning what it returns; the browser enforces CORS exactly as for any web app.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.testing import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-port=0"]
HANG_GUARD = 60.0


class Browser:
    def __init__(self, session: aiohttp.ClientSession):
        self.session = session
        self.profile = Path(tempfile.mkdtemp(prefix="ups-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> "Browser":
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}",
                                      "about:blank"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + HANG_GUARD
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            assert self.proc.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium never opened its DevTools port"
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = await self.session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _call(self, method: str, params: dict | None = None,
                    session: str | None = None) -> dict:
        call_id = next(self._ids)
        message = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        while True:
            reply = json.loads((await asyncio.wait_for(self.ws.receive(), HANG_GUARD)).data)
            if reply.get("id") == call_id:
                assert "error" not in reply, reply
                return reply["result"]

    async def evaluate(self, url: str, script: str):
        target = (await self._call("Target.createTarget", {"url": url}))["targetId"]
        session = (await self._call("Target.attachToTarget",
                                    {"targetId": target, "flatten": True}))["sessionId"]
        try:
            for _ in range(200):  # the page has loaded: its origin is the page server's
                ready = await self._call("Runtime.evaluate", {
                    "expression": "document.readyState + ' ' + location.origin",
                    "returnByValue": True}, session)
                if ready["result"]["value"].startswith("complete http"):
                    break
                await asyncio.sleep(0.05)
            result = await self._call("Runtime.evaluate", {
                "expression": f"(async () => {{ {script} }})()", "awaitPromise": True,
                "returnByValue": True}, session)
            assert "exceptionDetails" not in result, result["exceptionDetails"]
            return result["result"].get("value")
        finally:
            await self._call("Target.closeTarget", {"targetId": target})


async def _page(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>UPS app</title>", content_type="text/html")


class PageServer:
    """Serves an empty page at ``origin`` + "/": the browser app's own origin."""

    def __init__(self):
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> "PageServer":
        app = web.Application()
        app.router.add_get("/", _page)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()
