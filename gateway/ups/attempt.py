"""The one way the core changes a workitem: read, decide, commit — again when another writer got
there first (``until_committed``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextvars import ContextVar
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar

from gateway.ups.errors import Contention, NoSuchWorkitem, OutcomeUnknown, UPSError
from gateway.ups.ports import Change, Conflict, NoRecipient, QueuedEvent, Record, WorkitemStore

T = TypeVar("T")
log = logging.getLogger("gateway.ups")


class CommitTracking:
    """Whether a request's commit is in flight: ``pending`` is the workitem UID of a commit that
    was sent and has not been answered, else None. An adapter whose own deadline cuts a request
    short asks it, so that it says "outcome unknown" rather than "not done"."""

    pending: str | None = None


_tracking: ContextVar[CommitTracking | None] = ContextVar("ups_commit_tracking", default=None)


@contextlib.contextmanager
def commit_tracking() -> Iterator[CommitTracking]:
    """Track the commits of the request served inside the ``with`` (same task)."""
    tracking = CommitTracking()
    token = _tracking.set(tracking)
    try:
        yield tracking
    finally:
        _tracking.reset(token)


class Attempt:
    """One read → decide → commit try of ``until_committed``: the store calls it makes, and
    whether it decided on a remembered record and committed."""

    def __init__(self, store: WorkitemStore, recent: bool, commit_wait: float | None = None):
        self.store = store
        self._recent = recent
        self.commit_wait = commit_wait
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
        """Commit, waiting at most ``commit_wait`` seconds for the store's answer; then (or
        when the store lost the connection meanwhile) ``OutcomeUnknown``."""
        tracking = _tracking.get()
        if tracking is not None:
            tracking.pending = uid
        deadline = asyncio.timeout(self.commit_wait)
        try:
            async with deadline:
                version = await self.store.commit(uid, version, change, events)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.error("commit not confirmed in time: outcome unknown",
                      extra={"uid": uid, "wait_s": self.commit_wait})
            raise OutcomeUnknown(uid, f"the store did not confirm it within "
                                      f"{self.commit_wait:g} s") from None
        except (Conflict, NoRecipient, UPSError) as answer:
            # The store answered: nothing was applied (OutcomeUnknown is no answer).
            if tracking is not None and not isinstance(answer, OutcomeUnknown):
                tracking.pending = None
            raise
        # Anything else — cancelled by the adapter's deadline, a broken connection — leaves
        # ``pending`` set: the commit may have been applied.
        if tracking is not None:
            tracking.pending = None
        self.committed = True
        return version


async def until_committed(uid: str, store: WorkitemStore,
                          decide: Callable[[Attempt], Awaitable[T]], max_attempts: int,
                          commit_wait: float | None = None) -> T:
    """Run ``decide`` — read, decide, commit — again for as long as its commit meets a
    ``Conflict`` (another writer got there first), at most ``max_attempts`` times. Every UPS
    operation that changes a workitem goes through here, so concurrent requests on any number of
    gateway processes serialise exactly as the standard requires.

    The first try may decide on the record this process remembers (one Redis round trip less
    for a change to a workitem it just created or changed). A successful commit proves that
    record was current; any other outcome of such a try — a refusal, or an answer that changed
    nothing — is decided again on a record read now. A commit that is not answered within
    ``commit_wait`` seconds (None: no bound) raises ``OutcomeUnknown`` and is not tried again:
    it may have been applied."""
    recent = True
    for _ in range(max_attempts):
        attempt = Attempt(store, recent, commit_wait)
        try:
            result = await decide(attempt)
        except Conflict:
            recent = False
            continue
        except OutcomeUnknown:
            raise  # it may have been applied: deciding again would decide on a guess
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
