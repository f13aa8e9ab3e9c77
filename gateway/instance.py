"""This process's identity among the gateway processes that share one Redis.

The identity names the process's heartbeat entry and owns its DIMSE delivery leases. It is
stable across restarts, so a process restarted after a crash recognises what its previous run
left in Redis as its own: it takes its leases and heartbeat entry over at once and announces
RESTARTED during its start, instead of waiting for them to expire as it must for another
process's.

``instance_name`` when configured; otherwise a name generated at the first start and kept in
``data_dir``, one file per pair of listening ports (two processes may share a data_dir when
they use an external Redis; they cannot share ports on one host).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

from gateway.config import Config

log = logging.getLogger("gateway")


def identity_file(config: Config) -> Path:
    return Path(config.data_dir) / f"instance-{config.rest.port}-{config.dimse.port}.id"


def identity(config: Config) -> str:
    """The configured instance name, or the one kept in data_dir (made on first use). When
    data_dir cannot be written, a name for this run only (a restart is then a new process)."""
    if config.instance_name:
        return config.instance_name
    path = identity_file(config)
    if not _stable(config):
        return _for_this_run(path, None)  # ports the OS picks name no process of their own
    try:
        name = path.read_text().strip()
        if name:
            return name
    except FileNotFoundError:
        pass
    except OSError as exc:
        return _for_this_run(path, exc)
    name = f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(name + "\n")
        os.replace(temporary, path)  # whole or not at all
    except OSError as exc:
        return _for_this_run(path, exc)
    return name


def _for_this_run(path: Path, exc: OSError | None) -> str:
    name = f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"
    why = (exc.strerror or str(exc)) if exc is not None else "a listening port is 0 (any)"
    log.warning("instance identity is not kept: after a crash, this process's leases are "
                "taken over only once they expire; set instance_name",
                extra={"path": str(path), "error": why, "instance": name})
    return name


# ---- the store identity this process last saw (``events/store_watch.py``) --------------------

def _store_file(config: Config) -> Path:
    return Path(config.data_dir) / f"store-{config.rest.port}-{config.dimse.port}.seen"


def _stable(config: Config) -> bool:
    return bool(config.instance_name) or not (
        config.rest.port == 0 or (config.dimse.enabled and config.dimse.port == 0))


def remembered_store(config: Config) -> str | None:
    """The store identity this process's previous run saw (None: none kept)."""
    if not _stable(config):
        return None
    try:
        return _store_file(config).read_text().strip() or None
    except OSError:
        return None


def remember_store(config: Config, identity: str) -> None:
    """Keep ``identity`` for the next run; best effort (a data_dir that cannot be written only
    means an emptied store is noticed later, once the process runs)."""
    if not _stable(config):
        return
    path = _store_file(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(identity + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.debug("store identity not kept", extra={"path": str(path), "error": str(exc)})
