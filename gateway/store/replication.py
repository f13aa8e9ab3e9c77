"""Changes acknowledged only once enough Redis replicas have them (``redis.min_replicas_ack``).

Redis replicates asynchronously: a master that dies right after a write may take the write with
it, and Sentinel then promotes a replica that never saw it. With ``min_replicas_ack`` N > 0 every
workitem commit (and every subscription change) is followed, on the same connection, by
``WAIT N timeout``; the change is reported to the client only when N replicas have it. When fewer
confirm in time, the change has been applied on the master but may not survive its failure: the
request fails with a processing failure saying so (docs/conformance.md, Redis Sentinel).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ups import status as st
from gateway.ups.errors import UPSError


@dataclass(frozen=True)
class Replication:
    replicas: int = 0  # 0: acknowledge on the master's reply alone
    timeout_s: float = 1.0

    @property
    def timeout_ms(self) -> int:
        return max(1, int(self.timeout_s * 1000))

    def check(self, acked: int, what: str) -> None:
        """Raise ``ReplicationUnconfirmed`` when fewer than ``replicas`` have the change."""
        if acked < self.replicas:
            raise ReplicationUnconfirmed(what, acked, self)


class ReplicationUnconfirmed(UPSError):
    def __init__(self, what: str, acked: int, replication: Replication):
        super().__init__(st.PROCESSING_FAILURE, (
            f"{what} was applied on the Redis master, but only {acked} of the "
            f"{replication.replicas} replicas required confirmed it within "
            f"{replication.timeout_s:g} s: it may be lost if the master fails now; read it "
            "back before retrying"), reason="unreplicated")
