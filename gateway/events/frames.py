"""WebSocket event frames (PS3.18 §8.10, decisions.md): one DICOM JSON object per event, the
N-EVENT-REPORT command fields first, then the event information.

A frame is encoded once per event rather than once per subscriber: an event queued for a hundred
AEs differs between their frames only in the Message ID (each AE's own sequence number), so the
rest — Affected SOP Instance UID, Event Type ID and the event information — is encoded once per
delivery round and spliced after each AE's Message ID.
"""

from __future__ import annotations

import orjson

from gateway.events.queue import QueuedEntry
from gateway.store.codec import pack
from gateway.ups import events as ev
from gateway.ups import tags as t
from gateway.ups.dataset import element
from gateway.ups.uids import GLOBAL_SUBSCRIPTION, UPS_PUSH

# Command fields of an event report frame.
SOP_CLASS, MESSAGE_ID, INSTANCE, EVENT_TYPE = "00000002", "00000110", "00001000", "00001002"
ERROR_COMMENT = "00000902"
_HEAD = (b'{"' + SOP_CLASS.encode() + b'":' + orjson.dumps(element("UI", UPS_PUSH))
         + b',"' + MESSAGE_ID.encode() + b'":{"vr":"US","Value":[')


class FrameEncoder:
    """Encodes the frames of one delivery round; events shared by several AEs are encoded once."""

    def __init__(self):
        self._tails: dict[tuple, bytes] = {}

    def encode(self, entry: QueuedEntry) -> bytes:
        key = (entry.type, entry.uid, entry.blob)
        tail = self._tails.get(key)
        if tail is None:
            rest = {INSTANCE: element("UI", entry.uid), EVENT_TYPE: element("US", entry.type)}
            rest.update(entry.info)
            tail = self._tails[key] = orjson.dumps(rest)[1:]  # without its opening brace
        return b"%s%d]},%s" % (_HEAD, entry.message_id, tail)


def overflow_notice(lost: int) -> bytes:
    """An SCP Status Change frame telling a subscriber that ``lost`` events were dropped for it
    (UPS List Status COLD START: query the worklist again)."""
    info = ev.scp_status("RESTARTED")
    info[t.SubscriptionListStatus] = element("CS", "WARM START")
    info[t.UnifiedProcedureStepListStatus] = element("CS", "COLD START")
    info[ERROR_COMMENT] = element("LO", f"{lost} events were dropped; query again"[:64])
    entry = QueuedEntry("0-0", 0, ev.SCP_STATUS_CHANGE, GLOBAL_SUBSCRIPTION, pack(info), 0)
    return FrameEncoder().encode(entry)
