"""``ups-gateway --config PATH``: run the gateway in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from gateway import __version__, logs
from gateway.config import ConfigError, load


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
    try:
        return asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"ups-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(config) -> int:
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
    await gateway.run_until_stopped()
    logging.getLogger("gateway").info("signal received: shutting down")
    await gateway.stop()
    return 0
