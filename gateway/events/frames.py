"""WebSocket event frames, encoded once per event rather than once per subscriber.

An event queued for a hundred AEs differs between their frames only in the Message ID (each AE's
own sequence number): the rest — Affected SOP Instance UID, Event Type ID and the event
information — is encoded once and spliced after each AE's Message ID. The result is byte for byte
``orjson.dumps(entry.frame())``, with the fields in the same order.
"""

from __future__ import annotations

import orjson

from gateway.events.queue import QueuedEntry
from gateway.ups.dataset import element
from gateway.ups.uids import UPS_PUSH

_INSTANCE, _EVENT_TYPE = "00001000", "00001002"
_HEAD = b'{"00000002":' + orjson.dumps(element("UI", UPS_PUSH)) + b',"00000110":{"vr":"US","Value":['


class FrameEncoder:
    """Encodes the frames of one delivery round; events shared by several AEs are encoded once."""

    def __init__(self):
        self._tails: dict[tuple, bytes] = {}

    def encode(self, entry: QueuedEntry) -> bytes:
        key = (entry.type, entry.uid, entry.blob)
        tail = self._tails.get(key)
        if tail is None:
            rest = {_INSTANCE: element("UI", entry.uid), _EVENT_TYPE: element("US", entry.type)}
            rest.update(entry.info)
            tail = self._tails[key] = orjson.dumps(rest)[1:]  # without its opening brace
        return b"%s%d]},%s" % (_HEAD, entry.message_id, tail)
