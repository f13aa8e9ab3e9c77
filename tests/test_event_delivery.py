"""N-EVENT-REPORT delivery by the gateway's own requestor (gateway/dimse/event_sender.py), where
its design matters: the delivery lease is kept on its own clock, so a slow peer never lets another
gateway process take over a sender that is still sending; and what goes out is encoded as every
other DIMSE answer of the gateway (non-ASCII names, DS numbers)."""

from __future__ import annotations

import threading
import time

from tests.event_receiver import GLOBAL, STATE_REPORT, EventReceiver, Ups, unassigned
from tests.helpers import GatewayProcess, element, workitem

SLOW_ANSWER_SECONDS = 2.5  # each of the first reports: three of them outlast the 6 s lease


async def test_a_slow_peer_keeps_one_sender_and_gets_each_event_once(tmp_path, http):
    """Two gateway processes deliver to one peer through one lease. The peer takes 2.5 s to
    answer each of the first four reports (10 s in all, longer than the 6 s lease): the sending
    process keeps its lease throughout, the other never takes over, no report is sent twice."""
    slow = threading.Semaphore(4)

    def slowly(event) -> None:
        if slow.acquire(blocking=False):
            time.sleep(SLOW_ANSWER_SECONDS)

    with EventReceiver("SLOWPEER", before_answer=slowly) as rcv:
        store = GatewayProcess(tmp_path / "store").start()  # the Redis both share
        extra = {"peers": {"SLOWPEER": rcv.peer()}}
        other = None
        try:
            other = GatewayProcess(tmp_path / "other", redis_url=store.redis_url,
                                   extra=extra).start()
            ups = Ups(http, store.base)
            await ups.subscribe(GLOBAL, "SLOWPEER")
            uids = [await ups.create(unassigned()) for _ in range(5)]
            reports = await rcv.wait(5, uid=uids, timeout=40)
            # every report sent, then the last one: nothing more is on its way (per-AE order)
            last = await ups.create(unassigned())
            await rcv.wait(1, uid=last, timeout=20)
            received = rcv.received(uid=uids)
            assert [r.uid for r in received] == uids, "each event exactly once, in order"
            assert all(r.event_type == STATE_REPORT for r in reports)
            assert rcv.associations == 1, "one sender, one association, no takeover"
        finally:
            if other:
                other.stop()
            store.stop()


async def test_reports_carry_non_ascii_names_and_valid_ds_values(tmp_path, http):
    """Event information is encoded as N-GET answers are: a Latin and a Japanese name arrive
    intact, and a progress of 0.1 + 0.2 arrives as a DS of at most 16 characters."""
    with EventReceiver("TEXTPEER") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"TEXTPEER": rcv.peer()}}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "TEXTPEER")
            names = {"Alphabetic": "Müller^Jürgen", "Ideographic": "山田^太郎"}
            performer = {"00404009": element("SQ", {
                "00080100": element("SH", "P1"), "00080102": element("SH", "99LOCAL"),
                "00080104": element("LO", "Dr. Ñúñez")}),
                "00404037": element("PN", names)}
            uid = await ups.create(workitem(**{"00404034": element("SQ", performer)}))
            tx = await ups.claim(uid)
            await ups.progress(uid, tx, 0.1 + 0.2)
            assigned = await rcv.wait(1, uid=uid, event_type=5)
            info = assigned[0].dataset
            item = info.ScheduledHumanPerformersSequence[0]
            assert str(item.HumanPerformerName.alphabetic) == "Müller^Jürgen"
            assert str(item.HumanPerformerName.ideographic) == "山田^太郎"
            assert item.HumanPerformerCodeSequence[0].CodeMeaning == "Dr. Ñúñez"
            [progress] = await rcv.wait(1, uid=uid, event_type=3)
            value = progress.dataset.ProcedureStepProgressInformationSequence[0] \
                .ProcedureStepProgress
            assert len(str(value.original_string if hasattr(value, "original_string")
                           else value)) <= 16
            assert abs(float(value) - 0.3) < 1e-9
        finally:
            proc.stop()


async def test_each_report_on_an_association_has_its_own_message_id(tmp_path, http):
    """Issue 16: every N-EVENT-REPORT the gateway sends on one association carries its own
    Message ID (1, 2, 3 …), not 1 each time."""
    with EventReceiver("IDPEER") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"IDPEER": rcv.peer()}}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "IDPEER")
            uids = [await ups.create(unassigned()) for _ in range(4)]
            reports = await rcv.wait(4, uid=uids, timeout=20)
            ids = [r.message_id for r in reports]
            assert rcv.associations == 1
            assert len(set(ids)) == len(ids) and ids == sorted(ids) and 1 not in ids[1:], ids
        finally:
            proc.stop()
