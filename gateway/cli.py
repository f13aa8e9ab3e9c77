"""The ``ups-gateway`` command.

    ups-gateway [--config PATH]                    run the gateway until SIGTERM or SIGINT
    ups-gateway --version
    ups-gateway check-config [--config PATH] [--connect]
                                                   validate (and reach Redis); print the effective
                                                   configuration, secrets masked
    ups-gateway workitems list [--state S] [--label L] [--limit N]
    ups-gateway workitems show UID | cancel UID [--reason TEXT] | purge [--retention-hours H]
    ups-gateway subscriptions list
    ups-gateway events backlog

The admin commands act through the same UPS core as the servers (``gateway.admin``). They print
a table, or with ``--json`` a JSON array (workitems in DICOM JSON). Exit codes: 0 done, 1 the
worklist refused (the reason on stderr), 2 a bad configuration or Redis out of reach (one line
naming the key).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from typing import Any

import orjson
import yaml
from redis.exceptions import RedisError

from gateway import __version__, logs
from gateway.config import ConfigError, effective, load

REFUSED = 1
BAD_CONFIG = 2
CHANGING = {("workitems", "cancel"), ("workitems", "purge")}


def _event_loop_runner(config):
    """uvloop (libuv's event loop) by default: it runs the gateway's HTTP, WebSocket and Redis
    traffic with markedly less CPU per request than the standard loop (docs/performance.md)."""
    if config.event_loop == "uvloop":
        import uvloop
        return uvloop.run
    return asyncio.run


def _positive(kind, zero: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'0 or more' if zero else 'more than 0'}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ups-gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", metavar="PATH", default=None,
                        help="YAML configuration file (default: built-in defaults)")
    parser.add_argument("--version", action="version", version=f"ups-gateway {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                        help="YAML configuration file")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print a JSON array")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("check-config", parents=[common],
                                help="validate the configuration and print it, secrets masked")
    check.add_argument("--connect", action="store_true", help="also reach Redis")

    workitems = commands.add_parser("workitems", help="list, show, cancel or purge workitems")
    actions = workitems.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common, output], help="list workitems")
    listing.add_argument("--state", help="only workitems in this state (e.g. SCHEDULED)")
    listing.add_argument("--label", help="only workitems on this Worklist Label")
    listing.add_argument("--limit", type=_positive(int), default=None, help="at most this many")
    show = actions.add_parser("show", parents=[common, output], help="one workitem, whole")
    show.add_argument("uid")
    cancel = actions.add_parser("cancel", parents=[common, output],
                                help="request cancellation (as UPS Cancel does)")
    cancel.add_argument("uid")
    cancel.add_argument("--reason", help="Reason For Cancellation")
    purge = actions.add_parser("purge", parents=[common, output],
                               help="run the retention purge now")
    purge.add_argument("--retention-hours", type=_positive(float, zero=True), default=None,
                       help="purge final workitems older than this (default: ups.retention_hours)")

    subscriptions = commands.add_parser("subscriptions", help="list subscriptions")
    sub_actions = subscriptions.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub_actions.add_parser("list", parents=[common, output], help="every subscriber AE")

    events = commands.add_parser("events", help="event queues")
    event_actions = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    event_actions.add_parser("backlog", parents=[common, output],
                             help="events waiting per subscriber AE and transport")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"ups-gateway: configuration error: {exc}", file=sys.stderr)
        return BAD_CONFIG
    if args.command is None:
        return _serve(config)
    # What changes the worklist is logged (stderr, as configured), naming the command and UIDs:
    # the service's own records of the change follow. Reads log only warnings.
    changes = (args.command, getattr(args, "action", None)) in CHANGING
    logs.setup(config.log.level if changes else "WARNING", config.log.format)
    if changes:
        logging.getLogger("gateway.admin").info("admin command", extra={
            "command": f"{args.command} {args.action}", "uid": getattr(args, "uid", None),
            "ae": config.ae_title})
    try:
        return asyncio.run(_command(args, config))
    except ConfigError as exc:
        print(f"ups-gateway: configuration error: {exc}", file=sys.stderr)
        return BAD_CONFIG
    except BrokenPipeError:  # the reader of our output went away (… | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RedisError, OSError) as exc:  # lost after connecting (a failover, a restart)
        print(f"ups-gateway: redis: {exc or type(exc).__name__}; try again", file=sys.stderr)
        return BAD_CONFIG
    except KeyboardInterrupt:
        return 130


def _serve(config) -> int:
    logs.setup(config.log.level, config.log.format)
    held = _hold_logs()
    try:
        return _event_loop_runner(config)(_run(config, held))
    except ConfigError as exc:
        # A start refused for a configuration reason (port in use, Redis unreachable…) says so
        # in one line; the start-up logs leading to it would only bury that line.
        _release_logs(held, emit=False)
        print(f"ups-gateway: configuration error: {exc}", file=sys.stderr)
        return BAD_CONFIG
    except KeyboardInterrupt:
        return 130
    finally:
        _release_logs(held, emit=True)


# ---- the operator's commands -------------------------------------------------------------------

async def _command(args: argparse.Namespace, config) -> int:
    from gateway.admin import Admin, Refused  # the servers' start does not need them

    if args.command == "check-config":
        reached = None
        if args.connect:
            reached = await Admin.reach(config)
        print(yaml.safe_dump(effective(config), sort_keys=False), end="")
        if reached:
            print(f"# redis: {reached}", file=sys.stderr)
        return 0
    admin = await Admin.open(config)
    try:
        handler = _COMMANDS[(args.command, args.action)]
        return await handler(admin, args)
    except Refused as error:
        print(f"ups-gateway: 0x{error.status:04X}: {error.message}", file=sys.stderr)
        return REFUSED
    finally:
        await admin.close()


async def _workitems_list(admin, args) -> int:
    from gateway.admin import summary

    found = admin.workitems(args.state, args.label, args.limit)
    if args.json:  # written as it is read: a large worklist is never held whole
        out = sys.stdout.buffer
        out.write(b"[")
        separator = b"\n"
        async for ds in found:
            out.write(separator + orjson.dumps(ds))
            separator = b",\n"
        out.write(b"\n]\n")
        return 0
    _print_table([summary(ds) async for ds in found],
                 ["uid", "state", "label", "priority", "start", "step", "patient_id"])
    return 0


async def _workitems_show(admin, args) -> int:
    ds = await admin.workitem(args.uid)
    if args.json:
        return _print_json([ds])
    from gateway.admin import summary
    for name, value in summary(ds).items():
        print(f"{name:<11} {value}")
    return 0


async def _workitems_cancel(admin, args) -> int:
    from gateway.admin import summary

    outcome, ds = await admin.cancel(args.uid, args.reason)
    state = summary(ds)["state"]
    if args.json:
        return _print_json([ds])
    if outcome.message:
        print(f"0x{outcome.status:04X}: {outcome.message}")
    if state == "CANCELED":
        print(f"{args.uid} CANCELED")
    else:
        print(f"{args.uid} {state}: cancellation requested of its performer and subscribers")
    return 0


async def _workitems_purge(admin, args) -> int:
    purged = await admin.purge(args.retention_hours)
    if args.json:
        return _print_json(purged)
    for uid in purged:
        print(uid)
    print(f"{len(purged)} workitem(s) purged", file=sys.stderr)
    return 0


async def _subscriptions_list(admin, args) -> int:
    found = await admin.subscriptions()
    if args.json:
        return _print_json(found)
    rows = [{**entry, "worklist": entry["worklist"] or "-",
             "deletion_lock": "-" if entry["deletion_lock"] is None else
             ("yes" if entry["deletion_lock"] else "no"),
             "filter": _terms(entry["filter"]), "channel_open": "yes" if entry["channel_open"]
             else "no"} for entry in found]
    _print_table(rows, ["ae", "worklist", "deletion_lock", "workitems", "channel_open", "filter"])
    return 0


async def _events_backlog(admin, args) -> int:
    found = await admin.backlog()
    if args.json:
        return _print_json(found)
    rows = []
    for entry in found:
        row = {"ae": entry["ae"], "queued": entry["queued"], "latest": entry["latest"]}
        for transport in ("ws", "dimse"):
            part = entry.get(transport)
            row[f"{transport}_pending"] = "-" if part is None else part["pending"]
            row[f"{transport}_lost"] = "-" if part is None else part["lost"]
        rows.append(row)
    _print_table(rows, ["ae", "queued", "latest", "ws_pending", "ws_lost", "dimse_pending",
                        "dimse_lost"])
    return 0


_COMMANDS = {
    ("workitems", "list"): _workitems_list,
    ("workitems", "show"): _workitems_show,
    ("workitems", "cancel"): _workitems_cancel,
    ("workitems", "purge"): _workitems_purge,
    ("subscriptions", "list"): _subscriptions_list,
    ("events", "backlog"): _events_backlog,
}


def _terms(terms: list | None) -> str:
    return " ".join(f"{path}={raw}" for path, raw in terms) if terms else ""


def _print_json(value: Any) -> int:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


# ---- running the gateway -----------------------------------------------------------------------

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
