"""Every Redis key the gateway writes, named once, for Python and for the Lua scripts.

Layout (``p`` = the key prefix, ``redis.key_prefix``, default ``ups:``):

  p wi:{uid}             hash   d=dataset (``codec``), v=version, s=state, tx=Transaction UID,
                                pa=performer AE, ix=index names (msgpack), sc=score,
                                ft=final-state time, sr=State Report (msgpack)
  p ix:{name}            zset   secondary index (``indexes``), score = search order
  p final                zset   COMPLETED/CANCELED workitems by final-state time (retention)
  p gone:{uid}           string tombstone of a purged workitem (TTL): it answers "gone"
  p subs:{uid}           hash   subscriber AE → "1" (deletion lock) / "0"
  p aesubs:{ae}          set    workitems an AE is subscribed to
  p global               hash   AE → msgpack {lock, filter}: global subscriptions
  p gver                 string counts changes of ``global`` (the create commit checks it)
  p subscribers          set    every AE holding any subscription (SCP Status Change)
  p chan:{ae}            zset   open WebSocket channels for the AE → expiry
  p q:{ae}               stream events queued for a subscriber AE (bounded backlog)
  p qseq:{ae}            string the AE's event sequence number
  p queues               set    every AE that ever had an event queued
  p own:{transport}:{ae} string lease: who delivers the AE's events on ``ws`` / ``dimse``
  p cur:{transport}:{ae} string that transport's delivery cursor, "entry-id n"
  p mpps:{uid}           hash   an MPPS instance: d=dataset (``codec``), v=version, w=linked
                                workitem UID, tx=Transaction UID of its claim, n=note (TTL once
                                COMPLETED/DISCONTINUED)
  p procs                zset   live gateway processes → heartbeat expiry
  p notify               pubsub wake-ups (and the events themselves) for the deliverers
  p tkt:{digest}         string a WebSocket ticket (SHA-256 of it) → who and which AE (TTL)

The Lua scripts get the same names as functions (``lua_functions``), generated from the methods
below, so a key's name cannot differ between the two languages.
"""

from __future__ import annotations

import inspect


class Keys:
    def __init__(self, prefix: str = "ups:"):
        self.prefix = prefix

    def workitem(self, uid: str) -> str:
        return f"{self.prefix}wi:{uid}"

    def index(self, name: str) -> str:
        return f"{self.prefix}ix:{name}"

    def final(self) -> str:
        return f"{self.prefix}final"

    def tombstone(self, uid: str) -> str:
        return f"{self.prefix}gone:{uid}"

    def subscribers_of(self, uid: str) -> str:
        return f"{self.prefix}subs:{uid}"

    def subscriptions_of(self, ae: str) -> str:
        return f"{self.prefix}aesubs:{ae}"

    def globals(self) -> str:
        return f"{self.prefix}global"

    def globals_version(self) -> str:
        return f"{self.prefix}gver"

    def subscribers(self) -> str:
        return f"{self.prefix}subscribers"

    def channels(self, ae: str) -> str:
        return f"{self.prefix}chan:{ae}"

    def queue(self, ae: str) -> str:
        return f"{self.prefix}q:{ae}"

    def queue_seq(self, ae: str) -> str:
        return f"{self.prefix}qseq:{ae}"

    def queues(self) -> str:
        return f"{self.prefix}queues"

    def lease(self, transport: str, ae: str) -> str:
        return f"{self.prefix}own:{transport}:{ae}"

    def cursor(self, transport: str, ae: str) -> str:
        return f"{self.prefix}cur:{transport}:{ae}"

    def mpps(self, uid: str) -> str:
        return f"{self.prefix}mpps:{uid}"

    def processes(self) -> str:
        return f"{self.prefix}procs"

    def notify(self) -> str:
        return f"{self.prefix}notify"

    def ticket(self, digest: str) -> str:
        return f"{self.prefix}tkt:{digest}"


_HOLE = "\x00"


def lua_functions() -> str:
    """``local function k_workitem(p, uid) return p .. 'wi:' .. uid end`` … for every key: each
    method is called with placeholders for the prefix and its arguments, and the text it returns
    is turned into a Lua concatenation of the same parts."""
    lines = []
    for name, method in inspect.getmembers(Keys, inspect.isfunction):
        if name.startswith("_"):
            continue
        params = list(inspect.signature(method).parameters)[1:]
        text = method(Keys(f"{_HOLE}p{_HOLE}"), *(f"{_HOLE}{n}{_HOLE}" for n in params))
        parts = [f"'{part}'" if i % 2 == 0 else part
                 for i, part in enumerate(text.split(_HOLE)) if part]
        lines.append(f"local function k_{name}({', '.join(['p', *params])}) "
                     f"return {' .. '.join(parts)} end")
    return "\n".join(lines) + "\n"
