"""Recognising UPS-RS resources in the many URL spellings real clients use (decisions.md).

Accepted: ``{base_path}/workitems…`` (the configured root), ``/workitems…`` at the server root, and
dcm4chee-style ``…/rs/workitems…``; segment names in any case, repeated or trailing slashes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class Resource:
    kind: str  # workitems | workitem | state | cancelrequest | subscription | suspend | channel
    #            | tickets
    uid: str | None = None
    ae: str | None = None  # requester (state, cancelrequest) or subscriber AE


@functools.lru_cache(maxsize=4096)  # the collection's path recurs on every create and search
def parse(path: str, base_path: str) -> Resource | None:
    segments = [unquote(s) for s in path.split("/") if s]
    lowered = [s.lower() for s in segments]
    base = [s.lower() for s in base_path.split("/") if s]
    if lowered in (base + ["ws-tickets"], ["ws-tickets"]):
        return Resource("tickets")
    for kind, name in (("mwl", "modality-scheduled-procedure-steps"),
                       ("mpps", "modality-performed-procedure-steps")):
        if name in lowered and lowered[:lowered.index(name)] in (base, []):
            return Resource(kind)  # served by rest/mwl.py, rest/mpps.py
    if "workitems" in lowered:
        at = lowered.index("workitems")
        prefix, rest = lowered[:at], segments[at + 1:]
        if prefix not in (base, []) and prefix[-1:] != ["rs"]:
            return None
        return _workitem_resource(rest)
    # The event channel: {base}/ws/subscribers/{AE} or {base}/subscribers/{AE}
    if "subscribers" in lowered:
        at = lowered.index("subscribers")
        prefix = lowered[:at]
        if prefix[-1:] == ["ws"]:
            prefix = prefix[:-1]
        if prefix in (base, []) and len(segments) == at + 2:
            return Resource("channel", ae=segments[at + 1])
    return None


def _workitem_resource(rest: list[str]) -> Resource | None:
    if not rest:
        return Resource("workitems")
    uid, tail = rest[0], rest[1:]
    names = [s.lower() for s in tail]
    if not tail:
        return Resource("workitem", uid)
    if names[0] in ("state", "cancelrequest") and len(tail) <= 2:
        return Resource(names[0], uid, tail[1] if len(tail) == 2 else None)
    if names[0] == "subscribers" and len(tail) == 2:
        return Resource("subscription", uid, tail[1])
    if names[0] == "subscribers" and len(tail) == 3 and names[2] == "suspend":
        return Resource("suspend", uid, tail[1])
    return None
