"""UPS Watch: subscriptions to workitems and to the worklist (PS3.4 CC.2.3, digest §7.2,
decisions.md "Subscriptions and events").

Per-workitem subscriptions live with the workitem (its commit queues their events); a global
subscription is remembered and applied to every workitem created later (``subscribers_for_new``,
used by the create commit) and, when made, to every existing one.
"""

from __future__ import annotations

import logging
import re

from gateway.ups import events as ev
from gateway.ups import status as st
from gateway.ups.dataset import Dataset
from gateway.ups.errors import NoSuchWorkitem, UPSError
from gateway.ups.matching import Query, Terms, from_terms
from gateway.ups.attempt import Attempt, until_committed
from gateway.ups.ports import Change, QueuedEvent, SubscriptionStore, WorkitemStore
from gateway.ups.uids import (FILTERED_GLOBAL_SUBSCRIPTION, GLOBAL_SUBSCRIPTION,
                              WELL_KNOWN_SUBSCRIPTION_UIDS)

log = logging.getLogger("gateway.watch")

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


_FILTERS_KEPT = 1000  # parsed filters of global subscriptions kept per process


class Watch:
    def __init__(self, store: WorkitemStore, subscriptions: SubscriptionStore, settings):
        self.store = store
        self.subs = subscriptions
        self.settings = settings
        self._filters: dict[str, Query] = {}
        self._globals = None

    def forget_globals(self) -> None:
        self._globals = None

    async def subscribers_for_new(self, ds: Dataset) -> tuple[int, list[tuple[str, bool]]]:
        """The global subscribers a newly created workitem gets, and the version they were read at.

        The global subscriptions are cached: the create commit checks their version atomically,
        and a mismatch (another process changed them) makes the caller ``forget_globals`` and retry.
        """
        if self._globals is None:
            self._globals = await self.subs.globals()
        version, globals_ = self._globals
        chosen = []
        for sub in globals_:
            if sub.filter is None or self._query(sub.filter).matches(ds):
                chosen.append((sub.ae, sub.lock))
        return version, chosen

    async def reachable(self, ae: str) -> bool:
        return ae in self.settings.direct_event_aes or await self.subs.channel_open(ae)

    async def subscribe(self, uid: str, ae: str, deletion_lock: bool,
                        terms: Terms | None = None, *, check_reachable: bool = False) -> str:
        """Subscribe; returns "" or the warning text when the lock was not granted (never,
        here). ``terms``: the Filtered Global Subscription's matching keys."""
        check_ae(ae)
        if check_reachable and not await self.reachable(ae):
            raise UPSError(st.UNKNOWN_RECEIVING_AE,
                           f"Receiving AE {ae} is unknown: not a configured peer and no open "
                           "WebSocket channel")
        limit = self.settings.max_subscriber_aes
        if limit and not await self.subs.admits(ae, limit):
            raise UPSError(st.RESOURCE_LIMITATION,
                           f"{limit} AEs hold subscriptions already (events.max_subscriber_aes); "
                           f"{ae} cannot be another until one unsubscribes from the worklist")
        if uid in WELL_KNOWN_SUBSCRIPTION_UIDS:
            if uid == FILTERED_GLOBAL_SUBSCRIPTION and not terms:  # (it would silently be a
                raise UPSError(st.INVALID_ARGUMENT_VALUE,  # subscription to every workitem)
                               f"the Filtered Global Subscription ({FILTERED_GLOBAL_SUBSCRIPTION}"
                               ") needs a filter of matching keys; to subscribe to every "
                               f"workitem use the Global Subscription UID {GLOBAL_SUBSCRIPTION}")
            if uid == GLOBAL_SUBSCRIPTION and terms:
                raise UPSError(st.ACTION_NOT_APPROPRIATE, "matching keys are only accepted with "
                               f"the Filtered Global Subscription UID {FILTERED_GLOBAL_SUBSCRIPTION}")
            await self._subscribe_globally(ae, deletion_lock, terms)
            return ""
        if terms:
            raise UPSError(st.ACTION_NOT_APPROPRIATE,
                           "matching keys are only accepted for the Filtered Global Subscription")

        async def decide(attempt: Attempt) -> None:
            record = await attempt.load(uid)
            change = Change(None, add_subscriptions=((ae, deletion_lock),))
            report = QueuedEvent(ev.STATE_REPORT, ev.state_report(record.dataset), only=(ae,))
            await attempt.commit(uid, record.version, change, [report])

        await until_committed(uid, self.store, decide, self.settings.max_attempts,
                              self.settings.commit_wait_seconds)
        log.info("subscribed", extra={"uid": uid, "ae": ae, "lock": deletion_lock})
        return ""

    async def _subscribe_globally(self, ae: str, lock: bool, terms: Terms | None) -> None:
        query = self._query(terms) if terms else Query()
        # Remember first: workitems created from now on are subscribed by their own commit.
        await self.subs.set_global(ae, lock, terms)
        self.forget_globals()
        uids = [uid async for uid in self.store.matching_uids(query)]
        count = await self.subs.subscribe_existing(ae, lock, uids, send_reports=lock)
        log.info("subscribed globally", extra={"ae": ae, "lock": lock, "filtered": bool(terms),
                                               "existing": count})

    async def unsubscribe(self, uid: str, ae: str) -> bool:
        """Unsubscribe; False when there was no such subscription."""
        check_ae(ae)
        if uid in WELL_KNOWN_SUBSCRIPTION_UIDS:
            had_global = await self.subs.remove_global(ae)
            self.forget_globals()
            removed = await self.subs.unsubscribe_all(ae)
            log.info("unsubscribed globally", extra={"ae": ae, "removed": removed})
            return had_global or removed > 0
        if not await self.store.exists(uid):
            raise NoSuchWorkitem(uid)
        removed = await self.subs.unsubscribe(uid, ae)
        log.info("unsubscribed", extra={"uid": uid, "ae": ae, "found": removed})
        return removed

    async def suspend(self, uid: str, ae: str) -> bool:
        """Suspend a global subscription: no more auto-subscription of new workitems."""
        check_ae(ae)
        if uid not in WELL_KNOWN_SUBSCRIPTION_UIDS:
            raise UPSError(st.ACTION_NOT_APPROPRIATE, "only a global subscription (UID "
                           f"{GLOBAL_SUBSCRIPTION} or {FILTERED_GLOBAL_SUBSCRIPTION}) can be suspended")
        found = await self.subs.remove_global(ae)
        self.forget_globals()
        log.info("global subscription suspended", extra={"ae": ae, "found": found})
        return found

    def _query(self, terms: Terms) -> Query:
        cache_key = repr(terms)
        if cache_key not in self._filters:
            if len(self._filters) > _FILTERS_KEPT:
                self._filters.clear()
            self._filters[cache_key] = from_terms(terms, self.settings.timezone)
        return self._filters[cache_key]


def check_ae(ae: str) -> None:
    if not ae or not _AE_RE.match(ae) or ae != ae.strip():
        raise UPSError(st.INVALID_ARGUMENT_VALUE, f"{ae!r} is not a valid AE title (1-16 characters)")
