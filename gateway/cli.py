"""``ups-gateway --config PATH``: run the gateway in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import signal
import sys

from gateway import __version__, logs
from gateway.config import ConfigError, load


def _event_loop_runner(config):
    """uvloop (libuv's event loop) by default: it runs the gateway's HTTP, WebSocket and Redis
    traffic with markedly less CPU per request than the standard loop (docs/performance.md)."""
    if config.event_loop == "uvloop":
        import uvloop
        return uvloop.run
    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ups-gateway", description=__doc__)
    parser.add_argument("--config", "-c", metavar="PATH", default=None,
                        help="YAML configuration file (default: built-in defaults)")
    parser.add_argument("--version", action="version", version=f"ups-gateway {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"ups-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log.level, config.log.format)
    held = _hold_logs()
    try:
        return _event_loop_runner(config)(_run(config, held))
    except ConfigError as exc:
        # A start refused for a configuration reason (port in use, Redis unreachable…) says so
        # in one line; the start-up logs leading to it would only bury that line.
        _release_logs(held, emit=False)
        print(f"ups-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        _release_logs(held, emit=True)


def _hold_logs() -> logging.handlers.MemoryHandler:
    """Keep log records in memory until the gateway has started (see ``main``)."""
    root = logging.getLogger()
    held = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1,
                                          target=root.handlers[0], flushOnClose=False)
    root.handlers[:] = [held]
    return held


def _release_logs(held: logging.handlers.MemoryHandler, *, emit: bool) -> None:
    root = logging.getLogger()
    if held in root.handlers:
        if emit:
            held.flush()
        root.handlers[:] = [held.target]
    held.buffer.clear()


async def _run(config, held: logging.handlers.MemoryHandler | None = None) -> int:
    from gateway.app import Gateway

    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()
        raise
    if held is not None:
        _release_logs(held, emit=True)
    await gateway.run_until_stopped()
    logging.getLogger("gateway").info("signal received: shutting down")
    await gateway.stop()
    return 0
