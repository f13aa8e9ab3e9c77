"""Structured logs: one JSON object per line (or key=value text), with the context fields —
workitem UID, AE title, request id — that callers pass through ``extra``."""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# Fields of the request being served (request id, calling AE), added to every record logged
# while serving it — also by the UPS core, which knows nothing of requests.
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("log_context", default={})


def bind(**fields) -> None:
    """Attach fields to every log record of the current request (task or thread)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def _fields(record: logging.LogRecord) -> dict:
    fields = dict(_context.get())
    fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD and v is not None)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO", fmt: str = "json") -> None:
    # Neither format writes the caller's file and line, thread or process: don't look them up
    # for every record (a third of the cost of a log line; one is written per change).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom and aiohttp are chatty at INFO: keep their warnings only.
    for noisy in ("pynetdicom", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
