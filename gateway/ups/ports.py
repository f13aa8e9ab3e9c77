"""What the UPS core needs from storage, in the core's own words.

The service decides; a store keeps. Everything a store must offer is stated here — the records it
returns, the changes it commits atomically, the events it queues with them, the conflict it reports
when another writer got there first, and the searches it answers — as ``typing.Protocol``s, so
that the core imports nothing below it. ``gateway.store`` implements them on Redis (what production
runs, one atomic Lua step per change); ``tests/memory_store.py`` implements them in memory for the
fast unit tier of UPS rules. Both must behave alike on everything written here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable, Protocol

from gateway.ups.dataset import Dataset
from gateway.ups.matching import Query



@dataclass
class Record:
    """A stored workitem as read at one version.

    Its dataset is decoded on first use (``decode``): most refusals — a lost claim race, a wrong
    Transaction UID — are decided on the state alone. Every read returns a fresh dataset, which
    the caller may change to build the next version.
    """

    uid: str
    version: int
    state: str
    tx: str | None
    performer: str | None
    decode: Callable[[], Dataset] = field(repr=False, compare=False)
    recent: bool = False  # remembered by this process, not read now (``load_recent``)

    @functools.cached_property
    def dataset(self) -> Dataset:
        return self.decode()


@dataclass
class MppsRecord:
    """A Modality Performed Procedure Step instance as kept by the gateway (``mpps``): its
    dataset, the workitem it is linked to, the Transaction UID of the claim made for it, and a
    note saying how it was linked or why not. ``version`` 0: not stored yet."""

    uid: str
    version: int
    dataset: Dataset
    workitem: str | None = None
    tx: str | None = None
    note: str = ""
    ttl_seconds: int | None = None  # kept this long after this change (None: no limit)


@dataclass
class Change:
    """The new content of a workitem, ready to commit together with its events."""

    dataset: Dataset | None  # None: content unchanged (events only)
    state: str = ""
    tx: str | None = None
    performer: str | None = None
    final_at_ms: int | None = None  # when it reached COMPLETED/CANCELED (retention)
    add_subscriptions: tuple[tuple[str, bool], ...] = ()  # (AE, deletion lock)
    global_version: int | None = None  # commit only if the global subscriptions are unchanged
    state_report: Dataset | None = None  # kept beside the dataset for later global subscribers
    mpps: MppsRecord | None = None  # written in the same step, if still at its version


@dataclass
class QueuedEvent:
    """An event to queue for the workitem's subscribers (plus ``extra`` AEs), in the commit."""

    type: int
    info: Dataset
    extra: tuple[str, ...] = ()
    needs_recipient: bool = False  # refuse the commit (NoRecipient) when nobody would get it
    only: tuple[str, ...] = ()  # send to these AEs instead of the subscribers


@dataclass
class GlobalSubscription:
    ae: str
    lock: bool
    filter: list[list[str]] | None  # None: every workitem; else matching terms (``matching``)


@dataclass
class SearchPage:
    """One page of matches in search order, each the JSON text of its projected dataset."""

    rendered: list[bytes]
    total: int


class Conflict(Exception):
    """The workitem (or the global subscriptions) changed since it was read: read and decide
    again."""

    def __init__(self, uid: str, current_version: int):
        super().__init__(uid)
        self.current_version = current_version


class NoRecipient(Exception):
    """An event that must reach someone has nobody to go to."""


class WorkitemStore(Protocol):
    async def load(self, uid: str) -> Record | None:
        """The workitem, or None when unknown; raises ``WorkitemGone`` for a purged one."""

    async def load_recent(self, uid: str) -> Record | None:
        """The workitem as this process last read or wrote it, when it remembers it (``recent``:
        it may be stale), else as ``load``. Only a decision whose commit then succeeds may rest
        on it: the commit's version check proves it was current (``until_committed``)."""

    async def exists(self, uid: str) -> bool: ...

    async def commit(self, uid: str, version: int, change: Change,
                     events: Iterable[QueuedEvent] = ()) -> int:
        """Apply ``change`` and queue ``events`` in one atomic step if the workitem is still at
        ``version`` (0: it must not exist yet); returns the new version. Raises ``Conflict``,
        ``WorkitemGone`` (a create of a purged UID) or ``NoRecipient``."""

    async def search_page(self, query: Query, offset: int, limit: int) -> SearchPage:
        """Matches ``offset`` … ``offset + limit`` in search order (``matching.search_order``),
        projected (``Query.projection``), with the number of all matches."""

    def search_stream(self, query: Query) -> AsyncIterator[Dataset]:
        """Every match in search order, projected."""

    def matching_uids(self, query: Query) -> AsyncIterator[str]:
        """The UIDs of every match, in search order."""

    async def count(self) -> int:
        """How many workitems are stored."""

    async def find_step(self, step_id: str) -> str | None:
        """The open (SCHEDULED or IN PROGRESS) workitem whose MWL Scheduled Procedure Step ID
        is ``step_id`` (``mwl.step_id``), or None."""

    async def load_mpps(self, uid: str) -> MppsRecord | None: ...

    async def save_mpps(self, record: MppsRecord) -> int:
        """Store an MPPS instance alone if it is still at ``record.version`` (0: it must not
        exist); returns the new version; raises ``Conflict``."""

    async def purge(self, cutoff_ms: int, tombstone_ttl_s: int) -> list[str]:
        """Delete up to a batch of final workitems that reached their final state before
        ``cutoff_ms`` and are not held by a deletion lock; returns their UIDs."""


class SubscriptionStore(Protocol):
    async def globals(self) -> tuple[int, list[GlobalSubscription]]:
        """The global subscriptions and the version they were read at (see ``Change``)."""

    async def set_global(self, ae: str, lock: bool, terms: list[list[str]] | None) -> None: ...

    async def remove_global(self, ae: str) -> bool: ...

    async def subscribe_existing(self, ae: str, lock: bool, uids: list[str],
                                 send_reports: bool) -> int:
        """Subscribe ``ae`` to existing workitems (keeping instance subscriptions it has);
        queue each one's State Report when ``send_reports``. Returns how many."""

    async def unsubscribe(self, uid: str, ae: str) -> bool: ...

    async def unsubscribe_all(self, ae: str) -> int: ...

    async def subscribers(self) -> list[str]:
        """Every AE that holds any subscription."""

    async def admits(self, ae: str, limit: int) -> bool:
        """Whether ``ae`` may subscribe under a limit of ``limit`` subscriber AEs: it is one
        already, or fewer than ``limit`` are."""

    async def broadcast(self, aes: Iterable[str], event_type: int, uid: str,
                        info: Dataset) -> int:
        """Queue one event outside any workitem commit (SCP Status Change) for ``aes``."""

    async def channel_open(self, ae: str) -> bool:
        """Whether some gateway process holds an open event channel for ``ae``."""
