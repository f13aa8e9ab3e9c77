"""Scenario 1's baseline: the least an HTTP create can cost here — an aiohttp handler that reads
and parses the same JSON body and does one Redis SET, on its own redis-server.

    python -m bench.baseline_rest --port PORT --redis unix:///path/redis.sock [--loop uvloop]

The target compares with it on the standard library's event loop; the same handler on uvloop (the
gateway's default loop) is measured too, for information.
"""

from __future__ import annotations

import argparse
import json

import redis.asyncio as aioredis
from aiohttp import web


def make_app(redis_url: str) -> web.Application:
    app = web.Application(client_max_size=1048576)

    async def start(app: web.Application) -> None:
        app["redis"] = aioredis.Redis.from_url(redis_url, max_connections=512)
        await app["redis"].ping()

    async def stop(app: web.Application) -> None:
        await app["redis"].aclose()

    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        ds = json.loads(body)
        uid = ds["00080018"]["Value"][0]
        await request.app["redis"].set(f"b:wi:{uid}", body)
        location = f"http://{request.host}/dicom-web/workitems/{uid}"
        return web.Response(status=201, headers={"Location": location})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/dicom-web/workitems", create)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    loop = None
    if args.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(make_app(args.redis), host="127.0.0.1", port=args.port, access_log=None,
                print=None, loop=loop)


if __name__ == "__main__":
    main()
