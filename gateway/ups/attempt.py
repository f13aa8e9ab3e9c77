"""The one way the core changes a workitem: read, decide, commit — again when another writer got
there first (``until_committed``)."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Iterable, TypeVar

from gateway.ups.errors import Contention, NoSuchWorkitem, UPSError
from gateway.ups.ports import Change, Conflict, QueuedEvent, Record, WorkitemStore

T = TypeVar("T")
log = logging.getLogger("gateway.ups")


class Attempt:
    """One read → decide → commit try of ``until_committed``: the store calls it makes, and
    whether it decided on a remembered record and committed."""

    def __init__(self, store: WorkitemStore, recent: bool):
        self.store = store
        self._recent = recent
        self.used_recent = False
        self.committed = False

    async def load(self, uid: str) -> Record:
        record = await (self.store.load_recent(uid) if self._recent else self.store.load(uid))
        if record is None:
            raise NoSuchWorkitem(uid)
        self.used_recent |= record.recent
        return record

    async def commit(self, uid: str, version: int, change: Change,
                     events: Iterable[QueuedEvent] = ()) -> int:
        version = await self.store.commit(uid, version, change, events)
        self.committed = True
        return version


async def until_committed(uid: str, store: WorkitemStore,
                          decide: Callable[[Attempt], Awaitable[T]], max_attempts: int) -> T:
    """Run ``decide`` — read, decide, commit — again for as long as its commit meets a
    ``Conflict`` (another writer got there first), at most ``max_attempts`` times. Every UPS
    operation that changes a workitem goes through here, so concurrent requests on any number of
    gateway processes serialise exactly as the standard requires.

    The first try may decide on the record this process remembers (one Redis round trip less
    for a change to a workitem it just created or changed). A successful commit proves that
    record was current; any other outcome of such a try — a refusal, or an answer that changed
    nothing — is decided again on a record read now."""
    recent = True
    for _ in range(max_attempts):
        attempt = Attempt(store, recent)
        try:
            result = await decide(attempt)
        except Conflict:
            recent = False
            continue
        except UPSError:
            if attempt.used_recent and not attempt.committed:
                recent = False
                continue
            raise
        if attempt.used_recent and not attempt.committed:
            recent = False
            continue
        return result
    log.error("too much contention", extra={"uid": uid})
    raise Contention(uid)
